"""`run_reference`: compute a cache's reference errors once, with Ray Data (one reference U-Net per actor).

For `model.reference: precomputed` (see `tpo_ray/cache/reference.py` for what is stored and why it is
exact). The driver plans which epochs the run reads, computes only those not stored yet, and writes
each epoch's file whole once all its rows are back; the held-out split's errors at the eval's
timesteps and draws go with the first build. Training, `tpo-ray tune` (before its trials) and
`tpo-ray reference` all call it; a store that covers the run is found, not recomputed.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tpo_ray.cache.reference import (MANIFEST, PAIRED_KINDS, ReferenceErrors, epoch_file, epochs_needed, errors_array,
                                     eval_noise_seeds, reference_key, runs_under_autocast, store_dir, stored_epochs,
                                     train_noise_seeds, val_file, write_errors, write_manifest)
from tpo_ray.config import TPOConfig
from tpo_ray.data import schema
from tpo_ray.data.io import filesystem_for, join

log = logging.getLogger(__name__)


@dataclass
class ReferencePlan:
    directory: str  # the store
    key: dict[str, Any]
    epochs: int  # epochs the run reads: files epoch=0..epochs-1


@dataclass
class ReferenceResult:
    plan: ReferencePlan
    computed: list[int]  # epochs computed now (empty: the store covered the run)
    seconds: float


def plan_reference(cfg: TPOConfig, cache_directory: str, manifest: dict[str, Any], train_rows: int,
                   global_batch: int, read_lanes: int) -> ReferencePlan:
    """Where the run's reference errors live and how many epochs of them it reads."""
    key = reference_key(cfg, manifest)
    epochs = epochs_needed(cfg.train.max_steps, global_batch, read_lanes, train_rows)
    return ReferencePlan(store_dir(cache_directory, key), key, epochs)


def run_reference(cfg: TPOConfig, cache_directory: str, manifest: dict[str, Any], plan: ReferencePlan) -> ReferenceResult:
    """Compute the epochs (and the held-out errors) `plan` needs that the store lacks; then check it reads."""
    import ray

    from tpo_ray.ray_utils import ensure_ray

    start = time.perf_counter()
    fs, p = filesystem_for(join(plan.directory, MANIFEST))
    if not fs.exists(p):  # first: the key alone, so a store killed before its last file still says what it is
        write_manifest(plan.directory, plan.key, _store_rows(manifest))
    missing = sorted(set(range(plan.epochs)) - stored_epochs(plan.directory))
    fs, p = filesystem_for(val_file(plan.directory, plan.key))
    val_missing = not fs.exists(p)
    if missing or val_missing:
        ensure_ray()
        log.info("reference: computing epochs %s%s of %s reference errors -> %s", missing,
                 " and the held-out split" if val_missing else "", manifest["kind"], plan.directory)
        cc = cfg.cache
        by_epoch: dict[int, tuple[list[str], list[np.ndarray]]] = defaultdict(lambda: ([], []))
        splits = [("train", missing)] + ([("val", [])] if val_missing else [])
        for split, epochs in splits:
            if split == "train" and not epochs:
                continue
            ids, errors = [], []
            rows = _store_rows(manifest)[split]
            if rows:
                ds = ray.data.read_parquet(join(cache_directory, f"split={split}"))
                computed = ds.map_batches(
                    ReferenceErrorsActor,
                    fn_constructor_kwargs={"cfg_data": cfg.model_dump(mode="json"), "kind": manifest["kind"],
                                           "shapes": manifest["shapes"], "epochs": epochs},
                    batch_size=cc.batch_size, batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(size=cc.concurrency), num_gpus=1 if cc.use_gpu else 0)
                for table in computed.iter_batches(batch_size=None, batch_format="pyarrow"):
                    values = errors_array(table)
                    for i, (row_id, epoch) in enumerate(zip(table.column(schema.EXAMPLE).to_pylist(),
                                                            table.column("epoch").to_pylist())):
                        bucket = by_epoch[epoch] if split == "train" else (ids, errors)
                        bucket[0].append(row_id)
                        bucket[1].append(values[i])
            if split == "val":
                width = 2 * len(cfg.eval.timesteps) * cfg.eval.noise_draws
                write_errors(val_file(plan.directory, plan.key), ids, np.stack(errors) if errors
                             else np.zeros((0, width), np.float32))
        for epoch in missing:
            ids, errors = by_epoch[epoch]
            if len(ids) != manifest["rows"]["train"]:
                raise RuntimeError(f"reference: epoch {epoch} got {len(ids)} rows back for "
                                   f"{manifest['rows']['train']} cached; nothing written for it")
            write_errors(epoch_file(plan.directory, epoch), ids, np.stack(errors))
    ReferenceErrors(plan.directory, plan.key, plan.epochs)  # refuses a store that does not cover the run
    seconds = time.perf_counter() - start
    if missing or val_missing:
        log.info("reference: %d epochs of %d rows in %.1f s -> %s", len(missing), manifest["rows"]["train"],
                 seconds, plan.directory)
    return ReferenceResult(plan, missing, seconds)


def _store_rows(manifest: dict[str, Any]) -> dict[str, int]:
    """Rows stored per split: every training row; held-out rows where the trainer evaluates them (pairs)."""
    val = manifest["rows"].get("val", 0) if manifest["kind"] in PAIRED_KINDS else 0
    return {"train": manifest["rows"]["train"], "val": val}


