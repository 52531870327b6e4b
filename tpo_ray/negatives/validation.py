"""Checks on input rows and on proposed negatives; every failure has a named reason.

Input reasons send a row to quarantine before any editing. Output reasons reject one candidate
negative (the job retries with another seed, then falls back to the rules editor). A negative is judged
by what it changes: c_w and c_l are aligned word by word (`alignment.derive_edits`), and the edits found
there, not the editor's claims, decide whether it is a minimal factual edit under the principle reported.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from tpo_ray.data import schema
from tpo_ray.negatives import lexicon as _lexicon
from tpo_ray.negatives.alignment import (DELETE, INSERT, REORDER, REPLACE, SWAP, DerivedEdit, derive_edits,  # noqa: F401
                                         derived_principle, reported_edits_agree)  # (the validation API)
from tpo_ray.negatives.lexicon import is_synonym_swap
from tpo_ray.negatives.reading import lemma_key

# input reasons
MISSING_ID = "missing_id"
MISSING_CAPTION = "missing_caption"
NON_STRING_CAPTION = "non_string_caption"
EMPTY_CAPTION = "empty_caption"
CAPTION_TOO_LONG = "caption_too_long"
DUPLICATE_ID = "duplicate_id"
UNREADABLE_ROW = "unreadable_row"
NO_EDITABLE_TERM = "no_editable_term"
# output reasons
UNPARSABLE_JSON = "unparsable_json"
MALFORMED_OUTPUT = "malformed_output"
IDENTICAL = "identical"
NEGATION = "negation"  # adds a negation or a near-negation: "no dogs", "zero dogs", "a bike missing two wheels"
BARE_NEGATION = NEGATION  # the reason's former name, kept for callers
DELETION = "deletion"  # removes a detail and replaces it with nothing: still true of the image
ADDITION = "addition"  # adds a detail that replaces nothing: "... on the beach at night"
EDITS_MISMATCH = "edits_mismatch"  # the reported `edits`, applied to the caption, do not give the negative
# every change may still describe the image, some only by a compatible relation: "next to" -> "behind",
# "several" -> "many" (`lexicon.still_true`)
STILL_TRUE = "still_true"
OVER_BUDGET = "over_budget"
TOO_LONG = "too_long"
WRONG_PRINCIPLE = "wrong_principle"
# the answer's principle is not the one requested (LLM editors), or not the one its changes fall under
PRINCIPLE_MISMATCH = "principle_mismatch"
PARAPHRASE = "paraphrase"
# every change swaps a term for a synonym, a more general or a more specific one, in the lexicon's lists or
# WordNet: "couch" -> "sofa", "photo" -> "picture", "jumps" -> "leaps", "dog" -> "animal"
SYNONYM = "synonym"
ENGINE_ERROR = "engine_error"  # the LLM engine failed on the request (e.g. a prompt over max_model_len)
HTTP_ERROR = "http_error"  # the endpoint answered with an error body instead of a completion

NEGATIONS = frozenset({"no", "not", "without", "never", "none", "nobody", "nothing", "neither", "nor"})
# Words (and lemmas) that say something is not there: "zero dogs", "missing two wheels", "lacking a roof".
NEAR_NEGATIONS = frozenset({"zero", "0", "missing", "miss", "lacking", "lack", "absent", "devoid", "nowhere", "cannot"})
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# CLIP's pre-tokenizer for ASCII text: every word, digit and punctuation mark is at least one BPE token.
_CLIP_PRETOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]", re.IGNORECASE)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")

TokenCounter = Callable[[str], int]


def approx_clip_tokens(text: str) -> int:
    """CLIP BPE tokens (+ start/end) without a tokenizer: exact for common English words, and never
    below the real count for emoji, CJK or other non-ASCII text, where each UTF-8 byte is counted
    (byte-level BPE makes at most one token per byte; a run of emoji is not one token).

    Used when no tokenizer folder is configured; pass a real tokenizer for an exact count.
    """
    non_ascii = sum(len(ch.encode()) for ch in _NON_ASCII.findall(text))
    return len(_CLIP_PRETOKEN.findall(_NON_ASCII.sub(" ", text))) + non_ascii + 2


def tokenizer_counter(tokenizer_dir: str) -> TokenCounter:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    return lambda text: len(tok(text, truncation=False).input_ids)


def normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def validate_input(row: dict[str, Any], max_tokens: int, count_tokens: TokenCounter) -> str | None:
    """Reason the row cannot be edited, or None."""
    rid = row.get(schema.ID)
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        return MISSING_ID
    if schema.CAPTION not in row or row[schema.CAPTION] is None:
        return MISSING_CAPTION
    caption = row[schema.CAPTION]
    if not isinstance(caption, str):
        return NON_STRING_CAPTION
    if not caption.strip():
        return EMPTY_CAPTION
    if count_tokens(caption) > max_tokens:
        return CAPTION_TOO_LONG
    return None


@dataclass
class Proposal:
    negative: str
    principle: str
    edits: list[dict[str, str]] = field(default_factory=list)


_NO_JSON = object()


def json_answer(raw: Any) -> Any:
    """The JSON value between the first "{" and the last "}" of an editor's answer (prose or code fences
    around one object are tolerated), or `_NO_JSON` when there is none or it does not parse."""
    if not isinstance(raw, str):
        return _NO_JSON
    start, end = raw.find("{"), raw.rfind("}")
    if start < 0 or end <= start:
        return _NO_JSON
    try:
        return json.loads(raw[start:end + 1])
    except json.JSONDecodeError:
        return _NO_JSON


def parse_proposal(raw: str) -> Proposal | str:
    """Parse an editor's JSON answer (tolerating prose or code fences around one object)."""
    obj = json_answer(raw)
    if obj is _NO_JSON:
        return UNPARSABLE_JSON
    if not isinstance(obj, dict):
        return MALFORMED_OUTPUT
    caption, principle, edits = obj.get("caption"), obj.get("principle"), obj.get("edits", [])
    if not isinstance(caption, str) or not isinstance(principle, str) or not isinstance(edits, list):
        return MALFORMED_OUTPUT
    clean = []
    for e in edits:
        if not isinstance(e, dict) or not isinstance(e.get("from"), str) or not isinstance(e.get("to"), str):
            return MALFORMED_OUTPUT
        clean.append({"from": e["from"], "to": e["to"]})
    return Proposal(caption.strip(), principle.strip().lower(), clean)


