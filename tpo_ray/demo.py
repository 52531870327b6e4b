"""The embedded end-to-end run behind `make demo`: generated data, tiny models, real code paths.

data -> negatives (Ray Data job) -> cache -> SFT (Ray Train, 2 workers) -> export -> cache ->
TDPO from the SFT U-Net (2 workers) -> export -> a 2-trial Ray Tune sweep over beta and tau (shorter
TDPO runs, ASHA), everything under one output folder (DESIGN.md "Contracts") and every training run
in the MLflow store there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tpo_ray.cache.job import CacheResult, run_cache
from tpo_ray.config import TPOConfig, apply_overrides, config_from_dict, dump_config
from tpo_ray.data.io import join, write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.export import ExportResult, run_export
from tpo_ray.negatives.job import NegativesResult, run_negatives
from tpo_ray.train.driver import TrainResult, run_train
from tpo_ray.tune.sweep import TuneResult, run_tune, short_value

log = logging.getLogger(__name__)


@dataclass
class StageRecord:
    """One line of the demo's summary: what ran, how long it took, its figure, where its output is."""

    name: str
    seconds: float
    figure: str
    output: str


@dataclass
class DemoResult:
    output_dir: Path
    negatives: NegativesResult | None = None
    caches: list[CacheResult] = field(default_factory=list)
    sft: TrainResult | None = None
    tdpo: TrainResult | None = None
    exports: list[ExportResult] = field(default_factory=list)
    tune: TuneResult | None = None
    stages: list[StageRecord] = field(default_factory=list)
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


def _train_figure(result: TrainResult) -> str:
    m = result.metrics
    figure = f"step {m.get('step')}, loss {m.get('train/loss', float('nan')):.4f}"
    if "val/model_acc" in m:
        figure += f", held-out acc {m['val/model_acc']:.3f}"
    if "val/ref_acc" in m:
        figure += f" (reference {m['val/ref_acc']:.3f})"
    return figure


def run_demo(cfg: TPOConfig, on_stage: Callable[[StageRecord], None] = lambda record: None) -> DemoResult:
    """Every stage in order; `on_stage` hears about each one as it finishes (the CLI prints it)."""
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    result = DemoResult(out)
    dump_config(cfg, out / "config.yaml")

    def record(name: str, began: float, figure: str, output: str | Path) -> None:
        result.stages.append(StageRecord(name, time.perf_counter() - began, figure, str(output)))
        on_stage(result.stages[-1])

    began = time.perf_counter()
    syn = cfg.data.synthetic
    captions = cfg.captions_source()
    if cfg.data.captions is None:  # the user's own captions are read, never overwritten
        write_parquet_atomic(synthetic_table(syn.num_rows, syn.image_size, syn.seed), captions)
        record("data", began, f"{syn.num_rows} generated captions with images", captions)

    began = time.perf_counter()
    neg = result.negatives = run_negatives(cfg)
    record("negatives", began, f"{neg.stats['triplets']} triplets for {neg.stats['rows_accepted']}/"
           f"{neg.stats['rows_in']} captions, {neg.stats['rows_quarantined']} quarantined", neg.output)

    for label, stage_cfg in _training_stages(cfg, out):
        dump_config(stage_cfg, out / "configs" / f"{label.lower()}.yaml")  # rerun a stage: tpo-ray <stage> --config
        began = time.perf_counter()
        cache = run_cache(stage_cfg)
        result.caches.append(cache)
        rows = cache.manifest["rows"]
        record(f"cache ({label})", began, f"{rows['train']} train + {rows['val']} held-out "
               f"{cache.manifest['kind']} examples", cache.directory)
        began = time.perf_counter()
        trained = run_train(stage_cfg)
        setattr(result, label.lower(), trained)
        record(f"train {label}", began, _train_figure(trained), trained.checkpoint)
        began = time.perf_counter()
        exported = run_export(stage_cfg)
        result.exports.append(exported)
        record(f"export ({label})", began, f"{exported.family} diffusers pipeline", exported.output)
    sweep_cfg = _sweep_stage(cfg, out)
    dump_config(sweep_cfg, out / "configs" / "tune.yaml")
    began = time.perf_counter()
    swept = result.tune = run_tune(sweep_cfg)
    record("tune", began, _tune_figure(swept), swept.best_config or swept.sweep_dir)
    result.seconds = time.perf_counter() - start
    return result


def _sweep_stage(cfg: TPOConfig, out: Path) -> TPOConfig:
    """Two short TDPO trials from the SFT U-Net, beta and tau drawn (seeded), ASHA at a quarter of the run."""
    steps = max(4, min(40, cfg.train.max_steps))
    every = max(1, steps // 4)
    return stage(cfg, {
        "train.init_from": str(out / "export-sft" / "unet"), "train.max_steps": steps,
        "train.log_every_steps": every, "train.checkpoint_every_steps": every * (steps // every),
        "tune": {"search": "random", "num_samples": 2, "grace_period": every, "max_concurrent_trials": 1,
                 "search_space": {"train.loss.beta": {"loguniform": [300.0, 3000.0]},
                                  "train.loss.tau": {"choice": [None, 1.0e-3]}}},
    })


def _tune_figure(result: TuneResult) -> str:
    if result.best is None:
        return f"{len(result.trials)} trials, none reported {result.metric}"
    params = ", ".join(f"{k.rsplit('.', 1)[-1]} {short_value(v)}" for k, v in result.best.params.items())
    return f"{len(result.trials)} trials; best {params}: {result.metric} {result.best.best:.3f}"


def _training_stages(cfg: TPOConfig, out: Path) -> list[tuple[str, TPOConfig]]:
    """SFT on the captions, then TDPO from the SFT U-Net (as the TPO recipe does)."""
    sft = stage(cfg, {"train.loss": {"name": "sft"}, "train.max_steps": 40, "export.output": str(out / "export-sft")})
    tdpo = stage(cfg, {"train.init_from": str(out / "export-sft" / "unet")})
    return [("SFT", sft), ("TDPO", tdpo)]
