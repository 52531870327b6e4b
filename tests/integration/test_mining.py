"""Semantic screen and hard-negative mining on a real local Ray cluster: a triplet cache of 3 candidate
negatives per caption with reference margins, a text-similarity threshold that quarantines some of
them, and a TDPO run that reads one mined negative per caption."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tpo_ray.cache.job import run_cache
from tpo_ray.cache.store import CacheReader, RowFilter
from tpo_ray.config import TPOConfig, apply_overrides, config_from_dict
from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.negatives.job import run_negatives
from tpo_ray.cache.selection import training_rows
from tpo_ray.train.driver import run_train

pytestmark = pytest.mark.usefixtures("ray_cluster")  # ~50 s on 2 cores: not marked slow


def variant(cfg: TPOConfig, overrides: dict) -> TPOConfig:
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides), "test")


def split_rows(directory: str, split: str) -> list[dict]:
    return [r for f in sorted(Path(directory, f"split={split}").glob("*.parquet"))
            for r in pq.read_table(f, columns=["id", "example", "text_similarity", "ref_margin"]).to_pylist()]


def test_screened_cache_with_margins_and_one_mined_negative_per_caption(tmp_path: Path) -> None:
    cfg = config_from_dict({
        "output_dir": str(tmp_path),
        "data": {"synthetic": {"num_rows": 16}, "holdout_fraction": 0.25},
        "negatives": {"negatives_per_caption": 3, "shard_size": 16},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "models")},
        "cache": {"reference_margins": True, "batch_size": 8},
        "tracking": {"enabled": False},
        "train": {"max_steps": 2, "batch_size": 2, "log_every_steps": 1, "checkpoint_every_steps": 2,
                  "eval_max_pairs": 4, "scaling": {"num_workers": 1}},
        "eval": {"timesteps": [300, 700], "noise_draws": 1},
    })
    write_parquet_atomic(synthetic_table(16, 64), cfg.captions_source())
    negatives = run_negatives(cfg)
    assert negatives.stats["triplets"] > negatives.stats["rows_accepted"]  # several candidates per caption
    full = run_cache(cfg)
    rows = split_rows(full.directory, "train") + split_rows(full.directory, "val")
    assert len(rows) == full.manifest["rows_in"] and full.manifest["quarantined"] == 0
    assert all(-1 <= r["text_similarity"] <= 1 and r["ref_margin"] is not None for r in rows)
    assert full.manifest["options"]["reference_margins"]["timesteps"] == [300, 700]

    # tiny random text encoders make every pair look alike: the threshold comes from the stored values
    sims = sorted(r["text_similarity"] for r in rows)
    threshold = sims[len(sims) * 2 // 3]
    above = sum(s > threshold for s in sims)
    assert 0 < above < len(sims)
    screened_cfg = variant(cfg, {"cache.max_text_similarity": threshold})
    screened = run_cache(screened_cfg)
    assert screened.directory != full.directory  # the threshold is in the key
    assert screened.manifest["rejected"] == {"near_synonym": above} and screened.manifest["quarantined"] == above
    quarantined = [r for f in Path(screened.directory, "quarantine").glob("*.parquet")
                   for r in pq.read_table(f).to_pylist()]
    assert len(quarantined) == above and {r["reason"] for r in quarantined} == {"near_synonym"}
    assert all(f"cache.max_text_similarity={threshold}" in r["raw"] for r in quarantined)
    kept = split_rows(screened.directory, "train")
    assert all(r["text_similarity"] <= threshold for r in kept)

    # one mined negative per caption: the smallest reference margin of its remaining candidates
    mined_cfg = variant(screened_cfg, {"data.hard_negatives": 1, "train.run_name": "mined"})
    by_id: dict[str, list[dict]] = {}
    for r in kept:
        by_id.setdefault(r["id"], []).append(r)
    expected = sorted(min(c, key=lambda r: (r["ref_margin"], r["example"]))["example"] for c in by_id.values())
    assert training_rows(mined_cfg, screened.directory, screened.manifest) == len(by_id)
    reader = CacheReader(screened.directory, "train", seed=0, keep=RowFilter.from_data_config(mined_cfg.data))
    read = reader.rows(0, len(reader))
    assert sorted(r["example"] for r in read) == expected
    assert Counter(r["id"] for r in read) == Counter({i: 1 for i in by_id})
    assert any(len(c) > 1 for c in by_id.values())  # mining chose among several candidates
    result = run_train(mined_cfg)
    assert result.metrics["step"] == 2 and 0 <= result.metrics["val/model_acc"] <= 1
