"""Which checkpoint a run resumes from, and which checkpoint folders it keeps (driver side, no Ray).

Ray Train uploads each rank's part of a checkpoint file by file, then the controller registers the
checkpoint in its snapshot (`checkpoint_manager_snapshot.json`) once every rank has reported. A
worker lost in between leaves a folder on disk that the snapshot does not list: a rerun restored
from the snapshot resumed from the checkpoint before it, and Ray's retention (which deletes only
what it registered) kept the stray folder forever. A folder can also be torn (an upload cut short)
or damaged later. So the driver, not the snapshot, decides: it checks the folders on disk newest
first (cheaply: files present, JSON parses, safetensors and zip headers match the file sizes),
resumes from the newest that passes, warning about each newer one that does not, hands it to the
workers, and prunes to `train.keep_checkpoints` by the same checks when the run ends.

"Files present" means what loading reads: every rank's RNG file, the TorchBackend's `optimizer.pt` or
every file DeepSpeed's `load_checkpoint` (and the universal conversion of a rescale) reads for the
layout and the worker count the checkpoint was saved with, and `ema.safetensors` where the run keeps
an EMA (loading without it would silently restart the average from the loaded weights).
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from typing import Any

from tpo_ray.data.io import filesystem_for, join
from tpo_ray.runs import RunIdentity
from tpo_ray.train.checkpoint import EMA_WEIGHTS, STATE, WEIGHTS, TrainState

log = logging.getLogger(__name__)

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of the checkpoints it registered
OPTIMIZER = "optimizer.pt"  # TorchBackend; DeepSpeed writes a `deepspeed/` folder instead
SMALL_FILE_BYTES = 1 << 20  # zip members of files up to this size are read and CRC-checked, not only listed
# `DeepSpeedBackend.save`: `engine.save_checkpoint(<checkpoint>/deepspeed, tag="state")` writes the tag
# folder and, on rank 0 once its files are written, `deepspeed/latest` naming the tag.
DEEPSPEED, DEEPSPEED_TAG, DEEPSPEED_LATEST = "deepspeed", "state", "latest"
# DeepSpeed's engine (`_get_ckpt_name`, `_get_rank_zero_ckpt_name`; model parallel rank always 00 here):
ZERO12_MODEL_STATES = "mp_rank_00_model_states.pt"  # ZeRO-1/2: rank 0 writes the one module state
ZERO3_MODEL_STATES = "zero_pp_rank_{}_mp_rank_00_model_states.pt"  # ZeRO-3: each rank its partition
OPTIM_STATES = "{}zero_pp_rank_{}_mp_rank_00_optim_states.pt"  # every stage, each rank; prefix "bf16_" under bf16
STATES_FILE = re.compile(r".*_(model|optim)_states\.pt")


class CheckpointError(RuntimeError):
    """No checkpoint of a run that has some is usable."""


def _safetensors_problem(fs, path: str) -> str | None:
    """Header length, header JSON and the data size it promises against the file's size."""
    size = fs.size(path)
    with fs.open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"header of {n} bytes does not fit in the file's {size} bytes (truncated)"
        try:
            header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            return f"unreadable safetensors header ({err})"
    if size != 8 + n + end:
        return f"{size} bytes, but its header describes {8 + n + end} (truncated or damaged)"
    return None


def _torch_file_problem(fs, path: str) -> str | None:
    """`torch.save` files are zip archives: a cut one has no central directory; a small one is CRC-checked."""
    try:
        with fs.open(path, "rb") as fh, zipfile.ZipFile(fh) as archive:
            bad = archive.testzip() if fs.size(path) <= SMALL_FILE_BYTES else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"not a complete torch.save file ({err})"
    return f"member {bad} fails its CRC check (damaged)" if bad else None


def checkpoint_problem(folder: str, needs_ema: bool = False) -> str | None:
    """Why `folder` cannot be resumed from (`<file>: <reason>`), or None when every expected file is
    there and whole as far as its header says. Reads headers only (plus the small RNG files).
    `needs_ema`: the run keeps an EMA, so `ema.safetensors` is required (else checked when present)."""
    try:
        return _problem(folder, needs_ema)
    except OSError as err:  # a file that vanished or cannot be read is no checkpoint to resume from
        return f"unreadable ({type(err).__name__}: {err})"


