"""Supervised fine-tuning on (image, true caption): stage 1 of TPO and a baseline."""

from __future__ import annotations

import torch

from tpo_ray.losses.registry import LossOutput, as_reduction_dtype, register_loss


@register_loss("sft", inputs="single", data="single", needs_reference=False)
def sft(m: torch.Tensor) -> LossOutput:
    """Plain denoising loss `mean(m)` (LOSSES.md "SFT")."""
    m = as_reduction_dtype(m)
    loss = m.mean()
    return LossOutput(loss, {"loss": float(loss.detach()), "m": float(loss.detach())})
