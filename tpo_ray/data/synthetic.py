"""A deterministic synthetic captions dataset: rendered scenes of the world (`tpo_ray/world`) with their captions.

Each row varies count, color, size, shape, position, background and time of day, so every edit
principle (content, attribute, spatial, contextual) has a word to change and the image really
shows the true caption. The same (seed, index) always gives byte-identical rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from tpo_ray.data import schema
from tpo_ray.world.render import render_scene
from tpo_ray.world.scenes import Scene, sample_scene, train_scene

__all__ = ["Scene", "render_scene", "sample_scene", "synthetic_captions", "synthetic_image_pairs", "synthetic_labelled",
           "synthetic_table"]


def synthetic_row_id(seed: int, index: int) -> str:
    return f"syn-{seed}-{index:08d}"


def synthetic_captions(num_rows: int, seed: int = 0, start: int = 0) -> Iterator[dict]:
    """Caption-only rows (no rendering): cheap input for large negatives runs and benchmarks."""
    for i in range(start, start + num_rows):
        yield {schema.ID: synthetic_row_id(seed, i), schema.CAPTION: sample_scene(seed, i).caption()}


def synthetic_table(num_rows: int, image_size: int = 64, seed: int = 0) -> pa.Table:
    """The captions-in table: id, image (PNG bytes), caption, width, height. Scenes of the training stream
    (`world.scenes.train_scene`): no held-out color/shape pair, which the world's eval prompts keep."""
    rows = {schema.ID: [], schema.IMAGE: [], schema.CAPTION: [], schema.WIDTH: [], schema.HEIGHT: []}
    for i in range(num_rows):
        scene = train_scene(seed, i)
        rows[schema.ID].append(synthetic_row_id(seed, i))
        rows[schema.IMAGE].append(render_scene(scene, image_size))
        rows[schema.CAPTION].append(scene.caption())
        rows[schema.WIDTH].append(image_size)
        rows[schema.HEIGHT].append(image_size)
    return pa.table(
        rows,
        schema=pa.schema([(schema.ID, pa.string()), (schema.IMAGE, pa.binary()), (schema.CAPTION, pa.string()),
                          (schema.WIDTH, pa.int32()), (schema.HEIGHT, pa.int32())]),
    )


def synthetic_image_pairs(num_rows: int, image_size: int = 64, seed: int = 0, tie_every: int = 0) -> pa.Table:
    """Pick-a-Pic-style rows (jpg_0, jpg_1, label_0, caption) for the image-pair baselines.

    The image that matches the caption is preferred; its position (0 or 1) alternates. With
    `tie_every=k`, every k-th row is a tie (label_0 = 0.5), which training must drop.
    """
    rows = []
    for i in range(num_rows):
        scene, other = sample_scene(seed, 2 * i), sample_scene(seed + 1, 2 * i + 1)
        good, bad = render_scene(scene, image_size), render_scene(other, image_size)
        first_is_good = i % 2 == 0
        label = 0.5 if tie_every and i % tie_every == tie_every - 1 else (1.0 if first_is_good else 0.0)
        rows.append({schema.ID: f"pair-{seed}-{i:08d}", schema.JPG_0: good if first_is_good else bad,
                     schema.JPG_1: bad if first_is_good else good, schema.LABEL_0: label,
                     schema.CAPTION: scene.caption()})
    return pa.Table.from_pylist(rows)


def synthetic_labelled(num_rows: int, image_size: int = 64, seed: int = 0) -> pa.Table:
    """Unpaired (image, caption, label) rows for Diffusion-KTO: label 1 when the caption matches."""
    rows = []
    for i in range(num_rows):
        scene = sample_scene(seed, i)
        caption = scene.caption() if i % 2 == 0 else sample_scene(seed + 7, i).caption()
        rows.append({schema.ID: f"lab-{seed}-{i:08d}", schema.IMAGE: render_scene(scene, image_size),
                     schema.CAPTION: caption, schema.LABEL: 1 if i % 2 == 0 else 0})
    return pa.Table.from_pylist(rows)
