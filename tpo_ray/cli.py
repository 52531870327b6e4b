"""`tpo-ray`: one command per pipeline stage. Parses arguments, calls `run_<stage>`, reports.

Every command takes `--config FILE` plus dotted overrides (`train.loss.beta=2000`); a bad config
prints one line naming the field and exits 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
import yaml

from pydantic import BaseModel

from tpo_ray.config import ConfigError, TPOConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
T = TypeVar("T")

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (defaults run the CPU demo).")
OverridesArg = typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-6 train.loss.name=tkto.")
DebugOption = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_reported(debug: bool, fn: Callable[[], T]) -> T:
    """Run a stage; expected failures become one line on stderr and a non-zero exit."""
    try:
        return fn()
    except (ConfigError, FileNotFoundError, ImportError, ValueError, RuntimeError) as err:
        if debug:
            raise
        first = str(err).strip().splitlines()
        typer.echo(f"error: {type(err).__name__}: {first[0] if first else err}", err=True)
        for extra in first[1:5]:
            typer.echo(f"       {extra}", err=True)
        raise typer.Exit(2) from None


def load(config: Optional[Path], overrides: Optional[list[str]], debug: bool) -> TPOConfig:
    return run_reported(debug, lambda: load_config(config, overrides or []))


def run_stage(config: Optional[Path], overrides: Optional[list[str]], debug: bool, runner: Callable[[TPOConfig], T]) -> T:
    """What every stage command does: logging, config (file + overrides), the stage, one-line errors."""
    _setup_logging(debug)
    cfg = load(config, overrides, debug)
    return run_reported(debug, lambda: runner(cfg))


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
def show_config(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = OverridesArg,
                debug: bool = DebugOption) -> None:
    """Print the fully resolved configuration (defaults + file + overrides) as YAML."""
    cfg = load(config, overrides, debug)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@app.command(epilog=options_help("negatives", "tracking"))
def negatives(
    config: Optional[Path] = ConfigOption,
    overrides: Optional[list[str]] = OverridesArg,
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Captions: parquet, JSONL or HF datasets folder; local or s3://."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder or s3:// URI."),
    editor: Optional[str] = typer.Option(None, "--editor", help="rules | hf | vllm | openai (overrides negatives.editor)."),
    debug: bool = DebugOption,
) -> None:
    """Edit each caption into minimally wrong negatives; resumable (rerun to continue)."""
    from tpo_ray.negatives.job import run_negatives

    extra = [f"negatives.{k}={v}" for k, v in (("input", input), ("output", output), ("editor", editor)) if v]
    result = run_stage(config, (overrides or []) + extra, debug, run_negatives)
    s = result.stats
    typer.echo(f"negatives: {s['triplets']} triplets for {s['rows_accepted']}/{s['rows_in']} captions, "
               f"{s['rows_quarantined']} quarantined, {s['fallbacks']} fallbacks; "
               f"{result.shards_skipped}/{result.shards_total} shards were already done -> {result.output}")


@app.command(epilog=options_help("cache", "data", "model"))
def cache(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = OverridesArg,
          debug: bool = DebugOption) -> None:
    """Encode images and captions once (VAE + text encoders) into a fingerprinted cache."""
    from tpo_ray.cache.job import run_cache

    result = run_stage(config, overrides, debug, run_cache)
    rows = result.manifest["rows"]
    typer.echo(f"cache: {rows['train']} train + {rows['val']} val {result.manifest['kind']} examples "
               f"({'reused' if result.reused else f'built in {result.seconds:.1f} s'}) -> {result.directory}")


@app.command(epilog=options_help("train", "model", "data", "eval", "tracking"))
def train(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = OverridesArg,
          debug: bool = DebugOption) -> None:
    """Run one training stage (train.loss.name) with Ray Train; rerun the same command to resume."""
    from tpo_ray.train.driver import run_train

    result = run_stage(config, overrides, debug, run_train)
    shown = {k: v for k, v in result.metrics.items() if k.startswith(("train/loss", "train/implicit", "val/"))}
    typer.echo(f"train: {result.run_name} step {result.metrics.get('step')} "
               + " ".join(f"{k}={v:.4f}" for k, v in shown.items()) + f" -> {result.checkpoint}")


@app.command(epilog=options_help("export", "model"))
def export(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = OverridesArg,
           debug: bool = DebugOption) -> None:
    """Write the trained U-Net (LoRA merged) into a diffusers pipeline folder."""
    from tpo_ray.export import run_export

    result = run_stage(config, overrides, debug, run_export)
    typer.echo(f"export: {result.family} pipeline from {result.checkpoint} -> {result.output}")


@app.command()
def demo(
    output: Path = typer.Option(Path("demo-output"), "--output", "-o", help="Folder for every demo output."),
    config: Optional[Path] = ConfigOption,
    overrides: Optional[list[str]] = OverridesArg,
    debug: bool = DebugOption,
) -> None:
    """Run the whole pipeline on generated data and tiny models, on local CPU."""
    from tpo_ray.demo import demo_config, run_demo
    from tpo_ray.tracking import tracking_uri

    _setup_logging(debug)
    base = demo_config(output).model_dump(mode="json")
    cfg = run_reported(debug, lambda: load_config(config, overrides or []) if config else None)
    if cfg is None:
        from tpo_ray.config import apply_overrides, config_from_dict

        cfg = run_reported(debug, lambda: config_from_dict(apply_overrides(base, overrides or []), "demo defaults"))
    result = run_reported(debug, lambda: run_demo(cfg))
    neg, sft, tdpo = result.negatives.stats, result.sft.metrics, result.tdpo.metrics
    typer.echo(f"negatives: {neg['triplets']} triplets for {neg['rows_accepted']}/{neg['rows_in']} captions "
               f"({neg['rows_quarantined']} quarantined) -> {result.negatives.output}")
    typer.echo(f"SFT  ({result.sft.run_name}): step {sft['step']} train/loss {sft['train/loss']:.4f}")
    typer.echo(f"TDPO ({result.tdpo.run_name}): step {tdpo['step']} train/loss {tdpo['train/loss']:.4f}, held-out "
               f"preference accuracy {tdpo['val/model_acc']:.3f} (SFT model {tdpo['val/ref_acc']:.3f}), "
               f"implicit_acc {tdpo['val/implicit_acc']:.3f}")
    typer.echo(f"exported pipelines: {', '.join(str(e.output) for e in result.exports)}")
    typer.echo(f"MLflow store: {tracking_uri(cfg.tracking, cfg.output_dir)} "
               f"(mlflow ui --backend-store-uri {tracking_uri(cfg.tracking, cfg.output_dir)})")
    typer.echo(f"demo finished in {result.seconds:.1f} s; outputs under {result.output_dir.resolve()}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
