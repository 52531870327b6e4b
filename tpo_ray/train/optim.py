"""Optimizer and LR schedule from `TrainConfig`: AdamW over trainable parameters, linear warmup."""

from __future__ import annotations

import torch

from tpo_ray.config import TrainConfig


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the U-Net has no trainable parameters (LoRA enabled without adapters?)")
    return params


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    warmup = cfg.lr_warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
