"""Optimizer and LR schedule from `TrainConfig`: AdamW (fp32 or 8-bit) or Adafactor; warmup, then
constant, linear or cosine decay.

The schedule is a pure multiplier of the step (`lr_multiplier`), wrapped in a `LambdaLR`, so the
torch backend and DeepSpeed (which takes the same callable) follow exactly the same curve.
"""

from __future__ import annotations

import math

import torch

from tpo_ray.config import TrainConfig


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the U-Net has no trainable parameters (LoRA enabled without adapters?)")
    return params


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = trainable_parameters(model)
    if cfg.optimizer == "adafactor":
        # torch's Adafactor: factored second moments (memory ~ rows + cols), lr used as given.
        return torch.optim.Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError("train.optimizer='adamw_8bit' needs bitsandbytes: pip install bitsandbytes "
                              f"(on the GPU nodes), or use train.optimizer=adamw ({err})") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
                             fused=True if cfg.fused_adamw() else None)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Factor on train.lr at optimizer step `step` (0-based: the step about to be taken).

    Warmup: (step + 1) / warmup_steps, reaching 1 at the last warmup step. Then constant 1, or a
    linear / half-cosine decay from 1 at the end of warmup to 0 at `total_steps`.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown train.lr_scheduler {kind!r}")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    warmup, total, kind = cfg.lr_warmup_steps, cfg.max_steps, cfg.lr_scheduler
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, warmup, total, kind))
