"""Every method through the same cache stage and trainer, SD1.5 and SDXL (tiny), one Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpo_ray.cache.job import run_cache
from tpo_ray.config import TPOConfig, apply_overrides, config_from_dict
from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_image_pairs, synthetic_labelled, synthetic_table
from tpo_ray.export import run_export
from tpo_ray.negatives.job import run_negatives
from tpo_ray.train.driver import run_train

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def base(tmp_path_factory, ray_cluster) -> TPOConfig:
    out = tmp_path_factory.mktemp("baselines")
    write_parquet_atomic(synthetic_table(16, 64), out / "data" / "captions.parquet")
    write_parquet_atomic(synthetic_image_pairs(18, 64, tie_every=3), out / "pairs.parquet")
    write_parquet_atomic(synthetic_labelled(16, 64), out / "labelled.parquet")
    cfg = config_from_dict({
        "output_dir": str(out), "data": {"holdout_fraction": 0.25},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(out / "models")},
        "tracking": {"enabled": False},
        "train": {"max_steps": 2, "batch_size": 2, "log_every_steps": 1, "checkpoint_every_steps": 2,
                  "eval_max_pairs": 4},
        "eval": {"timesteps": [500], "noise_draws": 1},
    })
    run_negatives(cfg)
    return cfg


def variant(cfg: TPOConfig, overrides: dict) -> TPOConfig:
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides), "test")


SOURCES = {"dpo": "pairs.parquet", "mapo": "pairs.parquet", "rpo": "pairs.parquet", "kto": "labelled.parquet"}


@pytest.mark.parametrize("name", ["sft", "tkto", "dpo", "mapo", "rpo", "kto"])
def test_each_method_trains_from_its_cache(base: TPOConfig, name: str) -> None:
    overrides: dict = {"train.loss": {"name": name}, "train.run_name": name}
    if name in SOURCES:
        overrides["cache.input"] = str(Path(base.output_dir) / SOURCES[name])
    cfg = variant(base, overrides)
    cache = run_cache(cfg)
    assert cache.manifest["kind"] == {"sft": "single", "tkto": "triplet", "kto": "labelled"}.get(name, "image_pair")
    if cache.manifest["kind"] == "image_pair":
        assert cache.manifest["rejected"] == {"tie": 6}  # every third row is a tie and is quarantined
    result = run_train(cfg)
    state = json.loads((Path(result.checkpoint) / "train_state.json").read_text())
    assert state["step"] == 2 and result.metrics["train/loss"] == result.metrics["train/loss"]  # finite, not NaN
    if name == "tkto":
        assert "train/z0" in result.metrics


def test_image_pair_cache_needs_its_columns(base: TPOConfig) -> None:
    cfg = variant(base, {"train.loss": {"name": "dpo"}, "cache.input": str(Path(base.output_dir) / "labelled.parquet")})
    with pytest.raises(ValueError, match=r"lacks columns \['jpg_0', 'jpg_1', 'label_0'\]"):
        run_cache(cfg)


def test_sdxl_tdpo_trains_and_exports(base: TPOConfig, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    cfg = variant(base, {"model.pretrained": "tiny:sdxl", "train.run_name": "sdxl",
                         "export.output": str(tmp_path / "sdxl")})
    manifest = run_cache(cfg).manifest
    assert manifest["model"]["family"] == "sdxl" and manifest["shapes"]["pooled"] == [32]
    result = run_train(cfg)
    assert result.metrics["step"] == 2
    pipe = StableDiffusionXLPipeline.from_pretrained(run_export(cfg).output)
    images = pipe("two red circles", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert images.shape == (1, 64, 64, 3)
