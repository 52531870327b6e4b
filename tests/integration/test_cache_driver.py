"""The cache job's driver loads no model: encoders live only in Ray tasks and actors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpo_ray.cache.job import run_cache
from tpo_ray.config import config_from_dict
from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_cache_driver_holds_no_encoders(tmp_path: Path, monkeypatch) -> None:
    import tpo_ray.models.loading as loading

    def no_models_on_the_driver(*args, **kwargs):
        raise AssertionError("the cache driver loaded model components")

    cfg = config_from_dict({"output_dir": str(tmp_path), "model": {"cache_dir": str(tmp_path / "models")},
                            "train": {"loss": {"name": "sft"}}, "tracking": {"enabled": False}})
    write_parquet_atomic(synthetic_table(8, 64), cfg.captions_source())
    loading.resolve_model_dir(cfg.model)  # materialise the tiny model (no weights loaded)
    monkeypatch.setattr(loading, "load_components", no_models_on_the_driver)
    result = run_cache(cfg)
    assert result.manifest["rows"]["train"] + result.manifest["rows"]["val"] == 8
    assert result.manifest["shapes"]["x0"] == [4, 8, 8]
    assert (Path(result.directory) / "null_cond.safetensors").is_file()
