"""Deterministic lexicon edits: the offline default editor and the fallback for LLM editors.

Given a caption, a principle and a seed, swap up to `max_edits` terms for another term of the same
group of the lexicon (`lexicon.py`): a color for a color, "on the left" for "on the right", "dogs" for
"cats", "3 cats" for "5 cats", "on the beach" for "on the snow". The caption is read as word n-grams,
longest term first, so "fire hydrant" and "in front of" are one term and "teddy bear" is never a bear.
Each edit is one contiguous change that keeps the sentence grammatical: a/an follows the new word,
nouns keep their number (a count that changes number brings the noun and a following "is"/"are" with
it), measure words ("a cup of coffee") and lexicalised compounds are left alone, a place keeps its
preposition, and no swap is between synonyms. Same (caption, principles, seed) -> same edit.

No swap may leave the caption true of its image (`lexicon.still_true`: a synonym, a general or specific
kind, a compatible term such as "next to" -> "behind" or "sitting" -> "resting"), and each swap must fit
the phrase it sits in (`sense.py`: a verb its object, an age word its noun, a direction its verb, a body
part its owner; a noun read as a verb, a picture word that is not the frame, an idiom, are kept). Where
a fit cannot be judged the term is kept: precision over coverage.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cache, lru_cache
from collections.abc import Iterable, Iterator, Sequence

from tpo_ray.negatives import counts, idioms, sense
from tpo_ray.negatives.lexicon import (NOUN_PRINCIPLE, PLACE_PRINCIPLE, PRINCIPLES, Lexicon, indefinite_article,
                                       lexicon, place_phrases, still_true)
from tpo_ray.negatives.validation import edit_spans, only_synonym_swaps

_TOKEN = re.compile(r"\w+(?:[-'’]\w+)*")
DETERMINERS = frozenset({"a", "an", "the", "this", "that", "these", "those", "his", "her", "its", "their", "my",
                         "our", "your", "some", "each", "every", "one"})
SINGULAR_CUES = frozenset({"a", "an", "one", "1", "each", "every", "this", "that", "another"})
# Words after an adjective that show it is used as a noun ("an orange and a pear").
FUNCTION_WORDS = frozenset({"and", "or", "with", "on", "in", "at", "of", "is", "are", "was", "were", "next", "to",
                            "by", "near", "under", "above", "behind", "beside", "inside", "for", "from", "that",
                            "which", "sitting", "standing", "lying", "who", "while", "but", "has", "have", "as"})
# Words after a motion verb that need one of its own kind ("running to", never "sitting to").
DIRECTIONS = frozenset({"to", "toward", "towards", "into", "onto", "across", "through"})
# Words that may follow a head noun. Any other plain word right after a noun ("candle flame", "toaster
# pastry") may make the noun a modifier of a compound the lexicon does not know, so the noun is kept.
AFTER_HEAD = FUNCTION_WORDS | frozenset({
    "had", "be", "been", "being", "can", "could", "will", "would", "may", "might", "must", "should", "do", "does",
    "did", "not", "sat", "stood", "lay", "ran", "flew", "swam", "ate", "held", "rode", "took", "made", "went",
    "came", "fell", "got", "left", "there", "here", "then", "together", "alone", "up", "down", "out", "off", "over",
    "into", "onto", "across", "along", "around", "through", "against", "toward", "towards", "upon", "about",
    "after", "before", "during", "since", "until", "like", "than", "so", "if", "when", "where", "whose", "whom",
    "this", "these", "those", "its", "his", "her", "their", "a", "an", "the", "all", "both", "each", "some",
    "full", "filled", "covered", "shaped", "dressed", "topped", "set", "inside", "outside", "below",
    "beneath", "underneath", "between", "among", "beyond", "atop", "past", "via", "without", "within", "very",
    "too", "also", "just", "only", "again", "back", "away", "home", "today", "now", "yet", "still", "sideways",
    "nearby", "above", "overhead", "high", "low", "far", "close", "it", "they", "them", "he", "she", "we", "you",
    "i", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "i'm",
})


# Nouns ending in -ing, which after a noun are its head ("chocolate icing"), not a verb ("a dog running").
NOUNS_IN_ING = frozenset({"icing", "frosting", "topping", "toppings", "filling", "fillings", "clothing", "building",
                          "buildings", "ceiling", "railing", "railings", "wedding", "painting", "paintings",
                          "drawing", "drawings", "stuffing", "dressing", "seasoning", "pudding", "wrapping",
                          "siding", "netting", "lighting", "bedding", "flooring", "sting", "wing", "wings", "string",
                          "strings", "ring", "rings", "king", "thing", "things"})


@dataclass(frozen=True)
class Term:
    text: str  # lower case, as matched
    principle: str
    group: str
    kind: str  # noun | word | place | count | fixed (a compound never edited)
    alternatives: tuple[str, ...] = ()  # words: same group, no synonyms; nouns: same number and length
    number: str | None = None  # nouns: "sg", "pl", "mass" or "both" ("sheep")
    prep: str | None = None  # places
    article: str | None = None  # places: "the", "a" or "" (none)
    vetted: bool = False  # replacements from the lexicon's `substitutes`, or a `reliable` group: drawn first


@dataclass
class Edit:
    start: int
    end: int
    source: str
    target: str
    principle: str


@dataclass(frozen=True)
class Candidate:
    """One editable term in a caption: where it is and the replacements it allows (each its own span)."""

    principle: str
    start: int
    end: int
    options: tuple[tuple[int, int, str], ...]  # (start, end, replacement)
    vetted: bool = True  # the term's replacements are vetted (Term.vetted): such candidates are drawn first


@dataclass
class EditResult:
    """A negative caption with the principle used and the list of (from, to) edits."""

    negative: str
    principle: str
    edits: list[dict[str, str]] = field(default_factory=list)


@cache  # called with lexicon terms: a bounded set
def _n_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def _swappable(a: str, b: str, lex: Lexicon) -> bool:
    """b may replace a: not a swap that may leave the caption true (a synonym, a general or specific kind, a
    compatible term: `lexicon.still_true` from the lexicon's lists; WordNet is asked per caption, see
    `_contradicts`), and one contiguous change ("to the left of" -> "to the right of", not "on the right
    of"), judged the way the negatives validation judges it."""
    if still_true(a, b, lex, use_wordnet=False) is not None:
        return False
    if " " not in a and " " not in b:
        return True
    return edit_spans(a, b)[0] == 1 and not only_synonym_swaps(a, b)


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, Term], dict[str, str], int, Lexicon]:
    """(lower-case term -> Term, lower-case term -> written form, longest term in tokens, lexicon)."""
    lex = lexicon()
    terms: dict[str, Term] = {}
    written: dict[str, str] = {}
    subs = lex.substitutes
    for principle, groups in lex.words.items():
        in_principle = [x for ws in groups.values() for x in ws]
        if principle == NOUN_PRINCIPLE:
            in_principle += list(lex.count_words)  # "several dogs" -> "two dogs": a vetted quantity
        for group, words in groups.items():
            for w in words:
                listed = subs.get(w.lower())
                pool = words if listed is None else [x for x in in_principle if x.lower() in listed]
                alts = tuple(x for x in pool if x != w and _swappable(w, x, lex))
                terms[w.lower()] = Term(w.lower(), principle, group, "word", alts,
                                        vetted=listed is not None or group in lex.reliable)
                written[w.lower()] = w
    noun_pairs = {s.lower(): (s, p) for pairs in lex.nouns.values() for s, p in pairs}
    for group, pairs in lex.nouns.items():
        for singular, plural in pairs:
            forms = [("sg", singular)] if plural is None or plural == singular else [("sg", singular), ("pl", plural)]
            if plural is None:
                forms = [("mass", singular)]
            elif plural == singular:
                forms = [("both", singular)]
            listed = subs.get(singular.lower())
            for number, w in forms:
                multi = _n_tokens(w) > 1
                if listed is None:
                    pool = [(s, p) for s, p in pairs if (_n_tokens(s) > 1) == multi and s != singular]
                else:  # the vetted replacements, from any group
                    pool = [noun_pairs[x] for x in listed]
                pool = [(s, p) for s, p in pool if (p is None) == (number == "mass") and _swappable(singular, s, lex)]
                alts = tuple(s if number in ("sg", "mass") else p for s, p in pool) if number != "both" else \
                    tuple(f"{s}|{p}" for s, p in pool)
                terms[w.lower()] = Term(w.lower(), NOUN_PRINCIPLE, group, "noun", alts, number,
                                        vetted=listed is not None)
                written[w.lower()] = w
    for group, places in lex.places.items():
        for place in places:
            listed = subs.get(place.noun.lower())
            for phrase, prep, article in place_phrases(place):
                alts = []
                for other in places:
                    if other.noun == place.noun or prep not in other.preps or not _swappable(place.noun, other.noun,
                                                                                             lex):
                        continue
                    if listed is not None and other.noun.lower() not in listed:
                        continue
                    art = article if article in other.articles else (other.articles[0] if other.articles else "")
                    art = indefinite_article(other.noun) if art == "a" else art
                    alts.append(" ".join(x for x in (prep, art, other.noun) if x))
                terms[phrase] = Term(phrase, PLACE_PRINCIPLE, group, "place", tuple(alts), prep=prep, article=article,
                                     vetted=listed is not None)
                written[phrase] = phrase
            for article in place.articles:  # "a kitchen" with no preposition: the subject of the caption
                art = indefinite_article(place.noun) if article == "a" else article
                alts = tuple(f"{indefinite_article(o.noun) if article == 'a' else article} {o.noun}" for o in places
                             if o.noun != place.noun and article in o.articles and _swappable(place.noun, o.noun, lex)
                             and (listed is None or o.noun.lower() in listed))
                terms[f"{art} {place.noun}"] = Term(f"{art} {place.noun}", PLACE_PRINCIPLE, group, "place", alts,
                                                    article=article, vetted=listed is not None)
    for c in lex.compounds:
        terms.setdefault(c, Term(c, NOUN_PRINCIPLE, "compound", "fixed"))
    for w in lex.count_words:
        terms.setdefault(w.lower(), Term(w.lower(), NOUN_PRINCIPLE, "count", "count", vetted=True))
    return terms, written, max(_n_tokens(t) for t in terms), lex


