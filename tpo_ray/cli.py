"""`tpo-ray`: one command per pipeline stage. Parses arguments, calls `run_<stage>`, reports.

Every command takes `--config FILE` plus dotted overrides (`train.loss.beta=2000`); a bad config
prints one line naming the field and exits 2 (`--debug` shows the traceback). Importing this module
loads no torch, Ray or MLflow (`tpo-ray --help` answers at once): each command imports its stage.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, TypeVar, get_args

import typer
import yaml
from pydantic import BaseModel

from tpo_ray.config import (DEFAULT_LOSS, LOSS_CONFIGS, ConfigError, EditorName, InputFormat, TPOConfig, TrainConfig,
                            load_config)
from tpo_ray.console import echo, log_file_for, plain_lines, quiet_session, setup_logging

T = TypeVar("T")
_MARKUP = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")  # what rich would read as a style tag (rich.markup.escape)


def plain(text: str) -> str:
    """Text shown verbatim by typer's rich help: `[content, spatial]` would otherwise be read as markup and vanish."""
    return _MARKUP.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), text)


def help_text(doc: str) -> str:
    """A docstring as help: paragraphs kept, the line breaks inside them and the backticks dropped (the
    terminal wraps), so the first paragraph is the one clean line `tpo-ray --help` shows for a command."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return plain("\n\n".join(" ".join(p.replace("`", "").split()) for p in paragraphs))


APP_HELP = """Ray-distributed alignment of text-to-image diffusion models: one command per pipeline stage.

Every stage takes --config FILE plus dotted overrides (train.loss.beta=2000), and each stage's --help lists
its config options; a bad config prints one line naming the field and exits 2 (--debug shows the traceback)."""

app = typer.Typer(add_completion=False, no_args_is_help=True, help=help_text(APP_HELP))

# The options every stage shares, declared once.
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (defaults run the CPU demo).")]
Overrides = Annotated[list[str] | None, typer.Argument(
    help="Dotted overrides, e.g. train.lr=1e-6 train.loss.name=tkto (they win over the file).", show_default=False)]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Show every log line (Ray, workers, libraries) here; without it they go to "
    "logs/<stage>.log in the output folder and the terminal shows one line per stage.")]


def command(group: typer.Typer, name: str | None = None, sections: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Register a command with its docstring as clean help and, after it, the config options of `sections`."""

    def register(fn: T) -> T:
        epilog = options_help(*sections) if sections else None
        return group.command(name, help=help_text(fn.__doc__ or ""), epilog=epilog)(fn)

    return register


def _print_version(value: bool) -> None:
    if value:
        from tpo_ray import __version__

        echo(f"tpo-ray {__version__}")
        raise typer.Exit()


@app.callback()
def _app_options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print tpo-ray <version> and exit.")] = False,
) -> None:
    # A callback holds the options of `tpo-ray` itself; each stage is a command below.
    pass


@contextlib.contextmanager
def console_session(output_dir: str, stage: str, verbose: bool, debug: bool) -> Iterator[Path | None]:
    """A quiet console (full logs to `<output_dir>/logs/<stage>.log`) unless --verbose or the folder is a URI."""
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


EXPECTED = (ConfigError, FileNotFoundError, FileExistsError, PermissionError, ImportError, ValueError, RuntimeError)
# Ray's wrappers around the error raised in a task, an actor or a worker: their text holds the user's
# traceback, and their own last line is Ray's (Ray Data's ends on a retry hint), not the cause.
RAY_WRAPPERS = frozenset({"TrainingFailedError", "WorkerGroupError", "ControllerError", "RayTaskError", "TuneError",
                          "UserCodeException", "ActorDiedError", "RayActorError", "RaySystemError", "TaskCancelledError",
                          "ActorUnschedulableError", "WorkerCrashedError", "ObjectLostError"})
# A traceback's final line: `ValueError: ...`, `ray.exceptions.UserCodeException: ...`, `OSError: [Errno 28] ...`
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure)\w*)"
                             r"(?:\([\w, ]*\))?: (.+)$")


def is_ray_wrapper(err: BaseException) -> bool:
    return any(name in type(err).__name__ for name in RAY_WRAPPERS)


def cause_of(text: str) -> tuple[str, str] | None:
    """(exception name, message) of the last error line in a wrapped failure's text that is not one of
    Ray's wrappers: the error the user's code (or ours) raised inside the task, actor or worker."""
    found = None
    for line in plain_lines(text):
        match = _EXCEPTION_LINE.match(line.strip())
        if match and match.group(1) not in RAY_WRAPPERS and not line.strip().startswith("ray."):
            found = (match.group(1), match.group(2).strip())
    return found


