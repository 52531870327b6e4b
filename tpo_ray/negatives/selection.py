"""Choosing accepted negatives for one caption from validated candidates, with the rules fallback.

Pure functions: candidates in (ordered by negative index, then attempt), accepted negatives and
rejected candidates out. A caption gets up to `n` distinct negatives; a negative index whose
candidates were all rejected gets another LLM candidate in the job's next pass (`next_requests`)
while it has attempts left, then falls back to the rules editor with fresh seeds. With the
verification pass on, the candidate chosen for a negative is first put to the same engine ("could
the second caption still describe the image of the first?"); `yes` rejects it as `still_true`.

An LLM may answer that no edit is possible under the requested principle (`{"no_edit": true}`,
template edit_v2): that candidate is rejected as `no_edit_possible` (a refusal, not a malformed
answer) and the negative asks again like after any rejection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from tpo_ray.negatives import validation
from tpo_ray.negatives.validation import (Proposal, TokenCounter, json_answer, normalise, parse_proposal,
                                          validate_proposal)

DUPLICATE_NEGATIVE = "duplicate_negative"
NO_EDIT_POSSIBLE = "no_edit_possible"  # the editor answered that the caption has nothing to edit under the principle
STILL_TRUE = validation.STILL_TRUE  # the verification pass answered yes
EDITS_MISSING = validation.EDITS_MISMATCH  # an edit answer listing no edits
FALLBACK_SEEDS = 8

Verdict = Literal["yes", "no", "unparsable"]
_YES = frozenset({"yes", "yeah", "yep", "true"})
_NO = frozenset({"no", "nope", "false"})
_VERDICT_WORD = re.compile(r"[a-z]+")


def no_edit_answer(raw: str | None) -> bool:
    """True when an editor's answer is a JSON object saying no edit is possible (`"no_edit": true`)."""
    obj = json_answer(raw)
    return isinstance(obj, dict) and obj.get("no_edit") is True


def parse_verdict(raw: str | None) -> Verdict:
    """The verification answer: "yes" (the negative may still describe the image), "no", or
    "unparsable". Reads `{"answer": "yes"}` (guided JSON) or prose, by its first yes/no word
    ("Yes.", "NO", "I think yes", "No, the dog is black"); an echo of the question's "yes or no" is
    skipped. An unparsable answer keeps the negative (it passed validation) and is counted."""
    if not isinstance(raw, str):
        return "unparsable"
    text = raw.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("answer"), str):
            text = obj["answer"]
    text = re.sub(r"\byes\s+or\s+no\b", " ", text.lower())
    for word in _VERDICT_WORD.findall(text):
        if word in _YES:
            return "yes"
        if word in _NO:
            return "no"
    return "unparsable"


@dataclass
class Candidate:
    negative_index: int
    attempt: int
    seed: int
    raw: str | None
    reason: str | None  # None = accepted by validation
    proposal: Proposal | None = None
    requested: str | None = None  # the principle the editor was asked for (None: the editor chose)
    verdict: Verdict | None = None  # the verification pass's answer (None: not asked)

    @property
    def principle(self) -> str | None:
        """The principle the candidate counts under: the one asked for, else the one its answer reports."""
        return self.requested or (self.proposal.principle if self.proposal else None)


@dataclass
class Accepted:
    negative: str
    principle: str
    edits: list[dict[str, str]]
    negative_index: int
    seed: int
    attempt: int
    fallback: bool


@dataclass
class Selection:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Candidate] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationRules:
    principles: tuple[str, ...]
    max_edits: int
    max_tokens: int

    def check(self, caption: str, raw: str | None, count_tokens: TokenCounter,
              requested: str | None = None) -> tuple[Proposal | None, str | None]:
        if no_edit_answer(raw):
            return None, NO_EDIT_POSSIBLE
        parsed = parse_proposal(raw) if raw is not None else "unparsable_json"
        if isinstance(parsed, str):
            return None, parsed
        if not parsed.edits:  # the answer schema allows [] (for no_edit answers); an edit must list its edits
            return None, EDITS_MISSING
        reason = validate_proposal(caption, parsed, principles=self.principles, max_edits=self.max_edits,
                                   max_tokens=self.max_tokens, count_tokens=count_tokens, requested=requested)
        return (parsed if reason is None else None), reason


