"""`ray job submit --working-dir jobs -- python tune.py --config configs/<recipe>.yaml [key=value ...]`

A Ray Tune sweep (every trial a full Ray Train run); resubmitting the same command resumes it.
The cluster image has tpo_ray installed; only this folder is uploaded."""
from _entry import main

if __name__ == "__main__":
    main("tune")
