"""Phrases whose noun or count the rules editor leaves alone, whatever the lexicon offers for it.

Each is a shape of phrase that made a graded negative nonsense in the samples of docs/negatives.md, and
that no word list foresees, so it is read from the words around the term (`sense.Context`):

- a bare singular noun after a preposition may be an idiom ("in bed", "on television", "on display"):
  "in armchair" and "in sofa" are not English;
- a noun after an "-ing" modifier or a particle is the head of a compound ("a mixing bowl", "a pick up
  truck"): "a mixing bottle" and "a pick up ambulance" are not things;
- a noun that bears a text or a time ("a sign that reads STOP", "a clock showing 11:05"): only it says
  what it says;
- a size word before a person says an age ("a little girl", "a big brother"): "an enormous girl" is not
  its contradiction;
- a replacement the caption already names ("a toilet and a bathroom sink" -> "a sink and a bathroom
  sink") repeats a thing instead of changing one;
- a vessel after "on" ("a hamburger on a plate" -> "on a bowl"): one puts things in a bowl, on a plate;
- a word inside quotation marks is what a sign or a shirt says, not what the picture shows;
- a thing said to be absent ("without cars", "no people") may be absent in any form: "without trucks" is
  still true;
- "the camera" a person looks into or poses for is the photographer's, not a thing in the picture;
- a noun after another noun is the head of a compound the lexicon does not list ("a ten speed bicycle",
  "a dairy cow"): WordNet tells the modifier is a noun;
- a count tied to another part of the caption ("a couple of photos showing two rooms", "2 posts, all
  three of which", "two bears, one running"): "ten rooms" or "all six of which" contradict the caption
  itself.

Pure functions over one caption's tokens; `rules.find_candidates` calls them.
"""

from __future__ import annotations

import re
from typing import Any

from tpo_ray.negatives.lexicon import wordnet_adapter
from tpo_ray.negatives.sense import NP_OPENERS, Context, attribute_word, noun_after, singular

# Prepositions after which a bare singular noun may be an idiom ("in bed", "at sea"), and the nouns that
# make one. A bare noun elsewhere is a terse caption ("man on skateboard"), swapped as usual.
IDIOM_PREPOSITIONS = frozenset({"in", "on", "at", "to", "into", "onto", "from", "by", "under", "inside", "near",
                                "behind", "with", "without", "across", "through", "out", "of"})
IDIOM_NOUNS = frozenset({"bed", "home", "school", "church", "work", "town", "sea", "hospital", "prison", "jail",
                         "class", "college", "camp", "foot", "horseback", "board", "stage", "hand", "land",
                         "shore", "campus", "breakfast", "lunch", "dinner", "television", "tv", "fire", "line",
                         "order", "sale", "display"})
# Verbs after which a thing is the bearer of a text ("a sign that reads", "a sign stating"), and those
# after which a clock bears a time ("a clock showing 11:05"): what it says belongs to it, and another noun
# ("a lamp showing 11:05") is nonsense. A person who reads is a reader, not a text.
TEXT_VERBS = frozenset({"reads", "read", "says", "saying", "say", "states", "stating", "means", "warns",
                        "warning", "indicates", "indicating", "advertises", "advertising"})
TIME_VERBS = frozenset({"shows", "showing", "displays", "displaying", "reads", "reading", "says", "saying"})
TIME_BEARERS = frozenset({"clock", "clocks", "watch", "watches"})
# Particles that end a phrasal modifier of the next noun ("a pick up truck", "a take out box").
PARTICLES = frozenset({"up", "off", "out", "down", "over"})
# Words that tie a count to another part of the caption: a part of the counted set ("one of them", "the
# others", "all three of which") or a second quantity of the same things ("a couple of photos showing two
# rooms"). Two counts of different things ("two buttons and four lights") are not tied.
TIE_WORDS = frozenset({"one", "couple", "pair", "pairs", "both", "all", "other", "others", "half", "twice", "double",
                       "triple", "rest"})


