"""Where MLflow runs go: the config's URI, else MLFLOW_TRACKING_URI, else a store in output_dir."""

from __future__ import annotations


def test_mlflow_tracking_uri_from_the_environment_when_the_config_names_none(monkeypatch) -> None:
    from tpo_ray.config import TrackingConfig
    from tpo_ray.tracking import is_remote_store, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(TrackingConfig(), "/out").startswith("sqlite:///")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.mlflow.svc:5000")
    assert tracking_uri(TrackingConfig(), "/out") == "http://mlflow.mlflow.svc:5000"
    assert is_remote_store(TrackingConfig())
    assert tracking_uri(TrackingConfig(tracking_uri="sqlite:///x.db"), "/out") == "sqlite:///x.db"  # the config wins
