"""The scene grammar: the attributes of a scene, its caption, the caption parsed back, and the splits.

A caption reads "<count> <size> <color> <shape(s)> <position> of <background> <time>". `parse_caption`
inverts `Scene.caption` exactly, and returns None for any caption outside the grammar (an edited
negative that introduced a word the world does not know, say). Held-out prompts combine a color with a
shape that pretraining and training never show (`HELD_OUT_PAIRS`), so evaluation measures binding, not
memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from itertools import product

import numpy as np

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

# The verifier's attributes, in the order reports show them. `principle` says which edit principle
# changes each one (tpo_ray/negatives/lexicon: counts are content, places spatial, settings contextual).
ATTRIBUTES = ("background", "time", "color", "position", "count", "shape", "size")
PRINCIPLE_OF = {"background": "contextual", "time": "contextual", "color": "attribute", "size": "attribute",
                "position": "spatial", "count": "content", "shape": "content"}

# (color, shape) combinations no pretraining, training or demo caption shows: held-out prompts use them.
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("blue", "square"), ("yellow", "circle"), ("white", "triangle")})


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

    def value(self, attribute: str) -> str:
        """The attribute as the caption says it (counts as words)."""
        value = getattr(self, attribute)
        return COUNTS[value] if attribute == "count" else str(value)

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape) in HELD_OUT_PAIRS


SCENE_FIELDS = tuple(f.name for f in fields(Scene))
CAPTION_ORDER = ("count", "size", "color", "shape", "position", "background", "time")  # as `Scene.caption` says them
assert set(SCENE_FIELDS) == set(ATTRIBUTES) == set(CAPTION_ORDER)
OPTIONS: dict[str, tuple] = {"count": tuple(COUNTS), "color": tuple(COLORS), "size": tuple(SIZES), "shape": SHAPES,
                             "position": tuple(POSITIONS), "background": tuple(BACKGROUNDS), "time": tuple(TIMES)}

_WORDS = {v: k for k, v in COUNTS.items()}
_CAPTION = re.compile(
    r"^(?P<count>{})\s+(?P<size>{})\s+(?P<color>{})\s+(?P<shape>{})(?P<plural>s?)\s+(?P<position>{})\s+of\s+"
    r"(?P<background>{})\s+(?P<time>{})$".format(
        "|".join(_WORDS), "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES),
        "|".join(re.escape(p) for p in POSITIONS), "|".join(re.escape(b) for b in BACKGROUNDS),
        "|".join(re.escape(t) for t in TIMES)))


def chance(attribute: str) -> float:
    """Accuracy of a guess at an attribute: 1 / its number of values (background 1/4, time 1/2, color 1/8)."""
    return 1.0 / len(OPTIONS[attribute])


def parse_caption(caption: str) -> Scene | None:
    """The scene a caption of the grammar describes (case and spacing ignored); None outside the grammar.
    A plural must agree with its count, so "one red circles" is not a scene."""
    m = _CAPTION.match(" ".join(caption.lower().split()))
    if m is None:
        return None
    count = _WORDS[m["count"]]
    if (count > 1) != bool(m["plural"]):
        return None
    return Scene(count=count, color=m["color"], size=m["size"], shape=m["shape"], position=m["position"],
                 background=m["background"], time=m["time"])


def sample_scene(seed: int, index: int) -> Scene:
    """Scene `index` of the seeded stream: every attribute uniform and independent."""
    rng = np.random.default_rng([seed, index])

    def pick(options) -> str:
        keys = list(options)
        return keys[int(rng.integers(len(keys)))]

    return Scene(
        count=int(rng.integers(1, 5)), color=pick(COLORS), size=pick(SIZES), shape=pick(SHAPES),
        position=pick(POSITIONS), background=pick(BACKGROUNDS), time=pick(TIMES),
    )


def train_scene(seed: int, index: int) -> Scene:
    """Scene `index` of the training stream: `sample_scene` with held-out (color, shape) pairs redrawn
    (the shape is redrawn from the stream's next values, so the stream stays deterministic)."""
    scene = sample_scene(seed, index)
    draw = 0
    while scene.held_out:
        draw += 1
        rng = np.random.default_rng([seed, index, draw])
        scene = replace(scene, shape=SHAPES[int(rng.integers(len(SHAPES)))])
    return scene


def all_scenes() -> Iterator[Scene]:
    """Every scene of the grammar (7,680), in a fixed order."""
    for values in product(*(OPTIONS[name] for name in SCENE_FIELDS)):
        yield Scene(**dict(zip(SCENE_FIELDS, values)))


def held_out_scenes(num: int, seed: int = 0) -> list[Scene]:
    """`num` distinct held-out scenes (a held-out color/shape pair, every other attribute drawn), seeded."""
    pool = [s for s in all_scenes() if s.held_out]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    return [pool[i] for i in order[:num]]


def changed(scene: Scene, attribute: str, seed: int = 0, allow_held_out: bool = True) -> Scene:
    """The scene with one attribute set to another value (seeded choice): a deliberately wrong scene.
    With `allow_held_out=False` no value that makes a held-out color/shape pair is chosen (a training
    caption, even a wrong one, never names such a pair); the scene is returned unchanged if no value is left."""
    others = [v for v in OPTIONS[attribute] if v != getattr(scene, attribute)
              and (allow_held_out or not replace(scene, **{attribute: v}).held_out)]
    if not others:
        return scene
    rng = np.random.default_rng([seed, SCENE_FIELDS.index(attribute)])
    return replace(scene, **{attribute: others[int(rng.integers(len(others)))]})
