"""Whether a rules-editor swap fits the phrase it sits in: the sense checks of `rules.find_candidates`.

A swap within a lexicon group is grammatical, but it can still be nonsense in its phrase: "riding
horseback" -> "catching horseback" (the verb does not take the object), "young boy" -> "elderly boy"
(the age word does not fit its noun), "jumping off a pier into a lake" -> "... out of a lake" (the
direction does not fit its verb), "four legs" -> "four knees" (the part does not fit its owner, or a
count fixes it), "poses for a photo" -> "poses for a cartoon" (a picture word that is not the caption's
frame), "a book lying" -> "a book squatting" (a lifeless subject), or "a poodle circles a sparkler" ->
"a poodle ovals a sparkler" (a verb read as a noun). Each check below reads the words around one term
with the lexicon's sense sections (`dimensions`, `objects`, `direction_verbs`, `parts`, `frames`,
`animate`, `any_subject`; see lexicon.yaml) and, where `tpo_ray.negatives.wordnet` is installed, WordNet's
parts of speech; it returns the replacements that fit, or none, so an edit it cannot judge is refused
(precision over coverage). No spaCy model or nltk tagger data is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tpo_ray.negatives.lexicon import ANY_OBJECT, Lexicon, wordnet_adapter

# Words that open a noun phrase; a noun directly followed by one is a verb ("circles a sparkler"). Not
# "that", which also opens a clause ("a sign that says").
NP_OPENERS = frozenset({"a", "an", "the", "this", "these", "those", "his", "her", "its", "their", "my", "our",
                        "your", "every", "each"})
PERSON_POSSESSIVES = frozenset({"his", "her"})
COUNT_CUES = frozenset({"both", "pair", "all", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                        "ten", "several", "many"})
_SENTENCE_BREAK = re.compile(r"[.!?;]")


@dataclass(frozen=True)
class Context:
    """One caption as the checks read it: its tokens and lexicon terms (from rules.find_terms)."""

    caption: str
    toks: list[tuple[int, int]]  # (start, end) per word token
    spans: list[tuple[int, int, Any]]  # (start, end, rules.Term), left to right
    terms: dict[str, Any]  # lower-case term -> rules.Term
    lex: Lexicon
    tok_index: dict[int, int]  # token start offset -> token index

    def word(self, k: int) -> str | None:
        return self.caption[self.toks[k][0]:self.toks[k][1]].lower() if 0 <= k < len(self.toks) else None

    def adjacent(self, k: int, j: int) -> bool:
        """Tokens k and j (k < j) are separated by spaces only."""
        return 0 <= k < j < len(self.toks) and self.caption[self.toks[k][1]:self.toks[j][0]].strip() == ""

    def span_at(self, k: int) -> tuple[int, int, Any] | None:
        """The lexicon term that starts at token k, if any."""
        if not 0 <= k < len(self.toks):
            return None
        return next((s for s in self.spans if s[0] == self.toks[k][0]), None)

    def sentence_start(self, k: int) -> int:
        while k > 0 and not _SENTENCE_BREAK.search(self.caption[self.toks[k - 1][1]:self.toks[k][0]]):
            k -= 1
        return k


def singular(word: str, lex: Lexicon) -> str:
    """A noun's singular by the lexicon, else by a plain "-s" ("sticks" -> "stick")."""
    w = word.lower()
    if w in lex.singular_of:
        return lex.singular_of[w]
    return w[:-1] if w.endswith("s") and not w.endswith("ss") and len(w) > 3 else w


def attribute_word(ctx: Context, word: str | None) -> bool:
    """The word is a lexicon term of the attribute principle ("black", "wooden", "large")."""
    term = ctx.terms.get(word or "")
    return term is not None and term.kind == "word" and term.principle == "attribute"


def _is_modifier(ctx: Context, word: str | None) -> bool:
    """A word between a verb and its object's head: an article, a count, an attribute ("two big dogs")."""
    if word is None:
        return False
    return word in NP_OPENERS or word.isdigit() or word in ctx.lex.count_words or word in ("some", "one") or \
        attribute_word(ctx, word) or word.endswith(("'s", "’s"))


