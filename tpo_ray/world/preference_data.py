"""Preference data of the scene world beyond the negatives job's triplets, for the paper's comparisons.

`image_pairs` turns triplets into Diffusion-DPO data: the world can draw the scene a wrong caption
describes, so each (c_w, c_l) becomes a Pick-a-Pic row (the render of c_w preferred over the render of
c_l, under c_w), the image-pair counterpart of the same edit. `true_rewrites` rewrites a caption with
words outside the grammar that still describe the same image (small -> little, at night -> after dark),
and `spoil_negatives` puts such rewrites in place of a share of the negatives: a TDPO run on them
measures what wrong "negatives" that are in fact true cost. Pure functions over rows (no Ray, no I/O),
used by `benchmarks/alignment.py`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tpo_ray.data import schema
from tpo_ray.world.render import render_scene
from tpo_ray.world.scenes import ATTRIBUTES, CAPTION_ORDER, Scene, parse_caption

# Extra triplet column of `spoil_negatives`: the negative is a true rewrite, not an edit. The cache reads
# only the columns it needs (cache/examples.py), so the column travels in the triplets file and no further.
SPOILED = "spoiled"

# attribute -> grammar phrase -> phrases outside the grammar that say the same of the rendered image.
# Shapes are given singular; the plural adds "s" as the grammar's does. Colors have none: every shade
# word ("crimson", "navy") names a narrower color than the renderer's, so it could be false.
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "count": {"one": ("a single",), "two": ("a pair of",), "three": ("3",), "four": ("4",)},
    "size": {"small": ("little",), "large": ("big",)},
    "color": {},
    "shape": {"circle": ("disc",)},
    "position": {"on the left": ("on the left side",), "on the right": ("on the right side",),
                 "at the top": ("near the top",), "at the bottom": ("near the bottom",),
                 "in the center": ("in the middle",)},
    "background": {"a gray wall": ("a grey wall",), "a blue sky": ("a clear blue sky",),
                   "a green field": ("a green meadow",), "a sandy beach": ("a sand beach",)},
    "time": {"during the day": ("in daylight", "in the daytime"), "at night": ("after dark", "at nighttime")},
}
assert set(SYNONYMS) == set(ATTRIBUTES)

# Why a triplet makes no image pair.
NEGATIVE_OUTSIDE = "negative_outside_grammar"  # the editor used a word the world cannot draw
CAPTION_OUTSIDE = "caption_outside_grammar"
SAME_SCENE = "same_scene"  # the negative describes the true scene (a case or spacing change): one image twice


def _phrases(scene: Scene, words: Mapping[str, str]) -> dict[str, str]:
    """Each attribute's phrase as the caption writes it (shapes in the plural when count > 1)."""
    part = {a: words.get(a, scene.value(a)) for a in CAPTION_ORDER}
    part["shape"] += "s" if scene.count > 1 else ""
    return part


def scene_text(scene: Scene, words: Mapping[str, str] | None = None) -> str:
    """The caption of `scene` with the phrase of each attribute in `words` replaced (the caption itself
    when `words` is empty): the grammar's word order, so only the chosen phrases change."""
    p = _phrases(scene, words or {})
    return f"{p['count']} {p['size']} {p['color']} {p['shape']} {p['position']} of {p['background']} {p['time']}"


@dataclass(frozen=True)
class Rewrite:
    caption: str
    edits: list[dict[str, str]]  # {"from": caption phrase, "to": its synonym}, the triplet `edits` layout


def true_rewrites(caption: str, seed: int | str, max_swaps: int = 2) -> Rewrite | None:
    """`caption` with 1..max_swaps attribute phrases (seeded choice) replaced by synonyms from `SYNONYMS`:
    a different string, outside the grammar, still true of the caption's image. None outside the grammar."""
    scene = parse_caption(caption)
    if scene is None:
        return None
    rng = random.Random(str(seed))
    options = [a for a in ATTRIBUTES if SYNONYMS[a].get(scene.value(a))]
    chosen = rng.sample(options, rng.randint(1, min(max_swaps, len(options))))
    words = {a: rng.choice(SYNONYMS[a][scene.value(a)]) for a in chosen}
    before, after = _phrases(scene, {}), _phrases(scene, words)
    edits = [{"from": before[a], "to": after[a]} for a in CAPTION_ORDER if a in words]  # in caption order
    return Rewrite(scene_text(scene, words), edits)


