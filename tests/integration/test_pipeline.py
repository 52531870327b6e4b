"""A pipeline on a real local Ray cluster: every stage runs once; the same command again finds each
stage finished and redoes nothing (what resubmitting a RayJob after a failure relies on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpo_ray.config import config_from_dict
from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.pipeline import EXPORT_RECORD, run_pipeline

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_a_second_run_of_the_same_pipeline_redoes_nothing(tmp_path: Path) -> None:
    cfg = config_from_dict({
        "output_dir": str(tmp_path),
        "data": {"synthetic": {"num_rows": 24}, "holdout_fraction": 0.25},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "models")},
        "tracking": {"enabled": False},
        "train": {"max_steps": 2, "batch_size": 2, "log_every_steps": 1, "checkpoint_every_steps": 2,
                  "eval_max_pairs": 4},
        "eval": {"timesteps": [500], "noise_draws": 1},
        "pipeline": {"stages": ["negatives", "sft", "preference"], "sft": {"train.max_steps": 2}},
    }, "test")
    write_parquet_atomic(synthetic_table(24, 64), tmp_path / "data" / "captions.parquet")
    first = run_pipeline(cfg)
    assert [s.name for s in first.stages] == ["negatives", "cache (SFT)", "train SFT", "export (SFT)",
                                              "cache (TDPO)", "train TDPO", "export (TDPO)"]
    tdpo = first.results["train TDPO"]
    assert tdpo.metrics["step"] == 2 and "val/implicit_acc" in tdpo.metrics
    assert (tmp_path / "export-sft" / EXPORT_RECORD).is_file() and (tmp_path / "export" / "model_index.json").is_file()
    assert (tmp_path / "configs" / "sft.yaml").is_file() and (tmp_path / "configs" / "tdpo.yaml").is_file()

    again = run_pipeline(cfg)
    assert again.results["cache (SFT)"].reused and again.results["cache (TDPO)"].reused
    assert again.results["train SFT"].already_finished and again.results["train TDPO"].already_finished
    assert [s.figure for s in again.stages if s.name.startswith("export")] == ["already exported"] * 2
    assert again.results["train TDPO"].checkpoint == tdpo.checkpoint
