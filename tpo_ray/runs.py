"""A training run's (and a Tune sweep's) identity and where it lives: the one place that decides both.

`train`, `export`, the demo (and every later stage that looks a run up) call `run_identity(cfg)`;
nothing else derives a run name or a checkpoint folder. The name hashes what defines the run (method,
hyper-parameters, model, data), not how long it runs, on how many workers or where it is stored, so
rerunning a command resumes it and `export` finds it. Paths inside the config are already canonical
(see `tpo_ray.config.PathOrURI`), so neither the working directory nor the spelling of a path
changes the identity.

`lock_run` keeps a second start of the same run out of its folder while the first one writes there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, is_uri, join
from tpo_ray.train.checkpoint import STATE as STATE_FILE

log = logging.getLogger(__name__)

# What may change between attempts of one run: scale, length (extend with a higher max_steps), cadence.
RESUMABLE_TRAIN_FIELDS = frozenset({
    "scaling", "storage_path", "run_name", "max_failures", "log_every_steps", "max_steps",
    "checkpoint_every_steps", "keep_checkpoints", "eval_every_steps", "eval_max_pairs", "sample_prompts",
    # speed switches: the same update, faster (tests/unit/test_speed_switches.py)
    "channels_last", "fused_optimizer", "compile",
})
# Where a model is materialised does not change the model.
LOCATION_MODEL_FIELDS = frozenset({"cache_dir"})


@dataclass(frozen=True)
class RunIdentity:
    name: str
    storage_path: str  # local absolute path or URI; Ray Train's RunConfig.storage_path
    run_dir: str  # storage_path/name: Ray Train writes checkpoint_* folders here

    def checkpoint_folders(self) -> list[str]:
        """Every `checkpoint_*` folder of this run, complete or not, oldest first (Ray names them by time)."""
        fs, root = filesystem_for(self.run_dir)
        found = sorted(fs.glob(root + "/checkpoint_*") if fs.exists(root) else [])
        if is_uri(self.run_dir):
            scheme = self.run_dir.split("://", 1)[0]
            return [f"{scheme}://{c}" for c in found]
        return found

    def checkpoints(self) -> list[str]:
        """Checkpoint folders of this run that hold a train state, oldest first (paths or URIs); see
        `tpo_ray.train.resume` for the checks a resume makes before trusting one."""
        fs, _ = filesystem_for(self.run_dir)
        return [c for c in self.checkpoint_folders() if fs.exists(f"{filesystem_for(c)[1]}/{STATE_FILE}")]

    def latest_checkpoint(self) -> str:
        found = self.checkpoints()
        if not found:
            raise FileNotFoundError(f"no checkpoint of run {self.name} under {self.run_dir}; "
                                    "train first (same config) or set export.checkpoint")
        return found[-1]


LOCK_FILE = ".tpo_ray.lock"


class RunLockedError(RuntimeError):
    """Another process is writing this run's folder."""


@contextmanager
def lock_run(run: RunIdentity) -> Iterator[None]:
    """Hold the run folder for the block: a second start of the same run fails at once, naming the holder.

    An exclusive, non-blocking `flock` on `<run_dir>/.tpo_ray.lock`, which holds the holder's pid and
    host. The kernel drops the lock when the holder's file is closed, however it ends (exception,
    kill), so a lock file left behind never blocks a later run. Object storage has no locks: there a
    warning says so and the block runs unguarded.
    """
    if is_uri(run.run_dir):
        log.warning("train: %s is on object storage, which has no locks: nothing stops a second start of run %s "
                    "from training into the same folder at the same time", run.run_dir, run.name)
        yield
        return
    import fcntl

    folder = Path(run.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunLockedError(f"run folder {folder} is in use by {holder}: the same run is already training; "
                                 "wait for it to end or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)  # the holder is gone; the lock itself goes when the file closes


def run_digest(cfg: TPOConfig) -> str:
    """8 hex digits of what defines the run (see the module docstring)."""
    defining = {"train": cfg.train.model_dump(mode="json", exclude=set(RESUMABLE_TRAIN_FIELDS)),
                "model": cfg.model.model_dump(mode="json", exclude=set(LOCATION_MODEL_FIELDS)),
                "data": cfg.data.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]


def run_identity(cfg: TPOConfig) -> RunIdentity:
    """`<loss>-<digest>` (or `train.run_name`) under `train.storage_path` (default `<output_dir>/checkpoints`)."""
    name = cfg.train.run_name or f"{cfg.train.loss.name}-{run_digest(cfg)}"
    storage = cfg.train.storage_path or join(cfg.output_dir, "checkpoints")
    return RunIdentity(name=name, storage_path=storage, run_dir=join(storage, name))


@dataclass(frozen=True)
class SweepIdentity:
    name: str
    storage_path: str  # Tune's RunConfig.storage_path: <output_dir>/tune
    sweep_dir: str  # storage_path/name: Tune's experiment folder (restored from here)
    trials_storage: str  # each trial's Ray Train run lives under it, named after the trial

    @property
    def best_config(self) -> str:
        return join(self.sweep_dir, "best.yaml")

    @property
    def latest_best_config(self) -> str:
        """`<output_dir>/tune/best.yaml`: the best config of the sweep that finished last."""
        return join(self.storage_path, "best.yaml")


def sweep_digest(cfg: TPOConfig) -> str:
    """8 hex digits of what defines a sweep: the base run (as `run_digest`) and the whole tune section."""
    key = json.dumps({"run": run_digest(cfg), "tune": cfg.tune.model_dump(mode="json", exclude={"name"})},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def sweep_identity(cfg: TPOConfig) -> SweepIdentity:
    """`tune-<digest>` (or `tune.name`) under `<output_dir>/tune`: the same `tpo-ray tune` command resumes it."""
    name = cfg.tune.name or f"tune-{sweep_digest(cfg)}"
    storage = join(cfg.output_dir, "tune")
    return SweepIdentity(name=name, storage_path=storage, sweep_dir=join(storage, name),
                         trials_storage=join(storage, name, "runs"))
