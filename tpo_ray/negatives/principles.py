"""The four edit principles of TPO with descriptions and examples, the versioned prompts, and the
draw of the principle an LLM is asked for.

The instruction (system message) lists every principle, so it is the same for every row: vLLM's
prefix caching then reuses it across the whole job. Only the user message (principle + caption)
varies. The principle is drawn among those the caption has material for (`caption_material`), so a
request never asks for a kind of fact the caption does not hold; the answer may still say that no
edit is possible (template edit_v2). The verification prompt (verify_v1) asks the same engine whether
an accepted negative could still describe the image of the true caption.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache
from importlib import resources

from tpo_ray.negatives.lexicon import PRINCIPLE_DESCRIPTIONS, PRINCIPLES, wordnet_adapter

TEMPLATE_VERSION = "edit_v2"  # edit_v2: the answer may be {"no_edit": true, ...} (kept: edit_v1)
VERIFY_TEMPLATE_VERSION = "verify_v1"

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


def verify_messages(caption: str, negative: str, version: str = VERIFY_TEMPLATE_VERSION) -> list[dict]:
    """Chat messages asking whether `negative` could still describe the image `caption` describes."""
    return [{"role": "user", "content": load_template(version).format(caption=caption, negative=negative).strip()}]


def pick_principle(principles: Sequence[str], weights: dict[str, float] | None, rng: random.Random,
                   material: Collection[str] | None = None) -> str:
    """Weighted draw of the principle an LLM is asked to apply, among the principles the caption has
    `material` for (`caption_material`). When the caption has material for none of the allowed
    principles (or `material` is None), the draw is the configured one over all allowed principles:
    the editor may then answer that no edit is possible."""
    pool = [p for p in principles if weights is None or weights.get(p, 0) > 0]
    fitting = [p for p in pool if material is not None and p in material]
    pool = fitting or pool
    return rng.choices(pool, weights=[1.0 if weights is None else weights[p] for p in pool])[0]


# ------------------------------------------------------------------ what a caption has material for
# Prepositions of place or relation: a caption holding one has a relation a spatial edit can change.
PLACE_WORDS = frozenset({
    "on", "in", "at", "under", "over", "above", "below", "behind", "beside", "besides", "near", "next", "between",
    "inside", "outside", "across", "along", "around", "through", "into", "onto", "toward", "towards", "against",
    "beneath", "underneath", "left", "right", "top", "front", "atop", "among", "by", "upon", "off", "past",
})
# Words that open a noun phrase: a word right after one is read as a noun, not a verb.
_NOUN_OPENERS = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "his", "her", "its", "their", "my", "our", "your", "some",
    "many", "several", "few", "each", "every", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "of",
})
_FUNCTION_WORDS = _NOUN_OPENERS | PLACE_WORDS | frozenset({
    "and", "or", "with", "is", "are", "was", "were", "be", "to", "for", "from", "as", "while", "who", "which",
    "it", "he", "she", "they", "there", "here", "up", "down", "out", "very", "not", "no",
})
_NUMBER = re.compile(r"[0-9]+")
_VERB_ENDINGS = ("s", "ing", "ed")
# WordNet nouns under (or the same as) these are settings, times or weather: contextual material.
# `wordnet.relation(word, anchor)` answers "hypernym" when the anchor is more general than the word
# (field -> location, kitchen -> area, river -> body of water, night -> time period, snow -> weather).
_CONTEXT_ANCHORS = ("location", "area", "road", "body of water", "geological formation", "atmosphere",
                    "time period", "time of day", "season", "weather", "atmospheric phenomenon")

PosTagger = Callable[[str], frozenset[str]]


@lru_cache(maxsize=65536)
def _context_word(word: str) -> bool:
    wordnet = wordnet_adapter()  # None without WordNet: the lexicon and word lists here still detect material
    return wordnet is not None and any(wordnet.relation(word, anchor) in ("hypernym", "synonym")
                                       for anchor in _CONTEXT_ANCHORS)


def pos_material(tokens: Sequence[str], pos_tags: PosTagger, context_word: Callable[[str], bool]) -> set[str]:
    """Principles that part of speech finds material for in lower-cased `tokens`: an adjective ->
    attribute; a verb (an inflected verb form not opening a noun phrase) -> spatial; a noun -> content;
    a noun that is a place, time or weather word (`context_word`) -> contextual."""
    found: set[str] = set()
    for i, word in enumerate(tokens):
        if word in _FUNCTION_WORDS or _NUMBER.fullmatch(word):
            continue
        tags = pos_tags(word)
        after_opener = i > 0 and tokens[i - 1] in _NOUN_OPENERS
        if "adj" in tags:
            found.add("attribute")
        if "verb" in tags and not after_opener and (word.endswith(_VERB_ENDINGS) or tags == {"verb"}):
            found.add("spatial")
        if "noun" in tags:
            found.add("content")
            if context_word(word):
                found.add("contextual")
    return found


@lru_cache(maxsize=65536)
def caption_material(caption: str) -> frozenset[str]:
    """The principles a caption holds material for: what the rules editor's lexicon can edit
    (`rules.editable_principles`), a preposition of place or relation (spatial), a number or a word
    opening a noun phrase (content), and, where WordNet is installed, part of speech (`pos_material`).

    "A baby crawls" -> content, spatial (no setting, time or weather: no contextual material);
    "a red car on the beach at night" -> all four. Requests draw only among these (`pick_principle`);
    a caption with none of the allowed principles falls back to the configured draw.
    """
    from tpo_ray.negatives.rules import editable_principles  # the lexicon compiles on first use
    from tpo_ray.negatives.validation import words

    tokens = words(caption)
    found = set(editable_principles(caption))
    if any(w in PLACE_WORDS for w in tokens):
        found.add("spatial")
    if any(_NUMBER.fullmatch(w) or (i > 0 and tokens[i - 1] in _NOUN_OPENERS and w not in _FUNCTION_WORDS)
           for i, w in enumerate(tokens)):
        found.add("content")
    wordnet = wordnet_adapter()  # None without WordNet: the lexicon and word lists here still detect material
    if wordnet is not None:
        found |= pos_material(tokens, wordnet.pos_tags, _context_word)
    return frozenset(found)
