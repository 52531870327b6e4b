"""Encode rows into cached training examples with the VAE and text encoder(s) (a Ray Data actor).

Images are resized and center-cropped (never flipped: a flip breaks left/right edits); every
caption of the example (true, edited) is encoded. SDXL micro-conditioning is recorded per image.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import torch

from tpo_ray.cache.examples import EXTRA_TYPES, example_parts
from tpo_ray.cache.tensors import pack
from tpo_ray.config import ModelConfig
from tpo_ray.data import schema
from tpo_ray.negatives.shards import stable_seed

SPLIT = "split"


def is_holdout(row_id: str, fraction: float) -> bool:
    """Stable per-id split: the same id is held out in every run and on every machine."""
    h = int.from_bytes(hashlib.blake2b(str(row_id).encode(), digest_size=8).digest(), "little")
    return h / 2**64 < fraction


class CacheEncoder:
    """Callable class for `map_batches`: loads frozen encoders once per actor."""

    def __init__(self, model: dict, kind: str, resolution: int, center_crop: bool, holdout_fraction: float,
                 seed: int = 0) -> None:
        from tpo_ray.models.loading import load_components

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.components = load_components(ModelConfig.model_validate(model), parts=("vae", "text"))
        for module in [self.components.vae, *self.components.text_encoders]:
            module.to(self.device)
        self.kind, self.resolution, self.center_crop = kind, resolution, center_crop
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tpo_ray.models.encoding import caption_embeddings, encode_captions, encode_images

        rows = [r for r in batch.to_pylist()]
        parts = [(r, example_parts(self.kind, r)) for r in rows]
        parts = [(r, p) for r, p in parts if p.skip is None]
        out: dict[str, list[Any]] = {schema.ID: [str(r[schema.ID]) for r, _ in parts],
                                     SPLIT: ["val" if is_holdout(r[schema.ID], self.holdout_fraction) else "train"
                                             for r, _ in parts]}
        if not parts:
            return pa.table({schema.ID: pa.array([], pa.string()), SPLIT: pa.array([], pa.string())})
        for name in parts[0][1].images:
            crop_seeds = [stable_seed(self.seed, "crop", r[schema.ID], name) for r, _ in parts]
            x0, time_ids = encode_images(self.components, [p.images[name] for _, p in parts], self.resolution,
                                         self.center_crop, self.generator, crop_seeds)
            out[name] = [pack(x) for x in x0]
            out[f"time_ids{name.removeprefix('x0')}"] = time_ids.tolist()
        for name in parts[0][1].captions:
            cond = encode_captions(self.components, [p.captions[name] for _, p in parts])
            out[f"cond_{name}"] = [pack(c) for c in cond.prompt_embeds]
            out[f"pooled_{name}"] = [pack(c) for c in cond.pooled] if cond.pooled is not None else [None] * len(parts)
            if name == "w":
                captions = [p.captions[name] for _, p in parts]
                out["emb"] = [pack(c) for c in caption_embeddings(self.components, captions, cond.prompt_embeds)]
        if parts[0][1].y is not None:
            out["y"] = [p.y for _, p in parts]
        out[schema.CAPTION] = [p.captions["w"] for _, p in parts]
        for name in parts[0][1].extra:  # typed: a shard where every value is null keeps the dataset's schema
            out[name] = pa.array([p.extra.get(name) for _, p in parts], EXTRA_TYPES[name])
        return pa.table(out)
