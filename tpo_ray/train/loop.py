"""One optimizer step over accumulated micro-batches, with a non-finite guard.

Shared by the demo, tests and the Ray Train worker, so there is exactly one training loop. The
decision to skip is global: ranks agree (all-reduce) that a loss is finite before anyone runs
backward, so collectives stay in step. A skipped micro-batch contributes a zero gradient; the
torch backend then skips the update. `max_consecutive` skipped steps in a row stop the run with an
error naming the step and the metric.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tpo_ray.losses import LossOutput
from tpo_ray.train.step import StepBatch


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite values too many steps in a row."""


@dataclass
class GuardState:
    consecutive: int = 0
    skipped_total: int = 0


def _all_finite_local(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x.detach()).all().float()


def optimizer_step(
    step_fn: Callable[[StepBatch, torch.Generator | None], LossOutput],
    micro_batches: Sequence[StepBatch],
    backend,
    *,
    guard: GuardState,
    max_consecutive_nonfinite: int,
    step_index: int,
    generators: Sequence[torch.Generator | None] | None = None,
    all_reduce_min: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> dict[str, float]:
    """Forward/backward on each micro-batch, then one update; returns metrics averaged over micro-batches."""
    totals: dict[str, float] = defaultdict(float)
    generators = generators or [None] * len(micro_batches)
    bad = None
    for batch, generator in zip(micro_batches, generators):
        out = step_fn(batch, generator)
        if bad is None and float(all_reduce_min(_all_finite_local(out.loss))) < 1:
            bad = "loss"
        if bad is not None:
            zero = sum((p.sum() * 0.0 for p in backend.params), torch.zeros((), device=out.loss.device))
            backend.backward(zero, len(micro_batches))
            continue
        backend.backward(out.loss, len(micro_batches))
        for key, value in out.metrics.items():
            totals[key] += value / len(micro_batches)
    if bad is None:
        grad_norm = backend.update()
        totals["grad_norm"] = grad_norm
        if not math.isfinite(grad_norm):
            bad = "grad_norm"
    else:
        backend.skip()
    if bad is not None:
        guard.consecutive += 1
        guard.skipped_total += 1
        if guard.consecutive >= max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"step {step_index}: {bad} was non-finite for {guard.consecutive} steps in a row; "
                "lower train.lr or train.loss.beta, or enable train.max_grad_norm"
            )
        return {"skipped_nonfinite": float(guard.skipped_total)}
    guard.consecutive = 0
    totals["lr"] = backend.lr
    totals["skipped_nonfinite"] = float(guard.skipped_total)
    return dict(totals)
