"""`tpo-ray`: one command per pipeline stage. Parses arguments, calls `run_<stage>`, reports.

Every command takes `--config FILE` plus dotted overrides (`train.loss.beta=2000`); a bad config
prints one line naming the field and exits 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import typer
import yaml
from pydantic import BaseModel

from tpo_ray.config import ConfigError, TPOConfig, load_config
from tpo_ray.console import echo, log_file_for, plain_lines, quiet_session, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
T = TypeVar("T")

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (defaults run the CPU demo).")
OverridesArg = typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-6 train.loss.name=tkto.")
DebugOption = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")
VerboseOption = typer.Option(False, "--verbose", "-v",
                             help="Show every log line (Ray, workers, libraries) instead of one line per stage; "
                                  "without it they go to <output_dir>/logs/<stage>.log.")


@contextlib.contextmanager
def console_session(output_dir: str, stage: str, verbose: bool, debug: bool) -> Iterator[Path | None]:
    """A quiet console (full logs to `<output_dir>/logs/<stage>.log`) unless --verbose or the output is a URI."""
    log_file = None if verbose else log_file_for(output_dir, stage)
    if log_file is None:
        setup_logging(debug, verbose=True)
        yield None
        return
    from tpo_ray.ray_utils import shutdown_local_ray

    with quiet_session(log_file) as term:
        setup_logging(debug, verbose=False, console_stream=term)
        try:
            yield log_file
        finally:
            shutdown_local_ray()  # while the redirect holds: Ray's shutdown chatter goes to the file
    setup_logging(debug, verbose=True)


EXPECTED = (ConfigError, FileNotFoundError, FileExistsError, ImportError, ValueError, RuntimeError)
# Failures that wrap a worker's traceback in their text: the last line is the error itself.
WRAPPED = ("TrainingFailedError", "WorkerGroupError", "ControllerError", "RayTaskError", "TuneError")


def failure_lines(err: BaseException) -> list[str]:
    """At most 5 lines a person needs: the message, or for a wrapped worker failure its last line."""
    lines = plain_lines(str(err)) or [type(err).__name__]
    if any(name in type(err).__name__ for name in WRAPPED) or "Traceback (most recent call last)" in str(err):
        return [lines[-1].strip()]
    return lines[:5]


def run_reported(debug: bool, fn: Callable[[], T], log_file: Path | None = None) -> T:
    """Run a stage; failures become a few lines on stderr (--debug raises them with their traceback).

    Exit codes: 2 for a failure the message explains (bad config, missing file, refused input), 1 for
    anything else, 130 for Ctrl-C, which says how to continue: every stage resumes where it stopped.
    """
    try:
        return fn()
    except KeyboardInterrupt:
        if debug:
            raise
        echo("interrupted: rerun the same command to resume (finished shards, caches and checkpoints are kept)",
             err=True)
        raise typer.Exit(130) from None
    except Exception as err:
        if debug:
            raise
        lines = failure_lines(err)
        echo(f"error: {type(err).__name__}: {lines[0]}", err=True)
        for extra in lines[1:]:
            echo(f"       {extra}", err=True)
        where = f"full log: {_short(log_file)}; " if log_file is not None else ""
        if not isinstance(err, EXPECTED) or where:
            echo(f"       ({where}--debug shows the traceback)", err=True)
        raise typer.Exit(2 if isinstance(err, EXPECTED) else 1) from None


def load(config: Path | None, overrides: list[str] | None, debug: bool) -> TPOConfig:
    from tpo_ray.tracking import with_environment_uri

    return with_environment_uri(run_reported(debug, lambda: load_config(config, overrides or [])))


def run_stage(stage: str, config: Path | None, overrides: list[str] | None, debug: bool, verbose: bool,
              runner: Callable[[TPOConfig], T], describe: Callable[[T], str]) -> T:
    """What every stage command does: config (file + overrides), a quiet console, the stage, its line, one-line errors."""
    setup_logging(debug, verbose=True)
    cfg = load(config, overrides, debug)
    with console_session(cfg.output_dir, stage, verbose, debug) as log_file:
        result = run_reported(debug, lambda: runner(cfg), log_file)
        echo(describe(result))
        if log_file is not None:
            echo(f"full log: {_short(log_file)} (--verbose shows it here)")
    return result


def _short(path: str | Path) -> str:
    """A path relative to the working directory when it lies below it (what a person would type)."""
    text = str(path)
    if "://" in text:
        return text
    try:
        return str(Path(text).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):  # not below it, or the working directory itself is gone
        return text


def options_help(*sections: str) -> str:
    """Every option of the given config sections with type, default and description (for --help)."""
    lines = ["Options (dotted overrides or YAML keys):\n\n"]

    def walk(model_cls, prefix: str) -> None:
        for name, field in model_cls.model_fields.items():
            key = f"{prefix}{name}"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            shown = default.model_dump() if isinstance(default, BaseModel) else default
            lines.append(f"{key} = {shown!r}: {field.description or ''}\n\n")

    for section in sections:
        walk(TPOConfig.model_fields[section].annotation, f"{section}.")
    return "".join(lines)


@app.command("show-config")
def show_config(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
                debug: bool = DebugOption) -> None:
    """Print the fully resolved configuration (defaults + file + overrides) as YAML."""
    cfg = load(config, overrides, debug)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@app.command(epilog=options_help("negatives", "tracking"))
def negatives(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = OverridesArg,
    input: str | None = typer.Option(None, "--input", "-i", help="Captions: parquet, JSONL or HF datasets folder; local or s3://."),
    output: str | None = typer.Option(None, "--output", "-o", help="Output folder or s3:// URI."),
    editor: str | None = typer.Option(None, "--editor", help="rules | hf | vllm | openai (overrides negatives.editor)."),
    format: str | None = typer.Option(None, "--format", help="auto | parquet | jsonl | hf (overrides negatives.format; "
                                         "auto detects it from the files' content)."),
    debug: bool = DebugOption,
    verbose: bool = VerboseOption,
) -> None:
    """Edit each caption into minimally wrong negatives; resumable (rerun to continue)."""
    from tpo_ray.negatives.job import run_negatives

    def describe(result) -> str:
        s = result.stats
        return (f"negatives: {s['triplets']} triplets for {s['rows_accepted']}/{s['rows_in']} captions, "
                f"{s['rows_quarantined']} quarantined, {s['fallbacks']} fallbacks; "
                f"{result.shards_skipped}/{result.shards_total} shards were already done; {result.seconds:.1f} s "
                f"-> {_short(result.output)}")

    extra = [f"negatives.{k}={v}" for k, v in (("input", input), ("output", output), ("editor", editor),
                                                ("format", format)) if v]
    run_stage("negatives", config, (overrides or []) + extra, debug, verbose, run_negatives, describe)


@app.command(epilog=options_help("cache", "data", "model"))
def cache(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
          debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Encode images and captions once (VAE + text encoders) into a fingerprinted cache."""
    from tpo_ray.cache.job import run_cache

    def describe(result) -> str:
        rows = result.manifest["rows"]
        return (f"cache: {rows['train']} train + {rows['val']} val {result.manifest['kind']} examples "
                f"({'reused' if result.reused else f'built in {result.seconds:.1f} s'}) -> {_short(result.directory)}")

    run_stage("cache", config, overrides, debug, verbose, run_cache, describe)


