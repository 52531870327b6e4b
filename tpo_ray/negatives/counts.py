"""A count edit of the caption's subject: "A dog sits on a bench." -> "Two dogs sit on a bench."

How many things there are is content, and the subject of a photo caption ("A man ...", "An elephant
...") is its most visible thing, so making it two or three contradicts the image in one fact. The
edit changes the article, the noun's number and the verb right after it together ("A cat is" ->
"Three cats are"), and is made only where nothing else in the sentence would then disagree: no later
singular verb ("A man that is ..."), no singular pronoun referring back ("... his bike"), no other count
or quantity it could be tied to. Pure functions over one caption (`sense.Context`); `rules.find_candidates`
calls `subject_count_options`.
"""

from __future__ import annotations

import re

from lemminflect import getAllLemmas, getInflection

from tpo_ray.negatives import idioms
from tpo_ray.negatives.lexicon import wordnet_adapter
from tpo_ray.negatives.sense import Context, _function_words, attribute_word

TARGET_COUNTS = ("two", "three")
BLACK_AND_WHITE = "black and white"  # a fixed compound of the lexicon that is an attribute before a subject
ONE_ONLY = frozenset({"single", "lone", "solitary", "sole", "only", "individual", "solo", "singular"})
SINGULAR_REFERENCES = frozenset({"he", "she", "it", "his", "her", "hers", "its", "him", "himself", "herself",
                                 "itself", "this", "one"})
SINGULAR_VERBS = frozenset({"is", "was", "has", "does", "isn't", "wasn't", "hasn't", "doesn't"})
# Nouns of the picture itself or of a mass: one per picture ("a black background"), or not counted ("the
# food of China").
NOT_COUNTED = frozenset({"background", "foreground", "backdrop", "scene", "view", "food", "water", "sky", "ground",
                         "weather", "light", "art", "artwork", "image", "picture", "photo", "photograph"})
_SENTENCE_BREAK = re.compile(r"[.!?;]")


def _plural_of(ctx: Context, singular: str) -> str | None:
    for pairs in ctx.lex.nouns.values():
        for s, p in pairs:
            if s.lower() == singular and p is not None and p.lower() != singular:
                return p
    return None


def _plural_verb(ctx: Context, verb: str | None) -> str | None:
    """The plural of a present-tense singular verb: the lexicon's `agreement` ("is" -> "are"), else
    lemminflect's ("travels" -> "travel"); None for any other word."""
    if verb is None:
        return None
    if verb in ctx.lex.agreement:
        return ctx.lex.agreement[verb]
    lemmas = getAllLemmas(verb).get("VERB", ())
    if not verb.endswith("s") or not lemmas:
        return None
    forms = getInflection(lemmas[0], tag="VBZ")
    plural = getInflection(lemmas[0], tag="VBP")
    return plural[0] if forms and forms[0] == verb and plural else None


def _attribute(ctx: Context, j: int) -> bool:
    """Token j is an attribute: a lexicon attribute ("black") or, by WordNet, a word used mainly as an
    adjective ("cute"); without WordNet only the lexicon's."""
    word = ctx.word(j) or ""
    if word in ctx.terms:
        return attribute_word(ctx, word)
    if word in ("black", "white", "and") and ctx.word(j - 1) in ("black", "and", "a", "an", "the"):
        return True  # "a black and white cat": the lexicon holds BLACK_AND_WHITE as one fixed term
    wn = wordnet_adapter()
    return wn is not None and word.isalpha() and "adj" in wn.main_pos(word)


def _after_frame(ctx: Context) -> int:
    """The token after "[A] photo of" that opens a caption (the picture named, then what it shows), else 0."""
    j = 1 if ctx.word(0) in ("a", "an", "the") else 0
    word = ctx.word(j) or ""
    term = ctx.terms.get(word)
    framed = word in ctx.lex.picture_nouns or (term is not None and term.kind == "noun"
                                               and term.group in ctx.lex.frames)
    return j + 2 if framed and ctx.word(j + 1) == "of" else 0


def _sentence_end(ctx: Context, k: int) -> int:
    """The index one past the last token of token k's sentence."""
    j = k + 1
    while j < len(ctx.toks) and not _SENTENCE_BREAK.search(ctx.caption[ctx.toks[j - 1][1]:ctx.toks[j][0]]):
        j += 1
    return j


def subject_count_options(ctx: Context, idx: int) -> tuple[tuple[int, int, str], ...]:
    """(start, end, replacement) options that make the caption's opening "a/an [attributes] <noun>" (a
    lexicon noun, `ctx.spans[idx]`) two or three of it, with the verb right after it agreeing; () where the
    sentence would not agree or the noun is not a plain countable subject."""
    start, end, term = ctx.spans[idx]
    if term.kind != "noun" or term.number != "sg" or " " in term.text or term.group in ctx.lex.frames \
            or term.text in ctx.lex.picture_nouns or term.text in NOT_COUNTED:
        return ()  # "A photo of an orange": the picture itself; "shiba inus": a name's plural the check misreads
    plural = _plural_of(ctx, term.text)
    if plural is None:
        return ()
    return _count_options(ctx, ctx.tok_index[start], len(term.text.split()), plural.lower())


