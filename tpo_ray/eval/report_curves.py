"""Training curves for the report, read from the MLflow experiment the config tracks to.

Every run of `tracking.experiment` is listed page by page (MLflow's `page_token`), so none is dropped
silently; the histories of at most `MAX_RUNS` training runs are read and the rest are counted on the page.
Runs are grouped into stages (their `tpo_ray.stage` tag: sft, tdpo, ...; a Tune sweep's trials are a
group of their own) and a Tune trial is labelled by the hyper-parameters it drew, not its id alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tpo_ray.config import TPOConfig

log = logging.getLogger(__name__)

CURVE_METRICS = ("train/loss", "val/model_acc", "val/ref_acc", "val/implicit_acc")
PAGE = 200
MAX_RUNS = 200


@dataclass
class Curves:
    """{stage title: {line label: {metric: [(step, value)]}}}, and the training runs not drawn."""

    panels: dict[str, dict[str, dict[str, list[tuple[int, float]]]]] = field(default_factory=dict)
    runs: int = 0  # training runs found
    left_out: int = 0  # of them, not drawn (beyond MAX_RUNS)
    error: str | None = None


def _short(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def trial_labels(trials: list[tuple[str, dict[str, str]]], space: list[str]) -> dict[str, str]:
    """run name -> "trial <id>: beta=2000 tau=0.0003": the values of the sweep's search-space keys (those
    that differ across the trials when some do; each key shown without its `train.`/`train.loss.` prefix)."""
    keys = [k for k in space if any(k in params for _, params in trials)]
    varying = [k for k in keys if len({params.get(k) for _, params in trials}) > 1] or keys
    out = {}
    for name, params in trials:
        values = " ".join(f"{k.removeprefix('train.').removeprefix('loss.')}={_short(params.get(k, '-'))}"
                          for k in varying)
        out[name] = f"{name}: {values}" if values else name
    return out


def group_runs(runs: list[dict[str, Any]], space: list[str]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Runs ({name, tags, params, metrics}) grouped by stage title, each with its line label."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        tags = run["tags"]
        stage = (tags.get("tpo_ray.stage") or "training").upper()
        sweep = tags.get("tpo_ray.sweep")
        groups.setdefault(f"Tune {sweep} ({stage})" if sweep else stage, []).append(run)
    out = {}
    for title, members in sorted(groups.items()):
        labels = {r["name"]: r["name"] for r in members}
        if title.startswith("Tune "):
            labels = trial_labels([(r["name"], r["params"]) for r in members], space)
        out[title] = [(labels[r["name"]], r["metrics"]) for r in members]
    return out


def training_curves(cfg: TPOConfig) -> Curves:
    """The curves of every training run in the config's MLflow experiment (none when tracking is off)."""
    if not cfg.tracking.enabled:
        return Curves()
    try:
        from mlflow.tracking import MlflowClient

        from tpo_ray.tracking import tracking_uri

        client = MlflowClient(tracking_uri(cfg.tracking, cfg.output_dir))
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            return Curves()
        listed, token = [], None
        while True:
            page = client.search_runs([experiment.experiment_id], max_results=PAGE, page_token=token)
            listed += [r for r in page if r.data.tags.get("tpo_ray.run_name")]
            token = page.token
            if not token:
                break
        runs = []
        for run in listed[:MAX_RUNS]:
            metrics = {}
            for metric in CURVE_METRICS:
                history = client.get_metric_history(run.info.run_id, metric)
                if history:
                    metrics[metric] = sorted((h.step, h.value) for h in history)
            if metrics:
                runs.append({"name": run.data.tags["tpo_ray.run_name"], "tags": run.data.tags,
                             "params": run.data.params, "metrics": metrics})
        panels = {title: dict(lines) for title, lines in group_runs(runs, list(cfg.tune.search_space)).items()}
        return Curves(panels, len(listed), max(len(listed) - MAX_RUNS, 0))
    except Exception as err:  # a report without curves beats no report; the page says why
        log.warning("report: training curves not read from MLflow (%s: %s)", type(err).__name__, err)
        return Curves(error=f"{type(err).__name__}: {err}")
