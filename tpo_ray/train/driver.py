"""`run_train`: one training stage (SFT, TDPO, TKTO or a baseline) as a Ray Train `TorchTrainer`.

Builds `ScalingConfig`/`RunConfig` from config, with a deterministic run name under a shared
`storage_path`: running the same command again resumes from the newest usable checkpoint on disk
(chosen here, see `train/resume.py`), while a lock keeps a second start of the same run out of its
folder. Opens the MLflow run on the driver (params, final weights) and logs every report into it.
The final report (with the final eval, which runs after the final checkpoint is stored) is written
into the final checkpoint, which marks the run finished.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tpo_ray.cache.job import cache_root, expected_cache
from tpo_ray.cache.reference_job import ensure_reference
from tpo_ray.cache.selection import training_rows
from tpo_ray.cache.store import CacheError, find_cache
from tpo_ray.config import TPOConfig, flatten_config
from tpo_ray.data.io import filesystem_for, is_uri, join
from tpo_ray.runs import RunIdentity, run_identity
from tpo_ray.tracking import tracking_run

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_name: str
    checkpoint: str  # path or URI of the final checkpoint
    metrics: dict[str, Any]
    run_id: str | None
    seconds: float
    already_finished: bool = False  # an earlier attempt had reached max_steps: nothing ran now


def _existing_run_id(cfg: TPOConfig, name: str) -> str | None:
    """The MLflow run of an earlier attempt of this Ray run (so a resume continues its curves)."""
    try:
        import mlflow

        from tpo_ray.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(cfg.tracking, cfg.output_dir))
        runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                                  filter_string=f"tags.`tpo_ray.run_name` = '{name}'", max_results=1,
                                  order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs and runs[0].info.status != "FINISHED" else None
    except Exception:  # no store yet, or unreachable: start a new run
        return None


def _finished_checkpoint(cfg: TPOConfig, latest: tuple[str, dict[str, Any]] | None,
                         name: str) -> TrainResult | None:
    """The result of an earlier run of this command that already reached max_steps and its final eval."""
    from tpo_ray.train.checkpoint import FINAL_METRICS

    if latest is None:
        return None
    folder, state = latest
    fs, p = filesystem_for(folder)
    if state["step"] < cfg.train.max_steps or not fs.exists(f"{p}/{FINAL_METRICS}"):
        return None
    return TrainResult(name, folder, json.loads(fs.cat(f"{p}/{FINAL_METRICS}")), None, 0.0, already_finished=True)


def _final_metrics(folder: str, final_report: dict[str, Any], final_eval: bool = True) -> dict[str, Any]:
    """The final checkpoint's metrics updated by the run's final report (the final eval, at the same
    step), written into it as `final_metrics.json` (the mark of a finished run).

    `final_eval`: the final report carries a held-out eval (`val/*`). When that report did not reach
    the driver (the relay dropped it), the file is not written, so a rerun resumes at max_steps and runs
    the final eval again instead of finishing without it. A run without a final eval loses nothing with
    its final report (the step alone): it is marked finished regardless."""
    from tpo_ray.train.checkpoint import FINAL_METRICS, METRICS

    fs, p = filesystem_for(folder)
    metrics = json.loads(fs.cat(f"{p}/{METRICS}")) if fs.exists(f"{p}/{METRICS}") else {}
    same_step = final_report.get("step") == metrics.get("step", final_report.get("step"))
    if same_step and (not final_eval or any(k.startswith("val/") for k in final_report)):
        metrics.update(final_report)
    elif final_eval:
        log.warning("train: the final eval's report (step %s) did not reach the driver; %s keeps the metrics of "
                    "step %s and is not marked finished (%s): running the same command again runs the final eval",
                    final_report.get("step"), folder, metrics.get("step"), FINAL_METRICS)
        return metrics
    with fs.open(f"{p}/{FINAL_METRICS}", "w") as fh:
        fh.write(json.dumps(metrics, indent=1))
    return metrics


def _check_data_layout(cfg: TPOConfig, latest: tuple[str, dict[str, Any]] | None, train_rows: int):
    """The run's `TrainState` (resumed or new); fails before any work when the run's global batch or
    read lanes do not fit this worker count."""
    from tpo_ray.train.batches import data_layout
    from tpo_ray.train.checkpoint import TrainState

    tc = cfg.train
    state = TrainState(**latest[1]) if latest else TrainState.start(tc, tc.scaling.num_workers)
    data_layout(state, tc.grad_accum_steps, tc.scaling.num_workers, train_rows)
    return state


def _streaming_datasets(cfg: TPOConfig, directory: str) -> dict[str, Any]:
    """Trainer kwargs for `train.data_loader=ray_data` (the cache as a Ray Dataset split across workers)."""
    if cfg.train.data_loader != "ray_data":
        return {}
    import ray.data
    import ray.train

    from tpo_ray.cache.store import RowFilter

    dataset = ray.data.read_parquet(join(directory, "split=train"))
    keep = RowFilter.from_data_config(cfg.data)
    if keep is not None:
        dataset = dataset.map_batches(lambda t: t.filter(keep.mask(t)), batch_format="pyarrow")
    return {"datasets": {"train": dataset}, "dataset_config": ray.train.DataConfig(datasets_to_split=["train"])}


class _Reports:
    """Each report's metrics into the driver's MLflow run, at the report's step; keeps the last one
    (Ray's result holds the metrics of the last checkpoint only, not the final eval's report)."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker
        self.last: dict[str, Any] = {}

    def __call__(self, metrics: dict[str, Any]) -> None:
        self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics.get("step", 0)))
        self.last = dict(metrics)


