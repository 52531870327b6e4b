"""Diffusion-DPO and TDPO: one function, the text-pair variant adds a clip on the loser term.

Diffusion-DPO (Wallace et al. 2023) compares two images under one caption; TDPO (TPO, arXiv
2509.25771) compares one image under its true caption `c_w` and an edited caption `c_l`. The math
is the same on per-sample errors (LOSSES.md "TDPO"):

    d_w = m_w - r_w,  d_l = min(m_l - r_l, tau),  loss = -logsigmoid(beta / 2 * (d_l - d_w))

`beta` follows the Diffusion-DPO convention (beta=5000 -> logit coefficient 2500).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tpo_ray.losses.clipping import clip_fraction, clip_loser
from tpo_ray.losses.registry import LossOutput, as_reduction_dtype, preference_accuracy, register_loss


def pairwise_preference_loss(
    m_w: torch.Tensor,
    m_l: torch.Tensor,
    r_w: torch.Tensor,
    r_l: torch.Tensor,
    *,
    beta: float,
    tau: float | None,
    clip: str,
) -> LossOutput:
    """Shared body of DPO and TDPO on 1-D per-sample errors of equal length."""
    m_w, m_l, r_w, r_l = (as_reduction_dtype(x) for x in (m_w, m_l, r_w, r_l))
    d_w = m_w - r_w
    d_l = m_l - r_l
    margin = clip_loser(d_l, tau, clip) - d_w
    loss = -F.logsigmoid(beta / 2 * margin).mean()
    metrics = {
        "loss": float(loss.detach()),
        "implicit_acc": preference_accuracy(d_l - d_w),
        "clip_frac": clip_fraction(d_l, tau),
        "margin": float(margin.detach().mean()),
        "m_w": float(m_w.detach().mean()),
        "m_l": float(m_l.detach().mean()),
        "r_w": float(r_w.detach().mean()),
        "r_l": float(r_l.detach().mean()),
    }
    return LossOutput(loss, metrics)


@register_loss("tdpo", inputs="pair", data="triplet", needs_reference=True)
def tdpo(
    m_w: torch.Tensor,
    m_l: torch.Tensor,
    r_w: torch.Tensor,
    r_l: torch.Tensor,
    *,
    beta: float = 5000.0,
    tau: float | None = None,
    clip: str = "loser_cap",
) -> LossOutput:
    """TDPO: DPO over (image, true caption, edited caption) with a clip on the loser term."""
    return pairwise_preference_loss(m_w, m_l, r_w, r_l, beta=beta, tau=tau, clip=clip)


@register_loss("dpo", inputs="pair", data="image_pair", needs_reference=True)
def dpo(
    m_w: torch.Tensor,
    m_l: torch.Tensor,
    r_w: torch.Tensor,
    r_l: torch.Tensor,
    *,
    beta: float = 5000.0,
) -> LossOutput:
    """Diffusion-DPO over image pairs (x_w, x_l, c): TDPO without the clip."""
    return pairwise_preference_loss(m_w, m_l, r_w, r_l, beta=beta, tau=None, clip="none")
