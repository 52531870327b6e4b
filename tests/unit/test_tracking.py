"""Where MLflow runs go: the config's URI, else MLFLOW_TRACKING_URI as it was when the command loaded
its config, else a store in output_dir."""

from __future__ import annotations

from tpo_ray.config import TPOConfig, TrackingConfig
from tpo_ray.tracking import is_remote_store, tracking_uri, with_environment_uri


def test_the_environment_names_the_store_only_when_the_config_names_none() -> None:
    cfg = TPOConfig()
    assert tracking_uri(cfg.tracking, "/out") == "sqlite:////out/mlflow.db"
    from_env = with_environment_uri(cfg, {"MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc:5000"})
    assert from_env.tracking.tracking_uri == "http://mlflow.mlflow.svc:5000" and is_remote_store(from_env.tracking)
    assert cfg.tracking.tracking_uri is None  # a copy: the loaded config is not changed in place
    own = TPOConfig(tracking=TrackingConfig(tracking_uri="sqlite:///x.db"))
    assert with_environment_uri(own, {"MLFLOW_TRACKING_URI": "http://elsewhere"}).tracking.tracking_uri == "sqlite:///x.db"
    assert with_environment_uri(cfg, {}).tracking.tracking_uri is None


def test_a_variable_mlflow_sets_later_does_not_move_a_loaded_run(monkeypatch) -> None:
    """MLflow's own set_tracking_uri writes MLFLOW_TRACKING_URI: a store named afterwards is not ours."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////another/run/mlflow.db")
    assert tracking_uri(TrackingConfig(), "/out") == "sqlite:////out/mlflow.db"
