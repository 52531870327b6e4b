"""Shared fixtures: tiny SD1.5/SDXL models saved once per session in diffusers layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model_dirs(model_cache: Path) -> dict[str, Path]:
    from tpo_ray.models.tiny import save_tiny_model

    return {family: save_tiny_model(model_cache / f"tiny-{family}", family) for family in ("sd15", "sdxl")}
