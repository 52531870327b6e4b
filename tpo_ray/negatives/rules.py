"""Deterministic lexicon edits: the offline default editor and the fallback for LLM editors.

Given a caption, a principle and a seed, swap up to `max_edits` terms for another term of the same
group (color -> color, "on the left" -> "on the right", "dogs" -> "cats"). Longest match wins, so
"a green field" is one contextual term, not a color. Same (caption, principles, seed) -> same edit.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

from tpo_ray.negatives.lexicon import NOUN_GROUPS, NOUN_PRINCIPLE, PRINCIPLES, WORD_GROUPS


@dataclass(frozen=True)
class Term:
    text: str
    principle: str
    group: str
    alternatives: tuple[str, ...]  # same group and grammatical form, excluding `text`


@dataclass
class Edit:
    start: int
    end: int
    source: str
    target: str
    principle: str


@dataclass
class EditResult:
    """A negative caption with the principle used and the list of (from, to) edits."""

    negative: str
    principle: str
    edits: list[dict[str, str]] = field(default_factory=list)


@lru_cache(maxsize=1)
def _terms() -> dict[str, Term]:
    terms: dict[str, Term] = {}
    for principle, groups in WORD_GROUPS.items():
        for group, words in groups.items():
            for w in words:
                terms[w] = Term(w, principle, group, tuple(x for x in words if x != w))
    for group, pairs in NOUN_GROUPS.items():
        for form in (0, 1):
            words = [p[form] for p in pairs]
            for w in words:
                # "sheep" is both forms: keep the first registration
                terms.setdefault(w, Term(w, NOUN_PRINCIPLE, group, tuple(x for x in dict.fromkeys(words) if x != w)))
    return terms


@lru_cache(maxsize=1)
def _pattern() -> re.Pattern[str]:
    alternation = "|".join(re.escape(t) for t in sorted(_terms(), key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alternation})(?![\w-])", re.IGNORECASE)


def find_terms(caption: str) -> list[tuple[int, int, Term]]:
    """Non-overlapping editable spans, longest terms first (regex alternation order)."""
    return [(m.start(), m.end(), _terms()[m.group(1).lower()]) for m in _pattern().finditer(caption)]


def editable_principles(caption: str) -> set[str]:
    return {term.principle for _, _, term in find_terms(caption)}


def _match_case(source: str, target: str) -> str:
    if source.isupper() and len(source) > 1:
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def apply_edits(caption: str, edits: Sequence[Edit]) -> str:
    out, last = [], 0
    for e in sorted(edits, key=lambda e: e.start):
        out.append(caption[last:e.start])
        out.append(_match_case(caption[e.start:e.end], e.target))
        last = e.end
    out.append(caption[last:])
    return "".join(out)


def choose_principle(
    available: set[str], principles: Sequence[str], weights: dict[str, float] | None, rng: random.Random
) -> str | None:
    candidates = [p for p in principles if p in available and (weights is None or weights.get(p, 0) > 0)]
    if not candidates:
        return None
    return rng.choices(candidates, weights=[1.0 if weights is None else weights[p] for p in candidates])[0]


def rule_edit(
    caption: str,
    *,
    principles: Sequence[str] = PRINCIPLES,
    max_edits: int = 1,
    seed: int | str = 0,
    weights: dict[str, float] | None = None,
) -> EditResult | None:
    """One negative under one principle with 1..max_edits edits; None if nothing is editable."""
    rng = random.Random(str(seed))
    spans = find_terms(caption)
    principle = choose_principle({t.principle for _, _, t in spans}, principles, weights, rng)
    if principle is None:
        return None
    pool = [(s, e, t) for s, e, t in spans if t.principle == principle]
    n_edits = rng.randint(1, min(max_edits, len(pool)))
    edits = []
    for start, end, term in rng.sample(pool, n_edits):
        edits.append(Edit(start, end, caption[start:end], rng.choice(term.alternatives), principle))
    negative = apply_edits(caption, edits)
    return EditResult(
        negative=negative,
        principle=principle,
        edits=[{"from": e.source, "to": e.target} for e in sorted(edits, key=lambda e: e.start)],
    )