def failure_lines(err: BaseException) -> tuple[str, list[str]]:
    """The error's name and at most 5 lines a person needs: its message, or for a failure inside Ray (a
    task, an actor, a Ray Data UDF, a Train worker) the error raised there, not Ray's wrapping."""
    text = str(err)
    if is_ray_wrapper(err) or "Traceback (most recent call last)" in text:
        cause = cause_of(text)
        if cause is not None:
            return cause[0], [cause[1]]
        lines = plain_lines(text) or [type(err).__name__]
        return type(err).__name__, [lines[-1].strip()]
    return type(err).__name__, (plain_lines(text) or [type(err).__name__])[:5]


def writable_folder(folder: str, field: str) -> None:
    """Create a stage's local output folder now, so one that cannot be written fails before any work,
    with one line naming the config field (not a traceback from the log redirect)."""
    if "://" in folder:
        return
    try:
        path = Path(folder).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".tpo_ray-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{field}={folder} cannot be written: {err.strerror or err} "
                          f"({err.filename or folder})") from None


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
        name, lines = failure_lines(err)
        echo(f"error: {name}: {lines[0]}", err=True)
        for extra in lines[1:]:
            echo(f"       {extra}", err=True)
        where = f"full log: {_short(log_file)}; " if log_file is not None else ""
        if not isinstance(err, EXPECTED) or where:
            echo(f"       ({where}--debug shows the traceback)", err=True)
        raise typer.Exit(2 if isinstance(err, EXPECTED) else 1) from None


def load(config: Path | None, overrides: list[str] | None, debug: bool) -> TPOConfig:
    from tpo_ray.tracking import with_environment_uri

    return with_environment_uri(run_reported(debug, lambda: load_config(config, overrides or [])))


def output_root(cfg: TPOConfig) -> str:
    """The folder whose `logs/` holds a stage's log: output_dir, where every stage writes by default."""
    return cfg.output_dir


def negatives_root(cfg: TPOConfig) -> str:
    """`tpo-ray negatives --output DIR` writes everything under DIR, its log too; else under output_dir."""
    return cfg.negatives.output or cfg.output_dir


def run_stage(stage: str, config: Path | None, overrides: list[str] | None, debug: bool, verbose: bool,
              runner: Callable[[TPOConfig], T], describe: Callable[[T], str],
              log_root: Callable[[TPOConfig], str] = output_root) -> T:
    """What every stage command does: config (file + overrides), a quiet console, the stage, its line, one-line errors."""
    setup_logging(debug, verbose=True)
    cfg = load(config, overrides, debug)
    root = log_root(cfg)
    run_reported(debug, lambda: writable_folder(root, "negatives.output" if root != cfg.output_dir else "output_dir"))
    with console_session(root, stage, verbose, debug) as log_file:
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
    """The root options and those of the given config sections for --help, one line each: `key = default: meaning`."""
    lines = ["Config options: YAML keys, or dotted overrides after the command (key = default: meaning).", "",
             *_option_lines(TPOConfig, "", nested=False)]
    for section in sections:
        lines += ["", *_option_lines(TPOConfig.model_fields[section].annotation, f"{section}.")]
    return "\n".join(lines)


def _option_line(key: str, default: str, meaning: str) -> str:
    return f"[bold]{key}[/bold] = {plain(default)}: {plain(meaning)}"


def _option_lines(model_cls: type[BaseModel], prefix: str, nested: bool = True) -> list[str]:
    """A model's options; with `nested`, those of its sub-models too (`train.scaling.num_workers`)."""
    lines = []
    for name, field in model_cls.model_fields.items():
        key = f"{prefix}{name}"
        if model_cls is TrainConfig and name == "loss":
            lines += _loss_option_lines(key, field.description or "")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            lines += _option_lines(field.annotation, key + ".") if nested else []
        else:
            lines.append(_option_line(key, _yaml_value(field.get_default(call_default_factory=True)),
                                      field.description or ""))
    return lines


def _loss_option_lines(key: str, description: str) -> list[str]:
    """`train.loss.name`, then each hyper-parameter once with the methods that take it (a field shared by
    several methods with one default and meaning is one line)."""
    lines = [_option_line(f"{key}.name", DEFAULT_LOSS, description)]
    takers: dict[tuple[str, str, str], list[str]] = {}
    for loss, cls in LOSS_CONFIGS.items():
        for name, field in cls.model_fields.items():
            if name != "name":
                default = _yaml_value(field.get_default(call_default_factory=True))
                takers.setdefault((name, default, field.description or ""), []).append(loss)
    for (name, default, meaning), losses in takers.items():
        lines.append(_option_line(f"{key}.{name}", f"{default} ({', '.join(losses)})", meaning))
    return lines