def noun_after(ctx: Context, k: int) -> tuple[str, str | None] | None:
    """The head of the noun phrase starting at token k, past articles, counts and attributes: (singular,
    noun group) for a lexicon noun, (word, None) for another plain word, None when no noun follows."""
    while _is_modifier(ctx, ctx.word(k)):
        k += 1
    span = ctx.span_at(k)
    if span is not None:
        term = span[2]
        if term.kind == "noun":
            return singular(term.text, ctx.lex), term.group
        return None  # a place, a verb, a preposition: no object here
    word = ctx.word(k)
    if word is None or not word.isalpha() or word in _function_words():
        return None
    return singular(word, ctx.lex), None


@lru_cache(maxsize=1)
def _function_words() -> frozenset[str]:
    from tpo_ray.negatives.rules import AFTER_HEAD

    return AFTER_HEAD


def subject(ctx: Context, k: int) -> tuple[str, str] | None:
    """The sentence's first lexicon noun before token k that is not a picture frame or a measure ("a photo
    of", "a group of"): (singular, group)."""
    start = ctx.sentence_start(k)
    index = ctx.tok_index
    for s, _, term in ctx.spans:
        j = index[s]
        if j >= k:
            break
        if j < start or term.kind not in ("noun", "fixed") or term.group in ctx.lex.frames:
            continue
        if ctx.word(j + len(term.text.split())) == "of":
            continue
        return singular(term.text, ctx.lex), term.group
    return None


# ------------------------------------------------------------------------------------------ the checks
def takes(verb: str, obj: tuple[str, str | None], lex: Lexicon) -> bool:
    """The verb takes this object (`objects` or `phrase_objects` in the lexicon): its noun group or the word
    itself."""
    allowed = lex.objects.get(verb.lower(), lex.phrase_objects.get(verb.lower()))
    if allowed is None:
        return False
    word, group = obj
    return ANY_OBJECT in allowed or word in allowed or (group is not None and group in allowed)


def fits(adjective: str, noun: str, group: str | None, lex: Lexicon) -> bool:
    """An adjective of `dimensions.terms` fits the noun: the noun fixes each of its dimensions with a value in
    common ("young boy", "old dog"; never "elderly boy", "middle-aged dog", "young car")."""
    dims = lex.dimensions.get(adjective.lower())
    if dims is None:
        return True
    own = lex.dimensions.get(noun) or (lex.group_dimensions.get(group) if group else None)
    return own is not None and all(d in own and values & own[d] for d, values in dims.items())


def verb_options(ctx: Context, k: int, n: int, options: tuple, object_groups: frozenset[str],
                 term: Any) -> tuple:
    """A verb of a group whose verbs take listed objects is swapped only for one that takes its object."""
    if term.group not in object_groups:
        return options
    obj = noun_after(ctx, k + n)
    if obj is None:
        return ()
    return tuple(o for o in options if takes(o[2], obj, ctx.lex))


def direction_options(ctx: Context, k: int, options: tuple, term: Any) -> tuple:
    """A direction ("into", "toward") is swapped only right after a verb that takes either way."""
    verbs = ctx.lex.direction_verbs.get(term.group)
    if verbs is None:
        return options
    return options if ctx.word(k - 1) in verbs and ctx.adjacent(k - 1, k) else ()


def age_options(ctx: Context, k: int, n: int, options: tuple, term: Any) -> tuple:
    """An age word ("young", "elderly") is swapped only before a noun that every replacement fits."""
    if term.text not in ctx.lex.dimensions:
        return options
    noun = noun_after(ctx, k + n)
    if noun is None or noun[1] is None:
        return ()
    return tuple(o for o in options if fits(o[2], noun[0], noun[1], ctx.lex))


