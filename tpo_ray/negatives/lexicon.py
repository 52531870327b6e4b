"""Word groups the rules editor swaps within, by principle (content, attribute, spatial, contextual).

The groups are data: `tpo_ray/negatives/lexicon/lexicon.yaml` (versioned; the format is described at its
top), read and checked here once per process. Each group holds interchangeable terms of one kind, so a
swap changes one fact and keeps the sentence grammatical: a color for a color, "on the left" for "on
the right", "dogs" for "cats" (nouns come as singular/plural so the grammatical number is kept), "on
the beach" for "on the snow" (places carry the prepositions they take). The synonym and hypernym
lists name swaps that change no fact ("couch" -> "sofa", "dog" -> "puppy"); the compatible classes and
the dimensions name swaps that may leave the caption true of the image ("next to" -> "behind",
"sitting" -> "resting", "baby" -> "boy"). `still_true` answers why a swap may change no fact (the lexicon,
then WordNet where `tpo_ray.negatives.wordnet` is installed); the editor refuses every such swap, and
the negatives validation rejects a negative made only of them (`is_synonym_swap`).

The lexicon also says what a swap must fit in its phrase (`dimensions`, `objects`, `direction_verbs`,
`parts`, `frames`, `animate`, `any_subject`); `rules.py` applies those where it finds the words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PRINCIPLES = ("content", "attribute", "spatial", "contextual")

PRINCIPLE_DESCRIPTIONS = {
    "content": "change what is depicted: an object, animal or person, or how many there are",
    "attribute": "change a descriptor of something depicted: color, material, size, texture, state",
    "spatial": "change where things are or what they do: position, relation, direction, motion",
    "contextual": "change the surroundings: setting, weather, time of day, season",
}

# Nouns and counts are content edits; places are contextual.
NOUN_PRINCIPLE = "content"
PLACE_PRINCIPLE = "contextual"
ARTICLES = ("the", "a")
PLACE_PREPOSITIONS = frozenset({"in", "on", "at", "by", "under", "near", "inside"})
TOP_LEVEL_KEYS = frozenset({"version", "nouns", "compounds", "measure_words", "counts", "agreement", "words", "places",
                            "synonyms", "hypernyms", "intransitive", "no_article", "compatible", "dimensions",
                            "objects", "direction_verbs", "parts", "frames", "animate", "any_subject",
                            "picture_attributes", "picture_nouns", "subjects", "other_senses",
                            "ridden_on", "ridden_in", "phrase_objects", "substitutes", "reliable"})
ANY_OBJECT = "any"  # `objects`: a verb that takes whatever follows it ("pointing at", "buying")
_DETERMINERS = re.compile(r"^(?:(?:in|on|at|by|under|near|inside|to|from|into|onto)\s+)?(?:the|a|an)\s+", re.IGNORECASE)


class LexiconError(ValueError):
    """The lexicon file is malformed; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Place:
    noun: str
    preps: tuple[str, ...]  # the prepositions the place takes ("on", "at" for a beach)
    articles: tuple[str, ...]  # "the" and/or "a" (indefinite, a/an by sound); empty: none ("in space")


