"""Encode rows into cached training examples with the VAE and text encoder(s) (a Ray Data actor).

Images are resized and center-cropped (never flipped: a flip breaks left/right edits); every
caption of the example (true, edited) is encoded. SDXL micro-conditioning is recorded per image.

Every row is checked before encoding; a row that cannot make an example (missing, corrupt, SVG or
oversized image, missing caption, a negative that differs from its caption only past the text
encoder's token limit, a bad label, a tie) is quarantined with its id and reason instead of failing
the job. Each batch's quarantine is one parquet file named by its content, so a retried batch
rewrites the same file rather than adding rows.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import torch

from tpo_ray.cache.examples import EXTRA_TYPES, ExampleParts, RowRejected, example_parts
from tpo_ray.cache.tensors import pack
from tpo_ray.config import ModelConfig
from tpo_ray.data import schema
from tpo_ray.data.images import ImageError, decode_image
from tpo_ray.data.io import join, write_parquet_atomic
from tpo_ray.negatives.shards import quarantine_table, stable_seed
from tpo_ray.negatives.validation import MISSING_CAPTION, MISSING_ID

SPLIT = "split"
STAGE = "cache"
NEGATIVE_PAST_TOKEN_LIMIT = "negative_past_token_limit"


def check_captions(captions: dict[str, Any], tokenizers) -> None:
    """Every caption is text, and a negative differs from the true caption within the tokens the text
    encoder reads (CLIP truncates at 77: an edit past the cut would encode c_w and c_l identically)."""
    for name, text in captions.items():
        if not isinstance(text, str) or not text.strip():
            raise RowRejected(MISSING_CAPTION, f"caption {name!r} is {text!r}")
    if "l" in captions:
        same = [tok(captions["w"], truncation=True, max_length=tok.model_max_length).input_ids
                == tok(captions["l"], truncation=True, max_length=tok.model_max_length).input_ids for tok in tokenizers]
        if all(same):
            raise RowRejected(NEGATIVE_PAST_TOKEN_LIMIT, "caption and negative are identical within the first "
                              f"{tokenizers[0].model_max_length} tokens the text encoder reads")


def quarantine_record(row: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    """A quarantine row: the input row's readable fields (no image bytes) and what was wrong."""
    readable = {k: v for k, v in row.items() if not isinstance(v, (bytes, bytearray, dict))}
    return {schema.ID: None if row.get(schema.ID) is None else str(row[schema.ID]), schema.STAGE: STAGE,
            schema.REASON: reason, schema.RAW: json.dumps({"row": readable, "error": detail}, default=str)}


def is_holdout(row_id: str, fraction: float) -> bool:
    """Stable per-id split: the same id is held out in every run and on every machine."""
    h = int.from_bytes(hashlib.blake2b(str(row_id).encode(), digest_size=8).digest(), "little")
    return h / 2**64 < fraction


class CacheEncoder:
    """Callable class for `map_batches`: loads frozen encoders once per actor."""

    def __init__(self, model: dict, kind: str, resolution: int, center_crop: bool, holdout_fraction: float,
                 seed: int = 0, quarantine_dir: str | None = None, max_image_pixels: int | None = None) -> None:
        from tpo_ray.models.loading import load_components

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.components = load_components(ModelConfig.model_validate(model), parts=("vae", "text"))
        for module in [self.components.vae, *self.components.text_encoders]:
            module.to(self.device)
        self.kind, self.resolution, self.center_crop = kind, resolution, center_crop
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.quarantine_dir, self.max_image_pixels = quarantine_dir, max_image_pixels
        if max_image_pixels is not None:
            from PIL import Image

            # PIL refuses images over twice its own limit before our check could allow them; the
            # configured limit decides alone (decode_image checks it from the header first)
            Image.MAX_IMAGE_PIXELS = None
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tpo_ray.models.encoding import caption_embeddings, encode_captions, encode_images

        parts = self._checked(batch.to_pylist())
        out: dict[str, list[Any]] = {schema.ID: [str(r[schema.ID]) for r, _ in parts],
                                     schema.EXAMPLE: [example_key(r) for r, _ in parts],
                                     SPLIT: ["val" if is_holdout(r[schema.ID], self.holdout_fraction) else "train"
                                             for r, _ in parts]}
        if not parts:
            return pa.table({schema.ID: pa.array([], pa.string()), SPLIT: pa.array([], pa.string())})
        for name in parts[0][1].images:
            crop_seeds = [stable_seed(self.seed, "crop", r[schema.ID], name) for r, _ in parts]
            x0, time_ids = encode_images(self.components, [p.decoded[name] for _, p in parts], self.resolution,
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

    def _checked(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], ExampleParts]]:
        """The rows that make an example, their images decoded; the others go to quarantine."""
        good, bad = [], []
        for row in rows:
            try:
                if row.get(schema.ID) is None:
                    raise RowRejected(MISSING_ID, "the row has no id")
                parts = example_parts(self.kind, row)
                if parts.skip is not None:
                    raise RowRejected(parts.skip, f"{self.kind} row skipped")
                check_captions(parts.captions, self.components.tokenizers)
                parts.decoded = {name: decode_image(data, self.max_image_pixels) for name, data in parts.images.items()}
            except (RowRejected, ImageError) as err:
                bad.append(quarantine_record(row, err.reason, str(err)))
                continue
            good.append((row, parts))
        if bad:
            if self.quarantine_dir is None:
                raise RowRejected(bad[0][schema.REASON], f"row {bad[0][schema.ID]!r}: {bad[0][schema.RAW]}")
            # named by the whole batch (every row's id and content digest) and the reasons, not by the
            # error texts (which may hold memory addresses): a retried batch rewrites its own file,
            # two batches never share one
            key = [[str(r.get(schema.ID)), _row_digest(r)] for r in rows] + [b[schema.REASON] for b in bad]
            name = hashlib.blake2b(json.dumps(key).encode(), digest_size=12).hexdigest()
            write_parquet_atomic(quarantine_table(bad), join(self.quarantine_dir, f"part-{name}.parquet"))
        return good


def example_key(row: dict[str, Any]) -> str:
    """`<id>:<content digest>`: the same for the same input row on every actor and rebuild, different for
    two negatives of one caption (same id, another negative)."""
    return f"{row[schema.ID]}:{_row_digest(row)}"


def _row_digest(row: dict[str, Any]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for key in sorted(row):
        value = row[key]
        digest.update(key.encode())
        digest.update(value if isinstance(value, (bytes, bytearray)) else json.dumps(value, default=str).encode())
    return digest.hexdigest()