def bare_after_preposition(ctx: Context, k: int, term: Any) -> bool:
    """Token k starts a singular noun of an idiom with no determiner, right after a preposition ("in bed",
    "on display", "at table")."""
    prev = ctx.word(k - 1)
    return term.number in ("sg", "mass") and ctx.word(k) in IDIOM_NOUNS and prev in IDIOM_PREPOSITIONS \
        and ctx.adjacent(k - 1, k)


def compound_head(ctx: Context, k: int) -> bool:
    """The noun at token k is the head of a compound opened by an "-ing" modifier after a determiner ("a
    mixing bowl"; not "a sleeping cat", whose "sleeping" is a lexicon word) or by a phrasal modifier after
    one ("a pick up truck"; not "blowing out candles", a verb and its particle)."""
    prev = ctx.word(k - 1)
    if prev is None or not ctx.adjacent(k - 1, k):
        return False
    if prev in PARTICLES:  # "a pick up truck", "a red pick up truck"; not "blowing out candles"
        opener = ctx.word(k - 3)
        return (opener in NP_OPENERS or attribute_word(ctx, opener)) and ctx.adjacent(k - 2, k - 1)
    before = ctx.word(k - 2)
    return prev.endswith("ing") and len(prev) > 4 and prev not in ctx.terms and before in NP_OPENERS \
        and ctx.adjacent(k - 2, k - 1)


def bears_text(ctx: Context, k: int, n: int, term: Any) -> bool:
    """The lifeless noun of n tokens at token k says something or shows the time: a text verb follows it,
    directly or after "that"/"which" ("a sign that reads STOP", "a clock showing 11:05")."""
    if term.group in ctx.lex.animate:
        return False
    nxt = ctx.word(k + n)
    if nxt in ("that", "which"):
        nxt = ctx.word(k + n + 1)
    return nxt in TEXT_VERBS or (term.text in TIME_BEARERS and nxt in TIME_VERBS)


def count_tied(ctx: Context, k: int) -> bool:
    """The count at token k is tied to the rest of the caption: a tie word elsewhere ("Two bears, one
    running", "all three of which", "a couple of photos") or another number followed by "of" ("two of
    them"). Not "each other", "one another", nor "two other men" (the count's own "other")."""
    for j in range(len(ctx.toks)):
        word = ctx.word(j)
        if j == k or word is None:
            continue
        if word in ("other", "others") and (j == k + 1 or ctx.word(j - 1) == "each"):
            continue
        if word == "one" and ctx.word(j + 1) == "another":
            continue
        if word in TIE_WORDS:
            return True
        if (word.isdigit() or word in ctx.lex.count_words) and ctx.word(j + 1) == "of":
            return True
    return False


# Noun groups of people: a size word before one of them is an age ("a little girl", "big brother").
PEOPLE_GROUPS = frozenset({"person", "family_member", "profession", "profession_compound", "athlete"})


def same_age_options(ctx: Context, k: int, options: tuple, term: Any) -> tuple:
    """After a size word, a person noun keeps its age ("a little kid" -> "a little girl", never "a little
    man": "little man" is a boy): only replacements whose ages meet the noun's."""
    prev = ctx.word(k - 1)
    prev_term = ctx.terms.get(prev or "")
    if prev_term is None or prev_term.group != "size" or term.group not in PEOPLE_GROUPS:
        return options
    ages = ctx.lex.dimensions.get(singular(term.text, ctx.lex), {}).get("age")
    if not ages:
        return ()

    def keeps(option: str) -> bool:
        other = ctx.lex.dimensions.get(singular(option.split("|")[0], ctx.lex), {}).get("age")
        return bool(other and other & ages)

    return tuple(o for o in options if keeps(o[2]))


def size_as_age(ctx: Context, k: int, n: int, term: Any) -> bool:
    """The size word of n tokens at token k describes a person's age ("a little girl")."""
    if term.group != "size":
        return False
    noun = noun_after(ctx, k + n)
    return noun is not None and noun[1] in PEOPLE_GROUPS