@dataclass(frozen=True)
class Lexicon:
    version: int
    nouns: dict[str, list[tuple[str, str | None]]]  # group -> (singular, plural; None for a mass noun)
    words: dict[str, dict[str, list[str]]]  # principle -> group -> terms
    places: dict[str, list[Place]]  # group -> places
    compounds: frozenset[str]
    measure_words: frozenset[str]
    count_words: tuple[str, ...]
    digits_max: int
    not_counted: frozenset[str]
    agreement: dict[str, str]  # singular verb -> plural verb
    synonyms: tuple[frozenset[str], ...]  # canonical forms (see `_canonical`)
    hypernyms: dict[str, frozenset[str]]
    singular_of: dict[str, str] = field(default_factory=dict)  # plural -> singular, for synonym checks
    intransitive: frozenset[str] = frozenset()  # word groups whose verbs take no object ("walking", not "walking a dog")
    no_article: frozenset[str] = frozenset()  # words never written after "a"/"an" ("noon", "daytime")
    # (general, specific) canonical terms: the general ones go with each other and with each specific one
    compatible: tuple[tuple[frozenset[str], frozenset[str]], ...] = ()
    dimensions: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)  # term -> dimension -> values
    group_dimensions: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)  # noun group -> ...
    objects: dict[str, frozenset[str]] = field(default_factory=dict)  # verb -> noun groups / words it takes
    direction_verbs: dict[str, frozenset[str]] = field(default_factory=dict)  # words group -> verbs before it
    parts: dict[str, frozenset[str]] = field(default_factory=dict)  # owner (noun group or noun) -> parts
    frames: frozenset[str] = frozenset()  # noun groups naming the picture itself
    animate: frozenset[str] = frozenset()  # noun groups of living things
    any_subject: frozenset[str] = frozenset()  # verbs of `intransitive` groups that fit a lifeless subject
    subjects: dict[str, frozenset[str]] = field(default_factory=dict)  # verb -> noun groups of its subjects
    picture_attributes: frozenset[str] = frozenset()  # attribute groups describing the picture ("sepia")
    picture_nouns: frozenset[str] = frozenset()  # nouns naming the picture besides the frame groups ("image")
    other_senses: dict[str, frozenset[str]] = field(default_factory=dict)  # noun -> words selecting its other sense
    ridden_on: frozenset[str] = frozenset()  # vehicles one rides on, never in ("a bike")
    ridden_in: frozenset[str] = frozenset()  # vehicles one rides in, never on ("a car")
    # verb phrases outside `words` -> the noun groups / words they take ("speaking on" -> phone)
    phrase_objects: dict[str, frozenset[str]] = field(default_factory=dict)
    # term (noun singular, word, place noun) -> its only replacements; () never swapped (`substitutes`)
    substitutes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reliable: frozenset[str] = frozenset()  # word groups whose swaps are vetted as a whole


def _fail(path: str, where: str, problem: str) -> LexiconError:
    return LexiconError(f"{path}: {where}: {problem}")


def _str_list(value: Any, path: str, where: str, min_len: int = 1) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(path, where, f"expected a list of non-empty strings, got {value!r}")
    if len(value) < min_len:
        raise _fail(path, where, f"needs at least {min_len} terms to swap between, has {value!r}")
    return [" ".join(v.split()) for v in value]


def _parse_noun(entry: str, path: str, where: str) -> tuple[str, str | None]:
    if "/" not in entry:
        raise _fail(path, where, f"noun {entry!r} has no plural: write 'singular/plural' "
                                 f"(e.g. '{entry}/{entry}s'), or '{entry}/-' for a mass noun")
    singular, plural = (p.strip() for p in entry.split("/", 1))
    if not singular or not plural:
        raise _fail(path, where, f"noun {entry!r}: empty singular or plural")
    return singular, None if plural == "-" else plural


def _parse_place(entry: str, path: str, where: str) -> Place:
    tokens = entry.split()
    preps = tuple(tokens[0].split("|")) if tokens else ()
    bad = [p for p in preps if p not in PLACE_PREPOSITIONS]
    if len(tokens) < 2 or bad:
        raise _fail(path, where, f"place {entry!r}: write 'preps articles noun' such as 'on|at the|a beach' "
                                 f"(prepositions from {sorted(PLACE_PREPOSITIONS)})")
    articles: tuple[str, ...] = ()
    rest = tokens[1:]
    if set(rest[0].split("|")) <= set(ARTICLES) and len(rest) > 1:
        articles, rest = tuple(rest[0].split("|")), rest[1:]
    if any("|" in t for t in rest):
        raise _fail(path, where, f"place {entry!r}: articles are written 'the|a' ('a' becomes 'an' by sound), "
                                 "then the place's noun")
    return Place(" ".join(rest), preps, articles)


def indefinite_article(word: str) -> str:
    """'a' or 'an' before `word`, by its first sound ("an elephant", "a unicorn", "an hour")."""
    w = word.lower()
    if re.match(r"(?:8|11\b|18\b|hour|honest|honou?r|heir)", w):
        return "an"
    if re.match(r"(?:uni|use|usu|uti|ura|euro?|eu|one\b|once|ukulele|u-)", w):
        return "a"
    return "an" if w[:1] in "aeiou" else "a"


def place_phrases(place: Place) -> list[tuple[str, str, str]]:
    """(phrase, preposition, article) for every way the place is written ("on the beach", "at a beach")."""
    out = []
    for prep in place.preps:
        for article in place.articles or ("",):
            art = indefinite_article(place.noun) if article == "a" else article
            out.append((" ".join(x for x in (prep, art, place.noun) if x), prep, article))
    return out


