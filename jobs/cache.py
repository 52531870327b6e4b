"""`ray job submit --working-dir jobs -- python cache.py --config configs/<recipe>.yaml [key=value ...]`

The cluster image has tpo_ray installed; only this folder is uploaded."""
from _entry import main

if __name__ == "__main__":
    main("cache")