@lru_cache(maxsize=65536)
def _contradicts(a: str, b: str) -> bool:
    """`still_true` with WordNet, for the terms a caption holds ("ship" -> "ferry", "photo" -> "picture");
    asked per caption rather than for every pair of the lexicon at load."""
    return still_true(a, b) is None


@lru_cache(maxsize=1)
def _object_groups() -> frozenset[str]:
    """Word groups one of whose verbs has listed objects: their swaps must fit the caption's object."""
    terms, _, _, lex = _tables()
    return frozenset(terms[v].group for v in lex.objects if v in terms)


@lru_cache(maxsize=1)
def _part_groups() -> frozenset[str]:
    """Noun groups of body parts (those named in the lexicon's `parts`)."""
    lex = _tables()[3]
    named = set().union(*lex.parts.values())
    return frozenset(g for g, pairs in lex.nouns.items() if any(s_ in named for s_, _ in pairs))


@lru_cache(maxsize=1)
def _last_words() -> dict[str, frozenset[str]]:
    """Per term, the last words of its replacements: a caption word after the term that is among them
    would be written twice ("a red orange" -> "an orange orange")."""
    return {text: frozenset(w.split()[-1].lower() for a in t.alternatives for w in a.split("|"))
            for text, t in _tables()[0].items()}