def noun_fit_options(ctx: Context, k: int, options: tuple, term: Any) -> tuple:
    """A noun swap keeps fitting the age word before it ("an elderly man" -> "an elderly woman", never
    "an elderly boy")."""
    j = k - 1
    while j >= 0 and ctx.adjacent(j, j + 1):
        word = ctx.word(j)
        if word in ctx.lex.dimensions and ctx.terms.get(word) is not None and ctx.terms[word].kind == "word":
            if not fits(word, singular(term.text, ctx.lex), term.group, ctx.lex):
                return options  # "an old truck": not an age here
            return tuple(o for o in options if fits(word, singular(o[2].split("|")[0], ctx.lex), term.group,
                                                    ctx.lex))
        if not _is_modifier(ctx, word) or word in NP_OPENERS:
            break
        j -= 1
    return options


def part_options(ctx: Context, k: int, n: int, options: tuple, term: Any, part_groups: frozenset[str]) -> tuple:
    """A body part is swapped only for a part its owner has, where the owner is known and no count fixes
    the part ("his hand" -> "his foot"; "four legs", "the eye of the planet" stay)."""
    if term.group == "building_part" and ctx.word(k + n) == "of":
        return ()  # "the window of a train": a part of something else ("the arch of a train")
    if term.group not in part_groups:
        return options
    if any(ctx.word(j) == "of" and ctx.word(j - 1) in SIDES for j in range(k - 3, k)):
        return ()  # "kisses the top of a woman's head" -> never "the top of a woman's finger"
    prev = ctx.word(k - 1)
    if prev in COUNT_CUES or (prev is not None and prev.isdigit()) or ctx.word(k + n) == "of":
        return ()
    owner_before = prev == "with" and (ctx.word(k - 2) in ctx.terms and ctx.terms[ctx.word(k - 2)].kind == "noun")
    if prev is None or not (_is_modifier(ctx, prev) or prev in ("some", "one") or owner_before):
        return ()  # "eating with hands": a bare part is a manner ("with knees"); "a person with arms" is not
    if prev in PERSON_POSSESSIVES:
        owner: tuple[str, str | None] | None = ("person", "person")
    elif prev is not None and prev.endswith(("'s", "’s")):
        word = prev[:-2]
        found = ctx.terms.get(word)
        owner = (singular(word, ctx.lex), found.group if found is not None and found.kind == "noun" else None)
    else:
        owner = subject(ctx, k)
    if owner is None:
        return ()
    allowed = ctx.lex.parts.get(owner[0], frozenset()) | ctx.lex.parts.get(owner[1] or "", frozenset())
    if singular(term.text, ctx.lex) not in allowed:
        return ()  # the owner is not what the sentence says it is
    return tuple(o for o in options if singular(o[2].split("|")[0], ctx.lex) in allowed)


SIDES = frozenset({"top", "back", "side", "bottom", "front", "tip", "middle", "crown"})
FRAME_FOLLOWERS = frozenset({"of", "in", "by", "with", "showing", "depicting", "featuring", "from", "on"})


def frame_ok(ctx: Context, k: int, n: int, term: Any) -> bool:
    """A picture word ("photo", "oil painting") is swapped only as the caption's frame: "a photo of ...", or
    the caption's opening noun phrase ("An oil painting, a red bicycle", "a propaganda poster", "Oil
    painting generated by ..."), not a thing in the scene ("poses for a photo")."""
    if term.group not in ctx.lex.frames:
        return True
    nxt = ctx.word(k + n)
    if nxt == "of":
        return True
    if nxt is None and ctx.word(k - 1) == "in":
        return True  # "The Oriental Pearl in oil painting": the medium the caption asks for
    opening = all(_is_modifier(ctx, w) or (w is not None and w.isalpha() and w not in _function_words()
                                           and w not in ctx.terms) for w in map(ctx.word, range(k)))
    return opening and (nxt is None or not ctx.adjacent(k + n - 1, k + n) or nxt in FRAME_FOLLOWERS
                        or nxt.endswith("ed"))


