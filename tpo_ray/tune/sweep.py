"""`run_tune`: a Ray Tune sweep whose trials are full Ray Train runs, tracked in MLflow.

Each trial is a small driver function (`_run_trial`) that builds its config from the base config
and the values Tune drew, and calls `run_train` with Tune's `TuneReportCallback` in the Train run's
callbacks (the Ray Train V2 pattern): its own workers, backend (DDP or DeepSpeed), checkpoints and a
nested MLflow child run. Every report carries the held-out metric (a trial evaluates at each
`train.log_every_steps`), so ASHA compares trials at equal steps and stops the ones that trail.

Identity and resume: the sweep is named by what defines it (`runs.sweep_identity`); the same command
restores the Tune experiment (`Tuner.restore`), which does not re-run finished or failed trials and
restarts unfinished ones, and each restarted trial resumes its Train run from its last checkpoint
(its run name is its trial id). All trials read one cache, built (or found) before the sweep.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from ray import tune

from tpo_ray.config import TPOConfig, flatten_config
from tpo_ray.console import CONSOLE, plain_lines
from tpo_ray.data.io import filesystem_for, is_uri, join
from tpo_ray.runs import SweepIdentity, sweep_digest, sweep_identity
from tpo_ray.tune.space import Domain, param_space, parse_space, trial_config, validate_space

log = logging.getLogger(__name__)

TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 1 << 20}
NONFINITE = "non-finite"  # the trainer's abort message for a diverging run (train/loop.py)


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    status: str  # finished | stopped early | diverged | failed
    reason: str = ""
    best: float | None = None  # best value of tune.metric over the trial's reports
    best_step: int | None = None
    last_step: int | None = None
    run_name: str = ""
    checkpoint: str | None = None


@dataclass
class TuneResult:
    name: str
    sweep_dir: str
    metric: str
    trials: list[TrialRecord] = field(default_factory=list)
    best: TrialRecord | None = None
    best_config: str | None = None
    parent_run_id: str | None = None
    resumed: bool = False
    seconds: float = 0.0


def trial_run_name(trial_id: str) -> str:
    """A trial's Ray Train run name: its Tune trial id, so a restored trial resumes its own run."""
    return f"trial-{trial_id}"


def trial_settings(trial: TPOConfig, sweep: SweepIdentity, trial_id: str) -> dict[str, Any]:
    """What the sweep fixes in a trial (given its config with the drawn values): its run's name and
    storage, and a held-out eval at every one of its reports."""
    return {"train.run_name": trial_run_name(trial_id), "train.storage_path": sweep.trials_storage,
            "train.eval_every_steps": trial.train.log_every_steps}


def trial_run_config(base: dict[str, Any], params: dict[str, Any], sweep: SweepIdentity, trial_id: str) -> TPOConfig:
    """The config a trial trains with: the base, its drawn values, and the sweep's settings for it."""
    drawn = trial_config(base, params, f"trial {trial_id}")
    return trial_config(base, params, f"trial {trial_id}", fixed=trial_settings(drawn, sweep, trial_id))


CACHE_SETTING_NAMES = {"kind": "example kind", "model": "model", "resolution": "data.resolution",
                       "center_crop": "data.center_crop", "input": "cache input",
                       "options": "cache.max_text_similarity / cache.reference_margins"}


