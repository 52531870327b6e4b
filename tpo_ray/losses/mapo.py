"""MaPO (Hong et al. 2024): reference-free margin-aware preference optimisation on image pairs.

LOSSES.md "MaPO": f(x) = g*x / expm1(g*x), log_odds = f(m_w) - f(m_l),
loss = mean(m_w) - beta * mean(logsigmoid(T * log_odds)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tpo_ray.losses.registry import LossOutput, as_reduction_dtype, preference_accuracy, register_loss

# Below this |g*x| the Taylor series 1 - z/2 + z^2/12 is exact to float64 rounding and avoids 0/0.
_SERIES_BELOW = 1e-4


def mapo_odds(x: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """f(x) = z / expm1(z) with z = gamma * x; f(0) = 1, smooth and finite for tiny errors."""
    z = gamma * x
    small = z.abs() < _SERIES_BELOW
    z_safe = torch.where(small, torch.ones_like(z), z)
    exact = z_safe / torch.expm1(z_safe)
    series = 1 - z / 2 + z * z / 12
    return torch.where(small, series, exact)


@register_loss("mapo", inputs="pair", data="image_pair", needs_reference=False)
def mapo(
    m_w: torch.Tensor,
    m_l: torch.Tensor,
    *,
    beta: float = 0.1,
    gamma: float = 0.5,
    T: float = 1000.0,
) -> LossOutput:
    """MaPO: denoising loss on the winner plus a reference-free odds margin; no reference model."""
    m_w, m_l = as_reduction_dtype(m_w), as_reduction_dtype(m_l)
    log_odds = mapo_odds(m_w, gamma) - mapo_odds(m_l, gamma)
    ratio = F.logsigmoid(T * log_odds)
    loss = m_w.mean() - beta * ratio.mean()
    metrics = {
        "loss": float(loss.detach()),
        "implicit_acc": preference_accuracy(log_odds),
        "log_odds": float(log_odds.detach().mean()),
        "m_w": float(m_w.detach().mean()),
        "m_l": float(m_l.detach().mean()),
    }
    return LossOutput(loss, metrics)
