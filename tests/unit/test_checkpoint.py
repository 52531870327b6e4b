"""Checkpoint pieces that need no Ray: trainable state selection, loading checks, EMA math."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tpo_ray.train.checkpoint import EMA, load_trainable, trainable_state
from tpo_ray.train.shards import replicated_shards


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
    ema = EMA(replicated_shards(m), decay=0.9)
    before = m.a.weight.detach().clone()
    with torch.no_grad():
        m.a.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.shadow["a.weight"].view(2, 2), 0.9 * before + 0.1 * (before + 1.0))
    assert torch.equal(ema.full_state()["a.weight"], ema.shadow["a.weight"].view(2, 2))


def test_replicated_weights_are_shared_out_by_size_and_each_owned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP every rank holds every weight: each averages a share, balanced by size, none twice."""
    import tpo_ray.train.shards as shards

    class Group:
        def __init__(self, rank: int) -> None:
            self.rank = rank

        def get_rank(self) -> int:
            return self.rank

        def get_world_size(self) -> int:
            return 2

    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2), torch.nn.Linear(2, 2))
    owned = []
    for rank in (0, 1):
        monkeypatch.setattr(shards, "_dist", lambda rank=rank: Group(rank))
        owned.append(replicated_shards(m).slices)
    assert set(owned[0]).isdisjoint(owned[1]) and set(owned[0]) | set(owned[1]) == {n for n, _ in m.named_parameters()}
    sizes = [sum(s.numel for s in o.values()) for o in owned]
    assert sizes == [64, 8 + 16 + 2 + 2 + 4]  # the 8x8 weight alone, the rest on the other rank


def test_ema_loads_full_tensors_into_its_share() -> None:
    m = Tiny()
    ema = EMA(replicated_shards(m), decay=0.9)
    full = {k: torch.full_like(v, 3.0) for k, v in m.state_dict().items()}
    ema.load_full(full)
    assert all(torch.equal(ema.shadow[k], full[k].flatten()) for k in full)


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    from tpo_ray.train.checkpoint import load_plain, rng_state, set_rng_state

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_plain(tmp_path / "rng.pt"))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


class _Payload:
    """What a tampered checkpoint file could hold: unpickling it would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["optimizer.pt", "rng-rank0.pt"])
def test_checkpoint_files_that_hold_objects_are_refused_without_running_them(tmp_path: Path, name: str) -> None:
    from tpo_ray.train.checkpoint import load_plain

    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _Payload(marker)}, tmp_path / name)
    with pytest.raises(ValueError, match=f"{name}: holds objects other than tensors"):
        load_plain(tmp_path / name)
    assert not marker.exists()


def test_optimizer_and_scheduler_state_load_as_plain_values(tmp_path: Path) -> None:
    """What TorchBackend saves (AdamW and its LambdaLR schedule) passes the weights-only load."""
    from tpo_ray.config import TrainConfig
    from tpo_ray.train.checkpoint import load_plain
    from tpo_ray.train.optim import build_lr_scheduler, build_optimizer

    model = torch.nn.Linear(3, 2)
    cfg = TrainConfig(lr_warmup_steps=2, lr_scheduler="cosine")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp_path / "optimizer.pt")
    loaded = load_plain(tmp_path / "optimizer.pt")
    fresh = build_optimizer(model, cfg)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_deepspeed_loads_run_no_code_from_a_checkpoint_but_read_its_own_classes(tmp_path: Path) -> None:
    """DeepSpeed reads its files with `torch.load(weights_only=False)`; inside `weights_only_loads`
    a planted object is refused without running, while DeepSpeed's own state classes still load."""
    import pickle

    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from tpo_ray.train.deepspeed import weights_only_loads

    marker = tmp_path / "code-ran"
    torch.save({"optimizer_state_dict": _Payload(marker)}, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients, "w": torch.ones(2)},
               tmp_path / "state.pt")
    with weights_only_loads():
        with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
            torch.load(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
        state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=False)
    assert not marker.exists()
    assert state["zero_stage"] == ZeroStageEnum.gradients and torch.equal(state["w"], torch.ones(2))
    assert torch.load(tmp_path / "state.pt", weights_only=False)["w"].sum() == 2  # outside: torch.load as before


def test_a_checkpoint_of_nonfinite_weights_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """Older DeepSpeed releases apply a NaN step: such weights must never become a checkpoint a rerun resumes."""
    from tpo_ray.config import TrainConfig
    from tpo_ray.train.backend import TorchBackend
    from tpo_ray.train.checkpoint import NonFiniteWeightsError, TrainState, save_checkpoint

    backend = TorchBackend(Tiny(), TrainConfig(), wrap=lambda m: m)
    state = TrainState(step=7, global_batch=2, world_size=1)
    save_checkpoint(tmp_path / "good", backend, state, 0)
    assert (tmp_path / "good" / "unet_trainable.safetensors").exists()
    with torch.no_grad():
        backend.unet.b.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="step 7: the trained weights hold NaN or inf"):
        save_checkpoint(tmp_path / "bad", backend, state, 0)
    assert not (tmp_path / "bad").exists()


def test_channels_last_weights_average_and_save(tmp_path: Path) -> None:
    """`train.channels_last` under DDP: a 3x3 conv weight is no flat view; the EMA and the checkpoint read it anyway."""
    from safetensors.torch import load_file

    from tpo_ray.config import TrainConfig
    from tpo_ray.train.backend import TorchBackend
    from tpo_ray.train.checkpoint import TrainState, save_checkpoint

    conv = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3)).to(memory_format=torch.channels_last)
    backend = TorchBackend(conv, TrainConfig(), wrap=lambda m: m)
    ema = EMA(backend.master_shards(), decay=0.5)
    with torch.no_grad():
        conv[0].weight.add_(2.0)
    ema.update()
    save_checkpoint(tmp_path, backend, TrainState(step=1, global_batch=1, world_size=1), 0, ema)
    saved = load_file(str(tmp_path / "ema.safetensors"))["0.weight"]
    torch.testing.assert_close(saved, conv[0].weight.detach() - 1.0)
    assert torch.equal(load_file(str(tmp_path / "unet_trainable.safetensors"))["0.weight"], conv[0].weight.detach())
    backend.master_shards().write({"0.weight": torch.zeros(8, 4, 3, 3), "0.bias": torch.zeros(8)})
    assert float(conv[0].weight.abs().sum()) == 0.0