# Posture verbs that, of a lifeless thing, all say only where it is.
LOCATED = frozenset({"sitting", "standing", "resting", "sits", "stands", "rests", "sat", "stood", "rested"})


def subject_options(ctx: Context, k: int, options: tuple, term: Any) -> tuple:
    """A verb of an intransitive group ("squatting") needs a living subject; a lifeless one ("a book")
    keeps to the verbs that fit anything ("lying" -> "standing"), never one that says the same of a thing
    ("a sink sitting" -> "standing"), and a verb people do ("skiing") needs a person ("a cow resting",
    never "a cow skiing")."""
    if term.group not in ctx.lex.intransitive:
        return options
    found = subject(ctx, k)
    if found is None:
        return options
    if found[1] not in ctx.lex.animate:
        options = tuple(o for o in options if o[2].lower() in ctx.lex.any_subject)
        if term.text in LOCATED:  # "a sink sitting under a mirror" is "standing" there too
            options = tuple(o for o in options if o[2].lower() not in LOCATED)
    return tuple(o for o in options if found[1] in ctx.lex.subjects.get(o[2].lower(), (found[1],)))


def object_noun_options(ctx: Context, k: int, options: tuple, term: Any) -> tuple:
    """A noun that is a listed verb's object is swapped only for one the verb takes ("riding a surfboard"
    -> "riding a skateboard", never "riding a volleyball")."""
    j = k - 1
    while j >= 0 and _is_modifier(ctx, ctx.word(j)):
        j -= 1
    verbs = sorted({*ctx.lex.objects, *ctx.lex.phrase_objects}, key=lambda v: -len(v.split()))  # longest first
    verb = next((text for text in verbs if j - len(text.split()) + 1 >= 0 and " ".join(
        ctx.word(i) or "" for i in range(j - len(text.split()) + 1, j + 1)) == text), None)
    if verb is None:
        return options
    return tuple(o for o in options if takes(verb, (singular(o[2].split("|")[0], ctx.lex), term.group), ctx.lex))


def picture_attribute_ok(ctx: Context, k: int, n: int, term: Any) -> bool:
    """A word describing the picture ("sepia", "aerial") is swapped only where it describes one ("a sepia
    photo", "an aerial view"), not a thing in it ("a colorful kite")."""
    if term.group not in ctx.lex.picture_attributes:
        return True
    if ctx.word(k + n) == "of":
        return True  # "a close-up of a cocktail": the word names the picture
    noun = noun_after(ctx, k + n)
    return noun is not None and (noun[1] in ctx.lex.frames or noun[0] in ctx.lex.picture_nouns)


MALE_PRONOUNS = frozenset({"he", "his", "him", "himself"})
FEMALE_PRONOUNS = frozenset({"she", "her", "hers", "herself"})


def pronoun_options(ctx: Context, options: tuple, term: Any) -> tuple:
    """A person swap keeps the gender the caption's pronouns give ("A young child holds up her bowl" ->
    never "A young man holds up her bowl")."""
    if term.text not in ctx.lex.dimensions and ctx.lex.singular_of.get(term.text) not in ctx.lex.dimensions:
        return options
    words = {ctx.word(i) for i in range(len(ctx.toks))}
    genders = ({"male"} if words & MALE_PRONOUNS else set()) | ({"female"} if words & FEMALE_PRONOUNS else set())
    if not genders:
        return options

    def keeps(option: str) -> bool:
        dims = ctx.lex.dimensions.get(singular(option.split("|")[0], ctx.lex), {})
        return "gender" not in dims or bool(dims["gender"] & genders)

    return tuple(o for o in options if keeps(o[2]))


def _maybe_noun(word: str) -> bool:
    """WordNet knows the word as a noun (without WordNet: no, so the edit is refused)."""
    wn = wordnet_adapter()
    return wn is not None and "noun" in wn.pos_tags(word)


AT_FURNITURE = frozenset({"table", "desk", "counter", "bar", "dining table", "kitchen table", "picnic table",
                          "coffee table", "workbench"})


