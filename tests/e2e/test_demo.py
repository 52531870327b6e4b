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


def test_demo_runs_every_stage_and_reports(tmp_path: Path) -> None:
    import mlflow

    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "tpo_ray.cli", "demo", "--output", str(out), "train.max_steps=6",
           "data.synthetic.num_rows=48"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "negatives: 48 triplets for 48/48 captions (0 quarantined)" in result.stdout
    assert "SFT  (sft-" in result.stdout and "step 40" in result.stdout
    assert "TDPO (tdpo-" in result.stdout and "step 6" in result.stdout
    assert "held-out preference accuracy" in result.stdout
    assert f"outputs under {out.resolve()}" in result.stdout
    assert pq.read_table(out / "data" / "captions.parquet").num_rows == 48
    triplets = pq.read_table(out / "negatives" / "triplets").to_pylist()
    assert len(triplets) == 48 and all(t["negative"] != t["caption"] for t in triplets)
    for folder in ("export", "export-sft"):
        assert (out / folder / "model_index.json").is_file() and (out / folder / "unet").is_dir()
    assert len(list((out / "cache").glob("*/manifest.json"))) == 2
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tpo_ray").experiment_id])
    assert sorted(r.info.run_name.split("-")[0] for r in runs) == ["negatives", "sft", "tdpo"]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 6