@lru_cache(maxsize=1)
def _no_article_groups() -> frozenset[str]:
    """Word groups holding a word that takes no article ("noon" in `time_word`)."""
    return frozenset(t.group for t in _tables()[0].values() if t.kind == "word" and t.text in _tables()[3].no_article)


@lru_cache(maxsize=1)
def _modifiers() -> frozenset[str]:
    """First words of multi-word nouns and compounds that are not themselves attributes or counts: a noun
    right after one of them ("fire" engine, "teddy" bears) is part of a compound the lexicon lacks."""
    terms, _, _, _ = _tables()
    firsts = {t.split()[0] for t, term in terms.items() if term.kind in ("noun", "fixed") and " " in t}
    firsts -= AFTER_HEAD  # "in circles", "home plate": a function word opens an idiom, not a compound
    return frozenset(w for w in firsts if w not in terms or terms[w].kind in ("noun", "fixed"))


def _tokens(caption: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _TOKEN.finditer(caption)]


def find_terms(caption: str) -> list[tuple[int, int, Term]]:
    """Non-overlapping lexicon terms (and counts) in the caption, longest first, left to right."""
    terms, _, longest, lex = _tables()
    toks = _tokens(caption)
    out, i = [], 0
    while i < len(toks):
        for n in range(min(longest, len(toks) - i), 0, -1):
            start, end = toks[i][0], toks[i + n - 1][1]
            key = " ".join(caption[start:end].lower().split())
            term = terms.get(key)
            if term is None and n == 1 and key.isdigit() and 1 <= int(key) <= lex.digits_max:
                term = Term(key, NOUN_PRINCIPLE, "count", "count")
            if term is not None and term.kind == "place" and i + n < len(toks):
                following = caption[toks[i + n][0]:toks[i + n][1]].lower()
                if following == "of":
                    term = None  # "a field of flowers": the place is a measure here
                elif term.prep is None and _adjacent(caption, end, toks[i + n][0]) and following not in FUNCTION_WORDS:
                    term = None  # "a kitchen table": the place word is a modifier here
            if term is not None:
                out.append((start, end, term))
                i += n
                break
        else:
            i += 1
    return out


def _open_word(word: str | None) -> bool:
    """A plain word none of the closed lists explains (not a function word or adverb): after a term it may
    be the head the term modifies ("candle flame", "evening light") or a verb's object ("swimming laps")."""
    return word is not None and word.isalpha() and word not in AFTER_HEAD and not word.endswith("ly")


def _word_at(caption: str, toks: list[tuple[int, int]], k: int) -> str | None:
    return caption[toks[k][0]:toks[k][1]].lower() if 0 <= k < len(toks) else None


