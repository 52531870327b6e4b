"""The embedded end-to-end run behind `make demo`: the scene world, its pretrained base model, real code paths.

Rendered scenes of the world (`tpo_ray/world`), then the pipeline (`tpo_ray/pipeline.py`) with every
stage, starting from the world's shipped base model (an SD1.5 diffusers folder): negatives (Ray Data
job) -> cache -> SFT (Ray Train, 2 workers) -> export -> cache -> TDPO from the SFT U-Net (2 workers)
-> export -> a 2-trial Ray Tune sweep over beta and tau (shorter TDPO runs, ASHA) -> eval of base, SFT and
TDPO (implicit preference by principle on the held-out pairs; held-out scene prompts sampled and read back
by the scene verifier) -> the HTML report, everything under one output folder (DESIGN.md "Contracts") and
every training run in the MLflow store there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpo_ray.config import TPOConfig, apply_overrides, config_from_dict
from tpo_ray.data.io import join, write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.eval.report import ReportResult
from tpo_ray.pipeline import StageRecord, run_pipeline
from tpo_ray.train.driver import TrainResult
from tpo_ray.tune.sweep import TuneResult
from tpo_ray.world.model import BASE_MODEL_DIR

# The world's base model was pretrained at 5e-4 on partly mismatched captions: SFT on the true captions,
# then TDPO from the SFT U-Net, at a fine-tuning rate with the negative term clipped. At 1e-4 without the
# clip, TDPO's samples fell from 0.39 to 0.16 all-correct by the verifier (docs/world.md).
SFT_STEPS = 40
TDPO_STEPS = 100
LR = 2e-5
TDPO_BETA = 1000.0
TDPO_TAU = 1e-3
EVAL_PROMPTS = 64


@dataclass
class DemoResult:
    output_dir: Path
    sft: TrainResult | None = None
    tdpo: TrainResult | None = None
    tune: TuneResult | None = None
    eval: dict[str, Any] | None = None  # pipeline.run_eval's results
    report: ReportResult | None = None
    stages: list[StageRecord] = field(default_factory=list)
    seconds: float = 0.0


def demo_config(output_dir: str | Path, overrides: Sequence[str] = ()) -> TPOConfig:
    """The demo's settings with the user's overrides; the sweep's run length follows train.max_steps."""
    out = str(output_dir)
    base = {
        "output_dir": out,
        "data": {"synthetic": {"num_rows": 512}, "holdout_fraction": 0.25},
        "negatives": {"shard_size": 128, "editor": "scene"},
        "model": {"pretrained": str(BASE_MODEL_DIR), "cache_dir": join(out, "models")},
        "train": {"loss": {"name": "tdpo", "beta": TDPO_BETA, "tau": TDPO_TAU}, "lr": LR, "max_steps": TDPO_STEPS,
                  "batch_size": 8, "log_every_steps": 25, "checkpoint_every_steps": 100, "eval_max_pairs": 128,
                  "scaling": {"num_workers": 2}},
        # Held-out scene prompts (color/shape pairs no training caption shows), read back by the verifier.
        "eval": {"timesteps": [200, 400, 600, 800], "noise_draws": 2, "prompts": "scenes", "max_prompts": EVAL_PROMPTS,
                 "scorers": ["scene"], "num_inference_steps": 20, "guidance_scale": 4.0, "sample_batch_size": 16},
        "pipeline": {"stages": ["negatives", "sft", "preference", "tune", "eval", "report"],
                     "sft": {"train.max_steps": SFT_STEPS}},
    }
    cfg = config_from_dict(apply_overrides(base, list(overrides)), "demo defaults")
    if cfg.pipeline.tune:
        return cfg
    # Two short TDPO trials from the SFT U-Net, beta and tau drawn (seeded), ASHA at a quarter of the run;
    # one worker each, side by side: a trial's start-up (Train controller, worker, model) is most of its time.
    steps = max(4, min(20, cfg.train.max_steps))
    every = max(1, steps // 4)
    sweep = {"train.max_steps": steps, "train.log_every_steps": every, "train.checkpoint_every_steps": every * (steps // every),
             "train.scaling.num_workers": 1, "train.eval_max_pairs": 32,  # ASHA's rungs: enough to rank two trials
             "tune": {"search": "random", "num_samples": 2, "grace_period": every, "max_concurrent_trials": 2,
                      "search_space": {"train.loss.beta": {"loguniform": [300.0, 3000.0]},
                                       "train.loss.tau": {"choice": [None, 1.0e-3]}}}}
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), {"pipeline.tune": sweep}), "demo defaults")


def run_demo(cfg: TPOConfig, on_stage: Callable[[StageRecord], None] = lambda record: None) -> DemoResult:
    """Generated data (unless `data.captions` names the user's), then every stage; `on_stage` hears about
    each one as it finishes (the CLI prints it)."""
    start = time.perf_counter()
    result = DemoResult(Path(cfg.output_dir))
    syn = cfg.data.synthetic
    if cfg.data.captions is None:  # the user's own captions are read, never overwritten
        began = time.perf_counter()
        captions = cfg.captions_source()
        write_parquet_atomic(synthetic_table(syn.num_rows, syn.image_size, syn.seed), captions)
        result.stages.append(StageRecord("data", time.perf_counter() - began,
                                         f"{syn.num_rows} generated captions with images", captions))
        on_stage(result.stages[-1])
    ran = run_pipeline(cfg, on_stage)
    result.stages += ran.stages
    result.sft = ran.results.get("train SFT")
    result.tdpo = ran.results.get(f"train {cfg.train.loss.name.upper()}")
    result.tune = ran.results.get("tune")
    result.eval = ran.results.get("eval")
    result.report = ran.results.get("report")
    result.seconds = time.perf_counter() - start
    return result
