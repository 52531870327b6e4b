"""Encode rows into cached training examples with the VAE and text encoder(s) (a Ray Data actor).

Images are resized and center-cropped (never flipped: a flip breaks left/right edits); every
caption of the example (true, edited) is encoded. SDXL micro-conditioning is recorded per image.

Every row is checked before encoding; a row that cannot make an example (missing, corrupt, SVG or
oversized image, missing caption, a negative that differs from its caption only past the text
encoder's token limit, a bad label, a tie) is quarantined with its id and reason instead of failing
the job. Each batch's quarantine is one parquet file named by its content, so a retried batch
rewrites the same file rather than adding rows.

Triplets also get `text_similarity`, the cosine of c_w's and c_l's pooled embeddings from the model's own
text encoder; above `cache.max_text_similarity` a triplet is quarantined as `near_synonym` (the edit
barely changes what the text encoder reads). With `cache.reference_margins` each actor also holds the
start U-Net and stores `ref_margin`, its mean m_l - m_w at the eval timesteps, for hard-negative mining.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import torch

from tpo_ray.cache.examples import (COMPUTED_TYPES, EXTRA_TYPES, NEAR_SYNONYM, REF_MARGIN, TEXT_SIMILARITY,
                                   ExampleParts, RowRejected, example_parts)
from tpo_ray.cache.tensors import pack
from tpo_ray.config import ModelConfig
from tpo_ray.data import schema
from tpo_ray.data.images import ImageError, decode_image
from tpo_ray.data.io import join, write_parquet_atomic
from tpo_ray.data.quarantine import quarantine_table
from tpo_ray.negatives.shards import stable_seed
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
    """Callable class for `map_batches`: loads frozen encoders once per actor (and, for reference margins,
    the start U-Net: `reference_margins` = {init_from, timesteps, seed}, None = off)."""

    def __init__(self, model: dict, kind: str, resolution: int, center_crop: bool, holdout_fraction: float,
                 seed: int = 0, quarantine_dir: str | None = None, max_image_pixels: int | None = None,
                 max_text_similarity: float | None = None, reference_margins: dict[str, Any] | None = None) -> None:
        from tpo_ray.models.loading import load_components

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model_cfg = ModelConfig.model_validate(model)
        self.components = load_components(model_cfg, parts=("vae", "text"))
        for module in [self.components.vae, *self.components.text_encoders]:
            module.to(self.device)
        self.kind, self.resolution, self.center_crop = kind, resolution, center_crop
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.quarantine_dir, self.max_image_pixels = quarantine_dir, max_image_pixels
        self.max_text_similarity, self.margins = max_text_similarity, reference_margins
        if reference_margins is not None:
            from tpo_ray.models.loading import load_start_unet

            unet, self.scheduler = load_start_unet(model_cfg, reference_margins.get("init_from"))
            self.unet = unet.requires_grad_(False).eval().to(self.device, torch.float32)
        if max_image_pixels is not None:
            from PIL import Image

            # PIL refuses images over twice its own limit before our check could allow them; the
            # configured limit decides alone (decode_image checks it from the header first)
            Image.MAX_IMAGE_PIXELS = None
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tpo_ray.models.encoding import caption_embeddings, encode_captions_pooled, encode_images

        rows = batch.to_pylist()
        parts, bad = self._checked(rows)
        encoded = {name: encode_captions_pooled(self.components, [p.captions[name] for _, p in parts])
                   for name in (parts[0][1].captions if parts else ())}
        conds = {name: cond for name, (cond, _) in encoded.items()}
        similarity = None
        if self.kind == "triplet" and parts:
            similarity = caption_similarity(encoded["w"][1], encoded["l"][1])
            kept, near = screen_near_synonyms(similarity, self.max_text_similarity)
            bad += [quarantine_record(parts[i][0], NEAR_SYNONYM, f"{TEXT_SIMILARITY} {float(similarity[i]):.6f} above "
                                      f"cache.max_text_similarity={self.max_text_similarity}") for i in near]
            if near:
                index = torch.tensor(kept, dtype=torch.long)
                parts, similarity = [parts[i] for i in kept], similarity[index]
                conds = {name: cond.map(lambda x: x[index.to(x.device)]) for name, cond in conds.items()}
        self._quarantine(rows, bad)
        if not parts:
            return pa.table({schema.ID: pa.array([], pa.string()), SPLIT: pa.array([], pa.string())})
        out: dict[str, list[Any]] = {schema.ID: [str(r[schema.ID]) for r, _ in parts],
                                     schema.EXAMPLE: [example_key(r) for r, _ in parts],
                                     SPLIT: ["val" if is_holdout(r[schema.ID], self.holdout_fraction) else "train"
                                             for r, _ in parts]}
        latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in parts[0][1].images:
            crop_seeds = [stable_seed(self.seed, "crop", r[schema.ID], name) for r, _ in parts]
            x0, time_ids = latents[name] = encode_images(self.components, [p.decoded[name] for _, p in parts],
                                                         self.resolution, self.center_crop, self.generator, crop_seeds)
            out[name] = [pack(x) for x in x0]
            out[f"time_ids{name.removeprefix('x0')}"] = time_ids.tolist()
        for name, cond in conds.items():
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
        if similarity is not None:
            out[TEXT_SIMILARITY] = pa.array(similarity.cpu().numpy(), COMPUTED_TYPES[TEXT_SIMILARITY])
        if self.margins is not None and self.kind == "triplet":
            x0, time_ids = latents["x0"]
            margins = start_unet_margins(self.unet, self.scheduler, x0, conds["w"], conds["l"], time_ids,
                                        [stable_seed(self.margins["seed"], "margin", k) for k in out[schema.EXAMPLE]],
                                        self.margins["timesteps"], self.margins["seed"])
            out[REF_MARGIN] = pa.array(margins.cpu().numpy(), COMPUTED_TYPES[REF_MARGIN])
        return pa.table(out)

    def _checked(self, rows: list[dict[str, Any]]) -> tuple[list[tuple[dict[str, Any], ExampleParts]],
                                                            list[dict[str, Any]]]:
        """(the rows that make an example, their images decoded; quarantine records of the others)."""
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
        return good, bad

    def _quarantine(self, rows: list[dict[str, Any]], bad: list[dict[str, Any]]) -> None:
        """One quarantine file for the batch's rejected rows (none when every row made an example)."""
        if not bad:
            return
        if self.quarantine_dir is None:
            raise RowRejected(bad[0][schema.REASON], f"row {bad[0][schema.ID]!r}: {bad[0][schema.RAW]}")
        # named by the whole batch (every row's id and content digest) and the reasons, not by the
        # error texts (which may hold memory addresses): a retried batch rewrites its own file,
        # two batches never share one
        key = [[str(r.get(schema.ID)), _row_digest(r)] for r in rows] + [b[schema.REASON] for b in bad]
        name = hashlib.blake2b(json.dumps(key).encode(), digest_size=12).hexdigest()
        write_parquet_atomic(quarantine_table(bad), join(self.quarantine_dir, f"part-{name}.parquet"))


