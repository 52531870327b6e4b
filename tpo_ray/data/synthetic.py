"""A deterministic synthetic captions dataset: rendered shapes with a caption that describes them.

Each row varies count, color, size, shape, position, background and time of day, so every edit
principle (content, attribute, spatial, contextual) has a word to change and the image really
shows the true caption. The same (seed, index) always gives byte-identical rows.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from tpo_ray.data import schema

COUNTS = {1: "one", 2: "two", 3: "three", 4: "four"}
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 50, 170), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SIZES = {"small": 0.12, "large": 0.22}
POSITIONS = {  # phrase -> centre of the group in unit coordinates
    "on the left": (0.28, 0.5), "on the right": (0.72, 0.5), "at the top": (0.5, 0.28),
    "at the bottom": (0.5, 0.72), "in the center": (0.5, 0.5),
}
BACKGROUNDS = {
    "a gray wall": (128, 128, 128), "a blue sky": (120, 170, 235), "a green field": (90, 160, 80),
    "a sandy beach": (225, 200, 150),
}
TIMES = {"during the day": 1.0, "at night": 0.35}


@dataclass(frozen=True)
class Scene:
    count: int
    color: str
    size: str
    shape: str
    position: str
    background: str
    time: str

    def caption(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{COUNTS[self.count]} {self.size} {self.color} {noun} {self.position} of {self.background} {self.time}"


def sample_scene(seed: int, index: int) -> Scene:
    rng = np.random.default_rng([seed, index])

    def pick(options) -> str:
        keys = list(options)
        return keys[int(rng.integers(len(keys)))]

    return Scene(
        count=int(rng.integers(1, 5)), color=pick(COLORS), size=pick(SIZES), shape=pick(SHAPES),
        position=pick(POSITIONS), background=pick(BACKGROUNDS), time=pick(TIMES),
    )


def render_scene(scene: Scene, size: int) -> bytes:
    """PNG bytes of the scene: background tinted by time of day, shapes grouped at the position."""
    shade = TIMES[scene.time]
    bg = tuple(int(c * shade) for c in BACKGROUNDS[scene.background])
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    radius = SIZES[scene.size] * size / 2
    cx, cy = POSITIONS[scene.position]
    spacing = 2.2 * radius
    offsets = [(i - (scene.count - 1) / 2) * spacing for i in range(scene.count)]
    horizontal = scene.position in ("at the top", "at the bottom", "in the center")
    color = COLORS[scene.color]
    for off in offsets:
        x = cx * size + (off if horizontal else 0)
        y = cy * size + (0 if horizontal else off)
        box = (x - radius, y - radius, x + radius, y + radius)
        if scene.shape == "circle":
            draw.ellipse(box, fill=color)
        elif scene.shape == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def synthetic_row_id(seed: int, index: int) -> str:
    return f"syn-{seed}-{index:08d}"


def synthetic_captions(num_rows: int, seed: int = 0, start: int = 0) -> Iterator[dict]:
    """Caption-only rows (no rendering): cheap input for large negatives runs and benchmarks."""
    for i in range(start, start + num_rows):
        yield {schema.ID: synthetic_row_id(seed, i), schema.CAPTION: sample_scene(seed, i).caption()}


def synthetic_table(num_rows: int, image_size: int = 64, seed: int = 0) -> pa.Table:
    """The captions-in table: id, image (PNG bytes), caption, width, height."""
    rows = {schema.ID: [], schema.IMAGE: [], schema.CAPTION: [], schema.WIDTH: [], schema.HEIGHT: []}
    for i in range(num_rows):
        scene = sample_scene(seed, i)
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