IN_FURNITURE = frozenset({"bed", "crib", "hammock", "bathtub", "tub", "armchair", "recliner", "cradle", "bunk bed"})


def at_options(ctx: Context, k: int, options: tuple, term: Any) -> tuple:
    """Furniture after "at" is a table one sits at ("at a table" -> "at a desk", never "at a chair")."""
    if not term.group.startswith("furniture"):
        return options
    j = k - 1
    while j >= 0 and _is_modifier(ctx, ctx.word(j)):
        j -= 1
    if ctx.word(j) == "in":  # "laying in a bed" -> never "in a nightstand"
        return tuple(o for o in options if singular(o[2].split("|")[0], ctx.lex) in IN_FURNITURE)
    if ctx.word(j) != "at":
        return options
    return tuple(o for o in options if singular(o[2].split("|")[0], ctx.lex) in AT_FURNITURE)


def vehicle_options(ctx: Context, k: int, options: tuple) -> tuple:
    """A vehicle one sits in keeps to those ("a person in a car" -> never "in a motorbike"), and one rides
    on to those ("on a motorcycle" -> never "on an ambulance")."""
    j = k - 1
    while j >= 0 and _is_modifier(ctx, ctx.word(j)):
        j -= 1
    own = singular(ctx.word(k) or "", ctx.lex) if ctx.span_at(k) is None else singular(ctx.span_at(k)[2].text,
                                                                                         ctx.lex)
    if own in ctx.lex.ridden_on:  # "a bike leaning" -> never "a train", "on a skateboard" -> never "on a ball"
        options = tuple(o for o in options if singular(o[2].split("|")[0], ctx.lex) in ctx.lex.ridden_on)
    excluded = {"in": ctx.lex.ridden_on, "inside": ctx.lex.ridden_on, "on": ctx.lex.ridden_in,
                "onto": ctx.lex.ridden_in}.get(ctx.word(j) or "")
    if excluded is None:
        return options
    return tuple(o for o in options if singular(o[2].split("|")[0], ctx.lex) not in excluded)


def named_again(ctx: Context, k: int, term: Any) -> bool:
    """The noun names the same thing again elsewhere in the caption ("launched his dog ... as the dog holds
    on"): changing one mention leaves the caption incoherent, not a different image."""
    own = singular(term.text, ctx.lex)

    def modifier(j: int) -> bool:  # "a cat door", "a shoe rack": the other mention names another thing
        nxt = ctx.word(j + len(term.text.split()))
        return nxt is not None and nxt.isalpha() and nxt not in _function_words() and \
            not nxt.endswith(("s", "ing", "ed"))

    return any(t.kind == "noun" and ctx.tok_index[s] != k and singular(t.text, ctx.lex) == own
               and not modifier(ctx.tok_index[s]) for s, _, t in ctx.spans)


def other_sense(ctx: Context, term: Any) -> bool:
    """The caption uses the noun in a sense the lexicon does not list ("a keyboard and a mouse")."""
    cues = ctx.lex.other_senses.get(term.text)
    return cues is not None and any(ctx.word(i) in cues for i in range(len(ctx.toks)))


def read_as_noun(ctx: Context, k: int, n: int) -> bool:
    """Whether a lexicon noun at token k is used as a noun here. Not when a noun phrase opens right after it
    ("a poodle circles a sparkler": a verb), after "to" ("up to bat"), before a colour ("lime green": a
    shade), nor, where WordNet says the word before it can only be a noun and the lexicon does not know
    that word ("a poodle circles"), when it is a verb or a compound's head."""
    nxt = ctx.word(k + n)
    if nxt is not None and ctx.adjacent(k + n - 1, k + n):
        if nxt in NP_OPENERS or nxt in ctx.lex.count_words or nxt.isdigit():
            return False
        after = ctx.terms.get(nxt)
        if after is not None and after.kind == "word" and after.group == "color":
            return False
    prev = ctx.word(k - 1)
    if prev == "to" and ctx.adjacent(k - 1, k):
        return False
    if prev is None or not ctx.adjacent(k - 1, k) or prev in ctx.terms or not prev.isalpha() or \
            prev in _function_words() or prev in ("some", "any", "no", "every", "each", "my", "our", "your"):
        return True  # WordNet lists "a" (the letter) and "the" among nouns
    wn = wordnet_adapter()
    return wn is None or wn.pos_tags(prev) != frozenset({"noun"})


