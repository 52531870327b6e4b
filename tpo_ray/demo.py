"""The embedded end-to-end run behind `make demo`: generated data, tiny models, real code paths.

data -> negatives (Ray Data job) -> cache -> SFT (Ray Train, 2 workers) -> export -> cache ->
TDPO from the SFT U-Net (2 workers) -> export, everything under one output folder (DESIGN.md
"Contracts") and every training run in the MLflow store there. Later stages extend it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpo_ray.cache.job import CacheResult, run_cache
from tpo_ray.config import TPOConfig, apply_overrides, config_from_dict, dump_config
from tpo_ray.data.io import join, write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.export import ExportResult, run_export
from tpo_ray.negatives.job import NegativesResult, run_negatives
from tpo_ray.train.driver import TrainResult, run_train

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    output_dir: Path
    negatives: NegativesResult | None = None
    caches: list[CacheResult] = field(default_factory=list)
    sft: TrainResult | None = None
    tdpo: TrainResult | None = None
    exports: list[ExportResult] = field(default_factory=list)
    seconds: float = 0.0


def demo_config(output_dir: str | Path) -> TPOConfig:
    out = str(output_dir)
    return TPOConfig.model_validate({
        "output_dir": out,
        "data": {"synthetic": {"num_rows": 512}, "holdout_fraction": 0.25},
        "negatives": {"shard_size": 128},
        "model": {"pretrained": "tiny:sd15", "cache_dir": join(out, "models")},
        # Tiny random models learn at a far higher rate than SD (lr 1e-6 there), and a lower beta
        # keeps the logits of their larger error gaps in range.
        "train": {"loss": {"name": "tdpo", "beta": 1000.0, "tau": None}, "lr": 3e-4, "max_steps": 200,
                  "batch_size": 4, "log_every_steps": 25, "checkpoint_every_steps": 100, "eval_max_pairs": 128,
                  "scaling": {"num_workers": 2}},
        "eval": {"timesteps": [200, 400, 600, 800], "noise_draws": 2},
    })


def stage(cfg: TPOConfig, overrides: dict[str, Any]) -> TPOConfig:
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides), "demo stage")


def run_demo(cfg: TPOConfig) -> DemoResult:
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    result = DemoResult(out)
    dump_config(cfg, out / "config.yaml")
    syn = cfg.data.synthetic
    write_parquet_atomic(synthetic_table(syn.num_rows, syn.image_size, syn.seed), out / "data" / "captions.parquet")
    result.negatives = run_negatives(cfg)

    sft_cfg = stage(cfg, {"train.loss": {"name": "sft"}, "train.max_steps": 40,
                          "export.output": str(out / "export-sft")})
    result.caches.append(run_cache(sft_cfg))
    result.sft = run_train(sft_cfg)
    result.exports.append(run_export(sft_cfg))

    tdpo_cfg = stage(cfg, {"train.init_from": str(out / "export-sft" / "unet")})
    result.caches.append(run_cache(tdpo_cfg))
    result.tdpo = run_train(tdpo_cfg)
    result.exports.append(run_export(tdpo_cfg))
    result.seconds = time.perf_counter() - start
    return result
