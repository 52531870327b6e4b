"""Rank-0 metrics come from what the loss returned; held-out evaluation keeps ranks in lockstep."""

from __future__ import annotations

import pytest
import torch

from tpo_ray.losses import LOSSES
from tpo_ray.train.worker import MetricMeter, eval_share


def _loss_metrics(name: str) -> dict[str, float]:
    """The metric keys a loss really returns (inputs as the loss tests build them)."""
    from tests.unit.test_losses import _call

    return {k: float(v) for k, v in _call(name).metrics.items()}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_meter_reports_exactly_the_keys_the_loss_returns(name: str) -> None:
    metrics = _loss_metrics(name)
    meter = MetricMeter()
    meter.add({**metrics, "grad_norm": 1.0, "lr": 1e-4})
    reduced = meter.reduce(torch.device("cpu"))
    assert set(reduced) == set(metrics) | {"grad_norm", "lr"}
    assert list(reduced) == sorted(reduced)  # a fixed order on every rank


def test_sft_reports_no_preference_metrics() -> None:
    assert not {"implicit_acc", "m_w", "m_l", "margin"} & set(_loss_metrics("sft"))


def test_each_key_is_averaged_over_the_steps_that_produced_it() -> None:
    meter = MetricMeter()
    meter.add({"loss": 1.0, "skipped_nonfinite": 0.0})
    meter.add({"skipped_nonfinite": 1.0})  # a skipped step has no loss
    meter.add({"loss": 3.0, "skipped_nonfinite": 1.0})
    assert meter.reduce(torch.device("cpu")) == {"loss": 2.0, "skipped_nonfinite": 2.0 / 3.0}
    assert meter.reduce(torch.device("cpu")) == {}  # cleared after a report


def test_key_mismatch_across_ranks_is_an_error() -> None:
    meter = MetricMeter()
    meter.add({"loss": 1.0})
    with pytest.raises(RuntimeError, match="different metric keys"):
        meter.reduce(torch.device("cpu"), world=2)  # the other rank (absent here) reported no keys


@pytest.mark.parametrize("n,world,batch", [(5, 2, 1), (5, 2, 2), (7, 3, 4), (1, 4, 2), (64, 16, 4), (3, 2, 8)])
def test_eval_share_gives_every_rank_the_same_number_of_forwards(n: int, world: int, batch: int) -> None:
    shares = [eval_share(n, world, r, batch) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # same batch count: ZeRO-3 collectives stay matched
    positions = [i for s in shares for b in s for i in b]
    assert sorted(positions) == list(range(n))  # every held-out row exactly once
    assert all(len(b) <= batch for s in shares for b in s)