def _deepspeed_files(fs, root: str, world: int) -> tuple[str | None, list[str]]:
    """(problem, the engine's files to check) of `<root>/deepspeed`: `latest` naming the tag, and in the
    tag folder the model states of the layout found (ZeRO-1/2: one file; ZeRO-3: one per rank) plus one
    optimizer-state file per rank of the `world` that saved it (train_state.json's world_size), and no
    states of other ranks (DeepSpeed takes the saved world size from the count of optimizer files)."""
    base = f"{root}/{DEEPSPEED}"
    if not fs.exists(f"{base}/{DEEPSPEED_LATEST}"):
        return f"{DEEPSPEED}/{DEEPSPEED_LATEST}: missing (rank 0's DeepSpeed save did not finish)", []
    tag = fs.cat(f"{base}/{DEEPSPEED_LATEST}").decode("utf-8", "replace").strip()
    if tag != DEEPSPEED_TAG:
        return f"{DEEPSPEED}/{DEEPSPEED_LATEST}: names tag {tag[:80]!r}, not {DEEPSPEED_TAG!r}", []
    folder = f"{base}/{DEEPSPEED_TAG}"
    if not fs.isdir(folder):
        return f"{DEEPSPEED}/{DEEPSPEED_TAG}/: missing", []
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}
    zero3 = [ZERO3_MODEL_STATES.format(r) for r in range(world)]
    if any(name in names for name in zero3):
        expected = {name: "model states (ZeRO-3)" for name in zero3}
    elif ZERO12_MODEL_STATES in names:
        expected = {ZERO12_MODEL_STATES: "model states (ZeRO-1/2)"}
    else:
        return (f"{DEEPSPEED}/{DEEPSPEED_TAG}/: no model states ({ZERO12_MODEL_STATES} under ZeRO-1/2, "
                f"{ZERO3_MODEL_STATES.format('<rank>')} per rank under ZeRO-3)"), []
    prefix = "bf16_" if any(n.startswith("bf16_zero_pp_rank_") for n in names) else ""
    for r in range(world):
        expected[OPTIM_STATES.format(prefix, r)] = f"rank {r}'s optimizer states"
    for name, what in expected.items():
        if name not in names:
            return f"{DEEPSPEED}/{DEEPSPEED_TAG}/{name}: missing ({what})", []
    stray = sorted(n for n in names if STATES_FILE.fullmatch(n) and n not in expected)
    if stray:
        return (f"{DEEPSPEED}/{DEEPSPEED_TAG}/{stray[0]}: not written by a run of {world} worker(s) "
                "(train_state.json's world_size)"), []
    return None, [f"{folder}/{name}" for name in sorted(expected)]


def _problem(folder: str, needs_ema: bool = False) -> str | None:
    fs, root = filesystem_for(folder)
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    if STATE not in names:
        return f"{STATE}: missing (the checkpoint's upload did not finish)"
    try:
        state = TrainState(**json.loads(fs.cat(f"{root}/{STATE}")))  # as `load_checkpoint` reads it
        if not (isinstance(state.step, int) and isinstance(state.world_size, int) and state.world_size >= 1):
            raise ValueError(f"step {state.step!r}, world_size {state.world_size!r}")
    except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{STATE}: not a train state ({str(err).splitlines()[0][:200]})"
    expected = [WEIGHTS] + [f"rng-rank{r}.pt" for r in range(state.world_size)]
    if OPTIMIZER not in names and DEEPSPEED not in names:
        return f"{OPTIMIZER}: missing (and no {DEEPSPEED}/ folder)"
    if needs_ema:
        expected.append(EMA_WEIGHTS)
    for name in expected:
        if name not in names:
            return f"{name}: missing" + (" (the run keeps an EMA)" if name == EMA_WEIGHTS else "")
    for name in [WEIGHTS] + ([EMA_WEIGHTS] if EMA_WEIGHTS in names else []):
        problem = _safetensors_problem(fs, f"{root}/{name}")
        if problem:
            return f"{name}: {problem}"
    torch_files = [f"{root}/{n}" for n in sorted(names) if n.endswith(".pt")]
    if DEEPSPEED in names:
        problem, engine_files = _deepspeed_files(fs, root, state.world_size)
        if problem:
            return problem
        others = [p for p in fs.find(f"{root}/{DEEPSPEED}") if p.endswith(".pt") and p not in engine_files]
        torch_files += engine_files + sorted(others)
    for path in torch_files:
        problem = _torch_file_problem(fs, path)
        if problem:
            return f"{path[len(root) + 1:]}: {problem}"
    return None


