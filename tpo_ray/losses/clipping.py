"""Clips on the negative (loser) term of TDPO/TKTO.

TPO clips the loser's error difference `d_l = m_l - r_l` at `tau` so that once `c_l` is `tau`
worse than under the reference, no gradient pushes it further: this prevents the collapse where
the model "wins" by degrading every caption. Variants are registered by name so new ones need no
change to the losses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ClipFn = Callable[[torch.Tensor, float], torch.Tensor]
CLIPS: dict[str, ClipFn] = {}


def register_clip(name: str) -> Callable[[ClipFn], ClipFn]:
    def decorate(fn: ClipFn) -> ClipFn:
        CLIPS[name] = fn
        return fn

    return decorate


@register_clip("loser_cap")
def loser_cap(d_l: torch.Tensor, tau: float) -> torch.Tensor:
    """`min(d_l, tau)`: zero gradient through the loser once it is `tau` worse than the reference."""
    return torch.clamp(d_l, max=tau)


@register_clip("none")
def no_clip(d_l: torch.Tensor, tau: float) -> torch.Tensor:
    return d_l


def clip_loser(d_l: torch.Tensor, tau: float | None, clip: str = "loser_cap") -> torch.Tensor:
    """Apply the named clip; ``tau=None`` disables clipping whatever the variant."""
    if clip not in CLIPS:
        raise ValueError(f"unknown clip {clip!r}; choose one of {sorted(CLIPS)}")
    if tau is None:
        return d_l
    if tau < 0:
        raise ValueError(f"tau must be >= 0 or None, got {tau}")
    return CLIPS[clip](d_l, tau)


def clip_fraction(d_l: torch.Tensor, tau: float | None) -> float:
    """Share of losers beyond the threshold (0 when clipping is off)."""
    if tau is None or d_l.numel() == 0:
        return 0.0
    return float((d_l.detach() > tau).float().mean())