def caption_similarity(pooled_w: torch.Tensor, pooled_l: torch.Tensor) -> torch.Tensor:
    """[B] float32 cosine similarity of each triplet's c_w and c_l pooled text embeddings (from
    `encode_captions_pooled`: the pass that made the conditioning, no second one)."""
    return torch.nn.functional.cosine_similarity(pooled_w.float(), pooled_l.float(), dim=-1).cpu()


def screen_near_synonyms(similarity: torch.Tensor, threshold: float | None) -> tuple[list[int], list[int]]:
    """(rows kept, rows above `threshold`: near synonyms, quarantined); None keeps every row."""
    if threshold is None:
        return list(range(len(similarity))), []
    above = [bool(v > threshold) for v in similarity.tolist()]
    return [i for i, a in enumerate(above) if not a], [i for i, a in enumerate(above) if a]


@torch.no_grad()
def start_unet_margins(unet, scheduler, x0: torch.Tensor, cond_w, cond_l, time_ids: torch.Tensor, seeds: list[int],
                      timesteps: list[int], seed: int) -> torch.Tensor:
    """[B] the start U-Net's m_l - m_w per triplet, averaged over `timesteps` with one noise draw per
    (triplet, timestep) seeded from its example key (`seeds`), at the latents and embeddings as the cache
    stores them (fp16, read back as fp32): small or negative = the model finds c_l nearly as plausible for
    the image as c_w (a hard negative)."""
    from tpo_ray.eval.implicit import model_errors, preference_errors
    from tpo_ray.models.encoding import attach_time_ids
    from tpo_ray.train.step import triplet_batch

    def stored(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float16).to(torch.float32)

    device = next(unet.parameters()).device
    conds = [attach_time_ids(c.map(stored), time_ids).to(device) for c in (cond_w, cond_l)]
    batch = triplet_batch(stored(x0).to(device), *conds)
    batch.sample_seeds = list(seeds)
    m_w, m_l = preference_errors(model_errors(unet), scheduler, batch, timesteps, 1, seed)
    return (m_l - m_w).float().view(len(timesteps), -1).mean(dim=0)


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
