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
