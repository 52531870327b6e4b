"""`tpo-ray demo` end to end in a fresh process: the same path `make demo` takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.slow


def test_demo_runs_and_reports_metrics(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "tpo_ray.cli", "demo", "--output", str(out), "train.max_steps=6",
           "data.synthetic.num_rows=40"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TDPO steps 6: loss 0.6931" in result.stdout
    assert f"outputs under {out.resolve()}" in result.stdout
    assert pq.read_table(out / "data" / "captions.parquet").num_rows == 40
    triplets = pq.read_table(out / "negatives" / "triplets").to_pylist()
    assert len(triplets) == 40 and all(t["negative"] != t["caption"] for t in triplets)
    assert (out / "negatives" / "stats.json").is_file() and (out / "mlflow.db").is_file()
    assert (out / "models" / "tiny-sd15" / "model_index.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 6