def _check_unique(lex: Lexicon, path: str) -> None:
    """Every matchable term belongs to one group: a term in two groups would swap across categories."""
    seen: dict[str, str] = {}

    def claim(term: str, where: str) -> None:
        key = term.lower()
        if key in seen and seen[key] != where:
            raise _fail(path, where, f"term {term!r} is also in {seen[key]}; a term belongs to one group")
        seen[key] = where

    for group, pairs in lex.nouns.items():
        for singular, plural in pairs:
            claim(singular, f"nouns.{group}")
            if plural is not None:
                claim(plural, f"nouns.{group}")
    for principle, groups in lex.words.items():
        for group, terms in groups.items():
            for t in terms:
                claim(t, f"words.{principle}.{group}")
    for group, places in lex.places.items():
        for place in places:
            for phrase, _, _ in place_phrases(place):
                claim(phrase, f"places.{group}")
    for c in lex.compounds:
        claim(c, "compounds")
    nouns_by_place = {}
    for group, places in lex.places.items():
        for place in places:
            if place.noun in nouns_by_place:
                raise _fail(path, f"places.{group}", f"place {place.noun!r} is also in "
                                                     f"places.{nouns_by_place[place.noun]}")
            nouns_by_place[place.noun] = group


def _parse_compatible(data: Any, path: str, singular_of: dict[str, str]
                      ) -> tuple[tuple[frozenset[str], frozenset[str]], ...]:
    """`compatible` entries: a list (any two terms) or {general: [...], specific: [...]}."""
    if not isinstance(data, list):
        raise _fail(path, "compatible", f"expected a list of entries, got {data!r}")
    out = []
    for i, entry in enumerate(data):
        where = f"compatible[{i}]"
        if isinstance(entry, dict):
            if set(entry) != {"general", "specific"}:
                raise _fail(path, where, f"write a list of terms, or {{general: [...], specific: [...]}}; got {entry!r}")
            general = _str_list(entry["general"], path, f"{where}.general")
            specific = _str_list(entry["specific"], path, f"{where}.specific")
        else:
            general, specific = _str_list(entry, path, where, 2), []
        out.append((frozenset(_canonical(t, singular_of) for t in general),
                    frozenset(_canonical(t, singular_of) for t in specific)))
    return tuple(out)


def _parse_dimension_table(data: Any, path: str, where: str) -> dict[str, dict[str, frozenset[str]]]:
    if not isinstance(data, dict):
        raise _fail(path, where, f"expected 'term: {{dimension: [values]}}' entries, got {data!r}")
    out = {}
    for term, dims in data.items():
        if not isinstance(dims, dict):
            raise _fail(path, f"{where}.{term}", f"expected {{dimension: [values]}}, got {dims!r}")
        out[str(term).lower()] = {str(d): frozenset(str(v) for v in _str_list(vals, path, f"{where}.{term}.{d}"))
                                  for d, vals in dims.items()}
    return out


def _parse_lists(data: Any, path: str, where: str) -> dict[str, frozenset[str]]:
    """A mapping of key -> list of terms (`objects`, `direction_verbs`, `parts`), keys and terms lower-case."""
    if not isinstance(data, dict):
        raise _fail(path, where, f"expected 'key: [terms]' entries, got {data!r}")
    return {str(k).lower(): frozenset(t.lower() for t in _str_list(v, path, f"{where}.{k}"))
            for k, v in data.items()}


def _parse_substitutes(data: Any, path: str) -> dict[str, tuple[str, ...]]:
    """`substitutes`: term -> list of replacements, possibly empty (never swapped); lower-case."""
    if not isinstance(data, dict):
        raise _fail(path, "substitutes", f"expected 'term: [replacements]' entries, got {data!r}")
    return {str(k).lower(): tuple(t.lower() for t in _str_list(v or [], path, f"substitutes.{k}", 0))
            for k, v in data.items()}


