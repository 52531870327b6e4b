"""`run_report` (`tpo-ray report`): one static HTML folder a person opens in a browser.

    <eval.output>/report/index.html        the page (no script, no network: opens from a file or a bucket)
    <eval.output>/report/images/...        the sampled images it shows (copied, so the folder stands alone)
    <eval.output>/report/plots/*.png       win rates with intervals, caption accuracy by principle and
                                           timestep, reward against caption accuracy, training curves
    (and the style reproduction table when `tpo-ray eval style` ran)

The page follows the config, not the folder: it shows the models (`eval.models`), prompts
(`eval_prompts`) and scorers (`eval.scorers`) this config compares, and names what it left out of the
eval's files (an earlier eval's models, another baseline's win rates). A header above the fold says
what was compared and how (prompt set and counts, sampling settings per model family, scorers and their
weights, the baseline, the held-out pairs) and warns when a model or scorer is test-scale
(`report_header`). A part that was not run is named as missing, never faked; a sample image that is
missing or unreadable is listed, not fatal. Training curves come from the MLflow store the config
tracks to (`report_curves`).

The folder is built in a staging folder next to it and swapped in whole (under `eval_lock`), so a kill,
a full disk or a failed plot leaves the previous report, never half of one. It is also logged to MLflow
as an artifact (`report/`) of a run named "report".
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, is_uri, join, swapped_folder
from tpo_ray.eval import report_sections as sections
from tpo_ray.eval.report_curves import Curves, training_curves
from tpo_ray.eval.report_format import CAPTION_ACC
from tpo_ray.eval.report_header import FAMILY_NAMES, model_facts, millions, scorer_test_scale
from tpo_ray.eval.report_sections import e, file_name, verdict_line  # noqa: F401 (the report's public helpers)
from tpo_ray.eval.sample_job import current_index, eval_baseline, eval_dir, eval_models, read_index
from tpo_ray.eval.score_job import read_scores

log = logging.getLogger(__name__)


@dataclass
class ReportResult:
    index: str  # the page
    images: int
    plots: int
    missing: list[str] = field(default_factory=list)  # parts of the eval not found (named on the page too)
    seconds: float = 0.0
    broken: list[str] = field(default_factory=list)  # sample images missing or unreadable (listed on the page)
    test_scale: list[str] = field(default_factory=list)  # test-scale models and scorers (warned about on top)
    left_out: list[str] = field(default_factory=list)  # what the eval's files hold that this config does not compare


def report_dir(cfg: TPOConfig) -> str:
    return join(eval_dir(cfg), "report")


def _read_json(path: str) -> Any | None:
    fs, p = filesystem_for(path)
    return json.loads(fs.cat(p)) if fs.exists(p) else None


# --- what the config compares, out of what the eval folder holds ---------------------------------------

def filter_winrates(winrates: dict[str, Any] | None, models: list[str], scorers: list[str], baseline: str,
                    current: dict[str, dict[str, Any]] | None = None,
                    prompts: tuple[str, int | None] | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """`winrates.json` cut to the config's models and scorers (either layout: with or without
    `by_category`, `means` and `settings`); None when it compares against another baseline or other
    prompts. With `settings` recorded, a scorer whose stamp or options differ from today's (`current`:
    scorer -> {stamp, options}) is left out too."""
    if not winrates:
        return None, []
    if winrates.get("baseline") != baseline:
        return None, [f"winrates.json compares against {winrates.get('baseline')!r}, this config against "
                      f"{baseline!r}: rerun tpo-ray eval score"]
    settings = winrates.get("settings") if isinstance(winrates.get("settings"), dict) else {}
    if prompts is not None and "prompts" in settings and (settings["prompts"], settings.get("max_prompts")) != prompts:
        return None, [f"winrates.json is over eval.prompts={settings['prompts']!r} (max_prompts "
                      f"{settings.get('max_prompts')}), this config's are {prompts[0]!r} ({prompts[1]}): rerun "
                      "tpo-ray eval score"]
    notes = [f"win rates of {m!r} (not in eval.models)" for m in winrates["models"] if m not in models]
    notes += [f"win rates by {s} (not in eval.scorers)" for s in sorted({s for c in winrates["models"].values()
                                                                        for s in c} - set(scorers))]
    recorded = settings.get("scorers") if isinstance(settings.get("scorers"), dict) else {}
    changed = [s for s in scorers if current and s in recorded and s in current
               and (recorded[s].get("stamp"), recorded[s].get("options")) != (current[s]["stamp"], current[s]["options"])]
    notes += [f"win rates by {s} (scored with other weights or options: rerun tpo-ray eval score)" for s in changed]
    scorers = [s for s in scorers if s not in changed]

    def cut(by_model: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {m: {s: c for s, c in cells.items() if s in scorers} for m, cells in by_model.items() if m in models}

    out = {**winrates, "models": cut(winrates["models"])}
    if isinstance(winrates.get("means"), dict):
        out["means"] = cut(winrates["means"])
    if isinstance(winrates.get("by_category"), dict):
        out["by_category"] = {cat: cut(by_model) for cat, by_model in winrates["by_category"].items()}
    return out, notes


def filter_implicit(summary: dict[str, Any] | None, models: dict[str, str],
                    directory: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The implicit summary cut to the config's models, each evaluated from the same source (and, when the
    summary records them, the same weight files); re-summarised from the stored errors when it predates
    the bootstrap intervals."""
    if not summary:
        return None, []
    from tpo_ray.eval.implicit_job import SUMMARY_FORMAT, _stamp, read_errors, summarise

    figures = summary["figures"]
    if summary.get("format") != SUMMARY_FORMAT:
        try:
            figures = summarise(read_errors(join(directory, "implicit")), summary["reference"])
        except (OSError, ValueError, KeyError) as err:
            log.warning("report: implicit summary without intervals, errors not re-read (%s)", err)
    stamps = summary.get("stamps", {})
    kept, notes = {}, []
    for name, entry in figures.items():
        if name not in models:
            notes.append(f"held-out figures of {name!r} (not in eval.models)")
        elif summary["models"].get(name) != models[name] or (name in stamps and stamps[name] != _stamp(models[name])):
            notes.append(f"held-out figures of {name!r} (computed for other weights: rerun tpo-ray eval implicit)")
        else:
            kept[name] = entry
    return ({**summary, "figures": kept} if kept else None), notes