def _adjacent(caption: str, a_end: int, b_start: int) -> bool:
    """Only spaces between the two spans (no comma, no sentence break)."""
    return caption[a_end:b_start].strip() == "" and a_end < b_start


def _agree(verb: str | None, to_plural: bool, lex: Lexicon) -> str | None:
    if verb is None:
        return None
    table = lex.agreement if to_plural else {v: k for k, v in lex.agreement.items()}
    return table.get(verb)


def _count_candidate(caption: str, spans: list[tuple[int, int, Term]], idx: int, toks: list[tuple[int, int]],
                     tok_index: dict[int, int]) -> Candidate | None:
    """'two dogs' -> 'four dogs', '3 cats' -> '5 cats', 'one dog is' -> 'two dogs are'."""
    _, _, lex = _tables()[1], None, _tables()[3]
    start, end, term = spans[idx]
    k = tok_index[start]
    if start > 0 and caption[start - 1] in "$£€#.,:/" or caption[end:end + 1] in ("%", "/", ":") or \
            (caption[end:end + 1] in ".," and caption[end + 1:end + 2].isdigit()):
        return None  # money, decimals, times, fractions
    if LATER_REFERENCE.search(caption):
        return None  # "Two cups ..., one with ... The other has ...": the count is referred to again
    nxt = spans[idx + 1] if idx + 1 < len(spans) else None
    noun = nxt if nxt and nxt[2].kind == "noun" and _adjacent(caption, end, nxt[0]) else None
    if noun is not None and noun[2].group in _part_groups():
        return None  # "two hands", "four legs": a body has the parts it has
    digit = term.text.isdigit()
    value = int(term.text) if digit else lex.count_words.index(term.text) + 1
    following = _word_at(caption, toks, k + 1)
    if digit and (following is None or following in lex.not_counted):
        return None
    if digit and noun is None and not (following and following.isalpha() and following.endswith("s")
                                       and len(following) > 3):
        return None
    if noun is None and nxt is not None and nxt[2].kind == "noun" and tok_index.get(nxt[0]) == k + 2:
        return None  # "a ten speed bicycle": the count belongs to a modifier, not to things named after it
    singular = value == 1
    if singular and (noun is None or noun[2].number not in ("sg", "both")):
        return None  # "one" only counts before a known singular noun ("one of them", "the one")
    if not singular and noun is not None and noun[2].number == "sg":
        return None  # "two dog": not a count phrase we understand
    words = [str(v) if digit else lex.count_words[v - 1] for v in range(2, min(10, len(lex.count_words)) + 1)]
    options = [] if singular else [(start, end, w) for w in words if w != term.text]
    if noun is not None and noun[2].number in ("sg", "pl", "both") and " " not in noun[2].text:
        # the number word, the noun and its verb change together; a multi-word noun would split the change
        _, written, _, _ = _tables()
        sg_form = noun[2].text if noun[2].number != "pl" else lex.singular_of.get(noun[2].text)
        pl_form = next((p for s, p in lex.nouns[noun[2].group] if s.lower() == sg_form), None) if sg_form else None
        if sg_form and pl_form:
            verb_k = tok_index[noun[0]] + _n_tokens(noun[2].text)
            verb = _word_at(caption, toks, verb_k)
            new_verb = _agree(verb, singular, lex)
            span_end = toks[verb_k][1] if new_verb and _adjacent(caption, noun[1], toks[verb_k][0]) else noun[1]
            tail = f" {new_verb}" if span_end != noun[1] else ""
            if singular:
                options += [(start, span_end, f"{w} {pl_form.lower()}{tail}") for w in words]
            elif tail or not _plural_verb_later(caption, toks, verb_k):  # "four bowls of food are kept"
                options.append((start, span_end, f"{'1' if digit else lex.count_words[0]} {sg_form}{tail}"))
    return Candidate(NOUN_PRINCIPLE, start, end, tuple(options)) if options else None


# Words that refer back to a count ("the other", "both"): a changed count would leave them dangling.
LATER_REFERENCE = re.compile(r"\b(?:the other|both|each(?! other)|another|the two|the three|either|neither)\b", re.IGNORECASE)
# A story told, not shown ("creating a futuristic world in their book"): nothing in it is seen.
TOLD_NOT_SHOWN = re.compile(r"\bin (?:their|his|her|its|my|our|your|a|the) (?:book|story|novel|dream|dreams|"
                            r"imagination|mind|head|fantasy|tale)\b", re.IGNORECASE)


def _plural_verb_later(caption: str, toks: list[tuple[int, int]], k: int) -> bool:
    """A plural verb further on in the sentence, which a count made singular would leave disagreeing."""
    while k < len(toks) and not re.search(r"[.!?;]", caption[toks[k - 1][1]:toks[k][0]] if k else ""):
        if _word_at(caption, toks, k) in ("are", "were", "have"):
            return True
        k += 1
    return False