def _yaml_value(value: object) -> str:
    """A default as it would be written in YAML or an override (null, true, [a, b])."""
    shown = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    text = yaml.safe_dump(shown, default_flow_style=True, sort_keys=False, width=1 << 20).strip()
    return text.removesuffix("...").strip()


@command(app, "show-config")
def show_config(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False) -> None:
    """Print the fully resolved configuration (defaults + file + overrides) as YAML."""
    cfg = load(config, overrides, debug)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@command(app, sections=("negatives", "tracking"))
def negatives(
    config: ConfigFile = None,
    overrides: Overrides = None,
    input: str | None = typer.Option(None, "--input", "-i", help="Captions: parquet, JSONL or HF datasets folder; local or s3://."),
    output: str | None = typer.Option(None, "--output", "-o", help="Output folder or s3:// URI."),
    editor: str | None = typer.Option(None, "--editor", help=f"{' | '.join(get_args(EditorName))} (overrides "
                                      "negatives.editor)."),
    format: str | None = typer.Option(None, "--format", help=f"{' | '.join(get_args(InputFormat))} (overrides "
                                      "negatives.format; auto detects it from the files' content)."),
    debug: Debug = False,
    verbose: Verbose = False,
) -> None:
    """Edit each caption into minimally wrong negatives; resumable (rerun to continue)."""
    from tpo_ray.negatives.job import run_negatives
    from tpo_ray.negatives.quality import mix_line

    def describe(result) -> str:
        s = result.stats
        return (f"negatives: {s['triplets']} triplets for {s['rows_accepted']}/{s['rows_in']} captions, "
                f"{s['rows_quarantined']} quarantined, {s['fallbacks']} fallbacks; "
                f"{result.shards_skipped}/{result.shards_total} shards were already done; {result.seconds:.1f} s "
                f"-> {_short(result.output)}" + (f"\n{mix_line(s['principle_mix'])}" if s.get("principle_mix") else ""))

    extra = [f"negatives.{k}={v}" for k, v in (("input", input), ("output", output), ("editor", editor),
                                                ("format", format)) if v]
    run_stage("negatives", config, (overrides or []) + extra, debug, verbose, run_negatives, describe,
              log_root=negatives_root)


@command(app, sections=("cache", "data", "model",))
def cache(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
          verbose: Verbose = False) -> None:
    """Encode images and captions once (VAE + text encoders) into a fingerprinted cache."""
    from tpo_ray.cache.job import run_cache

    def describe(result) -> str:
        rows = result.manifest["rows"]
        return (f"cache: {rows['train']} train + {rows['val']} val {result.manifest['kind']} examples "
                f"({'reused' if result.reused else f'built in {result.seconds:.1f} s'}) -> {_short(result.directory)}")

    run_stage("cache", config, overrides, debug, verbose, run_cache, describe)


@command(app, sections=("model", "train", "eval",))
def reference(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
              verbose: Verbose = False) -> None:
    """Precompute the reference model's errors on the cache (for model.reference=precomputed).

    Training then holds no reference U-Net, and every Tune trial reads the same errors; `tpo-ray train`
    also runs it when needed."""
    from tpo_ray.cache.reference_job import run_reference_stage

    def describe(result) -> str:
        done = (f"computed epochs {result.computed} in {result.seconds:.1f} s" if result.computed
                else "found, nothing to compute")
        return f"reference: {result.plan.epochs} epochs of reference errors ({done}) -> {_short(result.plan.directory)}"

    run_stage("reference", config, overrides, debug, verbose, run_reference_stage, describe)


@command(app, sections=("train", "model", "data", "eval", "tracking",))
def train(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
          verbose: Verbose = False) -> None:
    """Run one training stage (train.loss.name) with Ray Train; rerun the same command to resume."""
    from tpo_ray.train.driver import run_train

    def describe(result) -> str:
        shown = {k: v for k, v in result.metrics.items() if k.startswith(("train/loss", "train/implicit", "val/"))}
        return (f"train: {result.run_name} step {result.metrics.get('step')} "
                + " ".join(f"{k}={v:.4f}" for k, v in shown.items())
                + f"; {result.seconds:.1f} s -> {_short(result.checkpoint)}")

    run_stage("train", config, overrides, debug, verbose, run_train, describe)