def correlation_points(implicit: dict[str, Any] | None, scores: list[dict[str, Any]]) -> dict[str, list]:
    """Per scorer: (model, caption accuracy, mean reward) over the models both evals cover (the paper's
    regression of reward on implicit preference across checkpoints)."""
    if not implicit or not scores:
        return {}
    figures = implicit["figures"]
    means: dict[tuple[str, str], list[float]] = {}
    for r in scores:
        means.setdefault((r["scorer"], r["model"]), []).append(r["score"])
    out: dict[str, list] = {}
    for (scorer, model), values in sorted(means.items()):
        if model in figures:
            out.setdefault(scorer, []).append((model, figures[model]["overall"]["acc"], sum(values) / len(values)))
    return out


def _current_scores(cfg: TPOConfig, keys: set[tuple], notes: list[str]) -> tuple[list[dict[str, Any]], dict | None]:
    """(the scores this config's win rates are over, {scorer: {stamp, options}} today), from
    `score_job.current_scores`; where the scorers' weights cannot be read now, the scores of the current
    images by the configured scorers (and a note)."""
    from tpo_ray.eval.score_job import current_scores, scorer_setups

    try:
        setups = {s.name: {"stamp": s.stamp, "options": s.options} for s in scorer_setups(cfg)}
        return current_scores(cfg), setups
    except (OSError, ValueError) as err:
        notes.append(f"scorer weights not checked ({err}): scores of the current images shown as stored")
    return [r for r in read_scores(eval_dir(cfg)) if (r["model"], r["prompt_id"], r["k"]) in keys
            and r["scorer"] in cfg.eval.scorers], None


@dataclass
class ReportInputs:
    models: dict[str, str]
    baseline: str
    index: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    implicit: dict[str, Any] | None
    winrates: dict[str, Any] | None
    scene: dict[str, Any] | None
    style: dict[str, Any] | None
    curves: Curves
    prompts: int | None  # prompts the config compares (None: the prompt set could not be read)
    left_out: list[str]


def report_inputs(cfg: TPOConfig) -> ReportInputs:
    """Every eval output, cut to what this config compares."""
    from tpo_ray.eval.prompt_sets import eval_prompts

    directory, models, baseline = eval_dir(cfg), eval_models(cfg), eval_baseline(cfg)
    left_out: list[str] = []
    try:
        prompts: int | None = len(eval_prompts(cfg))
        index = current_index(cfg)
    except (OSError, ValueError) as err:  # the prompt file moved: show the models' samples, say so
        prompts, index = None, [r for r in read_index(directory) if r["model"] in models]
        left_out.append(f"eval.prompts could not be read ({err}): samples of every prompt shown")
    others = Counter(r["model"] for r in read_index(directory) if r["model"] not in models)
    left_out += [f"{n} samples of {m!r} (not in eval.models)" for m, n in sorted(others.items())]
    keys = {(r["model"], r["prompt_id"], r["k"]) for r in index}
    scores, current = _current_scores(cfg, keys, left_out)
    winrates, notes = filter_winrates(_read_json(join(directory, "winrates.json")), list(models),
                                      list(cfg.eval.scorers), baseline, current, (cfg.eval.prompts, cfg.eval.max_prompts))
    implicit, more = filter_implicit(_read_json(join(directory, "implicit", "summary.json")), models, directory)
    scene = _read_json(join(directory, "scene.json")) if "scene" in cfg.eval.scorers else None
    if scene is not None:
        scene = {"models": {m: t for m, t in scene["models"].items() if m in models},
                 "verdicts": [v for v in scene["verdicts"] if (v["model"], v["prompt_id"], v["k"]) in keys]}
    style = _read_json(join(directory, "style.json"))
    if style is not None:
        style = {**style, "models": {m: t for m, t in style["models"].items() if m in models}}
    return ReportInputs(models, baseline, index, scores, implicit, winrates, scene, style, training_curves(cfg),
                        prompts, left_out + notes + more)