def check_sweep(cfg: TPOConfig, trials: list[TPOConfig]) -> None:
    """Fail before any trial starts when a trial could not report what the sweep judges it by: Tune
    stops the whole sweep (not only that trial) when a report lacks `tune.metric`. `trials` are the
    configs that stand for the search space (`validate_space`)."""
    from tpo_ray.cache.job import cache_settings

    metric = cfg.tune.metric
    shared = cache_settings(cfg)
    if cfg.tune.scheduler == "asha" and cfg.tune.grace_period >= cfg.train.max_steps:
        raise ValueError(f"tune.grace_period={cfg.tune.grace_period} is not below train.max_steps="
                         f"{cfg.train.max_steps}: ASHA could never stop a trial")
    for trial in [cfg, *trials]:
        where = "the base config" if trial is cfg else f"the trial with {_values_text(cfg, trial)}"
        tc = trial.train
        if tc.checkpoint_every_steps % tc.log_every_steps:
            raise ValueError(f"{where}: every trial report carries tune.metric, so train.checkpoint_every_steps="
                             f"{tc.checkpoint_every_steps} must be a multiple of train.log_every_steps="
                             f"{tc.log_every_steps}")
        if trial.data_kind() not in ("triplet", "image_pair"):
            raise ValueError(f"{where}: tune.metric={metric!r} needs held-out preference pairs; "
                             f"{tc.loss.name} trains on {trial.data_kind()} examples; sweep a pairwise loss "
                             "(tdpo, tkto, dpo, mapo, rpo)")
        if metric != "val/model_acc" and trial.resolved_reference() == "none":
            raise ValueError(f"{where}: tune.metric={metric!r} compares against a reference model, which "
                             f"{tc.loss.name} runs without; use tune.metric=val/model_acc")
        settings = cache_settings(trial)
        if settings != shared:
            differ = ", ".join(CACHE_SETTING_NAMES.get(k, k) for k in sorted(shared) if settings.get(k) != shared[k])
            raise ValueError(f"{where} needs another cache than the base config ({differ}): trials share one "
                             "cache; sweep those values in separate sweeps")


