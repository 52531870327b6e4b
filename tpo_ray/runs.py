"""A training run's (and a Tune sweep's) identity and where it lives: the one place that decides both.

`train`, `export`, the demo (and every later stage that looks a run up) call `run_identity(cfg)`;
nothing else derives a run name or a checkpoint folder. The name hashes what defines the run (method,
hyper-parameters, model, data), not how long it runs, on how many workers or where it is stored, so
rerunning a command resumes it and `export` finds it. Paths inside the config are already canonical
(see `tpo_ray.config.PathOrURI`), so neither the working directory nor the spelling of a path
changes the identity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, is_uri, join
from tpo_ray.train.checkpoint import STATE as STATE_FILE

# What may change between attempts of one run: scale, length (extend with a higher max_steps), cadence.
RESUMABLE_TRAIN_FIELDS = frozenset({
    "scaling", "storage_path", "run_name", "max_failures", "log_every_steps", "max_steps",
    "checkpoint_every_steps", "keep_checkpoints", "eval_every_steps", "eval_max_pairs", "sample_prompts",
})
# Where a model is materialised does not change the model.
LOCATION_MODEL_FIELDS = frozenset({"cache_dir"})


@dataclass(frozen=True)
class RunIdentity:
    name: str
    storage_path: str  # local absolute path or URI; Ray Train's RunConfig.storage_path
    run_dir: str  # storage_path/name: Ray Train writes checkpoint_* folders here

    def checkpoints(self) -> list[str]:
        """Complete checkpoint folders of this run, oldest first (paths or URIs)."""
        fs, root = filesystem_for(self.run_dir)
        found = sorted(c for c in (fs.glob(root + "/checkpoint_*") if fs.exists(root) else [])
                       if fs.exists(f"{c}/{STATE_FILE}"))
        if is_uri(self.run_dir):
            scheme = self.run_dir.split("://", 1)[0]
            return [f"{scheme}://{c}" for c in found]
        return found

    def latest_checkpoint(self) -> str:
        found = self.checkpoints()
        if not found:
            raise FileNotFoundError(f"no checkpoint of run {self.name} under {self.run_dir}; "
                                    "train first (same config) or set export.checkpoint")
        return found[-1]


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
