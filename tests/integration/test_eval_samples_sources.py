"""Samples are keyed by what produced them: a model retrained into the same folder, or other sampling
settings, gives new images (and one index row per image); a training checkpoint and a U-Net folder are
sampled inside the base pipeline exactly as their export would be."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
import torch

from tpo_ray.config import apply_overrides, config_from_dict
from tpo_ray.eval.sample_job import current_index, plan_samples, read_index, run_sample

pytestmark = pytest.mark.usefixtures("ray_cluster")


def make_cfg(tmp_path: Path, models: dict[str, str], **overrides) -> object:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    data = {"output_dir": str(tmp_path / "out"), "data": {"resolution": 32},
            "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "models")},
            "eval": {"prompts": str(prompts), "models": models, "num_inference_steps": 2}}
    return config_from_dict(apply_overrides(data, overrides), "test")


def perturbed_unet(folder: Path, seed: int):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return unet


def shas(index: list[dict]) -> dict[tuple, str]:
    return {(r["model"], r["prompt_id"], r["k"]): r["image_sha256"] for r in index}


def test_retraining_into_the_same_folder_or_new_settings_resample_and_keep_one_row_each(tmp_path, tiny_model_dirs,
                                                                                      caplog) -> None:
    export = tmp_path / "export"
    shutil.copytree(tiny_model_dirs["sd15"], export)
    cfg = make_cfg(tmp_path, {"tdpo": str(export)})
    first = run_sample(cfg)
    assert (first.sampled, first.skipped) == (2, 0)
    rows = read_index(first.directory)
    for r in rows:
        assert r["image_sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()
        assert '"num_inference_steps":2' in r["settings"] and '"guidance_scale":7.5' in r["settings"]
    old = shas(rows)
    assert plan_samples(cfg) == ([], 2) and shas(current_index(cfg)) == old

    perturbed_unet(export / "unet", seed=1).save_pretrained(export / "unet")  # tdpo retrained into the folder
    with caplog.at_level(logging.INFO, logger="tpo_ray.eval.sample_job"):
        todo, done = plan_samples(cfg)
    assert (len(todo), done) == (2, 0)
    assert "eval: tdpo: 2 images resampled: model changed (stamp " in caplog.text
    assert len(current_index(cfg)) == 0  # the old images are not this model's any more
    again = run_sample(cfg)
    assert (again.sampled, again.skipped) == (2, 0)
    new = shas(read_index(again.directory))
    assert len(read_index(again.directory)) == 2 and set(new) == set(old)
    assert all(new[k] != old[k] for k in old)
    assert shas(current_index(cfg)) == new

    caplog.clear()
    more_steps = make_cfg(tmp_path, {"tdpo": str(export)}, **{"eval.num_inference_steps": 3,
                                                                "eval.guidance_scale": 5.0})
    with caplog.at_level(logging.INFO, logger="tpo_ray.eval.sample_job"):
        assert len(plan_samples(more_steps)[0]) == 2
    assert ("eval: tdpo: 2 images resampled: settings changed: guidance_scale 7.5 -> 5.0, "
            "num_inference_steps 2 -> 3") in caplog.text
    third = run_sample(more_steps)
    assert third.sampled == 2 and len(read_index(third.directory)) == 2
    assert all(shas(read_index(third.directory))[k] != new[k] for k in new)
    assert current_index(cfg) == [] and len(current_index(more_steps)) == 2
    assert run_sample(more_steps).sampled == 0


def test_a_checkpoint_and_a_unet_folder_sample_like_their_export(tmp_path, tiny_model_dirs) -> None:
    from safetensors.torch import save_file

    from tpo_ray.export import export_pipeline
    from tpo_ray.train.checkpoint import WEIGHTS

    base_cfg = make_cfg(tmp_path, {})
    unet = perturbed_unet(tiny_model_dirs["sd15"] / "unet", seed=2)
    ckpt = tmp_path / "run" / "checkpoint_000003"
    ckpt.mkdir(parents=True)  # as tpo_ray/train/checkpoint.py writes one (no LoRA: every U-Net weight trains)
    save_file({n: p.detach().contiguous() for n, p in unet.named_parameters()}, str(ckpt / WEIGHTS))
    unet.save_pretrained(tmp_path / "unet-folder")
    export_pipeline(apply_overrides(base_cfg.model_dump(mode="json"), {"export.output": str(tmp_path / "export")}),
                    str(ckpt))

    cfg = make_cfg(tmp_path, {"base": "tiny:sd15", "ckpt": str(ckpt), "unet": str(tmp_path / "unet-folder"),
                              "export": str(tmp_path / "export")}, **{"eval.prompts": str(tmp_path / "one.txt")})
    (tmp_path / "one.txt").write_text("a red circle\n")
    result = run_sample(cfg)
    assert result.sampled == 4
    by_model = {r["model"]: r["image_sha256"] for r in current_index(cfg)}
    assert by_model["ckpt"] == by_model["export"] == by_model["unet"] != by_model["base"]