def _values_text(base: TPOConfig, trial: TPOConfig) -> str:
    """The dotted keys where a trial's config differs from the base (how errors name a trial)."""
    a, b = flatten_config(base), flatten_config(trial)
    return ", ".join(f"{k}={b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)) or "base values"


def trial_concurrency(cfg: TPOConfig, resources: dict[str, float], joined_cluster: bool = False) -> int:
    """How many trials run at once: `tune.max_concurrent_trials`, or fewer when the cluster cannot hold
    them; a ValueError when not even one trial fits.

    A cluster joined through RAY_ADDRESS (`ray job submit`, KubeRay) may autoscale: an idle one in
    `cluster/` has 0 GPU workers. There the configured concurrency stands; the trials that do not fit
    yet wait as pending resource demands, which is what makes the autoscaler add GPU nodes. Only a
    local Ray instance, which cannot grow, is held to what it has.
    """
    from tpo_ray.cluster import copies_that_fit, shortfall_message, training_resources

    fits = copies_that_fit(training_resources(cfg.train.scaling), resources)
    wanted = cfg.tune.max_concurrent_trials
    if joined_cluster:
        if fits < wanted:
            log.warning("tune: %d of tune.max_concurrent_trials=%d trials fit on the cluster's nodes now; the "
                        "others wait for the autoscaler to add nodes (%s)", fits, wanted,
                        shortfall_message(cfg.train.scaling, resources, what="each trial"))
        return wanted
    if fits < 1:
        raise ValueError(shortfall_message(cfg.train.scaling, resources, what="one trial"))
    concurrency = min(wanted, fits)
    if concurrency < wanted:
        log.warning("tune: %d trials at once fit on this cluster (tune.max_concurrent_trials=%d)", concurrency,
                    wanted)
    return concurrency


def metric_reports(metric: str):
    """A `TuneReportCallback` that hands Tune only the reports carrying the sweep's metric.

    Tune stops the whole sweep when a report lacks `tune.metric`. The final checkpoint is reported
    before the final eval (so a failing eval loses no training), without metrics; its path is held
    and attached to the next report that has the metric, the final eval's, so Tune's last result
    names the final checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class MetricReports(TuneReportCallback):
        def __init__(self) -> None:
            super().__init__()
            self.held = None

        def after_report(self, run_context, metrics, checkpoint):
            if metric not in metrics[0]:
                self.held = checkpoint or self.held
                return
            checkpoint, self.held = checkpoint or self.held, None
            super().after_report(run_context, metrics, checkpoint)

    return MetricReports()


def _run_trial(params: dict[str, Any], base: dict[str, Any], sweep: SweepIdentity,
               parent_run_id: str | None) -> None:
    """One trial (runs in its own Tune actor): the trial's config, then a full `run_train`."""
    from tpo_ray.train.driver import run_train

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_run_config(base, params, sweep, trial_id)
    tags = {"tpo_ray.sweep": sweep.name, "tpo_ray.trial_id": trial_id}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    result = run_train(cfg, callbacks=[metric_reports(cfg.tune.metric)], tags=tags)
    if result.already_finished:  # its run had finished before (a restored sweep): hand Tune the final report
        tune.report(dict(result.metrics))


class TrialLines(tune.Callback):
    """One console line per trial that ends (Tune's own tables go to the log file)."""

    def __init__(self, metric: str, max_steps: int) -> None:
        self.metric, self.max_steps = metric, max_steps

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        step = result.get("step")
        state = "finished" if step == self.max_steps else f"stopped at step {step}"
        value = result.get(self.metric)
        shown = f"{self.metric}={value:.4f}" if isinstance(value, (int, float)) else "no report"
        log.info("tune: trial %s %s (%s) %s", trial.trial_id, state, shown, _params_text(trial.config), extra=CONSOLE)

    def on_trial_error(self, iteration, trials, trial, **info):
        log.info("tune: trial %s failed %s (see the sweep summary)", trial.trial_id, _params_text(trial.config),
                 extra=CONSOLE)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={short_value(v)}" for k, v in sorted(params.items()))


def short_value(value: Any) -> str:
    """A value as the summaries show it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _scheduler(cfg: TPOConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "none":
        return FIFOScheduler()
    # stop_last_trials=False: a trial reaching max_t must finish on its own (final checkpoint, MLflow
    # artifact, closing report), not be torn down by a STOP at its last report.
    return ASHAScheduler(time_attr="step", max_t=cfg.train.max_steps, grace_period=cfg.tune.grace_period,
                         reduction_factor=cfg.tune.reduction_factor, stop_last_trials=False)


def _search_alg(cfg: TPOConfig, concurrency: int):
    """Seeded by train.seed (the same sweep config draws the same trials), at most `concurrency` trials
    at once. Tune ignores `TuneConfig.max_concurrent_trials` for a BasicVariantGenerator instance, so
    the limit goes into the generator itself; a Searcher (Optuna) gets Tune's ConcurrencyLimiter."""
    if cfg.tune.search != "optuna":  # grids enumerated, other domains sampled
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=cfg.train.seed, max_concurrent=concurrency)
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(seed=cfg.train.seed), max_concurrent=concurrency)


TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})(?:_|$)")


def _trial_id(result) -> str:
    if result.metrics and result.metrics.get("trial_id"):
        return str(result.metrics["trial_id"])
    found = TRIAL_ID.search(str(result.path).rstrip("/").rsplit("/", 1)[-1])
    return found.group(1) if found else "unknown"


