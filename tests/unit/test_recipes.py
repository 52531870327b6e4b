"""Every shipped recipe validates (a typo in a recipe fails here, not on a GPU cluster)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tpo_ray.config import load_config

RECIPES = sorted((Path(__file__).parents[2] / "jobs" / "configs").glob("*.yaml"))


def test_recipes_exist() -> None:
    assert {p.stem for p in RECIPES} >= {"sd15_tdpo", "sdxl_tdpo", "negatives_vllm", "cpu_smoke"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.output_dir


@pytest.mark.parametrize("path", [p for p in RECIPES if "tune" in p.stem], ids=lambda p: p.stem)
def test_sweep_recipe_search_space_validates(path: Path) -> None:
    from tpo_ray.tune.space import parse_space, validate_space

    cfg = load_config(path)
    domains = parse_space(cfg.tune.search_space, cfg.tune.search)
    assert len(validate_space(cfg.model_dump(mode="json"), domains)) > 1


PIPELINES = [p for p in RECIPES if "\npipeline:" in p.read_text()]  # the others are one-stage recipes


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_pipeline_stage_of_a_recipe_builds(path: Path) -> None:
    """What `tpo-ray pipeline` checks before any work: each stage's config, overrides applied, validates."""
    from tpo_ray.pipeline import stage_configs

    cfg = load_config(path)
    configs = stage_configs(cfg)
    assert set(configs) <= set(cfg.pipeline.stages) | {"negatives"}
    if "eval" in configs:
        assert configs["eval"].eval.models and set(configs["eval"].eval.scorers) <= set(configs["eval"].eval.scorer_weights)


CLUSTER = Path(__file__).parents[2] / "cluster"


def cluster_recipes() -> list[Path]:
    """Recipes the cluster manifests run (their RayJob entrypoints and overlays name them)."""
    named = {m for p in CLUSTER.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".md")
             for m in re.findall(r"jobs/configs/([\w.-]+\.ya?ml)", p.read_text())}
    return sorted(Path(__file__).parents[2] / "jobs" / "configs" / name for name in named)


def test_cluster_recipes_are_found() -> None:
    assert {p.stem for p in cluster_recipes()} >= {"sd15_tdpo", "sdxl_tdpo", "sd15_tune_tdpo"}
    assert all(p.is_file() for p in cluster_recipes())


@pytest.mark.parametrize("path", cluster_recipes(), ids=lambda p: p.stem)
def test_a_cluster_recipe_leaves_the_mlflow_server_to_the_environment(path: Path, monkeypatch) -> None:
    """The cluster's ConfigMap sets MLFLOW_TRACKING_URI; a recipe naming its own server would ignore it."""
    from tpo_ray.cli import load

    raw = yaml.safe_load(path.read_text())
    assert "tracking_uri" not in (raw.get("tracking") or {}), f"{path.name} hard-codes tracking.tracking_uri"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-the-configmap:5000")
    assert load(path, [], debug=False).tracking.tracking_uri == "http://from-the-configmap:5000"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_only_a_recipe_for_local_use_names_its_mlflow_store(path: Path) -> None:
    text = path.read_text()
    if "tracking_uri" in (yaml.safe_load(text).get("tracking") or {}):
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        assert path not in cluster_recipes() and "for local use" in header.lower(), \
            f"{path.name} names tracking.tracking_uri without saying it is meant for local use"


@pytest.mark.parametrize("path", [p for p in RECIPES if "train" in yaml.safe_load(p.read_text())], ids=lambda p: p.name)
def test_every_training_recipe_sets_its_sampling_explicitly(path: Path) -> None:
    """Steps and guidance decide every sampled image and so every reward score: a recipe states them,
    with the family's usual guidance (SD1.5 7.5, SDXL 5.0), instead of inheriting a default."""
    from tpo_ray.config import GUIDANCE_BY_FAMILY

    written = yaml.safe_load(path.read_text()).get("eval") or {}
    assert {"num_inference_steps", "guidance_scale"} <= set(written), f"{path.name}: eval section {written}"
    family = "sdxl" if path.name.startswith("sdxl") else "sd15"
    assert written["guidance_scale"] == GUIDANCE_BY_FAMILY[family]