def _bare(prev: str | None) -> bool:
    """No article, count or adjective before a noun: "doing skateboard tricks", not "a dog barks"."""
    terms = _tables()[0]
    return prev not in DETERMINERS and not (prev in terms and terms[prev].kind in ("word", "count")) and \
        not (prev or "").isdigit()


def _noun_ok(caption: str, spans: list[tuple[int, int, Term]], idx: int, toks, tok_index) -> bool:
    """A noun is swapped only where it is the head of its phrase, not a measure word or a compound's part."""
    start, end, term = spans[idx]
    _, _, _, lex = _tables()
    k = tok_index[start]
    last = k + _n_tokens(term.text) - 1
    prev, nxt = _word_at(caption, toks, k - 1), _word_at(caption, toks, last + 1)
    if term.text in lex.measure_words and nxt == "of":
        return False  # "a cup of coffee": the measure stays, the coffee may change
    if prev in _modifiers() and _adjacent(caption, toks[k - 1][1], start):
        return False  # "fire engine", "police horse": a compound the lexicon does not list
    if prev is not None and "-" in prev and not prev.endswith(("ed", "y", "ful", "less", "ish")) \
            and prev not in _tables()[0] \
            and _adjacent(caption, toks[k - 1][1], start):
        return False  # "pick-up truck", "double-decker bus": a hyphenated modifier makes a compound
    if nxt is not None and nxt.endswith("ing") and nxt not in _tables()[0] and nxt not in NOUNS_IN_ING \
            and term.group not in lex.animate and "vehicle" not in term.group and _adjacent(caption, toks[last][1], toks[last + 1][0]) \
            and not _verb_is_bound(caption, toks, last + 2):
        return False  # "a flag furling in the wind" -> never "a placemat furling": what a lifeless thing does
        # on its own fits it alone; with an object ("a screen showing a map") the verb says less
    for j in (idx - 1, idx + 1):
        if 0 <= j < len(spans) and spans[j][2].kind in ("noun", "fixed"):
            a, b = (spans[j], spans[idx]) if j < idx else (spans[idx], spans[j])
            if _adjacent(caption, a[1], b[0]):
                return False  # "dog bed", "apple tree": noun-noun compound
    plural_verb = term.number in ("pl", "both") and nxt in lex.agreement.values()  # "the men wear": a verb
    if _open_word(nxt) and _adjacent(caption, toks[last][1], toks[last + 1][0]) and nxt not in _tables()[0] \
            and not plural_verb \
            and (not nxt.endswith(("ing", "ed", "s")) or nxt in NOUNS_IN_ING
                 or (nxt.endswith("s") and nxt not in lex.agreement and _bare(prev))):
        return False  # "candle flame", "chocolate icing", "doing skateboard tricks": the noun modifies a head
    if " " not in term.text and term.text.endswith("ing"):
        terms = _tables()[0]
        if prev not in DETERMINERS and (prev not in terms or terms[prev].kind != "word"):
            return False  # "painting" the noun, not "a man painting a fence"
    return True


def _sense_options(ctx: sense.Context, idx: int, options: tuple) -> tuple:
    """The replacements that fit the phrase the term sits in (tpo_ray/negatives/sense.py); () when the
    term is not used in the sense the lexicon lists it in, or when the fit cannot be judged."""
    start, _, term = ctx.spans[idx]
    k, n = ctx.tok_index[start], _n_tokens(term.text)
    if term.kind == "noun":
        if not sense.read_as_noun(ctx, k, n) or not sense.frame_ok(ctx, k, n, term) or sense.other_sense(ctx, term) \
                or sense.named_again(ctx, k, term):
            return ()
        options = sense.noun_fit_options(ctx, k, options, term)
        options = sense.pronoun_options(ctx, options, term)
        options = sense.adult_options(ctx, options, term)
        options = sense.vehicle_options(ctx, k, options)
        options = sense.at_options(ctx, k, options, term)
        options = sense.object_noun_options(ctx, k, options, term)
        options = sense.part_options(ctx, k, n, options, term, _part_groups())
    elif term.kind == "word":
        if not sense.picture_attribute_ok(ctx, k, n, term) or not sense.word_ok(ctx, k, n, term):
            return ()
        options = sense.emotion_options(ctx, k, options, term)
        options = sense.object_needed_options(ctx, k, n, options)
        options = sense.verb_options(ctx, k, n, options, _object_groups(), term)
        options = sense.direction_options(ctx, k, options, term)
        options = sense.age_options(ctx, k, n, options, term)
        options = sense.subject_options(ctx, k, options, term)
    elif term.kind == "place" and not sense.place_ok(ctx, k, term):
        return ()
    return tuple(o for o in options if all(_contradicts(term.text, w) for w in o[2].split("|")))


