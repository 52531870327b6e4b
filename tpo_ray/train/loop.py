"""One optimizer step over accumulated micro-batches, with a non-finite guard.

Shared by the demo, tests and the Ray Train worker, so there is exactly one training loop. The
decision to skip is global: ranks agree (all-reduce) that a loss is finite before anyone runs
backward, so collectives stay in step. Once a loss is non-finite on any rank, every rank
back-propagates a NaN (its loss times NaN) through the same graph: the backward collectives (DDP
all-reduce, ZeRO reduce-scatter and parameter gathers) run as usual, the accumulated gradient is
NaN everywhere, and the backend discards the whole step (the torch backend by not stepping,
DeepSpeed by its own overflow check), leaving weights, optimizer state and LR schedule unchanged.
`max_consecutive` skipped steps in a row stop the run with an error naming the step and the metric.
Under fp16, DeepSpeed also skips steps whose scaled gradients overflow and lowers the loss scale;
those are counted apart (`overflow_skips`) and never stop the run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tpo_ray.losses import LossOutput
from tpo_ray.train.step import StepBatch


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite values too many steps in a row."""


@dataclass
class GuardState:
    consecutive: int = 0
    skipped_total: int = 0
    overflow_skips: int = 0  # fp16 loss-scale overflows: DeepSpeed lowered the scale, not divergence


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
    for index, (batch, generator) in enumerate(zip(micro_batches, generators)):
        with backend.micro_batch(last=index == len(micro_batches) - 1):  # DDP: gradients sync on the last only
            out = step_fn(batch, generator)
            if bad is None and float(all_reduce_min(_all_finite_local(out.loss))) < 1:
                bad = "loss"
            if bad is not None:
                backend.backward(out.loss * float("nan"), len(micro_batches))  # poisons the step on every rank
                continue
            backend.backward(out.loss, len(micro_batches))
        for key, value in out.metrics.items():
            totals[key] += value / len(micro_batches)
    if bad is None:
        grad_norm = backend.update()
        totals["grad_norm"] = grad_norm
        if not math.isfinite(grad_norm):
            if backend.loss_scaling:  # finite loss, overflowing fp16 gradients: the scale was too high
                guard.overflow_skips += 1
                return _counters(guard, backend)
            bad = "grad_norm"
    else:
        backend.skip()
    if bad is not None:
        _count_nonfinite(guard, bad, step_index, max_consecutive_nonfinite)
        return _counters(guard, backend)
    guard.consecutive = 0
    totals["lr"] = backend.lr
    totals.update(_counters(guard, backend))
    return dict(totals)


def _count_nonfinite(guard: GuardState, bad: str, step_index: int, max_consecutive_nonfinite: int) -> None:
    guard.consecutive += 1
    guard.skipped_total += 1
    if guard.consecutive >= max_consecutive_nonfinite:
        raise NonFiniteLossError(
            f"step {step_index}: {bad} was non-finite for {guard.consecutive} steps in a row; "
            "lower train.lr or train.loss.beta, or enable train.max_grad_norm"
        )


def _counters(guard: GuardState, backend) -> dict[str, float]:
    """Skip counters; `overflow_skips` only where a dynamic loss scale exists (fp16 DeepSpeed)."""
    counters = {"skipped_nonfinite": float(guard.skipped_total)}
    if backend.loss_scaling:
        counters["overflow_skips"] = float(guard.overflow_skips)
    return counters
