"""The DeepSpeed config generated from `TrainConfig` (users never write DeepSpeed JSON by hand)."""

from __future__ import annotations

from typing import Any

from tpo_ray.config import TrainConfig


def deepspeed_config(cfg: TrainConfig, world_size: int, use_gpu: bool) -> dict[str, Any]:
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage, "overlap_comm": use_gpu, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if ds.offload_params and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.batch_size * cfg.grad_accum_steps * world_size,
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # progress goes through our logger
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if cfg.max_grad_norm:
        config["gradient_clipping"] = cfg.max_grad_norm
    if cfg.mixed_precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif cfg.mixed_precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config
