"""The embedded end-to-end run behind `make demo`: generated data, tiny models, real code paths.

Writes everything under one output folder (DESIGN.md "Contracts"): `data/`, `negatives/`, the
tiny model in diffusers layout under `models/`, and prints the training metrics it measures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tpo_ray.config import TPOConfig, dump_config
from tpo_ray.data import schema
from tpo_ray.data.io import join, read_parquet, write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.models.encoding import attach_time_ids, encode_captions, encode_images
from tpo_ray.models.loading import load_components
from tpo_ray.models.reference import build_reference
from tpo_ray.negatives.job import NegativesResult, run_negatives
from tpo_ray.train.loop import GuardState, optimizer_step
from tpo_ray.train.backend import TorchBackend
from tpo_ray.train.step import TrainingStep, triplet_batch

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    output_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    negatives: NegativesResult | None = None
    seconds: float = 0.0


def demo_config(output_dir: str | Path) -> TPOConfig:
    out = str(output_dir)
    return TPOConfig.model_validate({
        "output_dir": out,
        "model": {"pretrained": "tiny:sd15", "cache_dir": join(out, "models")},
        "negatives": {"shard_size": 32},
        "train": {"loss": {"name": "tdpo", "beta": 5000.0, "tau": None}, "lr": 1e-5, "max_steps": 20,
                  "batch_size": 8, "log_every_steps": 5},
    })


def run_demo(cfg: TPOConfig) -> DemoResult:
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    result = DemoResult(out)
    dump_config(cfg, out / "config.yaml")
    captions = synthetic_table(cfg.data.synthetic.num_rows, cfg.data.synthetic.image_size, cfg.data.synthetic.seed)
    write_parquet_atomic(captions, out / "data" / "captions.parquet")
    result.negatives = run_negatives(cfg)
    triplets = read_parquet(join(result.negatives.output, "triplets"))
    log.info("data: %d captions, %d triplets", captions.num_rows, triplets.num_rows)

    torch.manual_seed(cfg.train.seed)
    components = load_components(cfg.model)
    rows = triplets.slice(0, cfg.train.batch_size).to_pylist()
    x0, time_ids = encode_images(components, [r[schema.IMAGE] for r in rows], cfg.data.resolution)
    cond_w = attach_time_ids(encode_captions(components, [r[schema.CAPTION] for r in rows]), time_ids)
    cond_l = attach_time_ids(encode_captions(components, [r[schema.NEGATIVE] for r in rows]), time_ids)
    batch = triplet_batch(x0, cond_w, cond_l)

    unet = components.unet
    step = TrainingStep(unet, build_reference(cfg.resolved_reference(), unet), components.noise_scheduler,
                        cfg.train.loss)
    backend, guard = TorchBackend(unet, cfg.train, wrap=lambda m: m), GuardState()
    for index in range(1, cfg.train.max_steps + 1):
        generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + index)
        metrics = optimizer_step(step, [batch], backend, guard=guard,
                                 max_consecutive_nonfinite=cfg.train.max_consecutive_nonfinite,
                                 step_index=index, generators=[generator])
        metrics["step"] = float(index)
        result.history.append(metrics)
        if index % cfg.train.log_every_steps == 0 or index == 1:
            log.info("step %d loss %.4f implicit_acc %.3f grad_norm %.3g", index, metrics.get("loss", float("nan")),
                     metrics.get("implicit_acc", float("nan")), metrics.get("grad_norm", float("nan")))
    result.seconds = time.perf_counter() - start
    return result
