"""The scene editor's core: a minimally wrong caption of a world scene, within the world's own words.

An LLM asked for a minimal edit of "two small red circles on the left of a gray wall at night" answers
with another color, count, position or setting of the same kind; the rules editor's general lexicon
answers as often with words the world never uses ("huge", "at dusk", "seven": 75% of its edits of world
captions fall outside the grammar), which the world's text encoder reads letter by letter. This editor
changes attributes of the parsed scene to other values of the grammar, under the principle that edits
them (`scenes.PRINCIPLE_OF`), within the same edit budget the negatives validation checks (word spans),
and never writes a held-out color/shape pair, so no training caption, true or edited, names one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from tpo_ray.negatives.rules import EditResult, choose_principle
from tpo_ray.negatives.validation import edit_spans
from tpo_ray.world.scenes import CAPTION_ORDER, OPTIONS, PRINCIPLE_OF, Scene, parse_caption

SCENE_EDITOR_MODEL = "scene-grammar-v1"  # recorded as editor_model


def _options(scene: Scene, attribute: str) -> list[tuple[str, object]]:
    return [(attribute, v) for v in OPTIONS[attribute] if v != getattr(scene, attribute)]


def scene_edit(caption: str, *, principles: Sequence[str], max_edits: int = 1, seed: int | str = 0,
               weights: dict[str, float] | None = None) -> EditResult | None:
    """One negative under one principle with 1..max_edits changed attributes whose word spans fit the
    budget; None if the caption is outside the grammar or no principle allowed has an edit that fits."""
    scene = parse_caption(caption)
    if scene is None:
        return None
    rng = random.Random(str(seed))
    available = set(PRINCIPLE_OF.values())
    while available:
        principle = choose_principle(available, principles, weights, rng)
        if principle is None:
            return None
        edited = _edit(scene, caption, principle, max_edits, rng)
        if edited is not None:
            negative, changed = edited
            in_caption_order = sorted(changed, key=CAPTION_ORDER.index)
            return EditResult(negative=negative.caption(), principle=principle,
                              edits=[{"from": scene.value(a), "to": negative.value(a)} for a in in_caption_order])
        available.discard(principle)
    return None


def _edit(scene: Scene, caption: str, principle: str, max_edits: int,
          rng: random.Random) -> tuple[Scene, list[str]] | None:
    attributes = [a for a, p in PRINCIPLE_OF.items() if p == principle]
    wanted = rng.randint(1, min(max_edits, len(attributes)))
    current, changed = scene, []
    for attribute in rng.sample(attributes, len(attributes)):
        for name, value in rng.sample(_options(scene, attribute), len(_options(scene, attribute))):
            candidate = replace(current, **{name: value})
            if candidate.held_out or edit_spans(caption, candidate.caption())[0] > max_edits:
                continue
            current, changed = candidate, [*changed, name]
            break
        if len(changed) == wanted:
            break
    return (current, changed) if changed else None