def _grids_reach_tracking(cfg: TPOConfig) -> bool:
    """Rank 0 logs sample grids itself (images, not numbers): it needs a store it can reach from its node."""
    from tpo_ray.cluster import alive_nodes
    from tpo_ray.tracking import is_remote_store, tracking_uri

    if is_remote_store(cfg.tracking) or cfg.shared_filesystem or alive_nodes() <= 1:
        return True
    log.warning("train: sample grids are off: the MLflow store %s is local to the driver and the cluster has "
                "several nodes (use an MLflow server or shared_filesystem=true)", tracking_uri(cfg.tracking,
                                                                                         cfg.output_dir))
    return False


def run_train(cfg: TPOConfig, callbacks: Sequence[Any] = (), tags: dict[str, str] | None = None) -> TrainResult:
    """Train one stage; `callbacks` join the run's Ray Train callbacks (a Tune trial adds Tune's
    report callback) and `tags` the MLflow run's tags (a trial's parent run).

    The run folder is locked first (a second start of the same run fails at once, naming the
    holder); when the run ends, well or not, its checkpoint folders are pruned to
    `train.keep_checkpoints`."""
    from tpo_ray.runs import lock_run
    from tpo_ray.train.resume import prune_checkpoints

    run = run_identity(cfg)
    with lock_run(run):
        try:
            return _train_locked(cfg, run, callbacks, tags)
        finally:
            prune_checkpoints(run, cfg.train.keep_checkpoints)