def _check_substitutes(lex: Lexicon, path: str) -> None:
    """A `substitutes` key is a noun (singular), a word or a place of the lexicon, and its replacements are
    of the same kind: nouns for a noun, words of the same principle for a word, places of the same group
    for a place. A typo would silently leave a term unvetted."""
    nouns = {s.lower() for pairs in lex.nouns.values() for s, _ in pairs}
    word_principle = {w.lower(): p for p, by_group in lex.words.items() for ws in by_group.values() for w in ws}
    place_group = {pl.noun.lower(): g for g, places in lex.places.items() for pl in places}
    for term, subs in lex.substitutes.items():
        where = f"substitutes.{term}"
        if term in nouns:
            wrong = [s for s in subs if s not in nouns]
            what = "nouns (singular) of `nouns`"
        elif term in word_principle:
            counts = set(lex.count_words) if word_principle[term] == NOUN_PRINCIPLE else set()
            wrong = [s for s in subs if word_principle.get(s) != word_principle[term] and s not in counts]
            what = f"terms of `words.{word_principle[term]}`" + (" or count words" if counts else "")
        elif term in place_group:
            wrong = [s for s in subs if place_group.get(s) != place_group[term]]
            what = f"places of `places.{place_group[term]}`"
        else:
            raise _fail(path, where, f"{term!r} is not a noun (singular), a word or a place of the lexicon")
        if wrong:
            raise _fail(path, where, f"{wrong} are not {what}")
        if term in subs:
            raise _fail(path, where, f"{term!r} lists itself")
    word_groups = {g for by_group in lex.words.values() for g in by_group}
    unknown = sorted(lex.reliable - word_groups)
    if unknown:
        raise _fail(path, "reliable", f"{unknown} are not groups of `words`")


def _check_references(lex: Lexicon, path: str) -> None:
    """The sense sections name groups and terms that exist, so a typo fails at load, not as a silent no-op."""
    noun_groups = set(lex.nouns)
    word_groups = {g for by_group in lex.words.values() for g in by_group}
    word_terms = {w.lower() for by_group in lex.words.values() for ws in by_group.values() for w in ws}
    intransitive_terms = {w.lower() for by_group in lex.words.values() for g, ws in by_group.items()
                          if g in lex.intransitive for w in ws}
    checks = [
        ("dimensions.groups", set(lex.group_dimensions) - noun_groups, "noun groups"),
        ("frames", set(lex.frames) - noun_groups, "noun groups"),
        ("animate", set(lex.animate) - noun_groups, "noun groups"),
        ("objects", set(lex.objects) - word_terms, "terms of `words`"),
        ("direction_verbs", set(lex.direction_verbs) - word_groups, "groups of `words`"),
        ("any_subject", set(lex.any_subject) - intransitive_terms, "terms of the `intransitive` groups"),
        ("subjects", set(lex.subjects) - intransitive_terms, "terms of the `intransitive` groups"),
        ("subjects", set().union(*lex.subjects.values()) - noun_groups, "noun groups"),
        ("picture_attributes", set(lex.picture_attributes) - word_groups, "groups of `words`"),
    ]
    for where, unknown, what in checks:
        if unknown:
            raise _fail(path, where, f"{sorted(unknown)} are not {what}")