# Words after a colour that make it the fruit ("orange slices", "lime juice").
FRUIT_USES = frozenset({"slice", "slices", "juice", "peel", "peels", "wedge", "wedges", "zest", "segment", "segments",
                        "tree", "trees", "rind", "rinds"})
# "lies down", "stands up", "leaning against": a particle or preposition another verb does not take
PARTICLES = frozenset({"down", "up", "against"})
# Prepositions a bare place ("the air", "a kitchen") may follow that another place does not take ("through
# the air" -> "through the moon").
FOREIGN_PREPOSITIONS = frozenset({"through", "over", "across", "around", "along", "past", "into", "onto",
                                  "toward", "towards", "from", "near", "under", "above", "behind", "beside",
                                  "inside", "outside", "within", "between", "among", "against"})


YOUNG = frozenset({"baby", "child", "teen"})
# Words after a state that give its cause ("wet from the rain"): another state would not have it.
CAUSES = frozenset({"from", "because", "due", "after"})
# Words only an adult fits ("a woman with a sexy foot" -> never "a child with a sexy foot").
ADULT_CUES = frozenset({"sexy", "bearded", "beard", "beards", "mustache", "moustache", "pregnant", "elderly",
                        "elder", "wrinkled", "bald", "balding", "lingerie", "bikini", "tie", "suit", "business",
                        "businessman", "businesswoman", "wife", "husband", "beer", "wine", "cigarette", "cigar",
                        "smoking", "driving", "old", "aged", "gray-haired", "grey-haired", "retired"})
# Professions no picture shows, only an action or a speech tells ("an elder politician giving a speech").
UNSEEN_PROFESSIONS = frozenset({"politician", "writer"})
# Things one may be above or below ("a cat under a table" -> "above a table"), besides what one holds.
FURNITURE = frozenset({"furniture", "furniture_compound"})


def adult_options(ctx: Context, options: tuple, term: Any) -> tuple:
    """A person is not made a child or a baby where the caption describes an adult ("sexy", "bearded",
    "pregnant"); a profession no picture shows is neither swapped nor swapped in."""
    own = singular(term.text, ctx.lex)
    if term.group in ("profession", "profession_compound"):
        if own in UNSEEN_PROFESSIONS:
            return ()
        options = tuple(o for o in options if singular(o[2].split("|")[0], ctx.lex) not in UNSEEN_PROFESSIONS)
    if ctx.lex.dimensions.get(own, {}).get("human") is None and term.group not in ctx.lex.group_dimensions:
        return options
    if not any(ctx.word(i) in ADULT_CUES for i in range(len(ctx.toks))):
        return options

    def adult(option: str) -> bool:
        age = ctx.lex.dimensions.get(singular(option.split("|")[0], ctx.lex), {}).get("age")
        return age is None or bool(age & {"middle", "old"})  # not a boy, girl, child or baby

    return tuple(o for o in options if adult(o[2]))


PRONOUNS = frozenset({"it", "them", "him", "her", "me", "us", "you", "each", "one", "another", "itself", "himself",
                      "herself", "themselves"})