# Measures of many ("a herd of", "a group of"): a singular noun after one is a collective plural ("a herd
# of giraffe"), which another noun does not take ("a herd of pig").
COLLECTIVES = frozenset({"group", "groups", "herd", "herds", "flock", "flocks", "pack", "packs", "bunch", "bunches",
                         "couple", "pair", "pairs", "lot", "lots", "crowd", "team", "teams", "school", "pod", "swarm",
                         "litter", "line", "row", "rows", "collection", "number", "variety", "pile", "stack"})


def _noun_options(caption: str, spans, idx: int, toks, tok_index) -> tuple[tuple[int, int, str], ...]:
    start, end, term = spans[idx]
    number = term.number
    alts = term.alternatives
    k = tok_index[start]
    if number == "sg" and _word_at(caption, toks, k - 1) == "of" and _word_at(caption, toks, k - 2) in COLLECTIVES:
        return ()
    if number == "both":  # "sheep": the number comes from the words around it
        k = tok_index[start]
        prev, nxt = _word_at(caption, toks, k - 1), _word_at(caption, toks, k + 1)
        # "a sheep is", "one sheep"; after "of" the verb agrees with the measure ("a herd of sheep is"), so plural
        sg = prev in SINGULAR_CUES or (prev != "of" and nxt in ("is", "was", "has"))
        alts = tuple(a.split("|")[0 if sg else 1] for a in alts)
    return tuple((start, end, a) for a in alts)


def _after_indefinite_article(caption: str, toks, k: int) -> bool:
    """Token k follows "a"/"an", directly or past one adjective ("a sunny morning")."""
    terms = _tables()[0]
    prev, before = _word_at(caption, toks, k - 1), _word_at(caption, toks, k - 2)
    return prev in ("a", "an") or (before in ("a", "an") and prev in terms and terms[prev].kind == "word"
                                   and terms[prev].principle in ("attribute", "contextual"))


def _verb_is_bound(caption: str, toks, j: int) -> bool:
    """The words from token j on bind the verb before them to its own sense: an object, past adjectives
    ("walking two dogs", "walking big dogs", "swimming laps") or a direction ("running to the bus"),
    which another motion verb ("sitting") would not take."""
    terms = _tables()[0]
    word = _word_at(caption, toks, j)
    while word in terms and terms[word].kind == "word" and terms[word].principle == "attribute":
        j += 1
        word = _word_at(caption, toks, j)
    if word is None:
        return False
    if word in DETERMINERS or word.isdigit() or word in DIRECTIONS:
        return True
    if word in terms:
        return terms[word].kind in ("noun", "count")
    return _open_word(word)


def _word_ok(caption: str, spans, idx: int, toks, tok_index) -> bool:
    start, end, term = spans[idx]
    k = tok_index[start]
    after = k + _n_tokens(term.text)
    if term.group in _tables()[3].intransitive:
        return not _verb_is_bound(caption, toks, after)  # "flying a kite", "walking big dogs": kept
    nxt = _word_at(caption, toks, after)
    if term.group == "time" and nxt is not None and _adjacent(caption, end, toks[after][0]):
        return not _open_word(nxt)  # "in the evening light": the time modifies a noun
    if term.principle != "attribute":
        return True
    prev = _word_at(caption, toks, k - 1)
    # "an orange and a pear", "a drink with a straw.": the adjective is a noun here
    return not (prev in ("a", "an") and (nxt is None or nxt in FUNCTION_WORDS or nxt.endswith("ing") or not _adjacent(
        caption, end, toks[after][0])))  # "an orange wearing a hat"


