"""Noise, targets and per-sample denoising errors (LOSSES.md "Common terms"): pure tensor code."""

from __future__ import annotations

import torch

from tpo_ray.models.conditioning import Conditioning


def noisy_latents(scheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return scheduler.add_noise(x0, eps, t)


def training_target(scheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`eps` for epsilon prediction, the velocity for v_prediction."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, eps, t)
    raise ValueError(f"unsupported prediction_type {kind!r}; use epsilon or v_prediction")


def per_sample_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over (C, H, W) in fp32: [N]."""
    return ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, pred.dim())))


def denoising_errors(unet, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, target: torch.Tensor) -> torch.Tensor:
    """One U-Net forward over the whole batch, then per-sample errors [N] in fp32.

    Latents, noise, targets and SDXL time ids stay fp32 up to here (a bf16 time id 1365 would be
    1368); only what enters the U-Net's layers is cast to the dtype of its weights (bf16 under a
    DeepSpeed bf16 engine; unchanged for fp32 weights under autocast). Time ids go in as fp32: the
    U-Net embeds them sinusoidally before casting.
    """
    dtype = next(unet.parameters()).dtype
    kwargs = cond.unet_kwargs()
    kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"].to(dtype)
    if "added_cond_kwargs" in kwargs:
        added = kwargs["added_cond_kwargs"]
        kwargs["added_cond_kwargs"] = {"text_embeds": added["text_embeds"].to(dtype),
                                       "time_ids": added["time_ids"].float()}
    pred = unet(x_t.to(dtype), t, **kwargs).sample
    return per_sample_errors(pred, target)