def open_subject_count_options(ctx: Context) -> tuple[tuple[int, int, str], ...]:
    """The same edit for a subject the lexicon does not list ("A worker passes" -> "Two workers pass"):
    a word WordNet knows only as a noun, pluralised by lemminflect; () without WordNet."""
    wn = wordnet_adapter()
    if wn is None:
        return ()
    k = _opener(ctx) + 1
    while k < len(ctx.toks) and _attribute(ctx, k):
        k += 1
    word = ctx.word(k) or ""
    written = ctx.caption[ctx.toks[k][0]:ctx.toks[k][1]] if k < len(ctx.toks) else ""
    if not word.isalpha() or word in ctx.terms or wn.main_pos(word) != ("noun",) or (k > 0 and written[:1].isupper()) \
            or word in NOT_COUNTED or idioms.quoted(ctx, ctx.toks[k][0]):
        return ()  # a name ("the Eiffel Tower") or a word that may be a verb
    nxt = ctx.word(k + 1)
    if nxt is not None and ctx.adjacent(k, k + 1) and not (nxt in _function_words() or nxt.endswith("ing")
                                                           or _plural_verb(ctx, nxt) is not None):
        return ()  # "a kachina doll": the noun modifies the head that follows
    plural = getInflection(word, tag="NNS")
    if word not in getAllLemmas(word).get("NOUN", ()) or not plural or plural[0] == word \
            or word not in getAllLemmas(plural[0]).get("NOUN", ()):
        return ()  # a plural already ("friends"), or one lemminflect cannot read back (as the validation does)
    return _count_options(ctx, k, 1, plural[0])


def _opener(ctx: Context) -> int:
    """The token of the article that opens the subject: 0 ("A dog"), 2 ("There is a dog") or after a
    frame ("A photo of a dog")."""
    there = ctx.word(0) == "there" and ctx.word(1) in ("is", "'s") and ctx.word(2) in ("a", "an")
    return 2 if there else _after_frame(ctx)


def _count_options(ctx: Context, k: int, n: int, plural: str) -> tuple[tuple[int, int, str], ...]:
    """Options for the subject noun of n tokens at token k, made plural `plural`."""
    art = _opener(ctx)
    there = art == 2 and ctx.word(0) == "there"
    opener = art + 1  # "A dog", "The dog"; a bare "Dog ..." would gain a count where none was (an addition)
    if ctx.word(art) not in ("a", "an", "the") or k < opener \
            or not all(_attribute(ctx, j) and ctx.adjacent(j - 1, j) for j in range(opener, k)) \
            or not all(ctx.adjacent(j, j + 1) for j in range(art)) or not ctx.adjacent(k - 1, k):
        return ()  # only "A dog", "The big black dog": the article, attributes, the noun
    if idioms.count_tied(ctx, -1) or any(ctx.word(j) in ONE_ONLY for j in range(opener, k)):
        return ()  # "A single surfer": the caption says there is one
    last = k + n - 1  # the noun's last token ("fire hydrant")
    end = ctx.toks[last][1]
    stop = _sentence_end(ctx, last)
    words = [ctx.word(j) for j in range(last + 1, stop)]
    if any(w in ctx.lex.count_words or (w or "").isdigit() or w in idioms.TIE_WORDS for w in words):
        return ()  # another count to keep apart from ("A man holding two cups")
    rel = 1 if words[:1] and words[0] in ("that", "who", "which") else 0  # "A man who is" -> "Two men who are"
    verb = words[rel] if len(words) > rel else None
    agreed = _plural_verb(ctx, verb)
    later = words[rel + 1:] if agreed is not None else words[rel:]
    if any(w in SINGULAR_REFERENCES or w in SINGULAR_VERBS or w in ctx.lex.agreement for w in later):
        return ()  # "A man holding his bike", "A cat licking its paw": the sentence would disagree
    if agreed is None and verb is not None and verb.endswith("s") and not verb.endswith("ss") \
            and verb not in ctx.terms:
        return ()  # "A man surfs": a singular verb the lexicon cannot make plural
    if agreed is not None and not all(ctx.adjacent(j, j + 1) for j in range(last, last + rel + 1)):
        return ()  # the verb is not next to the noun ("A dog, sitting, is"): leave it
    span_end = ctx.toks[last + rel + 1][1] if agreed is not None else end
    tail = (f" {words[0]}" if rel else "") + f" {agreed}" if agreed is not None else ""
    first = ctx.toks[1 if there else art][0]  # "A dog", "The dog" -> "Two dogs" (not "The two dogs": an addition)
    head = "are " if there else ""
    middle = ctx.caption[ctx.toks[opener][0]:ctx.toks[k][0]] if k > opener else ""
    return tuple((first, span_end, f"{head}{c} {middle}{plural}{tail}") for c in TARGET_COUNTS)