def trial_record(result, cfg: TPOConfig, domains: list[Domain]) -> TrialRecord:
    """What one trial did, from Tune's `Result`: status and reason, best metric and its step."""
    trial_id = _trial_id(result)
    params = {d.key: (result.config or {}).get(d.key) for d in domains}
    metric, sign = cfg.tune.metric, (1 if cfg.tune.mode == "max" else -1)
    record = TrialRecord(trial_id, params, "finished", run_name=trial_run_name(trial_id))
    history = result.metrics_dataframe
    if history is not None and metric in history.columns:
        rows = history[["step", metric]].dropna()
        rows = rows[rows[metric].map(lambda v: math.isfinite(float(v)))]
        if len(rows):
            best = rows.loc[(rows[metric] * sign).idxmax()]
            record.best, record.best_step = float(best[metric]), int(best["step"])
    if result.metrics and result.metrics.get("step") is not None:
        record.last_step = int(result.metrics["step"])
    if result.metrics and result.metrics.get("checkpoint_path"):
        record.checkpoint = str(result.metrics["checkpoint_path"])
    if result.error is not None:
        lines = plain_lines(str(result.error))
        diverged = [line for line in lines if NONFINITE in line]
        record.status = "diverged" if diverged else "failed"
        # the last line is the error itself; the first is Ray's `ray::ImplicitFunc.train() (pid=...)` header
        record.reason = (diverged or lines or [type(result.error).__name__])[-1].strip()[:300]
    elif record.last_step is not None and record.last_step < cfg.train.max_steps:
        record.status = "stopped early"
        record.reason = f"{cfg.tune.scheduler} at step {record.last_step}"
    return record


def best_trial(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    scored = [r for r in records if r.best is not None and r.status != "diverged"]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r.best)


def summary_table(records: list[TrialRecord], metric: str) -> tuple[str, str]:
    """(CSV, Markdown) of every trial: id, status, reason, best metric and its step, last step, params."""
    keys = sorted({k for r in records for k in r.params})
    header = ["trial", "status", "reason", f"best {metric}", "best step", "last step", *keys]
    rows = [[r.trial_id, r.status, r.reason, "" if r.best is None else f"{r.best:.4f}",
             "" if r.best_step is None else r.best_step, "" if r.last_step is None else r.last_step,
             *(short_value(r.params.get(k)) for k in keys)] for r in records]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return buffer.getvalue(), "\n".join(markdown) + "\n"


def _write_text(path: str, text: str) -> None:
    fs, p = filesystem_for(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "w") as fh:
        fh.write(text)


def _latest_checkpoint(base: dict[str, Any], sweep: SweepIdentity, record: TrialRecord) -> str | None:
    from tpo_ray.runs import run_identity

    found = run_identity(trial_run_config(base, record.params, sweep, record.trial_id)).checkpoints()
    return found[-1] if found else None


SWEEP_FILE = "tpo_ray_sweep.json"


def _restorable(sweep: SweepIdentity, digest: str) -> bool:
    """Whether `sweep_dir` holds a sweep to resume: Tune wrote its experiment state (a driver killed
    before the first trial started leaves only `tuner.pkl`, which would restore an empty sweep), and
    it is this config's sweep (a fixed `tune.name` reused for another config is refused)."""
    fs, p = filesystem_for(sweep.sweep_dir)
    if not fs.exists(p) or not fs.glob(f"{p}/experiment_state-*.json"):
        return False
    marker = f"{p}/{SWEEP_FILE}"
    saved = json.loads(fs.cat(marker))["digest"] if fs.exists(marker) else None
    if saved != digest:
        raise ValueError(f"{sweep.sweep_dir} holds another sweep (other base config or tune section) under the "
                         f"name {sweep.name!r}; pick another tune.name or remove that folder")
    return True


def _existing_parent(cfg: TPOConfig, name: str) -> str | None:
    """The MLflow parent run of an earlier attempt of this sweep (a restored sweep continues it)."""
    if not cfg.tracking.enabled:
        return None
    try:
        import mlflow

        from tpo_ray.tracking import tracking_uri

        client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.output_dir))
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], f"tags.`tpo_ray.sweep_parent` = '{name}'",
                                  max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None
    except Exception:  # no store yet, or unreachable: a new parent run
        return None


