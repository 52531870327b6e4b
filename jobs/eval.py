"""`ray job submit --working-dir jobs -- python eval.py implicit|sample|score --config configs/<recipe>.yaml [key=value ...]`

Evaluation commands (`tpo-ray eval ...`): `implicit` scores the held-out pairs with every model of
eval.models (one actor per GPU holding each model's U-Net); `sample` renders eval.prompts with every
model (one pipeline replica per GPU actor), resumable; `score` scores the samples and writes win rates.
The cluster image has tpo_ray installed."""
from _entry import main

if __name__ == "__main__":
    main("eval")