@command(app, sections=("tune", "train", "data",))
def tune(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
         verbose: Verbose = False) -> None:
    """Sweep hyper-parameters (tune.search_space) with Ray Tune and ASHA; rerun the same command to resume.

    Every trial is a full training run in MLflow; the best config goes to <output_dir>/tune/best.yaml."""
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


@command(app, sections=("export", "model",))
def export(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
           verbose: Verbose = False) -> None:
    """Write the trained U-Net (LoRA merged) into a diffusers pipeline folder."""
    from tpo_ray.export import run_export

    def describe(result) -> str:
        return f"export: {result.family} pipeline from {_short(result.checkpoint)} -> {_short(result.output)}"

    run_stage("export", config, overrides, debug, verbose, run_export, describe)


eval_app = typer.Typer(help="Evaluate models: implicit preference on held-out pairs, samples of a prompt set, reward scores.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@command(eval_app, "implicit", sections=("eval",))
def eval_implicit(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
                  verbose: Verbose = False) -> None:
    """Implicit preference of every model in eval.models on the cache's held-out pairs.

    The same timesteps and noise for each model: accuracy and margin overall, by principle, timestep and
    edit count, and against eval.baseline. Models: exports or other pipelines, U-Net folders, or this
    run's checkpoints."""
    from tpo_ray.eval.implicit_job import run_implicit

    def describe(result) -> str:
        figures = result.summary["figures"]
        lines = [f"eval implicit: {result.pairs} held-out pairs" + (" (found)" if result.reused else "")
                 + f"; caption accuracy, mean margin, implicit reward accuracy against {result.summary['reference']}"]
        for model, entry in figures.items():
            o = entry["overall"]
            rel = f"  implicit reward acc {o['implicit_acc']:.3f}" if "implicit_acc" in o else ""
            margin = o["margin"] + 0.0 if abs(o["margin"]) >= 5e-6 else 0.0  # never "-0.00000"
            lines.append(f"  {model:<12} caption acc {o['acc']:.3f}  margin {margin:+.5f}{rel}")
        return "\n".join(lines) + f"\n-> {_short(result.directory)}/summary.json"

    run_stage("eval-implicit", config, overrides, debug, verbose, run_implicit, describe)


@command(eval_app, "style", sections=("eval",))
def eval_style(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
               verbose: Verbose = False) -> None:
    """How often each model's samples show the style their prompt asks for.

    The prompts (eval.prompts) name styles; a sample's style is the closest of eval.styles in CLIP space
    (weights: eval.scorer_weights.clip)."""
    from tpo_ray.eval.style import run_style

    def describe(result) -> str:
        lines = ["eval style: share of samples in the requested style"]
        for model, entry in result.table.items():
            lines.append(f"  {model:<12} {entry['rate']:.3f} of {entry['n']}  " + "  ".join(
                f"{s} {c['rate']:.2f}" for s, c in entry["by_style"].items()))
        return "\n".join(lines) + f"\n-> {_short(result.path)}"

    run_stage("eval-style", config, overrides, debug, verbose, run_style, describe)


@command(eval_app, "sample", sections=("eval",))
def eval_sample(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
                verbose: Verbose = False) -> None:
    """Sample images of eval.prompts from every model in eval.models; rerun to continue.

    Each prompt has the same seed for every model; images already in the index are kept."""
    from tpo_ray.eval.sample_job import run_sample

    def describe(result) -> str:
        return (f"eval sample: {result.sampled} images made, {result.skipped} already there, in "
                f"{result.seconds:.1f} s -> {_short(result.directory)}/samples")

    run_stage("eval-sample", config, overrides, debug, verbose, run_sample, describe)


@command(eval_app, "score", sections=("eval",))
def eval_score(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
               verbose: Verbose = False) -> None:
    """Score the samples with eval.scorers and write each model's win rate over eval.baseline.

    Scorer weights come from eval.scorer_weights (local or s3://); win rates are per scorer, with
    bootstrap 95% intervals over prompts."""
    from tpo_ray.eval.score_job import run_score

    def describe(result) -> str:
        lines = [f"eval score: {result.images} images; win rate over {result.baseline} (95% interval), mean score"]
        for model, cells in result.table.items():
            lines.append(f"  {model:<12} " + "  ".join(
                f"{scorer} {c['rate']:.3f} [{c['low']:.3f}, {c['high']:.3f}] {c['mean_a']:.3f}"
                for scorer, c in cells.items()))
        return "\n".join(lines) + f"\n-> {_short(result.directory)}/winrates.json"

    run_stage("eval-score", config, overrides, debug, verbose, run_score, describe)


@command(app, "style-data")
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
    debug: Debug = False,
) -> None:
    """Turn rows into style or safety preference data by putting a phrase before each caption.

    See tpo_ray/data/style.py (style presets in STYLES). Rows that cannot be used (no id, caption or
    image, an unknown style) go to `<output>.quarantine.parquet` with their reason."""
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


