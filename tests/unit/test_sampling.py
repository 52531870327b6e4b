"""Sample grids run whatever the U-Net's dtype: frozen parts follow it (SDXL text-encoder configs say fp16)."""

from __future__ import annotations

import json
import math

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


def test_ddp_lora_bf16_keeps_the_base_in_bf16_and_adapters_fp32_trains_and_samples(tiny_model_dirs) -> None:
    """DDP + LoRA + bf16: the frozen base is stored in bf16 (half its memory), adapters stay fp32 and
    are the only weights an update moves; the preview grid runs on that mixed U-Net."""
    from diffusers import UNet2DConditionModel

    from tpo_ray.config import TrainConfig
    from tpo_ray.models.reference import add_lora
    from tpo_ray.train.backend import TorchBackend

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dirs["sd15"] / "unet")
    add_lora(unet, rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    backend = TorchBackend(unet, TrainConfig(mixed_precision="bf16", lr=1e-2), wrap=lambda m: m)
    frozen = {n: p.detach().clone() for n, p in unet.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    assert trained and {p.dtype for p in frozen.values()} == {torch.bfloat16}
    assert {p.dtype for p in trained.values()} == {torch.float32}

    cfg = unet.config
    x = torch.randn(2, cfg.in_channels, 8, 8)
    with backend.autocast(torch.device("cpu")):
        out = unet(x, torch.tensor([10, 500]), torch.randn(2, 77, cfg.cross_attention_dim)).sample
    backend.backward(out.float().pow(2).mean(), 1)
    assert math.isfinite(backend.update())
    after = dict(unet.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in trained.items())

    pipe = build_pipeline(tiny_model_dirs["sd15"], "sd15", unet)
    assert sample_grid(pipe, ["a red circle"], steps=2, resolution=32).size == (32, 32)
