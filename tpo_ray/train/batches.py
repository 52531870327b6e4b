"""Which cached rows each worker reads at each step, rows -> `StepBatch` for each example kind, and
caption dropout for SFT."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from tpo_ray.cache.store import ReadLanes
from tpo_ray.cache.tensors import unpack
from tpo_ray.data import schema
from tpo_ray.models.conditioning import Conditioning
from tpo_ray.train.step import StepBatch, image_pair_batch, sample_batch, triplet_batch


def data_layout(state, grad_accum: int, world: int, train_rows: int) -> tuple[int, ReadLanes]:
    """(micro-batch per worker, read lanes) of a run's `TrainState` on `world` workers, or a ValueError
    naming what to change. The global batch and the lanes come from the run's start, so a resume with
    another worker count keeps both and only the micro-batch changes."""
    micro = state.global_batch // (grad_accum * world)
    if micro * grad_accum * world != state.global_batch:
        raise ValueError(f"the run's global batch {state.global_batch} does not split over train.scaling.num_workers="
                         f"{world} x train.grad_accum_steps={grad_accum}; pick a worker count that divides it")
    if state.global_batch % state.read_lanes:
        raise ValueError(f"train.read_lanes={state.read_lanes} does not divide the global batch "
                         f"{state.global_batch} (train.batch_size x train.grad_accum_steps x workers)")
    if train_rows < state.read_lanes:
        raise ValueError(f"the cache holds {train_rows} training rows, fewer than train.read_lanes="
                         f"{state.read_lanes} (default: one lane per worker); use fewer workers or lanes")
    return micro, ReadLanes(state.global_batch, state.read_lanes)


def micro_batch_start(step: int, accum_index: int, rank: int, world: int, micro: int, grad_accum: int) -> int:
    """Global position of the first row of micro-batch `accum_index` of `rank` at `step` (1-based).

    Rank-major: a rank's micro-batches of one step are contiguous positions, so with one read lane
    per worker each rank reads only its own lane's row groups (see `tpo_ray.cache.store`). Which
    rank holds which rows does not change the step's rows, so the update is the same on any count.
    """
    per_rank = micro * grad_accum
    return (step - 1) * per_rank * world + rank * per_rank + accum_index * micro


def _cond(rows: list[dict[str, Any]], name: str, shapes: dict[str, Any], time_key: str) -> Conditioning:
    embeds = unpack([r[f"cond_{name}"] for r in rows], shapes["cond"])
    if shapes.get("pooled") is None:
        return Conditioning(embeds)
    pooled = unpack([r[f"pooled_{name}"] for r in rows], shapes["pooled"])
    return Conditioning(embeds, pooled, torch.tensor([r[time_key] for r in rows], dtype=torch.float32))


def collate(rows: list[dict[str, Any]], kind: str, shapes: dict[str, Any]) -> StepBatch:
    """Decode fp16 cache rows into an fp32 batch in the layout the step expects, with the rows' example keys."""
    batch = _collate(rows, kind, shapes)
    batch.ids = [str(r[schema.EXAMPLE]) for r in rows]
    return batch


def _collate(rows: list[dict[str, Any]], kind: str, shapes: dict[str, Any]) -> StepBatch:
    x0 = unpack([r["x0"] for r in rows], shapes["x0"])
    cond_w = _cond(rows, "w", shapes, "time_ids")
    if kind == "triplet":
        return triplet_batch(x0, cond_w, _cond(rows, "l", shapes, "time_ids"))
    if kind == "image_pair":
        x0_l = unpack([r["x0_l"] for r in rows], shapes["x0"])
        cond_l = cond_w if shapes.get("pooled") is None else cond_w.with_time_ids(
            torch.tensor([r["time_ids_l"] for r in rows], dtype=torch.float32))
        emb = unpack([r["emb"] for r in rows], shapes["emb"])
        return image_pair_batch(x0, x0_l, cond_w, cond_l=cond_l, emb=emb)
    if kind == "labelled":
        return sample_batch(x0, cond_w, torch.tensor([float(r["y"]) for r in rows]))
    if kind == "single":
        return sample_batch(x0, cond_w)
    raise ValueError(f"unknown example kind {kind!r}")


def drop_captions(batch: StepBatch, null: Conditioning, p: float, generator: torch.Generator) -> StepBatch:
    """Replace each row's conditioning by the empty caption with probability p (SFT only)."""
    if p <= 0:
        return batch
    mask = torch.rand(len(batch.cond), generator=generator) < p
    if not bool(mask.any()):
        return batch

    def mix(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        m = mask.view(-1, *([1] * (x.dim() - 1))).to(x.device)
        return torch.where(m, n.to(x).expand_as(x), x)

    cond = batch.cond
    dropped = Conditioning(mix(cond.prompt_embeds, null.prompt_embeds),
                           None if cond.pooled is None else mix(cond.pooled, null.pooled), cond.time_ids)
    return replace(batch, cond=dropped)
