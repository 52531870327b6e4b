"""Captions read for alignment: words, their lemmas, parts of speech and lexicon terms.

`alignment.derive_edits` aligns a caption with its negative on these readings. A word's lemmas come from
lemminflect (a dependency), its parts of speech from WordNet where `tpo_ray.negatives.wordnet` has its
database and from lemminflect otherwise, its terms from the rules editor's lexicon (`rules.find_terms`).
Core: pure functions, cached per word and per caption (the job validates several candidates per caption).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from lemminflect import getAllLemmas

ARTICLES = frozenset({"a", "an", "the"})
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_LEMMINFLECT_POS = {"NOUN": "noun", "PROPN": "noun", "VERB": "verb", "AUX": "verb", "ADJ": "adj", "ADV": "adv"}


@lru_cache(maxsize=1 << 16)
def lemma_key(word: str) -> str:
    """The word's alignment key: the lexicon's singular of a plural ("people" -> "person"), else its noun
    lemma, else its verb lemma, ... ("dogs" -> "dog", "runs" -> "run", "are" -> "be"; "parking" stays
    "parking", not the verb "park"); "a" for "an"; the word itself when unknown (digits, function words)."""
    if word == "an":
        return "a"
    if word.endswith("ing"):
        return word  # "parking" is not "park", "building" not "build"
    singular = _singular_of().get(word)
    if singular is not None:
        return singular
    lemmas = getAllLemmas(word)
    for pos in ("NOUN", "PROPN", "VERB", "AUX", "ADJ", "ADV"):
        if lemmas.get(pos):
            return min(lemmas[pos])
    return min((x for forms in lemmas.values() for x in forms), default=word)


@lru_cache(maxsize=1 << 16)
def lemma_set(word: str) -> frozenset[str]:
    """The word and every lemma it may have ("does" -> does, do, doe; "people" -> people, person): two words
    align when their sets meet, so "does" / "do" align as "is" / "are" do, whichever reading `lemma_key`
    picks. An "-ing" form is its own ("parking" is not "park")."""
    if word == "an":
        return frozenset({"a"})
    if word.endswith("ing"):
        return frozenset({word})
    out = {word, *(x for forms in getAllLemmas(word).values() for x in forms)}
    singular = _singular_of().get(word)
    if singular is not None:
        out.add(singular)
    return frozenset(out)


class Keys:
    """Alignment keys for the words of two captions: words whose lemma sets meet (directly or through
    another word of the two captions) share a key."""

    def __init__(self, *readings: Reading) -> None:
        self.parent: dict[str, str] = {}
        for r in readings:
            for word in r.words:
                first, *rest = sorted(lemma_set(word))
                for other in rest:
                    self._union(first, other)
        self.keys = [tuple(self.key(w) for w in r.words) for r in readings]

    def _find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def _union(self, a: str, b: str) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def key(self, word: str) -> str:
        return min(self._find(x) for x in lemma_set(word))


@lru_cache(maxsize=1)
def _singular_of() -> dict[str, str]:
    from tpo_ray.negatives.lexicon import lexicon

    return {p: s for p, s in lexicon().singular_of.items() if " " not in p}


@lru_cache(maxsize=1)
def lexicon_nouns() -> frozenset[str]:
    """Every noun form of the lexicon: a place named by one ("in a church", "a square") may be the noun."""
    from tpo_ray.negatives.lexicon import lexicon

    return frozenset(form.lower() for pairs in lexicon().nouns.values() for pair in pairs for form in pair if form)


@lru_cache(maxsize=1 << 16)
def pos_tags(word: str) -> frozenset[str]:
    """Parts of speech of a word ({"noun", "verb", "adj", "adv"}): WordNet's when installed, else lemminflect's."""
    from tpo_ray.negatives.lexicon import wordnet_adapter

    wordnet = wordnet_adapter()
    if wordnet is not None:
        tags = frozenset(wordnet.pos_tags(word))
        if tags:
            return tags
    return frozenset(_LEMMINFLECT_POS[p] for p in getAllLemmas(word) if p in _LEMMINFLECT_POS)


@lru_cache(maxsize=1)
def place_nouns() -> frozenset[str]:
    """The nouns of the lexicon's places ("beach", "sky"), which name a setting wherever they stand."""
    from tpo_ray.negatives.lexicon import lexicon

    return frozenset(lemma_key(w) for places in lexicon().places.values() for p in places for w in p.noun.split()[-1:])


@lru_cache(maxsize=1 << 14)
def reading_terms(low: str, spans: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int, str, str, str], ...]:
    from tpo_ray.negatives.rules import find_terms

    terms = []
    for start, end, term in find_terms(low):
        covered = [k for k, (s, e) in enumerate(spans) if s < end and start < e]
        if covered:
            terms.append((covered[0], covered[-1] + 1, term.text, term.principle, term.kind))
    return tuple(terms)


@dataclass(frozen=True)
class Reading:
    """A caption read for alignment: lower-case words, their keys, character spans, and lexicon terms."""

    text: str
    words: tuple[str, ...]
    keys: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    terms: tuple[tuple[int, int, str, str, str], ...]  # (first word, end word, term text, principle, kind)


@lru_cache(maxsize=1 << 14)
def read(text: str) -> Reading:
    """Words and terms of a caption (cached: the job validates several candidates per caption)."""
    low = text.lower()
    surface = text if len(low) == len(text) else low
    matches = list(WORD.finditer(low))
    spans = tuple((m.start(), m.end()) for m in matches)
    words = tuple(m.group() for m in matches)
    return Reading(surface, words, tuple(lemma_key(w) for w in words), spans, reading_terms(low, spans))
