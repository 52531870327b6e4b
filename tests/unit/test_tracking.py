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


SERVER = "http://mlflow.example:5000"


def _load(tmp_path, text: str, overrides: list[str] | None = None):
    """What a `tpo-ray <stage> --config FILE [overrides]` command loads (the variable is read then, once)."""
    from tpo_ray.cli import load

    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return load(path, overrides or [], debug=False)


def test_a_recipe_without_a_tracking_uri_logs_where_mlflow_tracking_uri_says(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    cfg = _load(tmp_path, "tracking: {experiment: tpo-sd15}\n")
    assert cfg.tracking.tracking_uri == SERVER and tracking_uri(cfg.tracking, cfg.output_dir) == SERVER


def test_without_the_variable_a_recipe_logs_to_a_store_in_its_output(tmp_path) -> None:
    cfg = _load(tmp_path, f"output_dir: {tmp_path / 'out'}\n")
    assert tracking_uri(cfg.tracking, cfg.output_dir) == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"


def test_precedence_override_then_yaml_then_the_variable(tmp_path, monkeypatch) -> None:
    """CLI override > YAML > MLFLOW_TRACKING_URI > sqlite store in output_dir (TrackingConfig.tracking_uri)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    pinned = "tracking: {tracking_uri: 'sqlite:////data/local.db'}\n"
    assert _load(tmp_path, pinned).tracking.tracking_uri == "sqlite:////data/local.db"
    overridden = _load(tmp_path, pinned, ["tracking.tracking_uri=http://other:5000"])
    assert overridden.tracking.tracking_uri == "http://other:5000"
