"""Cached rows -> `StepBatch` for each example kind, and caption dropout for SFT."""

from __future__ import annotations

from typing import Any

import torch

from tpo_ray.cache.tensors import unpack
from tpo_ray.models.conditioning import Conditioning
from tpo_ray.train.step import StepBatch, image_pair_batch, sample_batch, triplet_batch


def _cond(rows: list[dict[str, Any]], name: str, shapes: dict[str, Any], time_key: str) -> Conditioning:
    embeds = unpack([r[f"cond_{name}"] for r in rows], shapes["cond"])
    if shapes.get("pooled") is None:
        return Conditioning(embeds)
    pooled = unpack([r[f"pooled_{name}"] for r in rows], shapes["pooled"])
    return Conditioning(embeds, pooled, torch.tensor([r[time_key] for r in rows], dtype=torch.float32))


def collate(rows: list[dict[str, Any]], kind: str, shapes: dict[str, Any]) -> StepBatch:
    """Decode fp16 cache rows into an fp32 batch in the layout the step expects."""
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
    return StepBatch(batch.x0, dropped, batch.paired, batch.y, batch.emb, batch.sample_seeds)