def _train_locked(cfg: TPOConfig, run: RunIdentity, callbacks: Sequence[Any],
                  tags: dict[str, str] | None) -> TrainResult:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from tpo_ray.cluster import require_shared_paths, require_training_resources
    from tpo_ray.ray_utils import ensure_ray
    from tpo_ray.train.reporting import training_progress
    from tpo_ray.train.resume import choose_checkpoint, forget_ray_snapshot
    from tpo_ray.train.worker import train_loop_per_worker

    start = time.perf_counter()
    directory, fp, wanted = expected_cache(cfg)
    manifest = find_cache(str(Path(directory).parent) if not is_uri(directory) else directory.rsplit("/", 1)[0],
                          cfg.data_kind(), fp, wanted)
    if manifest["rows"]["train"] == 0:
        raise CacheError(f"{directory}: no training rows")
    name = run.name
    latest = choose_checkpoint(run, ema=bool(cfg.train.ema_decay))
    finished = _finished_checkpoint(cfg, latest, name)
    if finished is not None:
        log.info("train: %s already reached step %d; nothing to do (raise train.max_steps to continue)", name,
                 cfg.train.max_steps)
        return finished
    train_rows = training_rows(cfg, directory, manifest)
    state = _check_data_layout(cfg, latest, train_rows)
    ensure_ray()
    require_shared_paths({"train.storage_path": run.storage_path, "cache.output": cache_root(cfg)},
                         cfg.shared_filesystem)
    reference: dict[str, Any] = {}
    if cfg.resolved_reference() == "precomputed":
        plan = ensure_reference(cfg, directory, manifest, train_rows, state.global_batch, state.read_lanes)
        reference = {"reference_dir": plan.directory, "reference_key": plan.key, "reference_epochs": plan.epochs}
        log.info("train: reference errors precomputed in %s (%d epochs); no reference U-Net in training",
                 plan.directory, plan.epochs)
    require_training_resources(cfg.train.scaling, joined_cluster=bool(os.environ.get("RAY_ADDRESS")))
    sc = cfg.train.scaling
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if sc.use_gpu else "cpu")
    previous = _existing_run_id(cfg, name) if cfg.tracking.enabled else None
    run_tags = {"tpo_ray.run_name": name, "tpo_ray.stage": cfg.train.loss.name, **(tags or {})}
    forget_ray_snapshot(run)
    with tracking_run(cfg.tracking, cfg.output_dir, run_name=name, run_id=previous, tags=run_tags) as tracker:
        reports = _Reports(tracker)
        with training_progress(cfg.train.max_steps, f"train {name}", on_report=reports) as relay:
            if previous is None:
                tracker.log_params(flatten_config(cfg))
            log.info("train: %s (%s, %d %s workers, backend %s) -> %s", name, cfg.train.loss.name, sc.num_workers,
                     "GPU" if sc.use_gpu else "CPU", cfg.train.backend, run.run_dir)
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"cfg": cfg.model_dump(mode="json"), "cache_dir": directory,
                                   "cache_manifest": manifest, "train_rows": train_rows, "run_id": tracker.run_id,
                                   "sample_grids": _grids_reach_tracking(cfg),
                                   "resume_from": latest[0] if latest else None, **reference},
                scaling_config=ray.train.ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                                       resources_per_worker={"CPU": sc.cpus_per_worker}),
                run_config=ray.train.RunConfig(
                    name=name, storage_path=run.storage_path, callbacks=[relay, *callbacks],
                    failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                    worker_runtime_env={"env_vars": {"DS_ACCELERATOR": os.environ["DS_ACCELERATOR"]}},
                ),
                torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
                **_streaming_datasets(cfg, directory),
            )
            result = trainer.fit()
        # A run resumed at max_steps (its final eval had failed) stores no new checkpoint.
        if result.checkpoint is not None:
            checkpoint = join(run.run_dir, PurePosixPath(result.checkpoint.path).name)
        elif latest is not None:
            checkpoint = latest[0]
        else:
            raise RuntimeError(f"train run {name} finished without a checkpoint")
        # `worker.evaluate` measures triplet and image-pair caches that have a val split, else returns nothing.
        final_eval = manifest["kind"] in ("triplet", "image_pair") and manifest["rows"].get("val", 0) > 0
        metrics = _final_metrics(checkpoint, reports.last, final_eval)
        if cfg.tracking.log_model and not is_uri(checkpoint):
            tracker.log_artifact(Path(checkpoint) / "unet_trainable.safetensors", "unet")
        tracker.set_tags({"tpo_ray.checkpoint": checkpoint})
    seconds = time.perf_counter() - start
    log.info("train: %s finished at step %s in %.1f s; checkpoint %s", name, metrics.get("step"), seconds, checkpoint)
    return TrainResult(name, checkpoint, metrics, tracker.run_id, seconds)
