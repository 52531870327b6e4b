"""Diffusion-KTO and TKTO: prospect-theoretic loss on unpaired samples with labels y = +1/-1.

TKTO (TPO paper) turns each triplet into a desirable sample (x, c_w, +1) and an undesirable one
(x, c_l, -1) and clips the undesirable reward like TDPO. LOSSES.md "TKTO":

    g = r - m;  g_l = -min(m_l - r_l, tau);  z0 = clamp(mean(g), min=0).detach()
    loss = mean(1 - sigmoid(y * beta * (g - z0)))

`beta` follows the KTO convention (no halving). When training on several workers, the step
computes z0 from globally reduced sums (`reference_point_terms`) and passes it in as `z0`.
"""

from __future__ import annotations

from typing import Literal

import torch

from tpo_ray.losses.clipping import clip_fraction
from tpo_ray.losses.registry import LossOutput, as_reduction_dtype, preference_accuracy, register_loss

KLMode = Literal["batch", "undesirable", "rolled"]
KL_MODES: tuple[str, ...] = ("batch", "undesirable", "rolled")


def implicit_reward(m: torch.Tensor, r: torch.Tensor, y: torch.Tensor, tau: float | None) -> torch.Tensor:
    """`g = r - m`, with undesirable rewards floored at `-tau` (the loser cap, no gradient past it)."""
    g = r - m
    if tau is None:
        return g
    if tau < 0:
        raise ValueError(f"tau must be >= 0 or None, got {tau}")
    return torch.where(y < 0, torch.clamp(g, min=-tau), g)


def reference_point_terms(g: torch.Tensor, y: torch.Tensor, kl_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of the rewards that define z0, detached; all-reduce both, then divide.

    ``rolled`` needs extra no-grad forwards with mismatched captions, so its z0 is always computed
    by the caller and passed to the loss.
    """
    g = g.detach()
    if kl_mode == "batch":
        selected = g
    elif kl_mode == "undesirable":
        selected = g[y < 0]
    elif kl_mode == "rolled":
        raise ValueError("kl_mode='rolled' needs z0 from the caller (rolled-caption forwards)")
    else:
        raise ValueError(f"unknown kl_mode {kl_mode!r}; choose one of {list(KL_MODES)}")
    return selected.sum(), torch.tensor(float(selected.numel()), dtype=g.dtype, device=g.device)


def reference_point(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """z0 = clamp(total / count, min=0); 0 when there is nothing to average."""
    if float(count) == 0:
        return torch.zeros((), dtype=total.dtype, device=total.device)
    return torch.clamp(total / count, min=0).detach()


def _kto_body(
    m: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float,
    tau: float | None,
    kl_mode: str,
    z0: torch.Tensor | float | None,
) -> LossOutput:
    m, r = as_reduction_dtype(m), as_reduction_dtype(r)
    y = y.to(m.dtype)
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("y must contain only +1 (desirable) and -1 (undesirable)")
    g = implicit_reward(m, r, y, tau)
    if z0 is None:
        z0_t = reference_point(*reference_point_terms(g, y, kl_mode))
    else:
        z0_t = torch.as_tensor(z0, dtype=m.dtype, device=m.device).detach()
    s = y * beta * (g - z0_t)
    loss = (1 - torch.sigmoid(s)).mean()
    metrics = {
        "loss": float(loss.detach()),
        "implicit_acc": preference_accuracy(s),
        "z0": float(z0_t),
        "clip_frac": clip_fraction((m - r)[y < 0], tau),
        "m": float(m.detach().mean()),
        "r": float(r.detach().mean()),
    }
    return LossOutput(loss, metrics)


@register_loss("tkto", inputs="labelled", data="triplet", needs_reference=True, needs_reference_point=True)
def tkto(
    m: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float = 5000.0,
    tau: float | None = None,
    kl_mode: KLMode = "batch",
    z0: torch.Tensor | float | None = None,
) -> LossOutput:
    """TKTO: KTO over (x, c_w, +1) and (x, c_l, -1) with the loser cap on undesirable rewards."""
    return _kto_body(m, r, y, beta=beta, tau=tau, kl_mode=kl_mode, z0=z0)


@register_loss("kto", inputs="labelled", data="labelled", needs_reference=True, needs_reference_point=True)
def kto(
    m: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float = 5000.0,
    kl_mode: KLMode = "batch",
    z0: torch.Tensor | float | None = None,
) -> LossOutput:
    """Diffusion-KTO over unpaired (x, c, y) samples: TKTO without the clip."""
    return _kto_body(m, r, y, beta=beta, tau=None, kl_mode=kl_mode, z0=z0)
