"""`ray job submit -- python jobs/pipeline.py --config jobs/configs/<recipe>.yaml [key=value ...]`

A recipe's stages in order (negatives -> SFT -> export -> TDPO/TKTO -> export, or a Tune sweep): see
`tpo_ray/pipeline.py`. Resubmitting the same job continues: finished stages are found, not redone.
The cluster image has tpo_ray installed."""
from _entry import main

if __name__ == "__main__":
    main("pipeline")
