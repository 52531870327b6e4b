"""Precomputed reference errors (`model.reference: precomputed`): `r` computed once, read by every run.

The reference U-Net never changes during training, and the noise each example gets is a pure function
of (seed, example id, epoch) (`train_noise_seeds`), so its errors `r_w, r_l` (or `r`) at that noise can
be computed once with the reference model and read back by the trainer, which then holds no reference
U-Net and runs no reference forward. Every Tune trial that shares the cache, the seed and the start
model reads the same store. The held-out eval's noise is per (seed, example id, timestep, draw), so its
reference errors are stored too.

    <cache dir>/reference-<key>/manifest.json     what the store was computed from (its key), written first
    <cache dir>/reference-<key>/epoch=00000.parquet   example key, r: list<float32> (paired: [r_w, r_l])
    <cache dir>/reference-<key>/val-<eval>.parquet    example key, r in (timestep, draw, row) order

Rows are keyed by the cache's example key (`schema.EXAMPLE`: id and content digest, unique even when a
caption has several negatives). An epoch file is written whole (temporary name, then renamed; one PUT
on object stores) once all its rows are computed: a present file is a complete epoch, and a run that
needs more epochs than stored adds the missing ones. The key holds everything the training errors
depend on (the cache's fingerprint, the start U-Net's content, the noise schedule and prediction type,
the seed, the noise layout, the precision and whether it runs under autocast, the micro-batch (under
bf16 a kernel's rounding depends on the batch shape, so the job computes in the trainer's micro-batch),
the device type, the torch version and a digest of the noise code); the held-out file is
named by the eval's timesteps and draws, so changing the eval keeps the training epochs. A store
computed for anything else is another folder, never read; a manifest that disagrees is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tpo_ray.data import schema
from tpo_ray.data.io import filesystem_for, join, write_parquet_atomic
from tpo_ray.negatives.shards import stable_seed

REFERENCE_FORMAT = 1
MANIFEST = "manifest.json"
EVAL_FIELDS = ("eval_timesteps", "eval_noise_draws")  # name the held-out file, not the store
PAIRED_KINDS = ("triplet", "image_pair")


class ReferenceStoreError(RuntimeError):
    """The precomputed reference errors are missing, incomplete, or were computed for something else."""


def train_noise_seeds(seed: int, ids: Sequence[str], epochs: Sequence[int]) -> list[int]:
    """One noise seed per training example: the same example in the same epoch always gets the same
    (eps, t), whatever batch, worker or step it lands in."""
    return [stable_seed(seed, "noise", row_id, epoch) for row_id, epoch in zip(ids, epochs)]


def eval_noise_seeds(seed: int, ids: Sequence[str]) -> list[int]:
    """One seed per held-out example; `eval.implicit` derives one draw per (timestep, draw) from it."""
    return [stable_seed(seed, "eval", row_id) for row_id in ids]


def epochs_needed(max_steps: int, global_batch: int, lanes: int, train_rows: int) -> int:
    """Epochs a run of `max_steps` reads (`cache.store.ReadLanes`: each lane wraps on its own; the
    shortest lane, `train_rows // lanes` rows, wraps first)."""
    per_lane, shortest = global_batch // lanes, train_rows // lanes
    if shortest < 1:
        raise ValueError(f"{train_rows} training rows cannot fill {lanes} read lanes")
    return (max_steps * per_lane - 1) // shortest + 1


def start_unet_folder(cfg) -> str:
    """The U-Net the run starts from, which is its reference: `train.init_from` or the base's `unet/`."""
    if cfg.train.init_from:
        return cfg.train.init_from
    from tpo_ray.models.loading import resolve_model_dir

    return str(resolve_model_dir(cfg.model, ("unet",)) / "unet")


def runs_under_autocast(cfg) -> bool:
    """Whether the trainer's forwards run under autocast (the DDP backend in bf16/fp16; DeepSpeed runs its
    bf16/fp16 weights without it): the reference job must compute the same way."""
    return cfg.train.backend == "ddp" and cfg.train.mixed_precision != "no"