def find_candidates(caption: str) -> list[Candidate]:
    """Every term the editor may change in this caption, with its allowed replacements."""
    terms, written, _, lex = _tables()
    if TOLD_NOT_SHOWN.search(caption):
        return []
    spans = find_terms(caption)
    toks = _tokens(caption)
    tok_index = {s: i for i, (s, _) in enumerate(toks)}
    lowered = caption.lower()
    lowered = [lowered[s:e] for s, e in toks]
    ctx = sense.Context(caption, toks, spans, terms, lex, tok_index)
    named = idioms.named_words(ctx)
    out = []
    subject_counted = False
    for idx, (start, end, term) in enumerate(spans):
        if idioms.quoted(ctx, start) or idioms.negated(ctx, tok_index[start]):
            continue  # what a sign says; what the caption says is absent
        if term.kind == "count":
            cand = None if idioms.count_tied(ctx, tok_index[start]) else \
                _count_candidate(caption, spans, idx, toks, tok_index)
            if cand:
                out.append(cand)
            continue
        if term.kind == "noun" and all(x[2].kind == "word" and x[2].principle == "attribute" or x[2].group in lex.frames
                                       or x[2].text in lex.picture_nouns or x[2].text == counts.BLACK_AND_WHITE
                                       for x in spans[:idx]) and tok_index[start] < 6 \
                and (_noun_ok(caption, spans, idx, toks, tok_index) or spans[idx - 1][2].text == counts.BLACK_AND_WHITE):
            plural = counts.subject_count_options(ctx, idx)  # "A dog sits" -> "Two dogs sit"
            if plural:
                out.append(Candidate(NOUN_PRINCIPLE, plural[0][0], plural[0][1], plural))
                subject_counted = True
        if term.kind == "fixed" or not term.alternatives:
            continue
        if term.kind == "noun":
            if not _noun_ok(caption, spans, idx, toks, tok_index) or idioms.compound_head(ctx, tok_index[start]) \
                    or idioms.viewers_camera(ctx, tok_index[start]) or idioms.noun_modified(ctx, tok_index[start]) \
                    or idioms.bare_after_preposition(ctx, tok_index[start], term) \
                    or idioms.bears_text(ctx, tok_index[start], _n_tokens(term.text), term):
                continue
            options = _noun_options(caption, spans, idx, toks, tok_index)
        elif term.kind == "word":
            if not _word_ok(caption, spans, idx, toks, tok_index) \
                    or idioms.size_as_age(ctx, tok_index[start], _n_tokens(term.text), term):
                continue
            options = tuple((start, end, a) for a in term.alternatives)
            if term.group in _no_article_groups() and _after_indefinite_article(caption, toks, tok_index[start]):
                options = tuple(o for o in options if o[2].lower() not in lex.no_article)  # "a morning", not "a noon"
        else:
            options = tuple((start, end, a) for a in term.alternatives)
        options = _sense_options(ctx, idx, options)
        if term.kind == "noun":
            options = idioms.same_age_options(ctx, tok_index[start], options, term)
            own = named - idioms.named_words(ctx, start, end)  # "Christmas tree" -> "palm tree": its own "tree"
            options = tuple(o for o in options if not idioms.already_named(own, o[2], lex)
                            and not idioms.vessel_after_on(ctx, tok_index[start], o[2]))
        options = tuple((s, e, written.get(a.lower(), a)) for s, e, a in options)
        k, n = tok_index[start], _n_tokens(term.text)
        near = set(lowered[max(0, k - 3):k] + lowered[k + n:k + n + 3])
        if not near.isdisjoint(_last_words().get(term.text, ())):  # "a red and blue car" -> "a red and red car",
            options = tuple(o for o in options if o[2].split()[-1].lower() not in near)  # "cartoon style style"
        if options:
            vetted = term.vetted and not idioms.scene_plural(ctx, tok_index[start], term)
            out.append(Candidate(term.principle, start, end, options, vetted))
    if not subject_counted:
        plural = counts.open_subject_count_options(ctx)  # "A worker passes" -> "Two workers pass"
        if plural:
            out.append(Candidate(NOUN_PRINCIPLE, plural[0][0], plural[0][1], plural))
    return out


def editable_principles(caption: str) -> set[str]:
    return {c.principle for c in find_candidates(caption)}