def _close_child_runs(cfg: TPOConfig, sweep: SweepIdentity, records: list[TrialRecord]) -> None:
    """Mark each trial's MLflow run with its outcome: a trial stopped by ASHA was killed mid-run and
    its run would otherwise stay RUNNING forever."""
    if not cfg.tracking.enabled:
        return
    import mlflow

    from tpo_ray.tracking import tracking_uri

    try:
        client = mlflow.MlflowClient(tracking_uri(cfg.tracking, cfg.output_dir))
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        for record in records:
            runs = client.search_runs([experiment.experiment_id],
                                      f"tags.`tpo_ray.sweep` = '{sweep.name}' and "
                                      f"tags.`tpo_ray.trial_id` = '{record.trial_id}'", max_results=5)
            for run in runs:
                client.set_tag(run.info.run_id, "tpo_ray.trial_status", record.status)
                if record.checkpoint and "tpo_ray.checkpoint" not in run.data.tags:
                    client.set_tag(run.info.run_id, "tpo_ray.checkpoint", record.checkpoint)
                if record.reason:
                    client.set_tag(run.info.run_id, "tpo_ray.trial_reason", record.reason)
                if run.info.status == "RUNNING":
                    status = {"finished": "FINISHED", "stopped early": "KILLED"}.get(record.status, "FAILED")
                    client.set_terminated(run.info.run_id, status)
    except Exception as err:
        if cfg.tracking.fail_on_error:
            raise
        log.warning("tune: could not mark the trials' MLflow runs: %s", err)


def _precompute_reference(cfg: TPOConfig, cache, trials: list[TPOConfig]) -> None:
    """The reference-error stores every trial reads (they share the cache, seed and start model: one store
    unless the space sweeps what the errors depend on), built before any trial starts and covering the
    most epochs any trial configuration that stands for the space reads (a principle filter leaves fewer
    rows, a larger batch reads more): no trial computes reference errors at its start."""
    from tpo_ray.cache.reference_job import plan_reference, run_reference
    from tpo_ray.train.checkpoint import TrainState
    from tpo_ray.cache.selection import training_rows

    plans: dict[str, tuple[TPOConfig, Any]] = {}
    for trial in (cfg, *trials):
        if trial.resolved_reference() != "precomputed":
            continue
        state = TrainState.start(trial.train, trial.train.scaling.num_workers)
        plan = plan_reference(trial, cache.directory, cache.manifest,
                              training_rows(trial, cache.directory, cache.manifest), state.global_batch,
                              state.read_lanes)
        if plan.directory not in plans or plan.epochs > plans[plan.directory][1].epochs:
            plans[plan.directory] = (trial, plan)
    for trial, plan in plans.values():
        run_reference(trial, cache.directory, cache.manifest, plan)
        log.info("tune: trials read the reference errors %s (%d epochs)", plan.directory, plan.epochs)


