"""Which checkpoint a run resumes from and which it keeps, on checkpoint folders made on disk (no Ray):
damaged checkpoints are skipped with a warning naming the file, a stray folder Ray never registered
is resumed from, and retention counts every folder on disk."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from tpo_ray.config import TrainConfig
from tpo_ray.runs import RunIdentity
from tpo_ray.train.backend import TorchBackend
from tpo_ray.train.checkpoint import EMA, TrainState, save_checkpoint
from tpo_ray.train.resume import (
    RAY_SNAPSHOT,
    CheckpointError,
    checkpoint_problem,
    choose_checkpoint,
    forget_ray_snapshot,
    prune_checkpoints,
)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)


def write_checkpoint(folder: Path, step: int, world: int = 2) -> Path:
    """What every rank of a TorchBackend run writes into one checkpoint folder (EMA included)."""
    backend = TorchBackend(Tiny(), TrainConfig(), wrap=lambda m: m)
    ema = EMA(backend.ema_weights(), 0.9)
    state = TrainState(step=step, global_batch=2 * world, world_size=world, samples_seen=step * 2 * world)
    for rank in range(world):
        save_checkpoint(folder, backend, state, rank, ema, metrics={"step": step})
    return folder


def make_run(tmp_path: Path) -> RunIdentity:
    return RunIdentity(name="tdpo-test", storage_path=str(tmp_path), run_dir=str(tmp_path / "tdpo-test"))


def folder_at(run: RunIdentity, second: int) -> Path:
    return Path(run.run_dir) / f"checkpoint_2026-01-01_00-00-{second:02d}.000000"


def truncate(path: Path, keep: float = 0.5, keep_bytes: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep_bytes is None else keep_bytes])


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_whole_checkpoint_passes(tmp_path: Path) -> None:
    assert checkpoint_problem(str(write_checkpoint(tmp_path / "c", step=5))) is None


DAMAGE = {
    "truncated weights": (lambda d: truncate(d / "unet_trainable.safetensors"),
                          "unet_trainable.safetensors: ", "truncated"),
    "weights cut inside the header": (lambda d: truncate(d / "unet_trainable.safetensors", keep_bytes=20),
                                      "unet_trainable.safetensors: ", "does not fit"),
    "truncated EMA": (lambda d: truncate(d / "ema.safetensors", 0.9), "ema.safetensors: ", "truncated"),
    "truncated train state": (lambda d: truncate(d / "train_state.json"), "train_state.json: ", "not a train state"),
    "garbled train state": (lambda d: (d / "train_state.json").write_bytes(b"\xff\xfe{step"),
                            "train_state.json: ", "not a train state"),
    "train state of another shape": (lambda d: (d / "train_state.json").write_text('{"step": 3}'),
                                     "train_state.json: ", "not a train state"),
    "missing train state": (lambda d: (d / "train_state.json").unlink(), "train_state.json: ", "missing"),
    "garbled RNG file": (lambda d: flip_middle_byte(d / "rng-rank1.pt"), "rng-rank1.pt: ", "CRC"),
    "truncated RNG file": (lambda d: truncate(d / "rng-rank0.pt"), "rng-rank0.pt: ", "not a complete torch.save"),
    "a rank's RNG file missing": (lambda d: (d / "rng-rank1.pt").unlink(), "rng-rank1.pt: ", "missing"),
    "truncated optimizer": (lambda d: truncate(d / "optimizer.pt"), "optimizer.pt: ", "not a complete torch.save"),
    "missing optimizer": (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt: ", "missing"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_each_kind_of_damage_is_named_with_its_file(tmp_path: Path, damage: str) -> None:
    apply, file_prefix, why = DAMAGE[damage]
    folder = write_checkpoint(tmp_path / "c", step=5)
    apply(folder)
    problem = checkpoint_problem(str(folder))
    assert problem is not None and problem.startswith(file_prefix) and why in problem, problem


def test_resume_falls_back_to_the_newest_usable_checkpoint_with_a_warning(tmp_path: Path, caplog) -> None:
    run = make_run(tmp_path)
    write_checkpoint(folder_at(run, 1), step=25)
    newest = write_checkpoint(folder_at(run, 2), step=50)
    truncate(newest / "unet_trainable.safetensors")
    with caplog.at_level(logging.WARNING, logger="tpo_ray.train.resume"):
        folder, state = choose_checkpoint(run)
    assert folder == str(folder_at(run, 1)) and state["step"] == 25
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"checkpoint {newest} is unusable (unet_trainable.safetensors: " in warning
    assert "truncated" in warning and f"resuming from the older {folder_at(run, 1)} (step 25)" in warning


def test_no_usable_checkpoint_is_a_one_line_error_naming_each_file(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    truncate(write_checkpoint(folder_at(run, 1), step=25) / "train_state.json")
    flip_middle_byte(write_checkpoint(folder_at(run, 2), step=50) / "rng-rank0.pt")
    with pytest.raises(CheckpointError) as err:
        choose_checkpoint(run)
    message = str(err.value)
    assert "\n" not in message and message.startswith("run tdpo-test has no usable checkpoint: ")
    assert f"{folder_at(run, 1)}/train_state.json: not a train state" in message
    assert f"{folder_at(run, 2)}/rng-rank0.pt: member" in message


def test_a_run_without_checkpoint_folders_starts_fresh(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert choose_checkpoint(run) is None
    Path(run.run_dir).mkdir()
    assert choose_checkpoint(run) is None


def ray_snapshot(run: RunIdentity, registered: list[Path]) -> Path:
    """A Ray Train V2 checkpoint list naming only `registered` (the controller never saw the rest)."""
    entries = [{"checkpoint_dir_name": p.name, "metrics": {}} for p in registered]
    path = Path(run.run_dir) / RAY_SNAPSHOT
    path.write_text(json.dumps({"checkpoint_results": entries, "latest_checkpoint_result": entries[-1]}))
    return path


def test_a_checkpoint_ray_never_registered_is_resumed_from_and_strays_are_pruned(tmp_path: Path) -> None:
    """A worker killed after uploading step 50 but before the controller registered it (max_failures=0):
    Ray's list ends at step 25; the rerun must resume from step 50, and retention must count every
    folder on disk, not only those Ray registered."""
    run = make_run(tmp_path)
    old = [write_checkpoint(folder_at(run, s), step=s) for s in (10, 15, 20)]
    torn = write_checkpoint(folder_at(run, 22), step=22)
    (torn / "unet_trainable.safetensors").unlink()  # an upload cut short by an earlier kill
    registered = write_checkpoint(folder_at(run, 25), step=25)
    stray = write_checkpoint(folder_at(run, 50), step=50)
    snapshot = ray_snapshot(run, [old[-1], registered])

    folder, state = choose_checkpoint(run)
    assert (folder, state["step"]) == (str(stray), 50)
    forget_ray_snapshot(run)
    assert not snapshot.exists()  # Ray would hand the workers step 25 from it

    deleted = prune_checkpoints(run, keep=2)
    assert deleted == [str(p) for p in (*old, torn)]
    assert sorted(p.name for p in Path(run.run_dir).iterdir()) == [registered.name, stray.name]


def test_pruning_keeps_newer_unusable_folders_and_deletes_nothing_below_keep(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    first = write_checkpoint(folder_at(run, 1), step=5)
    torn = write_checkpoint(folder_at(run, 2), step=10)
    truncate(torn / "optimizer.pt")
    assert prune_checkpoints(run, keep=2) == []  # one usable checkpoint: nothing may go
    assert first.exists() and torn.exists()
    second = write_checkpoint(folder_at(run, 3), step=15)
    in_progress = folder_at(run, 4)
    shutil.copytree(second, in_progress)
    (in_progress / "train_state.json").unlink()
    assert prune_checkpoints(run, keep=1) == [str(first), str(torn)]
    assert second.exists() and in_progress.exists()  # newer than the newest usable one: left alone