def ensure_reference(cfg: TPOConfig, cache_directory: str, manifest: dict[str, Any], train_rows: int,
                     global_batch: int, read_lanes: int) -> ReferencePlan:
    """The store a run with this data layout reads, computed where it lacks something."""
    plan = plan_reference(cfg, cache_directory, manifest, train_rows, global_batch, read_lanes)
    run_reference(cfg, cache_directory, manifest, plan)
    return plan


def run_reference_stage(cfg: TPOConfig) -> ReferenceResult:
    """`tpo-ray reference`: the store a new run of this config reads (its cache must exist)."""
    from tpo_ray.cache.job import cache_root, expected_cache
    from tpo_ray.cache.store import find_cache
    from tpo_ray.train.checkpoint import TrainState
    from tpo_ray.cache.selection import training_rows

    if cfg.resolved_reference() != "precomputed":
        raise ValueError(f"tpo-ray reference computes reference errors for model.reference=precomputed; this config "
                         f"uses {cfg.resolved_reference()!r} (train.loss.name={cfg.train.loss.name!r})")
    directory, fp, wanted = expected_cache(cfg)
    manifest = find_cache(cache_root(cfg), cfg.data_kind(), fp, wanted)
    state = TrainState.start(cfg.train, cfg.train.scaling.num_workers)
    plan = plan_reference(cfg, directory, manifest, training_rows(cfg, directory, manifest), state.global_batch,
                          state.read_lanes)
    return run_reference(cfg, directory, manifest, plan)


def example_errors(r: torch.Tensor, paired: bool) -> torch.Tensor:
    """Per-row errors [N] of a batch -> one row per example: paired [B, 2] = (r_w, r_l), else [N, 1]."""
    if not paired:
        return r[:, None]
    r_w, r_l = r.chunk(2)
    return torch.stack([r_w, r_l], dim=1)


def held_out_errors(r_w: torch.Tensor, r_l: torch.Tensor, pairs: int) -> torch.Tensor:
    """`preference_errors` output, (timestep, draw, pair) order -> [pairs, slots * 2] of (r_w, r_l) per slot."""
    return torch.stack([r_w.view(-1, pairs), r_l.view(-1, pairs)], dim=-1).transpose(0, 1).reshape(pairs, -1)


class ReferenceErrorsActor:
    """Holds the reference (start) U-Net; maps cache rows to their errors at each requested epoch's
    noise (`epochs`), or at the held-out eval's noise when `epochs` is empty."""

    def __init__(self, cfg_data: dict[str, Any], kind: str, shapes: dict[str, Any], epochs: list[int]) -> None:
        from tpo_ray.config import config_from_dict
        from tpo_ray.models.loading import load_start_unet
        from tpo_ray.models.reference import NoReference
        from tpo_ray.train.backend import PRECISION
        from tpo_ray.train.step import TrainingStep

        self.cfg = cfg = config_from_dict(cfg_data, "reference actor config")
        self.kind, self.shapes, self.epochs = kind, shapes, epochs
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = PRECISION[cfg.train.mixed_precision]
        self.autocast = runs_under_autocast(cfg)  # as the trainer's backend runs its forwards
        unet, self.scheduler = load_start_unet(cfg.model, cfg.train.init_from)
        self.unet = unet.requires_grad_(False).eval().to(self.device, self.dtype)
        self.noise = TrainingStep(self.unet, NoReference(), self.scheduler, cfg.train.loss)  # its noise, no loss

    @torch.no_grad()
    def __call__(self, table: pa.Table) -> pa.Table:
        """Errors of the table's rows, computed in batches of the trainer's micro-batch (the last one padded
        with copies of its last row, whose errors are dropped): under bf16 a kernel's rounding depends on
        the batch shape, and only the same shape gives the policy's own errors at step 0 (m - r = 0)."""
        rows = table.to_pylist()
        micro = self.cfg.train.batch_size
        return pa.concat_tables([self._errors(rows[i:i + micro], pad_to=micro) for i in range(0, len(rows), micro)])

    def _errors(self, rows: list[dict[str, Any]], pad_to: int) -> pa.Table:
        from tpo_ray.models.denoise import denoising_errors
        from tpo_ray.train.batches import collate

        keep = len(rows)
        rows = rows + rows[-1:] * (pad_to - keep)
        batch = collate(rows, self.kind, self.shapes).to(self.device)
        ids, out_ids, out_epochs, out = batch.ids, [], [], []
        real = batch.ids[:keep]
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast)
        with autocast:
            for epoch in self.epochs:
                batch.sample_seeds = train_noise_seeds(self.cfg.train.seed, ids, [epoch] * len(ids))
                x_t, t, target = self.noise.noised(batch)
                r = denoising_errors(self.unet, x_t, t, batch.cond, target).float()
                out.append(example_errors(r, self.kind in PAIRED_KINDS)[:keep])
                out_ids += real
                out_epochs += [epoch] * keep
            if not self.epochs:
                from tpo_ray.eval.implicit import model_errors, preference_errors

                batch.sample_seeds = eval_noise_seeds(self.cfg.train.seed, ids)
                r_w, r_l = preference_errors(model_errors(self.unet), self.scheduler, batch, self.cfg.eval.timesteps,
                                             self.cfg.eval.noise_draws, self.cfg.train.seed)
                out.append(held_out_errors(r_w.float(), r_l.float(), len(ids))[:keep])
                out_ids, out_epochs = list(real), [-1] * keep
        values = torch.cat(out).cpu().numpy().astype(np.float32)
        return pa.table({schema.EXAMPLE: pa.array(out_ids, pa.string()), "epoch": pa.array(out_epochs, pa.int32()),
                         "r": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])})
