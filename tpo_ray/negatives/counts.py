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

from tpo_ray.negatives import idioms
from tpo_ray.negatives.sense import Context

TARGET_COUNTS = ("two", "three")
SINGULAR_REFERENCES = frozenset({"he", "she", "it", "his", "her", "hers", "its", "him", "himself", "herself",
                                 "itself", "this", "one"})
SINGULAR_VERBS = frozenset({"is", "was", "has", "does", "isn't", "wasn't", "hasn't", "doesn't"})
_SENTENCE_BREAK = re.compile(r"[.!?;]")


def _plural_of(ctx: Context, singular: str) -> str | None:
    for pairs in ctx.lex.nouns.values():
        for s, p in pairs:
            if s.lower() == singular and p is not None and p.lower() != singular:
                return p
    return None


def _attribute(ctx: Context, j: int) -> bool:
    term = ctx.terms.get(ctx.word(j) or "")
    return term is not None and term.kind == "word" and term.principle == "attribute"


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
    """(start, end, replacement) options that make the caption's opening "a/an [attributes] <noun>" two or
    three of it,
    with the verb right after it agreeing; () where the sentence would not agree or the noun is not a
    plain countable subject."""
    start, end, term = ctx.spans[idx]
    k = ctx.tok_index[start]
    there = ctx.word(0) == "there" and ctx.word(1) in ("is", "'s") and ctx.word(2) in ("a", "an")
    art = 2 if there else _after_frame(ctx)  # "There is a dog" -> "There are two dogs"
    opener = art + 1  # "A dog", "The dog"; a bare "Dog ..." would gain a count where none was (an addition)
    if ctx.word(art) not in ("a", "an", "the") or term.kind != "noun" or term.number != "sg" \
            or k < opener \
            or not all(_attribute(ctx, j) and ctx.adjacent(j - 1, j) for j in range(opener, k)) \
            or not all(ctx.adjacent(j, j + 1) for j in range(art)) \
            or (k > 0 and not ctx.adjacent(k - 1, k)):
        return ()  # only "A dog", "The big black dog": the article, attributes, the noun
    if term.group in ctx.lex.frames or term.text in ctx.lex.picture_nouns:
        return ()  # "A photo of an orange": the picture itself, not a thing in it
    plural = _plural_of(ctx, term.text)
    if plural is None or idioms.count_tied(ctx, -1):
        return ()
    last = k + len(term.text.split()) - 1  # the noun's last token ("fire hydrant")
    stop = _sentence_end(ctx, last)
    words = [ctx.word(j) for j in range(last + 1, stop)]
    if any(w in ctx.lex.count_words or (w or "").isdigit() or w in idioms.TIE_WORDS for w in words):
        return ()  # another count to keep apart from ("A man holding two cups")
    rel = 1 if words[:1] and words[0] in ("that", "who", "which") else 0  # "A man who is" -> "Two men who are"
    verb = words[rel] if len(words) > rel else None
    agreed = ctx.lex.agreement.get(verb) if verb is not None else None
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
    middle = ctx.caption[ctx.toks[opener][0]:start] if k > opener else ""
    return tuple((first, span_end, f"{head}{n} {middle}{plural.lower()}{tail}") for n in TARGET_COUNTS)
