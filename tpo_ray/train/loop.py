"""One optimizer step over accumulated micro-batches, with grad clipping and a non-finite guard.

Shared by the local demo path and the Ray Train worker, so there is exactly one training loop.
A non-finite loss or gradient skips the step (gradients dropped, counted); `max_consecutive`
skips in a row stop the run with an error naming the step and the metric.
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


def optimizer_step(
    step_fn: Callable[[StepBatch, torch.Generator | None], LossOutput],
    micro_batches: Sequence[StepBatch],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    params: Sequence[torch.nn.Parameter],
    *,
    max_grad_norm: float | None,
    guard: GuardState,
    max_consecutive_nonfinite: int,
    step_index: int,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Run forward/backward on each micro-batch, then one optimizer update; returns mean metrics."""
    totals: dict[str, float] = defaultdict(float)
    finite = True
    for batch in micro_batches:
        out = step_fn(batch, generator)
        if not torch.isfinite(out.loss):
            finite, bad = False, "loss"
            break
        (out.loss / len(micro_batches)).backward()
        for key, value in out.metrics.items():
            totals[key] += value / len(micro_batches)
    if finite:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else math.inf))
        finite, bad = math.isfinite(grad_norm), "grad_norm"
        totals["grad_norm"] = grad_norm
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        guard.consecutive += 1
        guard.skipped_total += 1
        if guard.consecutive >= max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"step {step_index}: {bad} was non-finite for {guard.consecutive} steps in a row; "
                "lower train.lr or train.loss.beta, or enable train.max_grad_norm"
            )
        return {"skipped_nonfinite": float(guard.skipped_total)}
    guard.consecutive = 0
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    totals["lr"] = float(lr_scheduler.get_last_lr()[0])
    totals["skipped_nonfinite"] = float(guard.skipped_total)
    return dict(totals)