# --- the header ---------------------------------------------------------------------------------------

def sampling_text(settings: dict[str, Any]) -> str:
    """The sampling settings an index row records (what made the image), in words."""
    size = settings.get("resolution")
    return (f"{settings.get('scheduler') or 'scheduler not recorded'}, {settings.get('num_inference_steps')} steps, "
            f"guidance {settings.get('guidance_scale')}, {size}x{size} px, {settings.get('dtype', '?')}")


def configured_sampling(cfg: TPOConfig, family: str | None, scheduler: str | None) -> str:
    """The settings this config would sample with (no image sampled yet)."""
    ec = cfg.eval
    guidance = (ec.guidance(family) if family else ec.guidance_scale if ec.guidance_scale is not None
                else "by family (SD1.5 7.5, SDXL 5.0)")
    return (f"{scheduler or 'the pipeline scheduler'}, {ec.num_inference_steps} steps, guidance {guidance}, "
            f"{cfg.data.resolution}x{cfg.data.resolution} px (configured; no current image)")


def header_facts(cfg: TPOConfig, inputs: ReportInputs) -> tuple[list[tuple[str, str]], list[str]]:
    """(term, HTML) lines of the header, and the test-scale warnings."""
    ec = cfg.eval
    facts = {name: model_facts(cfg, source) for name, source in inputs.models.items()}
    warnings = [f.test_scale for f in facts.values() if f.test_scale]
    weights = {s: ec.scorer_weights.get(s) for s in ec.scorers}
    warnings += [w for w in (scorer_test_scale(s, p) for s, p in weights.items()) if w]
    per_model = Counter(r["model"] for r in inputs.index)
    sampled = len({r["prompt_id"] for r in inputs.index})
    prompts = f"{inputs.prompts} prompts" if inputs.prompts is not None else "prompts not readable"
    lines = [("Prompt set", f"{e(ec.prompts)}: {prompts}" + (f" (eval.max_prompts={ec.max_prompts})" if ec.max_prompts
                                                             else "") + f", {sampled} sampled, "
              f"{ec.images_per_prompt} image(s) per prompt and model")]
    lines.append(("Images per model", ", ".join(f"{e(m)} {per_model.get(m, 0)}" for m in inputs.models)))
    sampling: dict[str, list[str]] = {}
    for name, f in facts.items():
        recorded = sorted({r["settings"] for r in inputs.index if r["model"] == name and r.get("settings")})
        texts = [sampling_text(json.loads(x)) for x in recorded] or [configured_sampling(cfg, f.family, f.scheduler)]
        for text in texts:
            sampling.setdefault(text, []).append(name)
    lines.append(("Sampling", "<br>".join(f"{e(text)} <small>({e(', '.join(names))})</small>"
                                          for text, names in sampling.items())))
    lines.append(("Models", "; ".join(
        f"<b>{e(n)}</b>: {e(f.source)}" + (f" ({FAMILY_NAMES.get(f.family, f.family)}" if f.family else " (")
        + (f", U-Net {millions(f.params)} parameters)" if f.params else ")") for n, f in facts.items())))
    settings = (inputs.winrates or {}).get("settings") or {}
    recorded = settings.get("scorers") if isinstance(settings.get("scorers"), dict) else {}
    scorer_text = []
    for s, path in weights.items():
        text = f"<b>{e(s)}</b>: {e(path) if path else 'no weights (a program)'}"
        if s == "hpsv2":
            text += f" (HPS {e(ec.hps_version)}, antialias {'on' if ec.hps_antialias else 'off'})"
        if s in recorded:
            r = recorded[s]
            text += (f" <small>[scored with stamp {e(str(r.get('stamp'))[:12])}"
                     + (f", options {e(json.dumps(r['options'], sort_keys=True))}" if r.get("options") else "") + "]</small>")
        scorer_text.append(text)
    ties = f"; ties {e(settings['ties'])}, {e(settings.get('interval', ''))}" if "ties" in settings else ""
    lines.append(("Scorers", ("; ".join(scorer_text) or "none (eval.scorers is empty)") + ties))
    baseline = f"<b>{e(inputs.baseline)}</b> (win rates are over it"
    if inputs.implicit:
        baseline += f"; implicit reward accuracy against {e(inputs.implicit['reference'])}"
    lines.append(("Baseline", baseline + ")"))
    if inputs.implicit:
        s = inputs.implicit
        lines.append(("Held-out pairs", f"{s['pairs']} pairs x {len(s['timesteps'])} timesteps x {s['noise_draws']} "
                      f"draws ({CAPTION_ACC}; training's final eval read {s.get('train_eval_pairs', '?')})"))
    configs = None if is_uri(cfg.output_dir) else Path(cfg.output_dir) / "configs"
    files = sorted(f.name for f in configs.glob("*.yaml")) if configs is not None and configs.is_dir() else []
    if files:
        lines.append(("Stage configs", f"{e(configs)}/: {e(', '.join(files))}"))
    return lines, warnings