@app.command(epilog=options_help("model", "train", "eval"))
def reference(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
              debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Precompute the reference model's errors on the cache (model.reference=precomputed): training then holds
    no reference U-Net, and every Tune trial reads the same errors. `tpo-ray train` also runs it when needed."""
    from tpo_ray.cache.reference_job import run_reference_stage

    def describe(result) -> str:
        done = (f"computed epochs {result.computed} in {result.seconds:.1f} s" if result.computed
                else "found, nothing to compute")
        return f"reference: {result.plan.epochs} epochs of reference errors ({done}) -> {_short(result.plan.directory)}"

    run_stage("reference", config, overrides, debug, verbose, run_reference_stage, describe)


@app.command(epilog=options_help("train", "model", "data", "eval", "tracking"))
def train(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
          debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Run one training stage (train.loss.name) with Ray Train; rerun the same command to resume."""
    from tpo_ray.train.driver import run_train

    def describe(result) -> str:
        shown = {k: v for k, v in result.metrics.items() if k.startswith(("train/loss", "train/implicit", "val/"))}
        return (f"train: {result.run_name} step {result.metrics.get('step')} "
                + " ".join(f"{k}={v:.4f}" for k, v in shown.items())
                + f"; {result.seconds:.1f} s -> {_short(result.checkpoint)}")

    run_stage("train", config, overrides, debug, verbose, run_train, describe)


@app.command(epilog=options_help("tune", "train", "data"))
def tune(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
         debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Sweep hyper-parameters (tune.search_space) with Ray Tune and ASHA; every trial is a full training
    run in MLflow; the best config goes to <output_dir>/tune/best.yaml. Rerun the same command to resume."""
    from tpo_ray.tune.sweep import run_tune, summary_table

    def describe(result) -> str:
        lines = [f"tune: {result.name}, {len(result.trials)} trials"
                 f"{' (resumed)' if result.resumed else ''} in {result.seconds:.1f} s -> {_short(result.sweep_dir)}",
                 summary_table(result.trials, result.metric)[1].rstrip()]
        if result.best is not None:
            params = " ".join(f"{k}={v}" for k, v in result.best.params.items())
            lines.append(f"best: trial {result.best.trial_id} {result.metric}={result.best.best:.4f} at step "
                         f"{result.best.best_step}: {params}")
            lines.append(f"train it: tpo-ray train --config {_short(result.best_config)}")
        return "\n".join(lines)

    run_stage("tune", config, overrides, debug, verbose, run_tune, describe)


@app.command(epilog=options_help("export", "model"))
def export(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
           debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Write the trained U-Net (LoRA merged) into a diffusers pipeline folder."""
    from tpo_ray.export import run_export

    def describe(result) -> str:
        return f"export: {result.family} pipeline from {_short(result.checkpoint)} -> {_short(result.output)}"

    run_stage("export", config, overrides, debug, verbose, run_export, describe)


eval_app = typer.Typer(help="Evaluate models: implicit preference on held-out pairs, samples of a prompt set, reward scores.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("implicit", epilog=options_help("eval"))
def eval_implicit(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
                  debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Implicit preference of every model in eval.models on the cache's held-out pairs (same timesteps and
    noise for each): accuracy and margin overall, by principle, timestep and edit count, and against
    eval.baseline. Models: exports or other pipelines, U-Net folders, or this run's checkpoints."""
    from tpo_ray.eval.implicit_job import run_implicit

    def describe(result) -> str:
        figures = result.summary["figures"]
        lines = [f"eval implicit: {result.pairs} held-out pairs" + (" (found)" if result.reused else "")
                 + f"; accuracy, mean margin, implicit accuracy against {result.summary['reference']}"]
        for model, entry in figures.items():
            o = entry["overall"]
            rel = f"  implicit {o['implicit_acc']:.3f}" if "implicit_acc" in o else ""
            lines.append(f"  {model:<12} acc {o['acc']:.3f}  margin {o['margin']:+.5f}{rel}")
        return "\n".join(lines) + f"\n-> {_short(result.directory)}/summary.json"

    run_stage("eval-implicit", config, overrides, debug, verbose, run_implicit, describe)


@eval_app.command("style", epilog=options_help("eval"))
def eval_style(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
               debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """How often each model's samples show the style their prompt asks for (eval.prompts: styles; the
    closest of eval.styles in CLIP space, with eval.scorer_weights.clip)."""
    from tpo_ray.eval.style import run_style

    def describe(result) -> str:
        lines = ["eval style: share of samples in the requested style"]
        for model, entry in result.table.items():
            lines.append(f"  {model:<12} {entry['rate']:.3f} of {entry['n']}  " + "  ".join(
                f"{s} {c['rate']:.2f}" for s, c in entry["by_style"].items()))
        return "\n".join(lines) + f"\n-> {_short(result.path)}"

    run_stage("eval-style", config, overrides, debug, verbose, run_style, describe)


@eval_app.command("sample", epilog=options_help("eval"))
def eval_sample(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
                debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Images for eval.prompts from every model in eval.models, the same seed per prompt for each model;
    rerun to continue (images already in the index are kept)."""
    from tpo_ray.eval.sample_job import run_sample

    def describe(result) -> str:
        return (f"eval sample: {result.sampled} images made, {result.skipped} already there, in "
                f"{result.seconds:.1f} s -> {_short(result.directory)}/samples")

    run_stage("eval-sample", config, overrides, debug, verbose, run_sample, describe)


@eval_app.command("score", epilog=options_help("eval"))
def eval_score(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
               debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Score the samples with eval.scorers (weights from eval.scorer_weights: local or s3://) and write each
    model's win rate over eval.baseline, per scorer, with bootstrap 95% intervals over prompts."""
    from tpo_ray.eval.score_job import run_score

    def describe(result) -> str:
        lines = [f"eval score: {result.images} images; win rate over {result.baseline} (95% interval), mean score"]
        for model, cells in result.table.items():
            lines.append(f"  {model:<12} " + "  ".join(
                f"{scorer} {c['rate']:.3f} [{c['low']:.3f}, {c['high']:.3f}] {c['mean_a']:.3f}"
                for scorer, c in cells.items()))
        return "\n".join(lines) + f"\n-> {_short(result.directory)}/winrates.json"

    run_stage("eval-score", config, overrides, debug, verbose, run_score, describe)


@app.command("style-data")
def style_data(
    input: Path = typer.Option(..., "--input", help="Parquet of rows with id, caption, the image column(s), and "
                               "(for triplets) a style column."),
    output: Path = typer.Option(..., "--output", help="Parquet to write: the training input (cache.input)."),
    layout: str = typer.Option("triplets", help="triplets: caption with its own style's phrase vs another's (TDPO, "
                               "TKTO); pairs: two images of one prompt, the preferred one first (dpo, mapo, rpo)."),
    phrase: str | None = typer.Option(None, help="pairs: the phrase put before every caption (default: the "
                                         "safety phrase with --preferred safe_image, else required)."),
    preferred: str = typer.Option("styled_image", help="pairs: the column of the preferred image."),
    other: str = typer.Option("image", help="pairs: the column of the other image."),
    seed: int = typer.Option(0, help="triplets: seed of the style each negative swaps to."),
    debug: bool = DebugOption,
) -> None:
    """Style or safety alignment data: a phrase before each caption turns rows into preference data
    (tpo_ray/data/style.py; style presets in STYLES). Rows that cannot be used (no id, caption or image,
    an unknown style) go to `<output>.quarantine.parquet` with their reason."""
    from collections import Counter

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tpo_ray.data.io import write_parquet_atomic
    from tpo_ray.data.quarantine import quarantine_table
    from tpo_ray.data.style import SAFETY_PHRASE, STYLES, prefixed_pairs, style_triplets

    quarantine_path = output.with_name(output.name.removesuffix(".parquet") + ".quarantine.parquet")

    def run() -> tuple[int, Counter]:
        if layout not in ("triplets", "pairs"):
            raise ValueError(f"--layout must be triplets or pairs, got {layout!r}")
        chosen = phrase or (SAFETY_PHRASE if preferred == "safe_image" else None)
        if layout == "pairs" and chosen is None:
            raise ValueError("--layout pairs needs --phrase (the style phrase put before each caption)")
        rows = pq.read_table(input).to_pylist()
        data = style_triplets(rows, STYLES, seed) if layout == "triplets" else \
            prefixed_pairs(rows, chosen, preferred, other)
        reasons = Counter(q["reason"] for q in data.quarantine)
        if not data.rows:
            known = f"; known styles: {sorted(STYLES)}" if layout == "triplets" else ""
            raise ValueError(f"no row of {input} could be used ({dict(reasons)}){known}")
        write_parquet_atomic(pa.Table.from_pylist(data.rows), str(output))
        write_parquet_atomic(quarantine_table(data.quarantine), str(quarantine_path))
        return len(data.rows), reasons

    setup_logging(debug, verbose=True)
    count, reasons = run_reported(debug, run)
    echo(f"style-data: {count} {layout} rows -> {_short(output)}")
    if reasons:
        echo(f"style-data: {sum(reasons.values())} rows quarantined ({', '.join(f'{k} {v}' for k, v in reasons.items())})"
             f" -> {_short(quarantine_path)}")


world_app = typer.Typer(help="The scene world: pretrain its base model, verify an image against a scene prompt.",
                        no_args_is_help=True)
app.add_typer(world_app, name="world")


@world_app.command("pretrain")
def world_pretrain(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the SD1.5-layout base model."),
    overrides: list[str] | None = typer.Argument(None, help="Settings, e.g. seed=1 unet_steps=6000 (PretrainConfig "
                                                 "in tpo_ray/world/pretrain.py)."),
    debug: bool = DebugOption,
) -> None:
    """Pretrain the world's base model on rendered scenes (seeded; the shipped one: tpo_ray/world/weights/README.md).
    A rerun into the same folder reuses its trained autoencoder."""
    import json

    from tpo_ray.config import apply_overrides
    from tpo_ray.world.pretrain import PretrainConfig, run_pretrain

    setup_logging(debug, verbose=True)

    def run() -> dict:
        try:
            cfg = PretrainConfig(**apply_overrides({}, overrides or []))
        except ValueError as err:
            raise ConfigError(f"world pretrain: {err}") from None
        return run_pretrain(cfg, output, progress=echo)

    manifest = run_reported(debug, run)
    echo(json.dumps({k: v for k, v in manifest.items() if k != "settings"}, indent=1))


@world_app.command("verify")
def world_verify(image: Path = typer.Argument(..., help="An image file."),
                 prompt: str = typer.Argument(..., help="Its prompt, in the scene grammar."),
                 debug: bool = DebugOption) -> None:
    """What the scene verifier reads from an image, attribute by attribute, against the prompt."""
    from PIL import Image

    from tpo_ray.world.verifier import verify

    setup_logging(debug, verbose=True)
    verdict = run_reported(debug, lambda: verify(Image.open(image).convert("RGB"), prompt))
    for name, right in verdict.right.items():
        echo(f"{name:<11} {'right' if right else 'WRONG'}  read {verdict.read[name] or '(nothing)'}")
    echo(f"all correct: {verdict.all_correct}")


@app.command(epilog=options_help("eval"))
def report(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
           debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """One HTML folder from the eval outputs (win rates, implicit preference, correlation, training curves
    from MLflow, image grids, configs): open <eval.output>/report/index.html in a browser."""
    from tpo_ray.eval.report import run_report

    def describe(result) -> str:
        gaps = f"; not found: {', '.join(result.missing)}" if result.missing else ""
        return f"report: {result.images} images, {result.plots} plots{gaps}\n-> {_short(result.index)}"

    run_stage("report", config, overrides, debug, verbose, run_report, describe)


@app.command(epilog=options_help("pipeline", "train"))
def pipeline(config: Path | None = ConfigOption, overrides: list[str] | None = OverridesArg,
             debug: bool = DebugOption, verbose: bool = VerboseOption) -> None:
    """Run a recipe's stages in order (pipeline.stages: negatives, sft, preference, tune); every stage config is
    checked first, and running the same command again continues where it stopped."""
    from tpo_ray.pipeline import run_pipeline

    def run(cfg: TPOConfig):
        echo(f"pipeline: {' -> '.join(cfg.pipeline.stages)}, outputs under {_short(cfg.output_dir)}/")
        return run_pipeline(cfg, on_stage=lambda r: echo(f"  {r.name:<16} {r.seconds:6.1f} s  {r.figure}  "
                                                         f"{_short(r.output)}"))

    def describe(result) -> str:
        return f"pipeline: {len(result.stages)} stages in {result.seconds:.1f} s -> {_short(result.output_dir)}/"

    run_stage("pipeline", config, overrides, debug, verbose, run, describe)


@app.command()
def demo(
    output: Path = typer.Option(Path("demo-output"), "--output", "-o", help="Folder for every demo output."),
    config: Path | None = ConfigOption,
    overrides: list[str] | None = OverridesArg,
    debug: bool = DebugOption,
    verbose: bool = VerboseOption,
) -> None:
    """Run the whole pipeline on generated data and tiny models, on local CPU."""
    from tpo_ray.demo import demo_config, run_demo

    setup_logging(debug, verbose=True)
    if config:
        cfg = load(config, overrides, debug)
    else:
        cfg = run_reported(debug, lambda: demo_config(output, overrides or []))
    echo(f"tpo-ray demo: generated data -> negatives -> cache -> SFT -> export -> TDPO -> export -> Tune sweep "
         f"-> eval -> report, "
         f"outputs under {_short(cfg.output_dir)}/")
    with console_session(cfg.output_dir, "demo", verbose, debug) as log_file:
        result = run_reported(debug, lambda: run_demo(
            cfg, on_stage=lambda r: echo(f"  {r.name:<16} {r.seconds:6.1f} s  {r.figure}")), log_file)
        echo(demo_summary(result, cfg, log_file))


def demo_summary(result, cfg: TPOConfig, log_file: Path | None) -> str:
    """The closing table: each stage, its time, its figure and its output; then where to look next."""
    from tpo_ray.pipeline import win_rate_lines
    from tpo_ray.tracking import tracking_uri

    rows = [(r.name, f"{r.seconds:.1f} s", r.figure, _short(r.output)) for r in result.stages]
    header = ("stage", "time", "result", "output")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    line = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()  # noqa: E731
    uri = tracking_uri(cfg.tracking, cfg.output_dir)
    tdpo = result.tdpo.metrics
    parts = ["", line(header), line(tuple("-" * w for w in widths)), *map(line, rows), "",
             f"TDPO held-out preference accuracy {tdpo.get('val/model_acc', float('nan')):.3f} "
             f"(SFT model {tdpo.get('val/ref_acc', float('nan')):.3f}), implicit_acc "
             f"{tdpo.get('val/implicit_acc', float('nan')):.3f}",
             f"demo finished in {result.seconds:.1f} s; outputs under {_short(result.output_dir)}/",
             f"MLflow runs:  mlflow ui --backend-store-uri {uri}",
             f"rerun a stage: tpo-ray train --config {_short(Path(cfg.output_dir) / 'configs' / 'tdpo.yaml')}"]
    if result.tune is not None and result.tune.best_config:
        parts.append(f"best of the sweep: tpo-ray train --config {_short(result.tune.best_config)}")
    trained = cfg.train.loss.name
    if result.eval is not None and "implicit" in result.eval:
        figures = result.eval["implicit"].summary["figures"]
        if trained in figures and "sft" in figures:
            mine, sft = figures[trained]["by_principle"], figures["sft"]["by_principle"]
            parts.append(f"{trained.upper()} held-out acc by principle (SFT): " + ", ".join(
                f"{p} {v['acc']:.3f} ({sft[p]['acc']:.3f})" for p, v in mine.items() if p in sft))
    score = result.eval.get("score") if result.eval is not None else None
    if score is not None and score.scene:
        implicit = result.eval["implicit"].summary["figures"] if "implicit" in result.eval else {}
        parts += verifier_table(score.scene, implicit)
    lines = [line for line in (win_rate_lines(score) if score is not None else []) if f" of {trained} over" in line]
    if lines:
        parts.append("win rates: " + "; ".join(lines))
    if result.report is not None:
        parts.append(f"report:       {_short(result.report.index)} (open it in a browser)")
    if log_file is not None:
        parts.append(f"full log:     {_short(log_file)} (--verbose shows it here)")
    return "\n".join(parts)


def verifier_table(scene: dict, implicit: dict) -> list[str]:
    """The scene verifier's accuracy per model (columns) by attribute (rows) with 95% intervals, and the
    held-out implicit preference accuracy of the same models beside it."""
    from tpo_ray.world.scenes import ATTRIBUTES, chance

    models = list(scene)
    first = scene[models[0]]
    rows = [(name, [f"{c['accuracy']:.2f} [{c['interval'][0]:.2f}, {c['interval'][1]:.2f}]"
                    for c in (scene[m]["attributes"][name] for m in models)]) for name in first["attributes"]]
    rows.append(("implicit acc", [f"{implicit[m]['overall']['acc']:.3f}" if m in implicit else "-" for m in models]))
    width = max(len(c) for _, cells in rows for c in [*cells, *models])
    guess = ", ".join(f"{a} {chance(a):.3f}".rstrip("0") for a in ATTRIBUTES)
    return ["", f"verifier accuracy on {first['n']} images of held-out scene prompts per model (95% intervals); "
            f"chance: {guess}",
            ("  " + " " * 14 + "".join(m.ljust(width + 2) for m in models)).rstrip(),
            *("  " + (("all correct" if name == "all" else name).ljust(14)
                      + "".join(c.ljust(width + 2) for c in cells)).rstrip() for name, cells in rows)]


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
