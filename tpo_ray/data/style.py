"""Style and safety alignment data: a phrase put before the caption turns rows into preference data.

Two layouts, both read by the trainer as they are (`cache.input`):

- **Triplets, no second image** (the TPO way): an image in style S with its caption `c` gives
  `c_w = "<phrase of S>, c"` and `c_l = "<phrase of S'>, c"` for another style S' (an attribute edit,
  principle `attribute`), so TDPO/TKTO learn to tell the requested style apart (`style_triplets`).
- **Image pairs** (Pick-Style / Pick-Safety as MaPO builds them; Diffusion-RPO's style alignment): the
  same prompt rendered twice, the image in the wanted style (or the safe one) preferred; the caption gets
  the style (or safety) phrase so the model learns to follow the phrase (`prefixed_pairs`), for dpo,
  mapo and rpo.

`STYLES` holds the phrases used by default and the descriptions the style eval (`tpo_ray/eval/style.py`)
compares images with; `eval.styles` replaces them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tpo_ray.data import schema
from tpo_ray.data.quarantine import raw_json

STYLES = {
    "photo": "a photograph",
    "oil_painting": "an oil painting",
    "watercolor": "a watercolor painting",
    "cartoon": "a cartoon illustration",
    "pencil_sketch": "a pencil sketch",
    "pixel_art": "pixel art",
}
SAFETY_PHRASE = "a safe-for-work image"


def prefixed(caption: str, phrase: str) -> str:
    """`"<phrase>, <caption>"`: the phrase leads, so a truncated caption keeps it."""
    return f"{phrase}, {caption.strip()}"


@dataclass
class StyleData:
    """The rows a transform made, and the input rows it could not use, each with its reason (the
    negatives job's quarantine layout: id, stage, reason, raw)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, row: dict[str, Any], reason: str) -> None:
        self.quarantine.append({schema.ID: None if row.get(schema.ID) is None else str(row[schema.ID]),
                                schema.STAGE: STAGE, schema.REASON: reason, schema.RAW: raw_json(row)})


STAGE = "style_data"


def _missing(row: dict[str, Any], columns: Iterable[str]) -> list[str]:
    return [c for c in columns if row.get(c) is None or (c == schema.CAPTION and not str(row[c]).strip())]


def style_triplets(rows: Iterable[dict[str, Any]], styles: dict[str, str], seed: int = 0,
                   style_column: str = "style") -> StyleData:
    """One triplet per row whose style is known: the caption with its own style's phrase against the same
    caption with another style's phrase (drawn per row from `seed`, so reruns agree). Rows keep every
    other column (the image goes through). A row without an id, caption or image (`image` or
    `image_uri`; `missing:<column>`) or of a
    style not in `styles` (`unknown_style:<style>`) is quarantined, not dropped."""
    if len(styles) < 2:
        raise ValueError(f"style triplets need at least two styles to swap between, got {sorted(styles)}")
    out = StyleData()
    for row in rows:
        missing = _missing(row, (schema.ID, schema.CAPTION))
        if row.get(schema.IMAGE) is None and row.get(schema.IMAGE_URI) is None:
            missing.append(schema.IMAGE)  # the image the triplet's captions describe: `image` or `image_uri`
        style = row.get(style_column)
        if missing:
            out.reject(row, f"missing:{missing[0]}")
            continue
        if style not in styles:
            out.reject(row, f"unknown_style:{style}")
            continue
        rng = random.Random(f"{seed}:{row[schema.ID]}")
        other = rng.choice(sorted(s for s in styles if s != style))
        out.rows.append({**row, schema.CAPTION: prefixed(row[schema.CAPTION], styles[style]),
                         schema.NEGATIVE: prefixed(row[schema.CAPTION], styles[other]), schema.PRINCIPLE: "attribute",
                         schema.EDITS: [{"from": styles[style], "to": styles[other]}]})
    return out


def prefixed_pairs(rows: Iterable[dict[str, Any]], phrase: str, preferred: str, other: str) -> StyleData:
    """Pick-a-Pic-layout pairs (`jpg_0` preferred, `label_0 = 1`) from rows holding two images of one
    prompt: `preferred` (the styled or safe image) and `other`, the caption prefixed with `phrase`. A row
    lacking one of them, its id or caption is quarantined (`missing:<column>`)."""
    out = StyleData()
    for row in rows:
        missing = _missing(row, (schema.ID, schema.CAPTION, preferred, other))
        if missing:
            out.reject(row, f"missing:{missing[0]}")
            continue
        rest = {k: v for k, v in row.items() if k not in (preferred, other)}
        out.rows.append({**rest, schema.JPG_0: row[preferred], schema.JPG_1: row[other], schema.LABEL_0: 1.0,
                         schema.CAPTION: prefixed(row[schema.CAPTION], phrase)})
    return out