def noise_code() -> str:
    """A digest of the code that turns (seed, example, epoch) into noise, timesteps and errors: a change to
    it makes stored errors those of other noise, so it names another store."""
    import inspect

    from tpo_ray.eval import implicit
    from tpo_ray.models import denoise
    from tpo_ray.negatives.shards import stable_seed
    from tpo_ray.train import step

    parts = [inspect.getsource(m) for m in (denoise, step, implicit)]
    parts += [inspect.getsource(f) for f in (stable_seed, train_noise_seeds, eval_noise_seeds)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def reference_key(cfg, cache_manifest: dict[str, Any]) -> dict[str, Any]:
    """Everything the stored errors depend on (see the module docstring)."""
    from tpo_ray.data.fingerprint import content_fingerprint
    from tpo_ray.data.io import uri_like
    from tpo_ray.models.loading import resolve_model_dir

    folder = start_unet_folder(cfg)
    fs, p = filesystem_for(folder)
    files = sorted(f for f in fs.find(p) if not f.rsplit("/", 1)[-1].startswith("."))
    if not files:
        raise ReferenceStoreError(f"the start U-Net folder {folder} holds no files")
    schedule = (resolve_model_dir(cfg.model, ("scheduler",)) / "scheduler" / "scheduler_config.json").read_bytes()
    return {"format": REFERENCE_FORMAT, "cache": cache_manifest["fingerprint"], "kind": cache_manifest["kind"],
            "reference": content_fingerprint(folder, [uri_like(folder, f) for f in files]),
            "reference_source": folder, "scheduler": hashlib.sha256(schedule).hexdigest()[:16],
            "prediction_type": cfg.model.prediction_type, "seed": cfg.train.seed,
            "share_noise": cfg.train.loss.shares_noise(), "precision": cfg.train.mixed_precision,
            "autocast": runs_under_autocast(cfg), "micro_batch": cfg.train.batch_size,
            "device": "cuda" if cfg.cache.use_gpu else "cpu", "torch": torch.__version__, "noise_code": noise_code(),
            "eval_timesteps": list(cfg.eval.timesteps), "eval_noise_draws": cfg.eval.noise_draws}


def _store_fields(key: dict[str, Any]) -> dict[str, Any]:
    """What names the store: the content counts, not the path; the eval names only its own file."""
    return {k: v for k, v in key.items() if k != "reference_source" and k not in EVAL_FIELDS}


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def store_dir(cache_directory: str, key: dict[str, Any]) -> str:
    return join(cache_directory, f"reference-{_digest(_store_fields(key))}")


def val_file(directory: str, key: dict[str, Any]) -> str:
    return join(directory, f"val-{_digest({k: key[k] for k in EVAL_FIELDS})}.parquet")


def epoch_file(directory: str, epoch: int) -> str:
    return join(directory, f"epoch={epoch:05d}.parquet")


def stored_epochs(directory: str) -> set[int]:
    fs, p = filesystem_for(directory)
    if not fs.exists(p):
        return set()
    names = [f.rsplit("/", 1)[-1] for f in fs.ls(p, detail=False)]
    return {int(n[len("epoch="):-len(".parquet")]) for n in names if n.startswith("epoch=") and n.endswith(".parquet")}


def write_errors(path: str, keys: list[str], errors: np.ndarray) -> None:
    """Written under a temporary name and renamed (one PUT on object stores): present means complete,
    and a reader never sees a half-written file, even while another trial writes the same epoch."""
    table = pa.table({schema.EXAMPLE: pa.array(keys, pa.string()),
                      "r": pa.FixedSizeListArray.from_arrays(pa.array(errors.reshape(-1), pa.float32()),
                                                            errors.shape[1])})
    write_parquet_atomic(table, path)


def write_manifest(directory: str, key: dict[str, Any], rows: dict[str, int]) -> None:
    fs, p = filesystem_for(join(directory, MANIFEST))
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{p}.tmp-{os.getpid()}"
    fs.pipe(tmp, json.dumps({**_store_fields(key), "reference_source": key.get("reference_source"), "rows": rows},
                            indent=1).encode())
    fs.mv(tmp, p)


def errors_array(table: pa.Table) -> np.ndarray:
    """The fixed-size `r` lists of an errors table as a [rows, width] array."""
    width = table.schema.field("r").type.list_size
    return table.column("r").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def _read_errors(path: str, expected_rows: int) -> tuple[dict[str, int], np.ndarray]:
    fs, p = filesystem_for(path)
    with fs.open(p, "rb") as fh:
        table = pq.read_table(fh)
    ids = table.column(schema.EXAMPLE).to_pylist()
    values = errors_array(table)
    index = {row_id: i for i, row_id in enumerate(ids)}
    if len(index) != len(ids):  # only an input row given twice has its key twice: same inputs, same errors
        repeated = [i for i, row_id in enumerate(ids) if index[row_id] != i]
        if not np.allclose(values[repeated], values[[index[ids[i]] for i in repeated]], rtol=1e-3, atol=1e-6):
            raise ReferenceStoreError(f"{path}: one example key holds different errors; the store is damaged, "
                                      "delete it and run `tpo-ray reference` again")
    if len(ids) != expected_rows:
        raise ReferenceStoreError(f"{path} holds {len(ids)} rows, the cache {expected_rows}: the store is stale or "
                                  "damaged; delete it and run `tpo-ray reference` again")
    return index, values


class ReferenceErrors:
    """Reads a complete store; `train` and `val` give errors in the layout the step and the eval use."""

    def __init__(self, directory: str, key: dict[str, Any], epochs: int) -> None:
        fs, p = filesystem_for(join(directory, MANIFEST))
        if not fs.exists(p):
            raise ReferenceStoreError(f"no precomputed reference errors in {directory}; run `tpo-ray reference` "
                                      "with this config (model.reference=precomputed)")
        manifest = json.loads(fs.cat(p))
        stale = {k: (manifest.get(k), v) for k, v in _store_fields(key).items() if manifest.get(k) != v}
        if stale:
            raise ReferenceStoreError(f"{directory} was computed for other settings: " + ", ".join(
                f"{k} {was!r} (now {now!r})" for k, (was, now) in sorted(stale.items())))
        missing = sorted(set(range(epochs)) - stored_epochs(directory))
        if missing:
            raise ReferenceStoreError(f"{directory} lacks epochs {missing} of the {epochs} this run reads; run "
                                      "`tpo-ray reference` with this config")
        self.directory, self.paired, self.val_path = directory, key["kind"] in PAIRED_KINDS, val_file(directory, key)
        self.rows = manifest["rows"]
        fs, p = filesystem_for(self.val_path)
        if not fs.exists(p):
            raise ReferenceStoreError(f"{directory} has no held-out errors for this run's eval.timesteps / "
                                      "eval.noise_draws; run `tpo-ray reference` with this config")
        self._epochs: dict[int, tuple[dict[str, int], np.ndarray]] = {}
        self._val: tuple[dict[str, int], np.ndarray] | None = None

    def _epoch(self, epoch: int) -> tuple[dict[str, int], np.ndarray]:
        if epoch not in self._epochs:
            self._epochs[epoch] = _read_errors(epoch_file(self.directory, epoch), self.rows["train"])
        return self._epochs[epoch]

    @staticmethod
    def _take(table: tuple[dict[str, int], np.ndarray], ids: Sequence[str], where: str) -> np.ndarray:
        index, values = table
        try:
            return values[[index[i] for i in ids]]
        except KeyError as err:
            raise ReferenceStoreError(f"example {err.args[0]!r} has no stored reference error ({where}): the store "
                                      "does not match the cache") from None

    def train(self, ids: Sequence[str], epochs: Sequence[int]) -> torch.Tensor:
        """[N] errors in batch layout: paired -> r_w of every row, then r_l of every row. Epochs below the
        lowest one asked for are dropped from memory (positions only move forward)."""
        for old in [e for e in self._epochs if e < min(epochs)]:
            del self._epochs[old]
        rows = np.stack([self._take(self._epoch(e), [i], f"epoch {e}")[0] for i, e in zip(ids, epochs)])
        return torch.from_numpy(np.ascontiguousarray(rows.T.reshape(-1) if self.paired else rows[:, 0]))

    def val(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_w, r_l) of held-out pairs in `eval.implicit.preference_errors` order: (timestep, draw, row)."""
        if self._val is None:
            self._val = _read_errors(self.val_path, self.rows["val"])
        rows = self._take(self._val, ids, "val")  # [B, slots * 2]: per slot (r_w, r_l)
        pairs = torch.from_numpy(np.ascontiguousarray(rows)).view(len(ids), -1, 2).transpose(0, 1)
        return pairs[..., 0].reshape(-1), pairs[..., 1].reshape(-1)
