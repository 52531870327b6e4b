"""`ray job submit --working-dir jobs -- python report.py --config configs/<recipe>.yaml [key=value ...]`

`tpo-ray report`: the HTML report of what the eval commands wrote under eval.output (also logged to
MLflow). The cluster image has tpo_ray installed."""
from _entry import main

if __name__ == "__main__":
    main("report")
