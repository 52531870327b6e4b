"""MLflow tracking that never takes a run down unless asked to.

`tracking_run` opens one MLflow run (tracking URI from config, default a sqlite store in the output
folder) and yields a `Tracker`; when the store is unreachable it warns and yields a tracker that
does nothing, unless `tracking.fail_on_error` is set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tpo_ray.config import TPOConfig, TrackingConfig

log = logging.getLogger(__name__)


def with_environment_uri(cfg: TPOConfig, environ: Mapping[str, str] = os.environ) -> TPOConfig:
    """The config with `tracking.tracking_uri` taken from MLFLOW_TRACKING_URI when it names none (a cluster
    sets the variable from a ConfigMap), so the precedence is: override > YAML > MLFLOW_TRACKING_URI >
    `<output_dir>/mlflow.db`. Read once, when a command loads its config (`tpo_ray.cli.load`), not by
    `load_config` or a default factory: MLflow itself sets the variable on every `set_tracking_uri`, so
    a config validated later in the same process (a benchmark's next case) would pick up an earlier
    run's store. The resolved URI travels in the config to Ray workers and Tune trials."""
    uri = environ.get("MLFLOW_TRACKING_URI")
    if cfg.tracking.tracking_uri or not uri:
        return cfg
    return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"tracking_uri": uri})})


def tracking_uri(cfg: TrackingConfig, output_dir: str) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return f"sqlite:///{(Path(output_dir) / 'mlflow.db').absolute()}"


def is_remote_store(cfg: TrackingConfig) -> bool:
    """A tracking server (http, https, databricks) rather than a store on this machine's disk."""
    return (cfg.tracking_uri or "sqlite:").split(":", 1)[0] in ("http", "https", "databricks")


def artifact_location(cfg: TrackingConfig, output_dir: str) -> str | None:
    """Where a new experiment keeps its artifacts: `<output_dir>/mlartifacts` for a local store.

    MLflow's default for a database store is `./mlruns` of whatever directory the command runs
    in, which scatters model weights into the user's checkout. A tracking server decides for
    itself (its `--default-artifact-root`), so for http(s) URIs this returns None.
    """
    if is_remote_store(cfg):
        return None
    return (Path(output_dir) / "mlartifacts").absolute().as_uri()


def set_experiment(cfg: TrackingConfig, output_dir: str) -> None:
    """Select `cfg.experiment`, creating it with its artifacts under the output folder if it is new."""
    import mlflow

    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        try:
            mlflow.create_experiment(cfg.experiment, artifact_location=artifact_location(cfg, output_dir))
        except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent stage
            if mlflow.get_experiment_by_name(cfg.experiment) is None:
                raise
    mlflow.set_experiment(cfg.experiment)


class Tracker:
    """Thin wrapper over one MLflow run: every call is a warning on failure, not an exception (unless
    fail_on_error).

    Calls go through `MlflowClient` with the run id, not the fluent API: the fluent API's active run
    is per thread, and the driver logs training metrics from the thread that drains Ray Train's
    reports (a fluent call there would silently open a new run).
    """

    def __init__(self, run_id: str | None, fail_on_error: bool, uri: str | None = None) -> None:
        self.run_id = run_id
        self.fail_on_error = fail_on_error
        self._client = None
        if run_id is not None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=uri)

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _call(self, what: str, method: str, *args, **kwargs) -> None:
        if not self.active:
            return
        try:
            getattr(self._client, method)(self.run_id, *args, **kwargs)
        except Exception as err:  # a tracking outage must not lose the training run
            if self.fail_on_error:
                raise
            log.warning("MLflow %s failed (%s: %s); continuing without it", what, type(err).__name__, err)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        clean = [Param(k[:250], "null" if v is None else str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(clean), 100):
            self._call("log_params", "log_batch", params=clean[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._call("log_metrics", "log_batch", metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", "log_artifact", str(path), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", "log_artifacts", str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("set_tags", "log_batch", tags=[RunTag(k, str(v)) for k, v in tags.items()])


@contextmanager
def tracking_run(cfg: TrackingConfig, output_dir: str, run_name: str, nested: bool = False,
                 tags: dict[str, str] | None = None, run_id: str | None = None,
                 end_status: str | None = "FINISHED") -> Iterator[Tracker]:
    """Open (or with `run_id`, reopen) one MLflow run; `end_status=None` leaves it open for a resume."""
    if not cfg.enabled:
        yield Tracker(None, cfg.fail_on_error)
        return
    import mlflow

    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(tracking_uri(cfg, output_dir))
        set_experiment(cfg, output_dir)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested, tags=tags)
    except Exception as err:
        if cfg.fail_on_error:
            raise
        log.warning("MLflow unavailable (%s: %s); this run is not tracked", type(err).__name__, err)
        yield Tracker(None, cfg.fail_on_error)
        return
    status = "FAILED"
    try:
        yield Tracker(run.info.run_id, cfg.fail_on_error, tracking_uri(cfg, output_dir))
        status = end_status or "RUNNING"
    finally:
        try:
            mlflow.end_run(status=status)
        except Exception as err:  # pragma: no cover - store vanished mid-run
            log.warning("MLflow end_run failed: %s", err)