# An edit replaces a word or a short phrase; longer rewrites are not minimal.
MAX_WORDS_PER_EDIT = 4


def only_synonym_swaps(caption: str, negative: str) -> bool:
    """True when every changed word span of the negative is a synonym of the span it replaces."""
    a, b = words(caption), words(negative)
    changes = [(" ".join(a[i1:i2]), " ".join(b[j1:j2])) for op, i1, i2, j1, j2
               in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes() if op != "equal"]
    return bool(changes) and all(x and y and is_synonym_swap(x, y) for x, y in changes)


def edit_spans(caption: str, negative: str) -> tuple[int, int]:
    """(contiguous word-level change spans, words changed) between the two captions."""
    matcher = difflib.SequenceMatcher(a=words(caption), b=words(negative), autojunk=False)
    spans = [(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in matcher.get_opcodes() if op != "equal"]
    return len(spans), sum(max(a, b) for a, b in spans)


def _negated(caption_words: Counter[str], negative_words: Counter[str]) -> bool:
    """The negative adds a negation ("no", "not", "n't", "without") or a near-negation ("zero", "missing")."""
    added = negative_words - caption_words
    return any(w in NEGATIONS or w.endswith("n't") or lemma_key(w) in NEAR_NEGATIONS for w in added)


@lru_cache(maxsize=1 << 16)
def still_true(a: str, b: str) -> str | None:
    """Why replacing `a` by `b` may leave the caption true of the image ("synonym", "hypernym", "hyponym",
    "compatible"), or None: `lexicon.still_true`, cached per pair (validation asks it once per candidate)."""
    return _lexicon.still_true(a, b)


@lru_cache(maxsize=1 << 16)
def _synonym_swap(a: str, b: str) -> bool:
    return is_synonym_swap(a, b)


def reported_count(edits: Sequence[dict[str, str]]) -> int:
    """Reported edits, a swap reported as its two halves ("red" -> "white", "white" -> "red") counted once."""
    keys = [(normalise(e["from"]), normalise(e["to"])) for e in edits]
    pending, count = Counter(), 0
    for f, t in keys:
        if pending[(t, f)]:
            pending[(t, f)] -= 1
        else:
            pending[(f, t)] += 1
            count += 1
    return count


def _unchanged_facts(edits: Sequence[DerivedEdit]) -> str | None:
    """SYNONYM when every edit swaps a term for a listed synonym or kind of it ("couch" -> "sofa"),
    STILL_TRUE when every edit may still describe the image by another relation; else None."""
    replaced = [e for e in edits if e.kind != REORDER]
    if not replaced or any(e.kind != REPLACE for e in replaced):
        return None
    if all(_synonym_swap(e.source, e.target) for e in replaced):
        return SYNONYM
    if all(still_true(e.source, e.target) for e in replaced):
        return STILL_TRUE
    return None


def validate_proposal(
    caption: str,
    proposal: Proposal,
    *,
    principles: Sequence[str],
    max_edits: int,
    max_tokens: int,
    count_tokens: TokenCounter,
    requested: str | None = None,
) -> str | None:
    """Reason the negative is not a minimal factual edit of `caption`, or None if accepted. `requested`:
    the principle the editor was asked for (LLM editors), which the answer must report.

    The checks run on the edits derived from the two captions (`derive_edits`): a negation, reordered
    words, synonyms or words still true of the image, more than `max_edits` facts (a swap of two spans is
    one; a head noun and its modifier replaced together are two), a deletion, an addition, reported edits
    that are not the real ones (when any are reported), and changes that fall under another principle
    than the one reported (where the lexicon or the part of speech tells; otherwise the report stands)."""
    if proposal.principle not in principles:
        return WRONG_PRINCIPLE
    if requested is not None and proposal.principle != requested:
        return PRINCIPLE_MISMATCH
    if normalise(proposal.negative) == normalise(caption):
        return IDENTICAL
    caption_words, negative_words = Counter(words(caption)), Counter(words(proposal.negative))
    if _negated(caption_words, negative_words):
        return NEGATION
    edits = derive_edits(caption, proposal.negative)
    facts = [e for e in edits if e.kind != REORDER]
    if not facts or (negative_words == caption_words and any(e.kind != SWAP for e in facts)):
        return PARAPHRASE  # the same words reordered, or only articles and inflections changed
    unchanged = _unchanged_facts(edits)
    if unchanged is not None:
        return unchanged
    if (reported_count(proposal.edits) > max_edits or sum(e.facts for e in edits) > max_edits
            or sum(e.words for e in edits) > MAX_WORDS_PER_EDIT * max_edits):
        return OVER_BUDGET
    if count_tokens(proposal.negative) > max_tokens:
        return TOO_LONG
    if any(e.kind == DELETE for e in facts):
        return DELETION
    if any(e.kind == INSERT for e in facts):
        return ADDITION
    if proposal.edits and not reported_edits_agree(caption, proposal.negative, proposal.edits):
        return EDITS_MISMATCH
    if any(e.principles and proposal.principle not in e.principles for e in facts):
        return PRINCIPLE_MISMATCH
    return None
