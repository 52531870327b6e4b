"""Sample grids run whatever the U-Net's dtype: frozen parts follow it (SDXL text-encoder configs say fp16)."""

from __future__ import annotations

import json

import pytest
import torch

from tpo_ray.eval.sampling import build_pipeline, sample_grid


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grid_with_a_unet_in_any_dtype_next_to_fp16_encoder_configs(tiny_model_dirs, tmp_path, family, dtype) -> None:
    import shutil

    from diffusers import UNet2DConditionModel

    model = tmp_path / family
    shutil.copytree(tiny_model_dirs[family], model)
    for encoder in ("text_encoder", "text_encoder_2"):  # as published: the config asks for float16
        config = model / encoder / "config.json"
        if config.exists():
            data = json.loads(config.read_text())
            data["torch_dtype"] = data["dtype"] = "float16"
            config.write_text(json.dumps(data))
    unet = UNet2DConditionModel.from_pretrained(model / "unet").to(dtype)
    pipe = build_pipeline(model, family, unet)
    assert {pipe.vae.dtype, pipe.text_encoder.dtype} == {dtype}
    grid = sample_grid(pipe, ["a red circle", "two blue squares"], steps=2, resolution=32)
    assert grid.size == (64, 32)