def parse_lexicon(data: Any, path: str = "<lexicon>") -> Lexicon:
    """Validate the loaded YAML and build the Lexicon; errors name the entry and the fix."""
    if not isinstance(data, dict):
        raise _fail(path, "top level", "expected a mapping")
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise _fail(path, "top level", f"unknown keys {unknown}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(path, "version", f"expected a positive integer, got {version!r}")
    nouns = {}
    for group, entries in (data.get("nouns") or {}).items():
        pairs = [_parse_noun(e, path, f"nouns.{group}") for e in _str_list(entries, path, f"nouns.{group}", 2)]
        nouns[group] = pairs
    words: dict[str, dict[str, list[str]]] = {}
    for principle, groups in (data.get("words") or {}).items():
        if principle not in PRINCIPLES:
            raise _fail(path, f"words.{principle}", f"unknown principle; allowed: {list(PRINCIPLES)}")
        words[principle] = {g: _str_list(t, path, f"words.{principle}.{g}", 2) for g, t in (groups or {}).items()}
    places = {g: [_parse_place(e, path, f"places.{g}") for e in _str_list(t, path, f"places.{g}", 2)]
              for g, t in (data.get("places") or {}).items()}
    counts = data.get("counts") or {}
    count_words = tuple(_str_list(counts.get("words"), path, "counts.words", 2))
    digits_max = counts.get("digits_max")
    if not isinstance(digits_max, int) or digits_max < 2:
        raise _fail(path, "counts.digits_max", f"expected an integer >= 2, got {digits_max!r}")
    agreement = data.get("agreement") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in agreement.items()):
        raise _fail(path, "agreement", "expected 'singular verb: plural verb' pairs of strings")
    singular_of = {p.lower(): s.lower() for pairs in nouns.values() for s, p in pairs if p is not None}
    # compared in canonical form, like the terms checked: "on the left of" -> "left of"
    synonyms = tuple(frozenset(_canonical(t, singular_of) for t in _str_list(s, path, f"synonyms[{i}]", 2))
                     for i, s in enumerate(data.get("synonyms") or []))
    hypernyms = {_canonical(k, singular_of): frozenset(_canonical(t, singular_of)
                                                       for t in _str_list(v, path, f"hypernyms.{k}"))
                 for k, v in (data.get("hypernyms") or {}).items()}
    lex = Lexicon(
        version=version, nouns=nouns, words=words, places=places,
        compounds=frozenset(c.lower() for c in _str_list(data.get("compounds") or [], path, "compounds", 0)),
        measure_words=frozenset(m.lower() for m in _str_list(data.get("measure_words") or [], path,
                                                              "measure_words", 0)),
        count_words=count_words, digits_max=digits_max,
        not_counted=frozenset(_str_list(counts.get("not_counted") or [], path, "counts.not_counted", 0)),
        agreement=dict(agreement), synonyms=synonyms, hypernyms=hypernyms, singular_of=singular_of,
        intransitive=frozenset(_str_list(data.get("intransitive") or [], path, "intransitive", 0)),
        no_article=frozenset(w.lower() for w in _str_list(data.get("no_article") or [], path, "no_article", 0)),
        compatible=_parse_compatible(data.get("compatible") or [], path, singular_of),
        dimensions=_parse_dimension_table((data.get("dimensions") or {}).get("terms") or {}, path,
                                          "dimensions.terms"),
        group_dimensions=_parse_dimension_table((data.get("dimensions") or {}).get("groups") or {}, path,
                                                "dimensions.groups"),
        objects=_parse_lists(data.get("objects") or {}, path, "objects"),
        direction_verbs=_parse_lists(data.get("direction_verbs") or {}, path, "direction_verbs"),
        parts=_parse_lists(data.get("parts") or {}, path, "parts"),
        frames=frozenset(_str_list(data.get("frames") or [], path, "frames", 0)),
        animate=frozenset(_str_list(data.get("animate") or [], path, "animate", 0)),
        any_subject=frozenset(w.lower() for w in _str_list(data.get("any_subject") or [], path, "any_subject", 0)),
        subjects=_parse_lists(data.get("subjects") or {}, path, "subjects"),
        picture_attributes=frozenset(_str_list(data.get("picture_attributes") or [], path, "picture_attributes", 0)),
        picture_nouns=frozenset(w.lower() for w in _str_list(data.get("picture_nouns") or [], path,
                                                              "picture_nouns", 0)),
        other_senses=_parse_lists(data.get("other_senses") or {}, path, "other_senses"),
        ridden_on=frozenset(w.lower() for w in _str_list(data.get("ridden_on") or [], path, "ridden_on", 0)),
        ridden_in=frozenset(w.lower() for w in _str_list(data.get("ridden_in") or [], path, "ridden_in", 0)),
        phrase_objects=_parse_lists(data.get("phrase_objects") or {}, path, "phrase_objects"),
        substitutes=_parse_substitutes(data.get("substitutes") or {}, path),
        reliable=frozenset(_str_list(data.get("reliable") or [], path, "reliable", 0)),
    )
    groups = {g for by_group in words.values() for g in by_group}
    unknown_groups = sorted(lex.intransitive - groups)
    if unknown_groups:
        raise _fail(path, "intransitive", f"{unknown_groups} are not groups of `words`; known: {sorted(groups)}")
    known_words = {w.lower() for by_group in words.values() for ws in by_group.values() for w in ws}
    unknown_words = sorted(lex.no_article - known_words)
    if unknown_words:
        raise _fail(path, "no_article", f"{unknown_words} are not terms of `words`: list only words the editor swaps")
    _check_unique(lex, path)
    _check_references(lex, path)
    _check_substitutes(lex, path)
    return lex


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """Read and validate a lexicon file (default: the packaged `lexicon/lexicon.yaml`)."""
    if path is None:
        text = resources.files("tpo_ray.negatives").joinpath("lexicon/lexicon.yaml").read_text(encoding="utf-8")
        name = "tpo_ray/negatives/lexicon/lexicon.yaml"
    else:
        text, name = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LexiconError(f"{name}: not valid YAML: {e}") from None
    return parse_lexicon(data, name)


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """The packaged lexicon, loaded once per process."""
    return load_lexicon()


