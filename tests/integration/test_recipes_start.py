"""Every DeepSpeed recipe builds its engine and takes a step (the SDXL recipe once could not start).

The recipe's train and model sections as shipped (ZeRO stage, offload, optimizer, LoRA, bf16,
schedule) on the tiny U-Net in one CPU process: what fails here fails at `deepspeed.initialize`
on the cluster too. Offload JIT-builds DeepSpeed's `cpu_adam` once (cached in TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.integration.test_deepspeed_sharded import run_ranks
from tpo_ray.config import config_from_dict, load_config
from tpo_ray.losses import LossOutput

RECIPES = sorted((Path(__file__).parents[2] / "jobs" / "configs").glob("*.yaml"))
DEEPSPEED = [p for p in RECIPES if load_config(p).train.backend == "deepspeed"]


def _start_and_step(rank: int, data: dict) -> None:
    import torch.distributed as dist

    from tpo_ray.models.reference import add_lora
    from tpo_ray.models.tiny import build_tiny_pipeline
    from tpo_ray.train.backend import build_backend
    from tpo_ray.train.loop import GuardState, optimizer_step

    cfg = config_from_dict(data, "recipe")
    unet = build_tiny_pipeline("sd15").unet
    if cfg.model.lora.enabled:
        lora = cfg.model.lora
        add_lora(unet, lora.rank, lora.alpha, lora.target_modules)
    backend = build_backend(unet, cfg.train, dist.get_world_size(), use_gpu=False, wrap=lambda m: m)
    before = _trainable_snapshot(unet, cfg)
    micro = cfg.train.batch_size

    def step_fn(batch, generator):
        x = torch.randn(micro, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        cond = torch.randn(micro, 77, 32, generator=torch.Generator().manual_seed(2))
        dtype = backend.compute_dtype
        out = backend.model(x.to(dtype), torch.full((micro,), 500), encoder_hidden_states=cond.to(dtype)).sample
        return LossOutput(out.float().pow(2).mean(), {"loss": 0.0})

    for step in range(1, 3):  # two optimizer steps through the project's loop, accumulation included
        metrics = optimizer_step(step_fn, [None] * cfg.train.grad_accum_steps, backend, guard=GuardState(),
                                 max_consecutive_nonfinite=3, step_index=step)
        assert math.isfinite(metrics["grad_norm"]) and metrics["lr"] > 0, metrics
    after = _trainable_snapshot(unet, cfg)
    assert all(t.numel() for t in before.values())
    moved = sum(float((after[n] - before[n]).abs().max()) > 0 for n in before)
    assert moved > 0, "the recipe's optimizer took no step"


def _trainable_snapshot(unet, cfg) -> dict[str, torch.Tensor]:
    """Full trainable tensors (gathered under ZeRO-3, where each rank holds only a partition)."""
    import contextlib

    import deepspeed

    params = [p for p in unet.parameters() if p.requires_grad]
    zero3 = cfg.train.backend == "deepspeed" and cfg.train.deepspeed.zero_stage == 3
    with deepspeed.zero.GatheredParameters(params) if zero3 else contextlib.nullcontext():
        return {n: p.detach().float().clone() for n, p in unet.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.stem)
def test_deepspeed_recipe_builds_its_engine_and_steps(path: Path) -> None:
    # The recipe as shipped, but a learning rate whose update survives bf16 weights in two steps.
    cfg = load_config(path, ["train.lr=1e-2", "train.lr_warmup_steps=0"])
    run_ranks(_start_and_step, cfg.model_dump(mode="json"), world=1)
