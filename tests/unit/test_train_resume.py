"""Which checkpoint a run resumes from and which it keeps, on checkpoint folders made on disk (no Ray):
damaged checkpoints are skipped with a warning naming the file, a stray folder Ray never registered
is resumed from, and retention counts every folder on disk. DeepSpeed folders are laid out as
`DeepSpeedBackend.save` writes them (file names from DeepSpeed's engine, `torch.save` contents; a
real engine needs spawned ranks, see tests/integration/test_deepspeed_sharded.py). Also: the driver
marks a run finished only once its final eval reached it."""

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


def write_checkpoint(folder: Path, step: int, world: int = 2, ema: bool = True) -> Path:
    """What every rank of a TorchBackend run writes into one checkpoint folder (EMA included unless `ema=False`)."""
    backend = TorchBackend(Tiny(), TrainConfig(), wrap=lambda m: m)
    average = EMA(backend.master_shards(), 0.9) if ema else None
    state = TrainState(step=step, global_batch=2 * world, world_size=world, samples_seen=step * 2 * world)
    for rank in range(world):
        save_checkpoint(folder, backend, state, rank, average, metrics={"step": step})
    return folder


def write_deepspeed_checkpoint(folder: Path, step: int, world: int = 2, stage: int = 2, bf16: bool = False) -> Path:
    """A DeepSpeed run's checkpoint: `engine.save_checkpoint(<folder>/deepspeed, tag="state")` on every
    rank (ZeRO-1/2: rank 0's module states; ZeRO-3: each rank's; every rank its optimizer partition;
    rank 0 the `latest` tag file and the recovery script) instead of `optimizer.pt`."""
    write_checkpoint(folder, step, world)
    (folder / "optimizer.pt").unlink()
    engine = folder / "deepspeed"
    (engine / "state").mkdir(parents=True)
    (engine / "latest").write_text("state")
    (engine / "zero_to_fp32.py").write_text("# DeepSpeed's recovery script\n")
    models = (["mp_rank_00_model_states.pt"] if stage < 3
              else [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)])
    optims = [f"{'bf16_' if bf16 else ''}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
    for name in models + optims:
        torch.save({"module" if "model" in name else "optimizer_state_dict": {"w": torch.zeros(3)}, "ds_version": "0"},
                   engine / "state" / name)
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


# ------------------------------------------------------------------------------------------ DeepSpeed
@pytest.mark.parametrize(("stage", "world", "bf16"), [(1, 2, False), (2, 2, True), (2, 1, False), (3, 2, False),
                                                      (3, 3, True)])
def test_a_whole_deepspeed_checkpoint_passes(tmp_path: Path, stage: int, world: int, bf16: bool) -> None:
    folder = write_deepspeed_checkpoint(tmp_path / "c", step=5, world=world, stage=stage, bf16=bf16)
    assert checkpoint_problem(str(folder)) is None


def _rm_states(d: Path) -> None:
    for f in (d / "deepspeed" / "state").iterdir():
        f.unlink()


def _extra_rank(d: Path) -> None:
    states = d / "deepspeed" / "state"
    shutil.copy(states / "zero_pp_rank_1_mp_rank_00_optim_states.pt", states / "zero_pp_rank_2_mp_rank_00_optim_states.pt")


STATES = "deepspeed/state/"
DS_DAMAGE = {  # name: (stage, damage, expected file prefix, reason)
    "engine folder without any states": (2, _rm_states, STATES + ": ", "no model states"),
    "engine folder without its tag folder": (2, lambda d: shutil.rmtree(d / "deepspeed" / "state"),
                                             STATES + ": ", "missing"),
    "latest tag file missing": (2, lambda d: (d / "deepspeed" / "latest").unlink(), "deepspeed/latest: ", "missing"),
    "latest names another tag": (2, lambda d: (d / "deepspeed" / "latest").write_text("global_step5"),
                                 "deepspeed/latest: ", "'global_step5'"),
    "ZeRO-1/2 module states missing": (2, lambda d: (d / "deepspeed/state/mp_rank_00_model_states.pt").unlink(),
                                       STATES + ": ", "no model states"),
    "ZeRO-2 rank 1's optimizer states missing": (
        2, lambda d: (d / "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(),
        STATES + "zero_pp_rank_1_mp_rank_00_optim_states.pt: ", "missing (rank 1's optimizer states)"),
    "ZeRO-3 rank 1's module states missing": (
        3, lambda d: (d / "deepspeed/state/zero_pp_rank_1_mp_rank_00_model_states.pt").unlink(),
        STATES + "zero_pp_rank_1_mp_rank_00_model_states.pt: ", "missing (model states (ZeRO-3))"),
    "ZeRO-3 rank 1's optimizer states missing, its module states there": (
        3, lambda d: (d / "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(),
        STATES + "zero_pp_rank_1_mp_rank_00_optim_states.pt: ", "missing (rank 1's optimizer states)"),
    "optimizer states of a rank beyond the saved world size": (
        2, _extra_rank, STATES + "zero_pp_rank_2_mp_rank_00_optim_states.pt: ", "not written by a run of 2 worker(s)"),
    "truncated optimizer states": (3, lambda d: truncate(d / "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"),
                                   STATES + "zero_pp_rank_0_mp_rank_00_optim_states.pt: ", "not a complete torch.save"),
    "truncated module states": (2, lambda d: truncate(d / "deepspeed/state/mp_rank_00_model_states.pt"),
                                STATES + "mp_rank_00_model_states.pt: ", "not a complete torch.save"),
}


@pytest.mark.parametrize("damage", DS_DAMAGE, ids=list(DS_DAMAGE))
def test_each_missing_or_damaged_deepspeed_file_is_named(tmp_path: Path, damage: str) -> None:
    stage, apply, file_prefix, why = DS_DAMAGE[damage]
    folder = write_deepspeed_checkpoint(tmp_path / "c", step=5, stage=stage)
    apply(folder)
    problem = checkpoint_problem(str(folder))
    assert problem is not None and problem.startswith(file_prefix) and why in problem, problem


def test_a_deepspeed_checkpoint_needs_the_states_of_every_rank_it_was_saved_with(tmp_path: Path) -> None:
    """train_state.json says 3 workers; the engine folder holds the states of 2 (a rank's upload lost)."""
    folder = write_deepspeed_checkpoint(tmp_path / "c", step=5, world=2, stage=3)
    torch.save(torch.zeros(1), folder / "rng-rank2.pt")
    state = json.loads((folder / "train_state.json").read_text())
    (folder / "train_state.json").write_text(json.dumps({**state, "world_size": 3}))
    problem = checkpoint_problem(str(folder))
    assert problem == f"{STATES}zero_pp_rank_2_mp_rank_00_model_states.pt: missing (model states (ZeRO-3))"


# ------------------------------------------------------------------------------------------------ EMA
def test_a_run_that_keeps_an_ema_needs_it_in_every_checkpoint(tmp_path: Path, caplog) -> None:
    """Loading without ema.safetensors would silently restart the EMA: the checkpoint is torn."""
    run = make_run(tmp_path)
    write_checkpoint(folder_at(run, 1), step=25)
    newest = write_checkpoint(folder_at(run, 2), step=50)
    (newest / "ema.safetensors").unlink()
    assert checkpoint_problem(str(newest)) is None  # alone, the folder cannot tell
    assert checkpoint_problem(str(newest), needs_ema=True) == "ema.safetensors: missing (the run keeps an EMA)"
    for ema in (None, True):  # the run's other checkpoint has an EMA: this run keeps one
        with caplog.at_level(logging.WARNING, logger="tpo_ray.train.resume"):
            folder, state = choose_checkpoint(run, ema=ema)
        assert (folder, state["step"]) == (str(folder_at(run, 1)), 25)
        assert f"checkpoint {newest} is unusable (ema.safetensors: missing" in caplog.text
    assert prune_checkpoints(run, keep=1) == []  # the torn folder is newer than the newest usable one


def test_checkpoints_without_any_ema_or_with_the_ema_switched_off_are_not_rejected(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_checkpoint(folder_at(run, 1), step=25, ema=False)
    newest = write_checkpoint(folder_at(run, 2), step=50, ema=False)
    for ema in (None, True, False):  # no checkpoint of the run records an EMA: an older run, or one without
        assert choose_checkpoint(run, ema=ema)[0] == str(newest)
    switched_off = write_checkpoint(folder_at(run, 3), step=75, ema=False)
    write_checkpoint(folder_at(run, 0), step=10)  # an explicit train.run_name kept across an ema_decay change
    assert choose_checkpoint(run, ema=False)[0] == str(switched_off)  # the config keeps no EMA: nothing to lose


# ------------------------------------------------------------------------------- driver: run finished
def checkpoint_with_metrics(tmp_path: Path, step: int = 4) -> Path:
    folder = tmp_path / "checkpoint_final"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"step": step, "train/loss": 0.5, "perf/examples_per_s": 9.0}))
    return folder


def test_a_run_is_marked_finished_with_its_final_eval(tmp_path: Path) -> None:
    from tpo_ray.train.driver import _final_metrics

    folder = checkpoint_with_metrics(tmp_path)
    metrics = _final_metrics(str(folder), {"val/model_acc": 0.75, "step": 4}, final_eval=True)
    assert metrics == {"step": 4, "train/loss": 0.5, "perf/examples_per_s": 9.0, "val/model_acc": 0.75}
    assert json.loads((folder / "final_metrics.json").read_text()) == metrics


@pytest.mark.parametrize("last", [{}, {"step": 2, "val/model_acc": 0.5}, {"step": 4, "train/loss": 0.5}],
                         ids=["no report", "an older eval", "the final checkpoint's report"])
def test_a_run_whose_final_eval_did_not_reach_the_driver_is_not_marked_finished(tmp_path: Path, caplog,
                                                                                   last: dict) -> None:
    """The rerun must resume at max_steps and run the final eval again, not find a finished run."""
    from tpo_ray.train.driver import _final_metrics

    folder = checkpoint_with_metrics(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tpo_ray.train.driver"):
        metrics = _final_metrics(str(folder), last, final_eval=True)
    assert metrics == {"step": 4, "train/loss": 0.5, "perf/examples_per_s": 9.0}
    assert not (folder / "final_metrics.json").exists()
    assert "did not reach the driver" in caplog.text and "not marked finished" in caplog.text


@pytest.mark.parametrize("last", [{"step": 4}, {}, {"step": 4, "train/loss": 0.5}])
def test_a_run_without_a_final_eval_is_marked_finished(tmp_path: Path, last: dict) -> None:
    """No val split (or a cache kind the eval does not measure): the final report holds the step alone."""
    from tpo_ray.train.driver import _final_metrics

    folder = checkpoint_with_metrics(tmp_path)
    metrics = _final_metrics(str(folder), last, final_eval=False)
    assert json.loads((folder / "final_metrics.json").read_text()) == metrics
    assert metrics["step"] == 4 and metrics["train/loss"] == 0.5