def _inverse_table() -> dict[str, str]:
    table = {syn: phrase for values in SYNONYMS.values() for phrase, syns in values.items() for syn in syns}
    table.update({syn + "s": shape + "s" for shape, syns in SYNONYMS["shape"].items() for syn in syns})
    return table


_INVERSE = _inverse_table()
_SYNONYM_RE = re.compile(r"\b(" + "|".join(re.escape(s) for s in sorted(_INVERSE, key=len, reverse=True)) + r")\b")


def canonical_caption(text: str) -> str:
    """Every synonym of `SYNONYMS` in `text` put back to its grammar phrase (longest first): the inverse of
    `true_rewrites`, so `parse_caption(canonical_caption(rewrite))` is the rewritten caption's scene."""
    return _SYNONYM_RE.sub(lambda m: _INVERSE[m.group(1)], " ".join(text.lower().split()))


def spoil_negatives(triplet_rows: Sequence[Mapping[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """The rows with round(share * len(rows)) negatives (a seeded choice among rows whose caption is in the
    grammar) replaced by `true_rewrites` of their own caption; principle and the other columns are kept,
    `edits` records the swaps, and `SPOILED` marks which rows changed (False on the others)."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must be in [0, 1], got {share}")
    eligible = [i for i, r in enumerate(triplet_rows) if parse_caption(r[schema.CAPTION]) is not None]
    count = min(round(share * len(triplet_rows)), len(eligible))
    chosen = {eligible[int(i)] for i in np.random.default_rng(seed).permutation(len(eligible))[:count]}
    out = []
    for i, row in enumerate(triplet_rows):
        new = {**row, SPOILED: i in chosen}
        if i in chosen:
            rewrite = true_rewrites(row[schema.CAPTION], f"{seed}:{row[schema.ID]}:{row.get(schema.NEGATIVE_INDEX)}")
            new.update({schema.NEGATIVE: rewrite.caption, schema.EDITS: rewrite.edits})
        out.append(new)
    return out


@dataclass
class ImagePairs:
    table: pa.Table  # id, jpg_0, jpg_1, label_0, caption (the `synthetic_image_pairs` layout)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # triplet rows with a `reason`, not made into pairs

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.skipped:
            counts[row["reason"]] = counts.get(row["reason"], 0) + 1
        return counts


PAIR_SCHEMA = pa.schema([(schema.ID, pa.string()), (schema.JPG_0, pa.binary()), (schema.JPG_1, pa.binary()),
                         (schema.LABEL_0, pa.float64()), (schema.CAPTION, pa.string())])


def image_pairs(triplets: Sequence[Mapping[str, Any]], size: int, seed: int) -> ImagePairs:
    """Diffusion-DPO rows from triplets: the render of the caption's scene (preferred) and the render of the
    scene the negative describes, under the true caption; the preferred image is first in every other row
    (`seed` picks which parity). A pair keeps its triplet's id, so it falls in the same held-out split.
    Triplets whose negative (or caption) is outside the grammar, or names the same scene, are returned in
    `skipped` with their reason."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for triplet in triplets:
        scene_w, scene_l = parse_caption(triplet[schema.CAPTION]), parse_caption(triplet[schema.NEGATIVE])
        reason = (CAPTION_OUTSIDE if scene_w is None else NEGATIVE_OUTSIDE if scene_l is None
                  else SAME_SCENE if scene_w == scene_l else None)
        if reason is not None:
            skipped.append({**triplet, "reason": reason})
            continue
        x_w, x_l = render_scene(scene_w, size), render_scene(scene_l, size)
        first_is_w = (len(rows) + seed) % 2 == 0
        rows.append({schema.ID: str(triplet[schema.ID]), schema.JPG_0: x_w if first_is_w else x_l,
                     schema.JPG_1: x_l if first_is_w else x_w, schema.LABEL_0: 1.0 if first_is_w else 0.0,
                     schema.CAPTION: triplet[schema.CAPTION]})
    return ImagePairs(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), skipped)

