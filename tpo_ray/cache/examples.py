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


@dataclass
class ExampleParts:
    images: dict[str, bytes]  # latent name -> image bytes
    captions: dict[str, str]  # condition name -> caption
    y: int | None = None
    skip: str | None = None  # reason this row makes no example (e.g. a tie)
    extra: dict[str, Any] = field(default_factory=dict)  # carried columns (EXTRA_TYPES), e.g. a triplet's principle


EXTRA_TYPES = {schema.PRINCIPLE: pa.string(), schema.NUM_EDITS: pa.int32()}

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
        label = float(row[schema.LABEL_0])
        if label == 0.5:
            return ExampleParts({}, {}, skip=TIE)
        first, second = (row[schema.JPG_0], row[schema.JPG_1]) if label > 0.5 else (row[schema.JPG_1], row[schema.JPG_0])
        return ExampleParts({"x0": first, "x0_l": second}, {"w": row[schema.CAPTION]})
    if kind == "labelled":
        label = int(row[schema.LABEL])
        if label not in (1, 0, -1):
            raise ValueError(f"row {row.get(schema.ID)!r}: label must be 1 (desirable) or 0/-1, got {label}")
        return ExampleParts({"x0": row[schema.IMAGE]}, {"w": row[schema.CAPTION]}, y=1 if label == 1 else -1)
    raise ValueError(f"unknown example kind {kind!r}; choose one of {sorted(REQUIRED_COLUMNS)}")