def run_tune(cfg: TPOConfig) -> TuneResult:
    import ray

    from tpo_ray.cache.job import cache_root, run_cache
    from tpo_ray.cluster import require_shared_paths
    from tpo_ray.ray_utils import ensure_ray
    from tpo_ray.tracking import tracking_run

    start = time.perf_counter()
    sweep = sweep_identity(cfg)
    base = cfg.model_dump(mode="json")
    domains = parse_space(cfg.tune.search_space, cfg.tune.search)
    trials = validate_space(base, domains)
    check_sweep(cfg, trials)
    log.info("tune: %s, %d trial configs validated; search %s over %s", sweep.name, len(trials), cfg.tune.search,
             ", ".join(d.key for d in domains))
    restore = _restorable(sweep, sweep_digest(cfg))
    ensure_ray()
    require_shared_paths({"output_dir": sweep.storage_path, "cache.output": cache_root(cfg)}, cfg.shared_filesystem)
    concurrency = trial_concurrency(cfg, ray.cluster_resources(), joined_cluster=bool(os.environ.get("RAY_ADDRESS")))
    cache = run_cache(cfg)  # one encode for the whole sweep (found, not rebuilt, when it exists)
    if not cache.manifest["rows"]["val"]:
        raise ValueError(f"the cache {cache.directory} holds no held-out pairs to compute tune.metric="
                         f"{cfg.tune.metric}; set data.holdout_fraction > 0")
    log.info("tune: every trial reads the cache %s", cache.directory)
    _precompute_reference(cfg, cache, trials)

    parent_id = _existing_parent(cfg, sweep.name)
    result = TuneResult(sweep.name, sweep.sweep_dir, cfg.tune.metric)
    with tracking_run(cfg.tracking, cfg.output_dir, run_name=sweep.name, run_id=parent_id,
                      tags={"tpo_ray.sweep_parent": sweep.name, "tpo_ray.stage": "tune"}) as parent:
        if parent_id is None:
            parent.log_params(flatten_config(cfg))
        result.parent_run_id = parent.run_id
        # The trial driver only waits on its Train run, whose workers reserve their own CPUs/GPUs: it
        # holds no CPU (a token CPU share would keep a trial of all the node's CPUs from ever starting);
        # Tune refuses an empty request, so it reserves a token of memory instead.
        trainable = tune.with_resources(
            tune.with_parameters(_run_trial, base=base, sweep=sweep, parent_run_id=parent.run_id),
            TRIAL_DRIVER_RESOURCES)
        if restore:
            log.info("tune: resuming %s (finished trials are kept, unfinished ones resume)", sweep.name,
                     extra=CONSOLE)
            tuner = tune.Tuner.restore(sweep.sweep_dir, trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
            result.resumed = True
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(domains),
                tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, scheduler=_scheduler(cfg),
                                            search_alg=_search_alg(cfg, concurrency),
                                            num_samples=cfg.tune.trials),
                run_config=tune.RunConfig(name=sweep.name, storage_path=sweep.storage_path, verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                          callbacks=[TrialLines(cfg.tune.metric, cfg.train.max_steps)]),
            )
        _write_text(join(sweep.sweep_dir, SWEEP_FILE), json.dumps({"digest": sweep_digest(cfg)}))
        grid = tuner.fit()
        result.trials = [trial_record(r, cfg, domains) for r in grid]
        for record in result.trials:  # e.g. a trial whose run had finished before a restore reported no path
            record.checkpoint = record.checkpoint or _latest_checkpoint(base, sweep, record)
        _close_child_runs(cfg, sweep, result.trials)
        csv_text, markdown = summary_table(result.trials, cfg.tune.metric)
        _write_text(join(sweep.sweep_dir, "summary.csv"), csv_text)
        _write_text(join(sweep.sweep_dir, "summary.md"), markdown)
        _write_text(join(sweep.sweep_dir, "trials.json"), json.dumps([asdict(r) for r in result.trials], indent=1))
        if not is_uri(sweep.sweep_dir):  # (MLflow uploads local files; a URI sweep keeps them where they are)
            for name in ("summary.csv", "summary.md", "trials.json"):
                parent.log_artifact(join(sweep.sweep_dir, name), "sweep")
        result.best = best_trial(result.trials, cfg.tune.mode)
        if result.best is not None:
            best_cfg = trial_config(base, result.best.params, f"best trial {result.best.trial_id}")
            text = yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False)
            for path in (sweep.best_config, sweep.latest_best_config):
                _write_text(path, text)
            result.best_config = sweep.best_config
            parent.log_metrics({f"best/{cfg.tune.metric}": result.best.best})
            parent.set_tags({"tpo_ray.best_trial": result.best.trial_id,
                             **{f"best.{k}": str(v) for k, v in result.best.params.items()}})
        else:
            log.warning("tune: no trial reported %s; no best config written", cfg.tune.metric)
    result.seconds = time.perf_counter() - start
    return result


def tune_figure(result: TuneResult) -> str:
    """One line for a summary: trials, the best one's values and its metric."""
    if result.best is None:
        return f"{len(result.trials)} trials, none reported {result.metric}"
    params = ", ".join(f"{k.rsplit('.', 1)[-1]} {short_value(v)}" for k, v in result.best.params.items())
    return f"{len(result.trials)} trials; best {params}: {result.metric} {result.best.best:.3f}"
