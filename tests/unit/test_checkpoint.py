"""Checkpoint pieces that need no Ray: trainable state selection, loading checks, EMA math."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tpo_ray.train.checkpoint import EMA, ReplicatedWeights, load_trainable, trainable_state


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 2)


def test_trainable_state_keeps_only_trainable_parameters() -> None:
    m = Tiny()
    m.a.requires_grad_(False)
    assert set(trainable_state(m)) == {"b.weight", "b.bias"}


def test_load_trainable_round_trips_and_refuses_missing_tensors(tmp_path: Path) -> None:
    src, dst = Tiny(), Tiny()
    save_file(trainable_state(src), str(tmp_path / "w.safetensors"))
    load_trainable(dst, tmp_path / "w.safetensors")
    assert all(torch.equal(src.state_dict()[k], dst.state_dict()[k]) for k in src.state_dict())
    save_file({"b.weight": src.b.weight.detach().clone()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(RuntimeError, match="lacks 3 trainable tensors"):
        load_trainable(dst, tmp_path / "partial.safetensors")


def test_ema_update_is_the_exponential_average() -> None:
    m = Tiny()
    ema = EMA(ReplicatedWeights(m, rank=0), decay=0.9)
    before = m.a.weight.detach().clone()
    with torch.no_grad():
        m.a.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.shadow["a.weight"], 0.9 * before + 0.1 * (before + 1.0))
    assert torch.equal(ema.full_state()["a.weight"], ema.shadow["a.weight"])


def test_replicated_ema_lives_on_rank_zero_only() -> None:
    m = Tiny()
    other = EMA(ReplicatedWeights(m, rank=1), decay=0.9)
    other.update()
    assert other.shadow == {} and other.full_state() is None
    other.load_full({k: v.detach().clone() for k, v in m.state_dict().items()})
    assert other.shadow == {}