def _match_case(source: str, target: str) -> str:
    """Carry sentence case over ("Two dogs" -> "Four dogs"), not a proper noun's ("a Christmas tree" ->
    "a palm tree"); the lexicon's own capitals stay ("Paris")."""
    written = _tables()[1]
    if source.isupper() and len(source) > 1 and not source.isdigit():
        return target.upper()
    lexicon_form = written.get(" ".join(source.lower().split()), source.lower())
    if source[:1].isupper() and not lexicon_form[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def _fix_article(caption: str, start: int, target: str) -> tuple[int, str]:
    """Extend an edit over a preceding 'a'/'an' when the new word needs the other one."""
    m = re.search(r"(?<![\w-])(an?)(\s+)$", caption[:start], re.IGNORECASE)
    if m is None:
        return start, target
    article = indefinite_article(target.split()[0] if target.split() else target)
    if article == m.group(1).lower():
        return start, target
    return m.start(1), _match_case(m.group(1), article) + m.group(2) + target


def apply_edits(caption: str, edits: Sequence[Edit]) -> str:
    out, last = [], 0
    for e in sorted(edits, key=lambda e: e.start):
        out.append(caption[last:e.start])
        out.append(e.target)
        last = e.end
    out.append(caption[last:])
    return "".join(out)


def choose_principle(
    available: set[str], principles: Sequence[str], weights: dict[str, float] | None, rng: random.Random,
    availability: dict[str, float] | None = None,
) -> str | None:
    """One principle among those this caption has material for (`available`), drawn by `weights` (uniform
    when None) renormalised over them; None when none is available or all have weight 0.

    Why the realised mix differs from the weights: a caption offers only some principles (most photo
    captions name an object, few a time of day or the weather), so even with uniform weights a principle
    is drawn only for the captions that have it. On 2,500 COCO val2017 captions (lexicon v4) the rules
    editor can make content edits in 86% of them, spatial 45%, attribute 32%, contextual 21%, and
    uniform weights give a realised mix of content 54%, spatial 21%, attribute 16%, contextual 9%.
    Drawing an unavailable principle would make the editor invent a fact, which is what issue 24
    removed. `availability` (principle -> share of the captions that offer it, measured by the caller
    over its input, e.g. with `editable_principles`) divides each weight by that share, so a rare
    principle is drawn more often where it is possible: content 42%, spatial 24%, attribute 20%,
    contextual 15% on the same captions. It cannot reach the weights where a principle is rarer than its
    weight (25% contextual needs a quarter of the captions to offer it). The requested and realised
    mixes are reported by the negatives job and benchmarks/negatives_quality.py.
    """
    candidates = [p for p in principles if p in available and (weights is None or weights.get(p, 0) > 0)]
    if not candidates:
        return None
    scores = [(1.0 if weights is None else weights[p]) / max((availability or {}).get(p, 1.0), 1e-3)
              for p in candidates]
    return rng.choices(candidates, weights=scores)[0]


def checked_edits(prompts: Iterable[tuple[str, str]], seeds: int = 3, max_edits: Sequence[int] = (1, 2),
                  max_tokens: int = 10_000) -> Iterator[tuple[str, EditResult, str | None]]:
    """(caption, edit, the reason the negatives job's answer validation rejects it, or None) for every edit
    the editor makes of each (id, caption) at seeds `<id>:0..seeds-1` and each `max_edits`: the check that
    every rule edit is one the job accepts (benchmarks/negatives_coverage.py, tests/unit/test_rules_lexicon.py)."""
    from tpo_ray.negatives.validation import Proposal, approx_clip_tokens, validate_proposal

    for prompt_id, caption in prompts:
        for s in range(seeds):
            for budget in max_edits:
                out = rule_edit(caption, seed=f"{prompt_id}:{s}", max_edits=budget)
                if out is not None:
                    yield caption, out, validate_proposal(caption, Proposal(out.negative, out.principle, out.edits),
                                                          principles=PRINCIPLES, max_edits=budget,
                                                          max_tokens=max_tokens, count_tokens=approx_clip_tokens)


def rule_edit(
    caption: str,
    *,
    principles: Sequence[str] = PRINCIPLES,
    max_edits: int = 1,
    seed: int | str = 0,
    weights: dict[str, float] | None = None,
    availability: dict[str, float] | None = None,
) -> EditResult | None:
    """One negative under one principle with 1..max_edits edits; None if nothing is editable. The principle
    is drawn among those the caption has terms for (`choose_principle`, which says why the realised mix
    differs from `weights` and how `availability` corrects it), and only among its vetted terms when it
    has any: a term of the lexicon's `substitutes` or `reliable` groups, a count, the subject's count. An
    unlisted term's whole group is drawn from only where the caption offers nothing vetted. Why: on graded
    photo captions, group-wide noun swaps failed a careful reader about one time in four, vetted ones and
    counts far less often (docs/negatives.md, "Graded sample"); the fallback keeps the coverage."""
    rng = random.Random(str(seed))
    candidates = find_candidates(caption)
    vetted = [c for c in candidates if c.vetted and c.principle in principles and (weights or {}).get(c.principle, 1) > 0]
    candidates = vetted or candidates  # a group's whole list only where the caption offers nothing vetted
    principle = choose_principle({c.principle for c in candidates}, principles, weights, rng, availability)
    if principle is None:
        return None
    pool = [c for c in candidates if c.principle == principle]
    n_edits = rng.randint(1, min(max_edits, len(pool)))
    edits: list[Edit] = []
    for cand in rng.sample(pool, len(pool)):
        start, end, target = rng.choice(cand.options)
        target = _match_case(caption[start:end], target)
        start, target = _fix_article(caption, start, target)
        if any(start < e.end and e.start < end for e in edits):
            continue  # "one dog is" and "dog" both want the noun
        if any(target.lower() == e.source.lower() or caption[start:end].lower() == e.target.lower() for e in edits):
            continue  # "big lion, small mouse" -> "small lion, big mouse" only reorders the words
        edits.append(Edit(start, end, caption[start:end], target, principle))
        if len(edits) == n_edits:
            break
    return EditResult(
        negative=apply_edits(caption, edits),
        principle=principle,
        edits=[{"from": e.source, "to": e.target} for e in sorted(edits, key=lambda e: e.start)],
    )
