"""The loss registry: every training method is a pure function registered here by name.

The trainer, the config validation, the CLI help and the tests all derive the list of valid methods
from `LOSSES`; metadata in `LOSS_SPECS` tells the training step which inputs a loss needs (paired
errors, reference errors, labels, embeddings) so it computes only those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

LossInputs = Literal["single", "pair", "labelled"]
# The training examples a loss learns from (the cache stage builds them):
#   single: (x, c); triplet: (x, c_w, c_l); image_pair: (x_w, x_l, c); labelled: (x, c, y).
DataKind = Literal["single", "triplet", "image_pair", "labelled"]


@dataclass
class LossOutput:
    """A scalar differentiable loss plus float metrics (plain keys, namespaced by the trainer)."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LossSpec:
    """What a loss consumes, so the step builds exactly that.

    inputs: ``single`` -> ``fn(m)``; ``pair`` -> ``fn(m_w, m_l[, r_w, r_l][, emb])``;
    ``labelled`` -> ``fn(m, r, y)`` with ``y`` = +1 (desirable) / -1 (undesirable).
    """

    name: str
    inputs: LossInputs
    data: DataKind
    needs_reference: bool
    needs_embeddings: bool = False
    # One timestep for the whole micro-batch (RPO compares errors across pairs at one noise level).
    shared_timestep: bool = False
    # Uses a reference point z0 that must be averaged across workers (KTO family).
    needs_reference_point: bool = False
    description: str = ""


LossFn = Callable[..., LossOutput]
LOSSES: dict[str, LossFn] = {}
LOSS_SPECS: dict[str, LossSpec] = {}


def register_loss(
    name: str,
    *,
    inputs: LossInputs,
    data: DataKind,
    needs_reference: bool,
    needs_embeddings: bool = False,
    shared_timestep: bool = False,
    needs_reference_point: bool = False,
) -> Callable[[LossFn], LossFn]:
    """Register ``fn`` under ``name``; the first docstring line becomes its description."""

    def decorate(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice ({LOSSES[name].__module__} and {fn.__module__})")
        doc = (fn.__doc__ or "").strip().splitlines()
        LOSSES[name] = fn
        LOSS_SPECS[name] = LossSpec(
            name=name,
            inputs=inputs,
            data=data,
            needs_reference=needs_reference,
            needs_embeddings=needs_embeddings,
            shared_timestep=shared_timestep,
            needs_reference_point=needs_reference_point,
            description=doc[0] if doc else "",
        )
        return fn

    return decorate


def as_reduction_dtype(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 errors are promoted to fp32 for every reduction; fp64 stays fp64 (gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def preference_accuracy(score: torch.Tensor) -> float:
    """Fraction of positive scores, ties counted as 0.5 (policy == reference gives exactly 0.5)."""
    s = score.detach()
    return float(((s > 0).to(s.dtype) + 0.5 * (s == 0).to(s.dtype)).mean())