@command(world_app, "pretrain")
def world_pretrain(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the SD1.5-layout base model."),
    overrides: list[str] | None = typer.Argument(None, help="Settings, e.g. seed=1 unet_steps=6000 (PretrainConfig "
                                                 "in tpo_ray/world/pretrain.py)."),
    debug: Debug = False,
) -> None:
    """Pretrain the scene world's base model on rendered scenes (seeded).

    The shipped one is described in tpo_ray/world/weights/README.md; a rerun into the same folder reuses
    its trained autoencoder."""
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


@command(world_app, "verify")
def world_verify(image: Path = typer.Argument(..., help="An image file."),
                 prompt: str = typer.Argument(..., help="Its prompt, in the scene grammar."),
                 debug: Debug = False) -> None:
    """What the scene verifier reads from an image, attribute by attribute, against the prompt."""
    from PIL import Image

    from tpo_ray.world.verifier import verify

    setup_logging(debug, verbose=True)
    verdict = run_reported(debug, lambda: verify(Image.open(image).convert("RGB"), prompt))
    for name, right in verdict.right.items():
        echo(f"{name:<11} {'right' if right else 'WRONG'}  read {verdict.read[name] or '(nothing)'}")
    echo(f"all correct: {verdict.all_correct}")


@command(app, sections=("eval",))
def report(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
           verbose: Verbose = False) -> None:
    """Build an HTML report from the eval outputs: open <eval.output>/report/index.html in a browser.

    Win rates, implicit preference, their correlation, training curves from MLflow, image grids and the
    configs."""
    from tpo_ray.eval.report import run_report

    def describe(result) -> str:
        gaps = f"; not found: {', '.join(result.missing)}" if result.missing else ""
        return f"report: {result.images} images, {result.plots} plots{gaps}\n-> {_short(result.index)}"

    run_stage("report", config, overrides, debug, verbose, run_report, describe)


@command(app, sections=("pipeline", "train",))
def pipeline(config: ConfigFile = None, overrides: Overrides = None, debug: Debug = False,
             verbose: Verbose = False) -> None:
    """Run a recipe's stages (pipeline.stages) in order; rerun the same command to continue where it stopped.

    Every stage's config is checked before the first stage starts."""
    from tpo_ray.pipeline import run_pipeline

    def run(cfg: TPOConfig):
        echo(f"pipeline: {' -> '.join(cfg.pipeline.stages)}, outputs under {_short(cfg.output_dir)}/")
        return run_pipeline(cfg, on_stage=lambda r: echo(f"  {r.name:<16} {r.seconds:6.1f} s  {r.figure}  "
                                                         f"{_short(r.output)}"))

    def describe(result) -> str:
        return f"pipeline: {len(result.stages)} stages in {result.seconds:.1f} s -> {_short(result.output_dir)}/"

    run_stage("pipeline", config, overrides, debug, verbose, run, describe)


@command(app)
def demo(
    output: Path = typer.Option(Path("demo-output"), "--output", "-o", help="Folder for every demo output."),
    config: ConfigFile = None,
    overrides: Overrides = None,
    debug: Debug = False,
    verbose: Verbose = False,
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
             f"TDPO caption accuracy (held-out) {tdpo.get('val/model_acc', float('nan')):.3f} "
             f"(SFT model {tdpo.get('val/ref_acc', float('nan')):.3f}), implicit reward accuracy vs SFT "
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
            parts.append(f"{trained.upper()} caption acc by principle (SFT): " + ", ".join(
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
    held-out caption accuracy of the same models beside it."""
    from tpo_ray.world.scenes import ATTRIBUTES, chance

    models = list(scene)
    first = scene[models[0]]
    rows = [(name, [f"{c['accuracy']:.2f} [{c['interval'][0]:.2f}, {c['interval'][1]:.2f}]"
                    for c in (scene[m]["attributes"][name] for m in models)]) for name in first["attributes"]]
    rows.append(("caption acc", [f"{implicit[m]['overall']['acc']:.3f}" if m in implicit else "-" for m in models]))
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
