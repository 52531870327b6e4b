"""Every shipped recipe validates (a typo in a recipe fails here, not on a GPU cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
