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
"""

from __future__ import annotations

import json
import logging
import zipfile
from typing import Any

from tpo_ray.data.io import filesystem_for, join
from tpo_ray.runs import RunIdentity
from tpo_ray.train.checkpoint import EMA_WEIGHTS, STATE, WEIGHTS, TrainState

log = logging.getLogger(__name__)

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of the checkpoints it registered
OPTIMIZER = "optimizer.pt"  # TorchBackend; DeepSpeed writes a `deepspeed/` folder instead
SMALL_FILE_BYTES = 1 << 20  # zip members of files up to this size are read and CRC-checked, not only listed


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


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` cannot be resumed from (`<file>: <reason>`), or None when every expected file is
    there and whole as far as its header says. Reads headers only (plus the small RNG files)."""
    try:
        return _problem(folder)
    except OSError as err:  # a file that vanished or cannot be read is no checkpoint to resume from
        return f"unreadable ({type(err).__name__}: {err})"


def _problem(folder: str) -> str | None:
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
    if OPTIMIZER not in names and "deepspeed" not in names:
        return f"{OPTIMIZER}: missing (and no deepspeed/ folder)"
    for name in expected:
        if name not in names:
            return f"{name}: missing"
    for name in [WEIGHTS] + ([EMA_WEIGHTS] if EMA_WEIGHTS in names else []):
        problem = _safetensors_problem(fs, f"{root}/{name}")
        if problem:
            return f"{name}: {problem}"
    torch_files = [f"{root}/{n}" for n in sorted(names) if n.endswith(".pt")]
    if "deepspeed" in names:
        engine_files = sorted(p for p in fs.find(f"{root}/deepspeed") if p.endswith(".pt"))
        shards = [p for p in engine_files if "zero_pp_rank_" in p.rsplit("/", 1)[-1]]
        for r in range(state.world_size if shards else 0):  # ZeRO: one optimizer shard per rank
            if not any(f"zero_pp_rank_{r}_" in p.rsplit("/", 1)[-1] for p in shards):
                return f"deepspeed/: rank {r}'s zero_pp_rank_{r}_* optimizer shard is missing"
        torch_files += engine_files
    for path in torch_files:
        problem = _torch_file_problem(fs, path)
        if problem:
            return f"{path[len(root) + 1:]}: {problem}"
    return None


def choose_checkpoint(run: RunIdentity) -> tuple[str, dict[str, Any]] | None:
    """(folder, train state) of the newest checkpoint on disk that passes `checkpoint_problem`, warning
    about each newer one that does not; None for a run without checkpoint folders. A run whose folders
    all fail raises `CheckpointError` naming each and why (starting over would silently drop them)."""
    rejected: list[tuple[str, str]] = []
    for folder in reversed(run.checkpoint_folders()):
        problem = checkpoint_problem(folder)
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


def prune_checkpoints(run: RunIdentity, keep: int) -> list[str]:
    """Delete every checkpoint folder older than the `keep`-th newest usable one (torn, damaged and
    unregistered folders included); returns what it deleted. Nothing newer is touched, and nothing at
    all while fewer than `keep` usable checkpoints exist, so an error in a check costs disk, not data."""
    folders = run.checkpoint_folders()
    usable = 0
    for i in range(len(folders) - 1, -1, -1):
        if checkpoint_problem(folders[i]) is None:
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
