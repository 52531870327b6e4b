"""The four edit principles of TPO with descriptions and examples, and the versioned prompt.

The instruction (system message) lists every principle, so it is the same for every row: vLLM's
prefix caching then reuses it across the whole job. Only the user message (principle + caption)
varies.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from tpo_ray.negatives.lexicon import PRINCIPLE_DESCRIPTIONS, PRINCIPLES

TEMPLATE_VERSION = "edit_v1"

PRINCIPLE_EXAMPLES: dict[str, tuple[str, str]] = {
    "content": ("two dogs playing with a ball", "two cats playing with a ball"),
    "attribute": ("a red wooden chair by the window", "a red metal chair by the window"),
    "spatial": ("a lamp to the left of a sofa", "a lamp to the right of a sofa"),
    "contextual": ("a man walking his dog on a sunny morning", "a man walking his dog on a snowy morning"),
}
assert set(PRINCIPLE_EXAMPLES) == set(PRINCIPLES) == set(PRINCIPLE_DESCRIPTIONS)


@lru_cache(maxsize=4)
def load_template(version: str = TEMPLATE_VERSION) -> str:
    try:
        return resources.files("tpo_ray.negatives").joinpath(f"templates/{version}.txt").read_text()
    except FileNotFoundError:
        raise ValueError(f"unknown prompt template {version!r}") from None


@lru_cache(maxsize=16)
def system_prompt(max_edits: int, version: str = TEMPLATE_VERSION) -> str:
    lines = []
    for name in PRINCIPLES:
        before, after = PRINCIPLE_EXAMPLES[name]
        lines.append(f'- {name}: {PRINCIPLE_DESCRIPTIONS[name]}. Example: "{before}" -> "{after}"')
    return load_template(version).format(max_edits=max_edits, principles="\n".join(lines)).strip()


def build_messages(caption: str, principle: str, max_edits: int, version: str = TEMPLATE_VERSION) -> list[dict]:
    """Chat messages for one edit request (OpenAI / vLLM chat format)."""
    return [
        {"role": "system", "content": system_prompt(max_edits, version)},
        {"role": "user", "content": f"Principle: {principle}\nTrue caption: {caption}"},
    ]


def pick_principle(principles: Sequence[str], weights: dict[str, float] | None, rng: random.Random) -> str:
    """Weighted draw of the principle an LLM is asked to apply."""
    pool = [p for p in principles if weights is None or weights.get(p, 0) > 0]
    return rng.choices(pool, weights=[1.0 if weights is None else weights[p] for p in pool])[0]
