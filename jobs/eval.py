"""`ray job submit --working-dir jobs -- python eval.py sample --config configs/<recipe>.yaml [key=value ...]`

Evaluation commands (`tpo-ray eval ...`): `sample` renders eval.prompts with every model of eval.models
(one pipeline replica per GPU actor), resumable. The cluster image has tpo_ray installed."""
from _entry import main

if __name__ == "__main__":
    main("eval")