# --- the page -----------------------------------------------------------------------------------------

def build_report(cfg: TPOConfig, out: Path) -> ReportResult:
    """Write the report folder into `out` (local) from the eval outputs of `cfg`."""
    start = time.perf_counter()
    inputs = report_inputs(cfg)
    missing = [what for what, value in (
        ("implicit preference (tpo-ray eval implicit)", inputs.implicit),
        ("samples (tpo-ray eval sample)", inputs.index),
        ("reward scores (tpo-ray eval score)", inputs.winrates if cfg.eval.scorers else True),
        *([("scene verifier (tpo-ray eval score with eval.scorers: [scene])", inputs.scene and inputs.scene["models"])]
          if "scene" in cfg.eval.scorers else []),
        ("training curves (no training run in the MLflow experiment"
         + (f": {inputs.curves.error}" if inputs.curves.error else "") + ")", inputs.curves.panels)) if not value]
    page = sections.Page(out)
    if inputs.scene and inputs.scene["models"]:
        sections.scene_section(page, inputs.scene)
    if inputs.winrates:
        sections.win_rate_section(page, inputs.winrates, inputs.scores)
    if inputs.implicit:
        sections.implicit_section(page, inputs.implicit)
    if inputs.style and inputs.style["models"]:
        sections.style_section(page, inputs.style)
    points = correlation_points(inputs.implicit, inputs.scores)
    if points:
        sections.correlation_section(page, points)
    if inputs.curves.panels:
        sections.curves_section(page, inputs.curves)
    if inputs.index:
        sections.samples_section(page, inputs.index, inputs.scores, cfg.eval.report_prompts, inputs.baseline,
                                 inputs.scene)
    facts, warnings = header_facts(cfg, inputs)
    facts.append(("Eval folder", f"{e(eval_dir(cfg))}; made {time.strftime('%Y-%m-%d %H:%M:%S')}"))
    problems = ([f"{m}: not found" for m in missing] + [f"sample image missing or unreadable: {b}" for b in page.broken]
                + [f"left out: {n}" for n in inputs.left_out])
    html_text = (f"<!doctype html><html><head><meta charset='utf-8'><title>tpo_ray report: {e(cfg.output_dir)}"
                 f"</title><style>{sections.STYLE}</style></head><body>" + sections.header(facts, warnings, problems)
                 + "".join(page.sections) + "</body></html>")
    (out / "index.html").write_text(html_text, encoding="utf-8")
    return ReportResult(str(out / "index.html"), page.images, page.plots, missing, time.perf_counter() - start,
                        page.broken, warnings, inputs.left_out)


def run_report(cfg: TPOConfig) -> ReportResult:
    """Build the report next to the eval outputs, under the eval folder's lock (a bucket gets a copy of the
    finished folder, which replaces the old one only once it is complete)."""
    from tpo_ray.eval.lock import eval_lock
    from tpo_ray.tracking import tracking_run

    target = report_dir(cfg)
    with eval_lock(eval_dir(cfg), "report"):
        if is_uri(target):
            staging = Path(tempfile.mkdtemp(prefix="tpo_ray_report_"))
            try:
                result = build_report(cfg, staging)
                fs, p = filesystem_for(target)
                if fs.exists(p):
                    fs.rm(p, recursive=True)  # no image of an earlier eval is left behind
                fs.put(str(staging) + "/", p, recursive=True)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            result.index = join(target, "index.html")
        else:
            with swapped_folder(Path(target), "report") as staging:
                staging.mkdir()
                result = build_report(cfg, staging)
            result.index = str(Path(target) / "index.html")
    with tracking_run(cfg.tracking, cfg.output_dir, run_name="report", tags={"stage": "report"}) as tracker:
        if not is_uri(target):
            tracker.log_artifacts(target, "report")
    log.info("report: %d images, %d plots -> %s (%.1f s)%s", result.images, result.plots, result.index,
             result.seconds, f"; {len(result.broken)} images missing or unreadable" if result.broken else "")
    return result
