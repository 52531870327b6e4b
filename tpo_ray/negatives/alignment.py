"""What an editor really changed: c_w and c_l aligned word by word, and the edits the alignment shows.

Answer validation (`validation.validate_proposal`) judges a negative by these edits, not by the editor's
claims. Both captions are read as lower-case words (`reading.read`); two words align when their lemmas
meet (lemminflect), so "dog" / "dogs", "is" / "are" and "does" / "do" align: a count that changes number
("one dog is" -> "two dogs are") is one change, of "one". The alignment is a least-cost one that keeps
exchanged words in place. Changes inside one lexicon term are one edit ("on the beach" -> "in the desert"); two
changes that exchange spans already in the caption are one `swap` ("A red car and a white sheep." ->
"A white car and a red sheep."); a deleted span inserted elsewhere, or conjuncts exchanged ("a dog and
a cat" -> "a cat and a dog"), only reorder words (`reorder`). Each edit carries the facts it changes (a
head noun and its modifier replaced in one span are two: "black dog" -> "white cat") and the principles
its words belong to: the lexicon's classification of its terms (`rules.find_terms`), else the part of
speech of an unknown word (WordNet when installed, else lemminflect): an adjective is an attribute, a
verb an action (spatial). Core: pure functions, cached per word and per caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

from tpo_ray.negatives.reading import (ARTICLES, WORD, Keys, Reading, lexicon_nouns, place_nouns, pos_tags, read,
                                       reading_terms)

REPLACE, DELETE, INSERT, SWAP, REORDER = "replace", "delete", "insert", "swap", "reorder"
# Words that may stand between two exchanged spans without changing what is bound to what.
COORDINATION = ARTICLES | {"and", "or", "both", "either"}
FUNCTION_WORDS = frozenset({
    "and", "or", "but", "nor", "of", "in", "on", "at", "by", "to", "from", "with", "into", "onto", "for", "as", "is",
    "are", "was", "were", "be", "been", "being", "has", "have", "had", "it", "its", "they", "their", "he", "his", "she",
    "her", "this", "that", "these", "those", "there", "some", "who", "which", "while", "up", "down", "off", "out"})
_POS_PRINCIPLE = {"adj": "attribute", "verb": "spatial"}  # unknown words: a descriptor, an action


@dataclass(frozen=True)
class Unit:
    """One thing a side of an edit names: a lexicon term or an unknown word."""

    key: str
    principles: frozenset[str]  # empty: not known
    place: bool = False  # a setting ("on the beach", "sky")
    noun: bool = False  # an object's noun (a head that a new setting may replace: "a gray wall" -> "a blue sky")
    function: bool = False  # a preposition, conjunction, pronoun or auxiliary: counted only when alone


_CONTEXTUAL = frozenset({"contextual"})
_CONTENT = frozenset({"content"})


def _noun_like(word: str) -> bool:
    tags = pos_tags(word)
    return "noun" in tags and "adj" not in tags


def _term_unit(text: str, principle: str, kind: str) -> Unit:
    if kind == "place":
        rest = text.split(maxsplit=1)[-1] if text.split()[0] not in ARTICLES else text
        rest = " ".join(w for w in rest.split() if w not in ARTICLES)
        if rest in lexicon_nouns():  # "in a church", "a square": a setting or an object
            return Unit(text, _CONTENT | _CONTEXTUAL, noun=True)
        return Unit(text, _CONTEXTUAL, place=True)
    if kind == "fixed":  # listed so that the editor leaves it alone, not classified ("black and white")
        return Unit(text, frozenset())
    return Unit(text, frozenset({principle}), noun=kind == "noun")


def _units(r: Reading, changed: Sequence[int]) -> list[Unit]:
    """The terms and unknown words the changed words of one side belong to, in order; a noun before
    another noun is part of it ("toy train", "ice cream")."""
    return _units_of(r, changed, _terms_for(r, tuple(changed))) if changed else []


Terms = tuple[tuple[int, int, str, str, str], ...]


def _terms_for(r: Reading, changed: tuple[int, ...]) -> Terms:
    """The lexicon terms that changed words are read with: in their sentence or on their own, whichever
    reading has fewer units (the sentence on a tie): "on a toy train" -> "on a beach ball" replaced a noun,
    though "on a beach" is a place in the sentence."""
    lo, hi = min(changed), max(changed) + 1
    if not any(first < hi and lo < end and (first < lo or end > hi) for first, end, *_ in r.terms):
        return r.terms  # no term reaches past the changed words: they read the same on their own
    alone = reading_terms(r.text[r.spans[lo][0]:r.spans[hi - 1][1]].lower(),
                           tuple((s - r.spans[lo][0], e - r.spans[lo][0]) for s, e in r.spans[lo:hi]))
    alone = tuple((a + lo, b + lo, *rest) for a, b, *rest in alone)
    if alone == tuple(t for t in r.terms if lo <= t[0] and t[1] <= hi):
        return r.terms
    fewer = len(_units_of(r, changed, alone)) < len(_units_of(r, changed, r.terms))
    return alone if fewer else r.terms


def _units_of(r: Reading, changed: Sequence[int], terms: Sequence[tuple[int, int, str, str, str]]) -> list[Unit]:
    found: list[tuple[int, int, Unit]] = []  # (first word, end word, unit)
    covered, noun_words = set(), set()
    for first, end, text, principle, kind in terms:
        inside = [k for k in changed if first <= k < end]
        if inside:
            unit = _term_unit(text, principle, kind)
            if unit.place and all(r.words[k] in FUNCTION_WORDS or r.words[k] in ARTICLES for k in inside):
                unit = Unit(text, frozenset(), function=True)  # "on the grass" -> "under the grass": a relation
            found.append((first, end, unit))
            covered.update(range(first, end))
            if unit.noun:
                noun_words.update(range(first, end))
    wanted = set(changed)
    for k in changed:
        word = r.words[k]
        if k in covered or word in ARTICLES:
            continue
        key = r.keys[k]
        if key in place_nouns() and word not in lexicon_nouns():
            found.append((k, k + 1, Unit(key, _CONTEXTUAL, place=True)))
            continue
        if _noun_like(word) and k + 1 in wanted and (k + 1 in noun_words or (k + 1 not in covered
                                                                             and _noun_like(r.words[k + 1]))):
            continue
        tags = pos_tags(word) if word not in FUNCTION_WORDS else frozenset()
        principle = _POS_PRINCIPLE.get(next(iter(tags))) if len(tags) == 1 else None
        found.append((k, k + 1, Unit(key, frozenset({principle}) if principle else frozenset(), noun=_noun_like(word),
                                     function=word in FUNCTION_WORDS)))
    found.sort(key=lambda f: f[0])
    if any(not u.function for _, _, u in found):  # "on the edge": the edge is what changed, not "on"
        found = [f for f in found if not f[2].function]
    units: list[Unit] = []
    for i, (first, _, unit) in enumerate(found):
        if i and unit.principles == {"attribute"} == units[-1].principles and \
                all(w in COORDINATION for w in r.words[found[i - 1][1]:first]):
            continue  # "black and white", "red and blue": one description
        units.append(unit)
    return units


@dataclass(frozen=True)
class DerivedEdit:
    """One edit found by aligning c_w with c_l.

    kind: replace | delete | insert | swap (two spans of the caption exchanged) | reorder (words moved or
    conjuncts exchanged: no fact changed). source / target: the caption's and the negative's words of the
    edit, widened to whole lexicon terms ("on the beach" -> "in the desert"); for a swap, the two
    exchanged spans of the caption. principles: the principles the changed words belong to (empty when
    unknown). facts: the facts it changes. words: its length in words (the longer side; a swap: one part).
    parts: (caption start, end, negative start, end) word ranges of each contiguous change.
    """

    kind: str
    source: str
    target: str
    principles: frozenset[str]
    facts: int
    words: int
    parts: tuple[tuple[int, int, int, int], ...]

    @property
    def principle(self) -> str | None:
        return next(iter(self.principles)) if len(self.principles) == 1 else None


@dataclass
class _Change:
    i1: int
    i2: int
    j1: int
    j2: int
    c_changed: list[int]
    n_changed: list[int]


def _touched(r: Reading, start: int, end: int) -> set[int]:
    """The lexicon terms (by index) that words start..end-1 belong to; for an insertion (start == end),
    the terms it falls inside ("on the far left")."""
    if start == end:
        return {t for t, term in enumerate(r.terms) if term[0] < start < term[1]}
    return {t for t, term in enumerate(r.terms) if term[0] < end and start < term[1]}


def _opcodes(a: tuple[str, ...], b: tuple[str, ...]) -> list[tuple[int, int, int, int]]:
    """Word ranges (a start, a end, b start, b end) where a and b differ, from a least-cost alignment
    (a substitution, an insertion and a deletion cost 1 each; a substitution wins ties), so exchanged
    words stay on their own positions ("A dog chasing a cat" / "A cat chasing a dog": two substitutions,
    where a longest-block matcher would move "a dog" across the sentence)."""
    p, m, n = 0, len(a), len(b)
    while p < m and p < n and a[p] == b[p]:
        p += 1
    s = 0
    while s < m - p and s < n - p and a[m - 1 - s] == b[n - 1 - s]:
        s += 1
    x, y = a[p:m - s], b[p:n - s]
    rows, cols = len(x) + 1, len(y) + 1
    cost = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = i
    for j in range(cols):
        cost[0][j] = j
    for i in range(1, rows):
        prev, row, xi = cost[i - 1], cost[i], x[i - 1]
        for j in range(1, cols):
            row[j] = min(prev[j - 1] + (xi != y[j - 1]), prev[j] + 1, row[j - 1] + 1)
    steps = []  # (i, j, same) walked back from the end
    i, j = len(x), len(y)
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (x[i - 1] != y[j - 1]):
            steps.append((i - 1, j - 1, x[i - 1] == y[j - 1]))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            steps.append((i - 1, None, False))
            i -= 1
        else:
            steps.append((None, j - 1, False))
            j -= 1
    out: list[tuple[int, int, int, int]] = []
    i, j, open_ = 0, 0, None
    for si, sj, same in reversed(steps):
        if same:
            if open_ is not None:
                out.append((open_[0] + p, i + p, open_[1] + p, j + p))
                open_ = None
        elif open_ is None:
            open_ = (i, j)
        i, j = i + (si is not None), j + (sj is not None)
    if open_ is not None:
        out.append((open_[0] + p, i + p, open_[1] + p, j + p))
    return out


def _changes(c: Reading, n: Reading, c_keys: tuple[str, ...], n_keys: tuple[str, ...]) -> list[_Change]:
    """Contiguous differences of the lemma keys, article-only ones dropped, merged within lexicon terms."""
    out: list[_Change] = []
    for i1, i2, j1, j2 in _opcodes(c_keys, n_keys):
        if all(w in ARTICLES for w in c.words[i1:i2] + n.words[j1:j2]):
            continue
        change = _Change(i1, i2, j1, j2, list(range(i1, i2)), list(range(j1, j2)))
        prev = out[-1] if out else None
        if prev is not None and (_touched(c, prev.i1, prev.i2) & _touched(c, i1, i2)
                                 or _touched(n, prev.j1, prev.j2) & _touched(n, j1, j2)):
            prev.i2, prev.j2 = i2, j2  # "on" -> "in" and "beach" -> "desert": one place
            prev.c_changed += change.c_changed
            prev.n_changed += change.n_changed
        else:
            out.append(change)
    return out


def _text(r: Reading, changed: Sequence[int]) -> str:
    """The changed words of one side widened to the lexicon terms they belong to, as written."""
    if not changed:
        return ""
    ks = set(changed)
    for first, end, *_ in _terms_for(r, tuple(changed)):
        if any(first <= k < end for k in changed):
            ks.update(range(first, end))
    lo, hi = min(ks), max(ks)
    return r.text[r.spans[lo][0]:r.spans[hi][1]]


def _content(words: Sequence[str], keys: Sequence[str]) -> tuple[str, ...]:
    """The keys of the words that are not articles."""
    return tuple(k for w, k in zip(words, keys) if w not in ARTICLES)


def _facts_and_principles(fu: list[Unit], tu: list[Unit]) -> tuple[int, frozenset[str]]:
    """Facts one replaced span changes and the principles of its words. A new setting brings its own
    description ("a gray wall" -> "a blue sky" is one contextual fact); anything else counts once per
    distinct term or word on the longer side ("black dog" -> "white cat": two)."""
    def distinct(units: list[Unit]) -> int:
        return len({u.key for u in units})

    if any(u.place for u in fu + tu):
        f_nouns, t_nouns = any(u.noun for u in fu), any(u.noun for u in tu)

        def setting(u: Unit) -> bool:
            return u.place or u.principles == _CONTEXTUAL

        def absorbed(u: Unit, other_has_noun: bool) -> bool:  # the setting's own description or its old head
            return u.principles <= {"attribute"} or (u.noun and not other_has_noun)

        other_f = [u for u in fu if not setting(u) and not absorbed(u, t_nouns)]
        other_t = [u for u in tu if not setting(u) and not absorbed(u, f_nouns)]
        settings = max(1, distinct([u for u in fu if setting(u)]), distinct([u for u in tu if setting(u)]))
        principles = _CONTEXTUAL.union(*(u.principles for u in other_f + other_t))
        return settings + max(distinct(other_f), distinct(other_t)), principles
    return max(1, distinct(fu), distinct(tu)), frozenset().union(*(u.principles for u in fu + tu))


def _swap_pairs(c: Reading, n: Reading, keys: Keys, changes: list[_Change]) -> list[tuple[int, int]]:
    """Pairs of replacements that exchange two spans of the caption of the same kind."""
    pairs, used = [], set()
    (ck, nk) = keys.keys

    def span(r: Reading, k: tuple[str, ...], i: int, j: int) -> tuple[str, ...]:
        return _content(r.words[i:j], k[i:j])

    for p, a in enumerate(changes):
        if p in used or not a.c_changed or not a.n_changed:
            continue
        a_from, a_to = span(c, ck, a.i1, a.i2), span(n, nk, a.j1, a.j2)
        if a_from == a_to:
            continue
        for q in range(p + 1, len(changes)):
            b = changes[q]
            if q in used or not b.c_changed or not b.n_changed:
                continue
            if span(c, ck, b.i1, b.i2) == a_to and span(n, nk, b.j1, b.j2) == a_from:
                kinds_a = frozenset().union(*(u.principles for u in _units(c, a.c_changed)))
                kinds_b = frozenset().union(*(u.principles for u in _units(c, b.c_changed)))
                if kinds_a & kinds_b or kinds_a == kinds_b:  # "two small red circles" <-> "at night": a moved clause
                    pairs.append((p, q))
                    used.update((p, q))
                    break
    return pairs


def _described(units: list[Unit]) -> bool:
    return any(u.principles == {"attribute"} for u in units)


def derive_edits(caption: str, negative: str) -> list[DerivedEdit]:
    """The edits that turn `caption` into `negative`, in caption order (see the module docstring)."""
    c, n = read(caption), read(negative)
    keys = Keys(c, n)
    ck, nk = keys.keys
    changes = _changes(c, n, ck, nk)
    edits: list[tuple[int, DerivedEdit]] = []
    done: set[int] = set()
    for p, q in _swap_pairs(c, n, keys, changes):
        a, b = changes[p], changes[q]
        between = c.words[a.i2:b.i1]
        units_a, units_b = _units(c, a.c_changed), _units(c, b.c_changed)
        units = units_a + units_b
        parts = ((a.i1, a.i2, a.j1, a.j2), (b.i1, b.i2, b.j1, b.j2))
        words = max(a.i2 - a.i1, b.i2 - b.i1)
        if all(w in COORDINATION for w in between):  # "black and white" -> "white and black"
            edits.append((a.i1, DerivedEdit(REORDER, _text(c, a.c_changed), _text(c, b.c_changed), frozenset(), 1,
                                            words, parts)))
        else:
            # descriptors exchanged: attribute binding; roles ("a large dog" <-> "a cat"): a relation; described
            # objects ("a red shirt" <-> "a blue dress"): either
            principles = {"attribute"} if units and all(u.principles == {"attribute"} for u in units) else \
                {"attribute", "spatial"} if _described(units_a) and _described(units_b) else {"spatial"}
            edits.append((a.i1, DerivedEdit(SWAP, _text(c, a.c_changed), _text(c, b.c_changed),
                                            frozenset(principles), 1, words, parts)))
        done.update((p, q))
    deleted = {p: _content(c.words[ch.i1:ch.i2], ck[ch.i1:ch.i2]) for p, ch in enumerate(changes) if not ch.n_changed}
    inserted = {p: _content(n.words[ch.j1:ch.j2], nk[ch.j1:ch.j2]) for p, ch in enumerate(changes) if not ch.c_changed}
    for p, keys in deleted.items():
        q = next((q for q, k in inserted.items() if k == keys and q not in done), None)
        if q is not None and keys:  # a span moved elsewhere
            a, b = changes[p], changes[q]
            edits.append((a.i1, DerivedEdit(REORDER, _text(c, a.c_changed), _text(n, b.n_changed), frozenset(), 1,
                                            a.i2 - a.i1, ((a.i1, a.i2, a.j1, a.j2), (b.i1, b.i2, b.j1, b.j2)))))
            done.update((p, q))
    for p, ch in enumerate(changes):
        if p in done:
            continue
        fu, tu = _units(c, ch.c_changed), _units(n, ch.n_changed)
        kind = REPLACE if ch.c_changed and ch.n_changed else DELETE if ch.c_changed else INSERT
        facts, principles = _facts_and_principles(fu, tu)
        facts = facts if kind == REPLACE else 1  # a deletion or an addition is refused whatever its size
        edits.append((ch.i1, DerivedEdit(kind, _text(c, ch.c_changed), _text(n, ch.n_changed), principles, facts,
                                         max(ch.i2 - ch.i1, ch.j2 - ch.j1), ((ch.i1, ch.i2, ch.j1, ch.j2),))))
    return [e for _, e in sorted(edits, key=lambda x: x[0])]


def derived_principle(caption: str, negative: str) -> str | None:
    """The one principle every edit of `negative` falls under, or None when no edit's principle is known
    or they differ (several principles, or words that fit none)."""
    found = {e.principle for e in derive_edits(caption, negative) if e.kind != REORDER and e.principles}
    return next(iter(found)) if len(found) == 1 and None not in found else None


def _locate(keys: tuple[str, ...], part: tuple[str, ...]) -> list[int]:
    m = len(part)
    return [s for s in range(len(keys) - m + 1) if keys[s:s + m] == part]


def reported_edits_agree(caption: str, negative: str, reported: Sequence[dict[str, str]],
                         max_tries: int = 256) -> bool:
    """True when the reported edits, applied to the caption, give the negative: each `from` found in the
    caption, all replaced by their `to`, compared word by word on lemma keys without articles (so case,
    articles, punctuation, whitespace and inflection may differ; a `from` may cover more than the change)."""
    c, n = read(caption), read(negative)
    keys = Keys(c, n)
    c_keys, n_keys = _content(c.words, keys.keys[0]), _content(n.words, keys.keys[1])

    def content(text: str) -> tuple[str, ...]:
        ws = WORD.findall(text.lower())
        return _content(ws, [keys.key(w) for w in ws])

    pairs = []
    for e in reported:
        f, t = content(e["from"]), content(e["to"])
        if not f or f == t:
            return False  # an insertion without an anchor, or an edit that changes nothing
        starts = _locate(c_keys, f)
        if not starts:
            return False
        pairs.append([(s, s + len(f), t) for s in starts])
    for tries, combo in enumerate(product(*pairs)):
        if tries >= max_tries:
            break
        ordered = sorted(combo)
        if any(x[1] > y[0] for x, y in zip(ordered, ordered[1:])):
            continue  # two edits claim the same words
        out, last = [], 0
        for s, e, t in ordered:
            out += c_keys[last:s] + t
            last = e
        if tuple(out) + c_keys[last:] == n_keys:
            return True
    return False