def _canonical(term: str, singular_of: dict[str, str]) -> str:
    """Lower-case, without a leading preposition/article, singular: "on the beaches" -> "beach"."""
    t = " ".join(term.lower().split())
    t = _DETERMINERS.sub("", t)
    return singular_of.get(t, t)


def wordnet_adapter() -> Any:
    """The WordNet adapter when it is installed and its database is there, else None (the lexicon alone)."""
    try:
        from tpo_ray.negatives import wordnet
    except ImportError:
        return None
    return wordnet if wordnet.available() else None


@lru_cache(maxsize=65536)
def wordnet_relation(a: str, b: str) -> str | None:
    """WordNet's "synonym"/"hypernym"/"hyponym" between two canonical terms, or None (also without WordNet)."""
    wn = wordnet_adapter()
    return None if wn is None else wn.relation(a, b)


def _kinds(x: str, lex: Lexicon) -> set[str]:
    """x and its near-synonyms: a kind of a synonym is a synonym's kind ("boy" is a kind of "child", "kid")."""
    return {x}.union(*(s for s in lex.synonyms if x in s))


def compatible_by_dimensions(x: str, y: str, lex: Lexicon) -> bool | None:
    """For two terms of `dimensions.terms`: True when no dimension both fix tells them apart (a "baby" may be
    a "boy"), False when one does ("man" / "woman"); None when either is not listed."""
    dx, dy = lex.dimensions.get(x), lex.dimensions.get(y)
    if dx is None or dy is None:
        return None
    return all(dx[d] & dy[d] for d in dx.keys() & dy.keys())


def still_true(a: str, b: str, lex: Lexicon | None = None, *, use_wordnet: bool = True) -> str | None:
    """Why replacing span `a` by span `b` may leave a caption true of its image, or None when it contradicts.

    "synonym": the same fact ("couch" / "sofa"); "hypernym": b is the more general term ("puppy" -> "dog");
    "hyponym": b is a kind of a ("ship" -> "ferry"); "compatible": one image can show both ("next to" ->
    "behind", "several" -> "many", "sitting" -> "resting", "baby" -> "boy"). Any number, article or leading
    preposition ("on the beaches" is "beach"). Checked in the lexicon's synonym and hypernym lists, its
    compatible classes and its dimensions, then through WordNet when it is installed (`use_wordnet`): two
    terms whose dimensions contradict ("man" / "boy") are not asked of WordNet, whose rarer senses would
    join them ("boy" is also "a friendly informal reference to a grown man")."""
    lex = lex or lexicon()
    x, y = _canonical(a, lex.singular_of), _canonical(b, lex.singular_of)
    if x == y or any(x in s and y in s for s in lex.synonyms):
        return "synonym"
    xs, ys = _kinds(x, lex), _kinds(y, lex)
    if any(u in lex.hypernyms.get(v, ()) for u in xs for v in ys):
        return "hypernym"
    if any(v in lex.hypernyms.get(u, ()) for u in xs for v in ys):
        return "hyponym"
    if any((x in g and (y in g or y in sp)) or (x in sp and y in g) for g, sp in lex.compatible):
        return "compatible"
    by_dimensions = compatible_by_dimensions(x, y, lex)
    if by_dimensions is not None:
        return "compatible" if by_dimensions else None
    return wordnet_relation(x, y) if use_wordnet else None


def is_synonym_swap(a: str, b: str, lex: Lexicon | None = None) -> bool:
    """True when replacing `a` by `b` changes no fact: near-synonyms ("couch"/"sofa", "big"/"large") or a
    term and its general kind ("dog"/"puppy"), in either direction, any number or article; the lexicon's
    lists, then WordNet (`still_true` less its "compatible" answers)."""
    return still_true(a, b, lex) in ("synonym", "hypernym", "hyponym")


LEXICON_VERSION = lexicon().version
NOUN_GROUPS: dict[str, list[tuple[str, str | None]]] = lexicon().nouns
WORD_GROUPS: dict[str, dict[str, list[str]]] = lexicon().words