def run_keeps_ema(folders: list[str], ema: bool | None = None) -> bool:
    """Whether a checkpoint of this run without `ema.safetensors` is torn rather than written without an EMA.

    Checkpoints do not record whether the run kept an EMA (`ema.safetensors` is written when
    `train.ema_decay` is set). `train.ema_decay` is part of the run's name (`runs.run_digest`), so a
    run's checkpoints all have the file or none does; only an explicit `train.run_name` can change it
    between attempts. So the file is required when another checkpoint folder of the run has it, unless
    `ema` (the current config's `train.ema_decay`, where known) says the run keeps none now: loading
    then ignores the file, and checkpoints written after the EMA was switched off lack it rightly. A
    run none of whose folders has the file (older runs, or an EMA switched on under the same
    `run_name`) cannot tell, and passes."""
    if ema is False:
        return False
    for folder in folders:
        fs, p = filesystem_for(folder)
        try:
            if fs.exists(f"{p}/{EMA_WEIGHTS}"):
                return True
        except OSError:  # checkpoint_problem names an unreadable folder
            continue
    return False


def choose_checkpoint(run: RunIdentity, ema: bool | None = None) -> tuple[str, dict[str, Any]] | None:
    """(folder, train state) of the newest checkpoint on disk that passes `checkpoint_problem`, warning
    about each newer one that does not; None for a run without checkpoint folders. A run whose folders
    all fail raises `CheckpointError` naming each and why (starting over would silently drop them).
    `ema`: whether the run keeps an EMA now (None: unknown), see `run_keeps_ema`."""
    rejected: list[tuple[str, str]] = []
    folders = run.checkpoint_folders()
    keeps_ema = run_keeps_ema(folders, ema)
    for folder in reversed(folders):
        problem = checkpoint_problem(folder, keeps_ema)
        if problem is None:
            fs, p = filesystem_for(folder)
            state = json.loads(fs.cat(f"{p}/{STATE}"))
            for bad, why in rejected:
                log.warning("train: checkpoint %s is unusable (%s); resuming from the older %s (step %d)",
                            bad, why, folder, state["step"])
            return folder, state
        rejected.append((folder, problem))
    if rejected:
        listed = "; ".join(f"{folder}/{why}" for folder, why in rejected)
        raise CheckpointError(f"run {run.name} has no usable checkpoint: {listed}. Move these folders away to "
                              "start the run over, or set train.run_name to start another")
    return None


def forget_ray_snapshot(run: RunIdentity) -> None:
    """Delete Ray's checkpoint list, so the workers resume from the driver's choice (see the module
    docstring) and Ray's retention counts only this attempt's checkpoints (`prune_checkpoints` the rest)."""
    fs, p = filesystem_for(join(run.run_dir, RAY_SNAPSHOT))
    if fs.exists(p):
        fs.rm(p)


def prune_checkpoints(run: RunIdentity, keep: int, ema: bool | None = None) -> list[str]:
    """Delete every checkpoint folder older than the `keep`-th newest usable one (torn, damaged and
    unregistered folders included); returns what it deleted. Nothing newer is touched, and nothing at
    all while fewer than `keep` usable checkpoints exist, so an error in a check costs disk, not data.
    `ema` as for `choose_checkpoint`."""
    folders = run.checkpoint_folders()
    keeps_ema = run_keeps_ema(folders, ema)
    usable = 0
    for i in range(len(folders) - 1, -1, -1):
        if checkpoint_problem(folders[i], keeps_ema) is None:
            usable += 1
            if usable == keep:
                break
    else:
        return []
    deleted = []
    for folder in folders[:i]:
        fs, p = filesystem_for(folder)
        try:
            fs.rm(p, recursive=True)
            deleted.append(folder)
        except OSError as err:  # retention must not turn a finished run into a failed one
            log.warning("train: could not delete old checkpoint %s: %s", folder, err)
    if deleted:
        log.info("train: deleted %d checkpoint folder(s) beyond train.keep_checkpoints=%d: %s", len(deleted), keep,
                 ", ".join(d.rsplit("/", 1)[-1] for d in deleted))
    return deleted