FallbackEditor = Callable[[str, int], tuple[str | None, str | None]]  # (caption, seed) -> (raw, reason)


def select_negatives(
    caption: str,
    candidates: Sequence[Candidate],
    *,
    n: int,
    rules: ValidationRules,
    count_tokens: TokenCounter,
    fallback: FallbackEditor | None,
    fallback_seed: Callable[[int, int], int],
) -> Selection:
    """Up to `n` distinct accepted negatives; every rejected candidate is kept with its reason."""
    out = Selection()
    seen: set[str] = set()
    by_index: dict[int, list[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: (c.negative_index, c.attempt)):
        by_index.setdefault(c.negative_index, []).append(c)
    for k in range(n):
        chosen = None
        for c in by_index.get(k, []):
            if c.reason is None and c.proposal is not None and normalise(c.proposal.negative) in seen:
                c.reason = DUPLICATE_NEGATIVE
            if c.reason is not None or chosen is not None:
                if c.reason is not None:
                    out.rejected.append(c)
                continue
            chosen = Accepted(c.proposal.negative, c.proposal.principle, c.proposal.edits, k, c.seed, c.attempt, False)
        if chosen is None and fallback is not None:
            chosen = _fallback(caption, k, rules, count_tokens, fallback, fallback_seed, seen)
        if chosen is not None:
            seen.add(normalise(chosen.negative))
            out.accepted.append(chosen)
    return out


def next_requests(
    caption: str,
    candidates: Sequence[Candidate],
    *,
    n: int,
    attempts: int,
    rules: ValidationRules,
    count_tokens: TokenCounter,
    verify: bool = False,
) -> list[tuple[str, int, int]]:
    """(kind, negative index, attempt) of the next pass's requests for one caption: ("verify", k, a)
    for the chosen candidate of negative k when `verify` and it has no verdict yet, ("edit", k, a)
    for the next attempt of every negative still without an accepted candidate.

    The selection is the final one without fallback, so a candidate that became a duplicate of an
    earlier negative's later pick also asks again; a negative stops asking once it has had
    `attempts` candidates. Asking one attempt at a time until one is accepted (and, with `verify`,
    verified) yields the same selection as generating every attempt up front, with only the
    generations that matter; a verification does not use an attempt.
    """
    fresh = [replace(c) for c in candidates]  # select_negatives marks duplicates on what it is given
    chosen = {a.negative_index: a.attempt for a in select_negatives(
        caption, fresh, n=n, rules=rules, count_tokens=count_tokens, fallback=None,
        fallback_seed=lambda k, j: 0).accepted}
    verdicts = {(c.negative_index, c.attempt): c.verdict for c in candidates}
    plan = []
    for k in range(n):
        if k in chosen:
            if verify and verdicts.get((k, chosen[k])) is None:
                plan.append(("verify", k, chosen[k]))
            continue
        tried = [c.attempt for c in candidates if c.negative_index == k]
        attempt = max(tried) + 1 if tried else 0
        if attempt < attempts:
            plan.append(("edit", k, attempt))
    return plan


def retry_plan(caption: str, candidates: Sequence[Candidate], *, n: int, attempts: int, rules: ValidationRules,
               count_tokens: TokenCounter) -> list[tuple[int, int]]:
    """(negative index, next attempt) for every negative still without an accepted candidate
    (`next_requests` without verification)."""
    return [(k, a) for _, k, a in next_requests(caption, candidates, n=n, attempts=attempts, rules=rules,
                                                count_tokens=count_tokens)]


def apply_verdict(candidate: Candidate, verdict: Verdict) -> Candidate:
    """The candidate after its verification: `yes` rejects it as still true of the image."""
    candidate.verdict = verdict
    if verdict == "yes" and candidate.reason is None:
        candidate.reason, candidate.proposal = STILL_TRUE, None
    return candidate


def _fallback(caption, k, rules, count_tokens, fallback, fallback_seed, seen) -> Accepted | None:
    for j in range(FALLBACK_SEEDS):
        seed = fallback_seed(k, j)
        raw, reason = fallback(caption, seed)
        if reason is not None:
            return None  # the rules editor cannot edit this caption at all
        proposal, reason = rules.check(caption, raw, count_tokens)
        if proposal is not None and normalise(proposal.negative) not in seen:
            return Accepted(proposal.negative, proposal.principle, proposal.edits, k, seed, j, True)
    return None