def named_words(ctx: Context, start: int = 0, end: int | None = None) -> frozenset[str]:
    """The caption's words (those between character offsets start and end), singular: a replacement whose
    head is among them names a thing already there."""
    end = len(ctx.caption) if end is None else end
    return frozenset(singular(w, ctx.lex) for j, w in ((j, ctx.word(j)) for j in range(len(ctx.toks)))
                     if w and start <= ctx.toks[j][0] and ctx.toks[j][1] <= end)


def already_named(named: frozenset[str], replacement: str, lex: Any) -> bool:
    """The replacement's head word ("bathroom sink" -> "sink") is already in the caption."""
    return singular(replacement.split("|")[0].split()[-1], lex) in named


# Vessels things go in, never on ("in a bowl", not "on a bowl").
VESSELS = frozenset({"bowl", "cup", "jar", "vase", "bucket", "basket", "box", "pot", "mug", "bottle", "glass",
                     "teacup", "container", "pitcher"})
ON_WORDS = frozenset({"on", "onto", "atop", "upon"})


def vessel_after_on(ctx: Context, k: int, replacement: str) -> bool:
    """The noun at token k follows "on" (past its article and attributes) and the replacement is a vessel."""
    j = k - 1
    while j >= 0 and (ctx.word(j) in NP_OPENERS or attribute_word(ctx, ctx.word(j))):
        j -= 1
    return ctx.word(j) in ON_WORDS and singular(replacement.split("|")[0].split()[-1], ctx.lex) in VESSELS


NEGATIONS = frozenset({"without", "no", "not", "never", "nor", "none", "lacking", "except"})
CAMERA_PREPOSITIONS = frozenset({"for", "at", "into", "toward", "towards", "to", "in"})
_QUOTES = "\"“”‘’«»"


def quoted(ctx: Context, start: int) -> bool:
    """Character offset `start` lies inside quotation marks ("a sign that reads 'KEEP OFF THE GRASS'")."""
    before = ctx.caption[:start]
    double = sum(before.count(q) for q in '"“”«»') % 2 == 1
    single = len(re.findall(r"(?:^|\s)['‘]", before)) > len(re.findall(r"['’](?:\s|$|[.,!?])", before))
    return double or single


def negated(ctx: Context, k: int) -> bool:
    """A negation opens the phrase of token k, within three words before it ("without any cars")."""
    return any(ctx.word(j) in NEGATIONS for j in range(max(0, k - 3), k))


def viewers_camera(ctx: Context, k: int) -> bool:
    """Token k is "camera" in "poses for the camera", "looking into the camera"."""
    return ctx.word(k) == "camera" and ctx.word(k - 1) == "the" and ctx.word(k - 2) in CAMERA_PREPOSITIONS


def noun_modified(ctx: Context, k: int) -> bool:
    """The word before the noun at token k is a noun the lexicon does not list ("speed" in "ten speed
    bicycle", "dairy" in "dairy cow"), by WordNet; False without WordNet."""
    prev = ctx.word(k - 1)
    if prev is None or not prev.isalpha() or prev in ctx.terms or prev in NP_OPENERS or not ctx.adjacent(k - 1, k):
        return False
    wn = wordnet_adapter()
    pos = wn.main_pos(prev) if wn is not None else ()
    return pos[:1] == ("noun",) and "adj" not in pos  # not "male", "asian": adjectives too


def scene_plural(ctx: Context, k: int, term: Any) -> bool:
    """A plural or mass noun past the caption's opening ("a street with buildings and cars", "the pillows
    arranged"): things of a scene that may sit beside their substitutes ("buses" on that street, blankets
    on that bed), so a swap of them is drawn only where nothing vetted is left (graded photo rows: 7 of 12
    such swaps held, against 74 of 88 of the singular ones)."""
    return term.kind == "noun" and term.number in ("pl", "mass") and k > 3
