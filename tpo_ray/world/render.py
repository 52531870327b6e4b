"""The renderer: a scene drawn exactly as its caption says, as an RGB array or PNG bytes.

The background is tinted by the time of day, the shapes are drawn in a row (a column on the left and
right) centred at the position, with no antialiasing, so every pixel is either background or shape.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from tpo_ray.world.scenes import BACKGROUNDS, COLORS, POSITIONS, SIZES, TIMES, Scene

VERTICAL_POSITIONS = ("on the left", "on the right")  # the group is a column there, a row elsewhere


def background_color(background: str, time: str) -> tuple[int, int, int]:
    shade = TIMES[time]
    return tuple(int(c * shade) for c in BACKGROUNDS[background])  # type: ignore[return-value]


def draw_scene(scene: Scene, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), background_color(scene.background, scene.time))
    draw = ImageDraw.Draw(img)
    radius = SIZES[scene.size] * size / 2
    cx, cy = POSITIONS[scene.position]
    spacing = 2.2 * radius
    offsets = [(i - (scene.count - 1) / 2) * spacing for i in range(scene.count)]
    horizontal = scene.position not in VERTICAL_POSITIONS
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
    return img


def render_array(scene: Scene, size: int) -> np.ndarray:
    """uint8 [size, size, 3]."""
    return np.asarray(draw_scene(scene, size), dtype=np.uint8)


def render_scene(scene: Scene, size: int) -> bytes:
    """PNG bytes of the scene."""
    buf = io.BytesIO()
    draw_scene(scene, size).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