def word_ok(ctx: Context, k: int, n: int, term: Any) -> bool:
    """A word term is read in the sense its group lists it in: not "orange" the fruit ("orange slices"), not
    a verb with its particle ("lies down" -> never "stands down"), not a size that tells a child's age
    ("a small child" -> never "a massive child")."""
    nxt = ctx.word(k + n)
    obj = noun_after(ctx, k + n)
    prev = ctx.word(k - 1)
    if term.group.startswith("relation") and obj is None and nxt not in PRONOUNS:
        return False  # "knocked over": a particle, not a relation to a thing
    if term.group == "relation_ud":
        # "not to park under this tree" -> never "above this tree", "standing on top of a field" -> never
        # "underneath a field": above/below is swapped only over a small movable thing the lexicon knows
        movable = ctx.lex.objects.get("holding", frozenset()) | FURNITURE
        if obj is None or not (obj[0] in movable or obj[1] in movable):
            return False
    if term.principle == "attribute" and nxt in CAUSES:
        return False  # "very wet from lots of rain" -> never "very dry from lots of rain": the cause fixes it
    if term.group == "style_adj" and any(ctx.terms.get(w) is not None and ctx.terms[w].group == "style_adj"
                                         for w in (ctx.word(k - 1), nxt)):
        return False  # "abstract anime": stacked styles, one may be the other ("cartoonish anime")
    if term.group == "weather" and obj is not None and obj[1] in ctx.lex.animate:
        return False  # "a snowy owl": a kind of animal, not the weather ("a cloudy owl")
    if term.principle == "attribute" and prev in ("has", "have", "had") and ctx.adjacent(k - 1, k):
        return False  # "a fire hydrant has frozen" -> never "has warm": a verb, not a state
    if term.group == "fullness" and nxt == "of":
        return False  # "full of books" -> never "empty of books"
    if term.group == "pattern" and nxt == "with":
        return False  # "dotted with graffiti": covered, not a pattern
    if term.group == "openness" and prev is not None and prev.endswith(("ing", "ed")) and ctx.adjacent(k - 1, k):
        return False  # "prying open", "pushed open": the verb's result, not a state to swap
    if term.group == "size":
        noun = noun_after(ctx, k + n)
        age = ctx.lex.dimensions.get(noun[0], {}).get("age") if noun is not None else None
        if age is not None and age <= YOUNG:
            return False
    if term.group == "color" and nxt in FRUIT_USES:
        return False
    after = ctx.terms.get(nxt) if nxt is not None else None
    if term.group == "light" and after is not None and after.group == "color":
        return False  # "bright red": the light word shades the colour
    return not (term.group in ctx.lex.intransitive and nxt in PARTICLES)


def object_needed_options(ctx: Context, k: int, n: int, options: tuple) -> tuple:
    """A replacement ending in a preposition ("outside of") needs a thing after it ("a view inside" ->
    never "a view outside of")."""
    if noun_after(ctx, k + n) is not None or ctx.word(k + n) in PRONOUNS:
        return options
    return tuple(o for o in options if o[2].split()[-1].lower() not in ("of", "to", "from"))


def emotion_options(ctx: Context, k: int, options: tuple, term: Any) -> tuple:
    """An "-ing" emotion after its noun is a verb ("Man laughing standing"): swapped only for another
    "-ing" word, never an adjective ("Man sad standing")."""
    if term.group != "emotion" or not term.text.endswith("ing"):
        return options
    prev = ctx.word(k - 1)
    if prev is None or _is_modifier(ctx, prev):
        return options  # "a smiling man": an adjective here
    return tuple(o for o in options if o[2].endswith("ing"))


SHORES = frozenset({"shore", "shores", "shoreline", "coast", "bank", "banks", "edge", "edges", "beach"})


def place_ok(ctx: Context, k: int, term: Any) -> bool:
    """A bare place of the sky ("the air", "the clouds") after a preposition of its own is not swapped: the
    other places of the sky need not take it ("flying through the air" -> never "through the moon"); nor a
    bare place after "the shore of", which only some places have ("the shore of the beach" -> never "the
    shore of the prairie")."""
    if term.prep is None and ctx.word(k - 1) == "of" and ctx.word(k - 2) in SHORES:
        return False
    return term.prep is not None or term.group != "sky" or ctx.word(k - 1) not in FOREIGN_PREPOSITIONS
