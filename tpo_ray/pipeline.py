"""`run_pipeline`: a recipe's stages in order, as `tpo-ray pipeline` and `jobs/pipeline.py` run them.

    negatives -> cache (captions) -> SFT -> export-sft -> cache (triplets) -> preference stage (TDPO,
    TKTO or a baseline, from the SFT U-Net) -> export (`export.output`);  and/or a Tune sweep from the SFT U-Net
    -> eval (implicit preference on the held-out pairs, samples, reward scores: base vs SFT vs the
    preference model) -> report (`<eval.output>/report/index.html`)

`pipeline.stages` picks which run; `pipeline.sft`, `pipeline.preference`, `pipeline.tune` and
`pipeline.eval` hold each stage's overrides (dotted keys) on top of the recipe. Every stage config is built and validated before
any work starts, and written to `<output_dir>/configs/<stage>.yaml` (rerun one stage with
`tpo-ray <stage> --config` on it; the preference stage's file is named after its loss: tdpo.yaml). Resubmitting after a failure continues: the negatives job resumes
its shards, a cache is found by its key, a finished training run returns at once, an export whose
folder already holds the same checkpoint is skipped, a sweep restores its Tune experiment, the implicit eval finds its summary, sampling skips the images its
index holds and scoring the images already scored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpo_ray.config import TPOConfig, apply_overrides, config_from_dict, dump_config
from tpo_ray.data.io import is_uri, join

log = logging.getLogger(__name__)


@dataclass
class StageRecord:
    """One line of a pipeline summary: what ran, how long it took, its figure, where its output is."""

    name: str
    seconds: float
    figure: str
    output: str


@dataclass
class PipelineResult:
    output_dir: str
    stages: list[StageRecord] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)  # stage name -> its result object
    seconds: float = 0.0


def stage_config(cfg: TPOConfig, overrides: dict[str, Any], what: str) -> TPOConfig:
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides), what)


def stage_configs(cfg: TPOConfig) -> dict[str, TPOConfig]:
    """The config of each stage the recipe runs, validated now (a bad override fails before any work)."""
    pc = cfg.pipeline
    stages = set(pc.stages)
    out: dict[str, TPOConfig] = {}
    after_sft: dict[str, Any] = {}
    if "negatives" in stages:
        out["negatives"] = cfg
    if "sft" in stages:
        sft = out["sft"] = stage_config(cfg, {"train.loss": {"name": "sft"},
                                              "export.output": join(cfg.output_dir, "export-sft"), **pc.sft},
                                        "pipeline.sft")
        after_sft = {"train.init_from": join(export_folder(sft), "unet")}
    if "preference" in stages:
        preference = stage_config(cfg, {**after_sft, **pc.preference}, "pipeline.preference")
        if preference.train.loss.name == "sft":
            raise ValueError("pipeline.preference trains train.loss.name='sft'; set a preference loss (tdpo, tkto, ...)")
        out["preference"] = preference
    if "tune" in stages:
        out["tune"] = stage_config(cfg, {**after_sft, **pc.tune}, "pipeline.tune")
    if stages & {"eval", "report"}:
        evaluated = eval_stage_config(cfg, out)
        out.update({name: evaluated for name in ("eval", "report") if name in stages})
    for name in ("sft", "preference"):
        if name in out and is_uri(export_folder(out[name])):
            raise ValueError(f"pipeline.{name}: the export is written to a local or shared folder (the next stage "
                             f"starts from it), not {export_folder(out[name])}; set pipeline.{name}: "
                             "{export.output: /mnt/shared/<run>/...}")
    return out


def eval_stage_config(cfg: TPOConfig, stages: dict[str, TPOConfig]) -> TPOConfig:
    """The eval (and report) config: the preference stage's (its triplet cache holds the held-out pairs),
    comparing the base model, the SFT export and the preference export, against SFT (the preference
    model's start and reference) unless `eval.models` / `eval.baseline` say otherwise."""
    from tpo_ray.eval.sample_job import eval_baseline

    start = stages.get("preference") or stages.get("sft") or cfg
    defaults: dict[str, Any] = {}
    overridden = {k.split(".")[1] for k in cfg.pipeline.eval if k.startswith("eval.")} | set(
        cfg.pipeline.eval.get("eval", {}))
    if not cfg.eval.models and "models" not in overridden:
        models = {"base": cfg.model.pretrained}
        if "sft" in stages:
            models["sft"] = export_folder(stages["sft"])
        if "preference" in stages:
            models[stages["preference"].train.loss.name] = export_folder(stages["preference"])
        defaults["eval.models"] = models
        if cfg.eval.baseline is None and "baseline" not in overridden and "sft" in models:
            defaults["eval.baseline"] = "sft"
    if cfg.eval.max_pairs is None and "max_pairs" not in overridden:
        # the held-out pairs training's final eval read, so the report and the MLflow curve show one figure
        defaults["eval.max_pairs"] = start.train.eval_max_pairs
    evaluated = stage_config(start, {**defaults, **cfg.pipeline.eval}, "pipeline.eval")
    try:
        eval_baseline(evaluated)
    except ValueError as err:
        raise ValueError(f"pipeline.eval: {err}") from None
    needed = [*evaluated.eval.scorers, *(["clip"] if wants_style_eval(evaluated) else [])]
    from tpo_ray.eval.scorers import registry

    unweighted = sorted({s for s in needed if s not in evaluated.eval.scorer_weights and registry.needs_weights(s)})
    if unweighted:
        raise ValueError(f"pipeline.eval: eval.scorers {unweighted} have no weights in eval.scorer_weights (local "
                         "paths or s3://, never downloaded); set them, or eval.scorers: [] to skip reward scores"
                         + (" (the style eval needs clip's)" if wants_style_eval(evaluated) else ""))
    if "scene" in evaluated.eval.scorers:
        check_scene_prompts(evaluated)
    return evaluated


def check_scene_prompts(cfg: TPOConfig) -> None:
    """The scene verifier reads prompts of the scene grammar only: any other prompt fails here, before any
    image is sampled, not at scoring after all of them are."""
    from tpo_ray.eval.prompt_sets import eval_prompts
    from tpo_ray.world.scenes import parse_caption

    prompts = eval_prompts(cfg)
    outside = [p.text for p in prompts if parse_caption(p.text) is None]
    if outside:
        raise ValueError(f"pipeline.eval: eval.scorers has scene, which reads prompts of the scene grammar, but "
                         f"{len(outside)} of eval.prompts={cfg.eval.prompts!r} are not, e.g. {outside[0]!r}; use "
                         "eval.prompts: scenes, or drop scene from eval.scorers")


def wants_style_eval(cfg: TPOConfig) -> bool:
    """Style reproduction is measured when the prompts request styles: the packaged `styles` set, or
    the user's own `eval.styles`."""
    return cfg.eval.prompts == "styles" or bool(cfg.eval.styles)


def export_folder(cfg: TPOConfig) -> str:
    """Where `run_export` writes this config's pipeline."""
    return cfg.export.output or join(cfg.output_dir, "export")


def _exported(cfg: TPOConfig, checkpoint: str) -> bool:
    """The export folder already holds this checkpoint exported with these settings (`export_identity`)."""
    from tpo_ray.export import EXPORT_RECORD, export_identity

    record = Path(export_folder(cfg)) / EXPORT_RECORD
    return record.is_file() and json.loads(record.read_text()) == export_identity(cfg, checkpoint)


def train_figure(metrics: dict[str, Any]) -> str:
    figure = f"step {metrics.get('step')}, loss {metrics.get('train/loss', float('nan')):.4f}"
    if "val/model_acc" in metrics:
        figure += f", caption acc {metrics['val/model_acc']:.3f}"
    if "val/ref_acc" in metrics:
        figure += f" (reference {metrics['val/ref_acc']:.3f})"
    return figure


def run_pipeline(cfg: TPOConfig, on_stage: Callable[[StageRecord], None] = lambda record: None) -> PipelineResult:
    """Every stage of `cfg.pipeline.stages` in order; `on_stage` hears about each as it finishes."""
    from tpo_ray.cache.job import run_cache
    from tpo_ray.export import run_export
    from tpo_ray.negatives.job import run_negatives
    from tpo_ray.train.driver import run_train
    from tpo_ray.tune.sweep import run_tune, tune_figure

    start = time.perf_counter()
    configs = stage_configs(cfg)
    result = PipelineResult(cfg.output_dir)
    if not is_uri(cfg.output_dir):
        dump_config(cfg, Path(cfg.output_dir) / "config.yaml")
        for name, stage_cfg in configs.items():
            if name not in ("negatives", "report"):  # named by what they train: sft.yaml, tdpo.yaml, tune.yaml
                file = name if name in ("tune", "eval") else stage_cfg.train.loss.name
                dump_config(stage_cfg, Path(cfg.output_dir) / "configs" / f"{file}.yaml")

    def record(name: str, began: float, figure: str, output: str | Path, value: Any) -> None:
        result.results[name] = value
        result.stages.append(StageRecord(name, time.perf_counter() - began, figure, str(output)))
        on_stage(result.stages[-1])

    if "negatives" in configs:
        began = time.perf_counter()
        neg = run_negatives(configs["negatives"])
        record("negatives", began, f"{neg.stats['triplets']} triplets for {neg.stats['rows_accepted']}/"
               f"{neg.stats['rows_in']} captions, {neg.stats['rows_quarantined']} quarantined", neg.output, neg)
    for name in ("sft", "preference"):
        if name not in configs:
            continue
        stage_cfg = configs[name]
        label = stage_cfg.train.loss.name.upper()
        began = time.perf_counter()
        cache = run_cache(stage_cfg)
        rows = cache.manifest["rows"]
        record(f"cache ({label})", began, f"{rows['train']} train + {rows['val']} held-out "
               f"{cache.manifest['kind']} examples", cache.directory, cache)
        began = time.perf_counter()
        trained = run_train(stage_cfg)
        record(f"train {label}", began, train_figure(trained.metrics), trained.checkpoint, trained)
        began = time.perf_counter()
        if _exported(stage_cfg, trained.checkpoint):
            record(f"export ({label})", began, "already exported", stage_cfg.export.output, None)
            continue
        exported = run_export(stage_cfg)
        record(f"export ({label})", began, f"{exported.family} diffusers pipeline", exported.output, exported)
    if "tune" in configs:
        began = time.perf_counter()
        swept = run_tune(configs["tune"])
        record("tune", began, tune_figure(swept), swept.best_config or swept.sweep_dir, swept)
    if "eval" in configs:
        began = time.perf_counter()
        evaluated = run_eval(configs["eval"])
        record("eval", began, eval_figure(evaluated), evaluated["directory"], evaluated)
    if "report" in configs:
        from tpo_ray.eval.report import run_report

        began = time.perf_counter()
        report = run_report(configs["report"])
        record("report", began, f"{report.images} images, {report.plots} plots", report.index, report)
    result.seconds = time.perf_counter() - start
    return result


def run_eval(cfg: TPOConfig) -> dict[str, Any]:
    """Implicit preference (when the cache holds pairs), samples, and reward scores (when eval.scorers)."""
    from tpo_ray.eval.implicit_job import PAIRED, run_implicit
    from tpo_ray.eval.sample_job import eval_dir, run_sample
    from tpo_ray.eval.score_job import run_score

    out: dict[str, Any] = {"directory": eval_dir(cfg)}
    if cfg.data_kind() in PAIRED:
        out["implicit"] = run_implicit(cfg)
    out["sample"] = run_sample(cfg)
    if cfg.eval.scorers:
        out["score"] = run_score(cfg)
    if wants_style_eval(cfg):
        from tpo_ray.eval.style import run_style

        out["style"] = run_style(cfg)
    return out


def eval_figure(evaluated: dict[str, Any]) -> str:
    """e.g. "caption acc (held-out): base 0.48 [0.40, 0.56], tdpo 0.63 [0.55, 0.71]; implicit reward acc vs
    sft: tdpo 0.61 [0.53, 0.69]; 24 images, 2 scorers" (95% bootstrap intervals over held-out pairs)."""
    from tpo_ray.eval.report_format import interval, number

    parts = []
    if "implicit" in evaluated:
        summary = evaluated["implicit"].summary
        overall = {m: f["overall"] for m, f in summary["figures"].items()}
        parts.append("caption acc (held-out): " + ", ".join(
            f"{m} {number(o['acc'], 2)} {interval(o.get('acc_interval'), 2)}" for m, o in overall.items()))
        relative = {m: o for m, o in overall.items() if "implicit_acc" in o}
        if relative:
            parts.append(f"implicit reward acc vs {summary['reference']}: " + ", ".join(
                f"{m} {number(o['implicit_acc'], 2)} {interval(o.get('implicit_acc_interval'), 2)}"
                for m, o in relative.items()))
    sample = evaluated["sample"]
    images = f"{sample.sampled + sample.skipped} images"
    if "score" in evaluated:
        images += f", {len({s for cells in evaluated['score'].table.values() for s in cells})} scorers"
        if evaluated["score"].scene:
            parts.append("verifier all correct: " + ", ".join(
                f"{m} {t['attributes']['all']['accuracy']:.2f}" for m, t in evaluated["score"].scene.items()))
    if "style" in evaluated:
        parts.append("in the requested style: " + ", ".join(f"{m} {e['rate']:.2f}"
                                                            for m, e in evaluated["style"].table.items()))
    return "; ".join([*parts, images])


def win_rate_lines(score) -> list[str]:
    """One line per (model, scorer): its win rate over the baseline with the 95% interval (a cell without
    pairs, written as null, prints "-")."""
    from tpo_ray.eval.report_format import interval, number

    return [f"{scorer} win rate of {model} over {score.baseline} {number(c.get('rate'), 2)} "
            f"{interval([c.get('low'), c.get('high')], 2)}"
            for model, cells in score.table.items() for scorer, c in cells.items()]
