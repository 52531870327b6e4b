"""What each kind of training example needs from its input rows (LOSSES.md data units).

    single      (x, c)          captions or triplets (true caption only)       SFT
    triplet     (x, c_w, c_l)   negatives triplets                              TDPO, TKTO
    image_pair  (x_w, x_l, c)   Pick-a-Pic layout: jpg_0, jpg_1, label_0, caption (ties dropped)   DPO, MaPO, RPO
    labelled    (x, c, y)       image, caption, label (1/0 or +1/-1)            Diffusion-KTO
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tpo_ray.data import schema

TIE = "tie"
BAD_LABEL = "bad_label"


class RowRejected(ValueError):
    """A row that makes no training example; `reason` is its quarantine reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class ExampleParts:
    images: dict[str, bytes]  # latent name -> image bytes
    captions: dict[str, str]  # condition name -> caption
    y: int | None = None
    skip: str | None = None  # reason this row makes no example (e.g. a tie): quarantined with that reason
    extra: dict[str, Any] = field(default_factory=dict)  # carried columns (EXTRA_TYPES), e.g. a triplet's principle
    decoded: dict[str, Any] = field(default_factory=dict)  # latent name -> decoded image, once the row is checked


EXTRA_TYPES = {schema.PRINCIPLE: pa.string(), schema.NUM_EDITS: pa.int32()}

# computed per triplet by the cache encoder, typed like EXTRA_TYPES, for read-time hard-negative mining
TEXT_SIMILARITY, REF_MARGIN = schema.TEXT_SIMILARITY, schema.REF_MARGIN  # column names live in data/schema.py
COMPUTED_TYPES = {TEXT_SIMILARITY: pa.float32(), REF_MARGIN: pa.float32()}
NEAR_SYNONYM = "near_synonym"  # quarantine reason: text similarity above cache.max_text_similarity

REQUIRED_COLUMNS = {
    "single": (schema.ID, schema.IMAGE, schema.CAPTION),
    "triplet": (schema.ID, schema.IMAGE, schema.CAPTION, schema.NEGATIVE),
    "image_pair": (schema.ID, schema.JPG_0, schema.JPG_1, schema.LABEL_0, schema.CAPTION),
    "labelled": (schema.ID, schema.IMAGE, schema.CAPTION, schema.LABEL),
}


def example_parts(kind: str, row: dict[str, Any]) -> ExampleParts:
    if kind == "single":
        return ExampleParts({"x0": row[schema.IMAGE]}, {"w": row[schema.CAPTION]})
    if kind == "triplet":
        edits = row.get(schema.EDITS)
        return ExampleParts({"x0": row[schema.IMAGE]}, {"w": row[schema.CAPTION], "l": row[schema.NEGATIVE]},
                            extra={schema.PRINCIPLE: row.get(schema.PRINCIPLE),
                                   schema.NUM_EDITS: None if edits is None else len(edits)})
    if kind == "image_pair":
        try:
            label = float(row[schema.LABEL_0])
        except (TypeError, ValueError):
            raise RowRejected(BAD_LABEL, f"label_0 must be a number in [0, 1], got {row[schema.LABEL_0]!r}") from None
        if label == 0.5:
            return ExampleParts({}, {}, skip=TIE)
        first, second = (row[schema.JPG_0], row[schema.JPG_1]) if label > 0.5 else (row[schema.JPG_1], row[schema.JPG_0])
        return ExampleParts({"x0": first, "x0_l": second}, {"w": row[schema.CAPTION]})
    if kind == "labelled":
        label = row[schema.LABEL]
        if isinstance(label, bool) or label not in (1, 0, -1):
            raise RowRejected(BAD_LABEL, f"label must be 1 (desirable) or 0/-1, got {label!r}")
        return ExampleParts({"x0": row[schema.IMAGE]}, {"w": row[schema.CAPTION]}, y=1 if label == 1 else -1)
    raise ValueError(f"unknown example kind {kind!r}; choose one of {sorted(REQUIRED_COLUMNS)}")
