"""`ray job submit --working-dir jobs -- python reference.py --config configs/<recipe>.yaml [key=value ...]`

Precomputes the reference model's errors on the cache (model.reference=precomputed); train and tune
also run it when the store lacks something. The cluster image has tpo_ray installed."""
from _entry import main

if __name__ == "__main__":
    main("reference")
