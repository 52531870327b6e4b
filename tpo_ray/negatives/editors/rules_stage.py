"""The rules editor as a Ray Data stage (stateless tasks; the lexicon is compiled once per worker)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from tpo_ray.config import NegativesConfig
from tpo_ray.data import schema
from tpo_ray.negatives.lexicon import LEXICON_VERSION
from tpo_ray.negatives.rules import EditResult, rule_edit
from tpo_ray.negatives.validation import NO_EDITABLE_TERM


def _rules_model() -> str:
    """What makes the rules editor's negatives: the lexicon's version, and "+wordnet" where the WordNet
    database is there (its parts of speech and relations decide some edits), so negatives made with and
    without it are told apart and a job does not resume across the two."""
    from tpo_ray.negatives.wordnet import database_dir

    return f"lexicon-v{LEXICON_VERSION}" + ("+wordnet" if database_dir() is not None else "")


RULES_MODEL = _rules_model()  # recorded as editor_model, and part of the job's identity


def answer(edit: EditResult | None) -> tuple[str | None, str | None]:
    """(raw JSON answer, None) or (None, no_editable_term): a program editor's edit in an LLM's answer format."""
    if edit is None:
        return None, NO_EDITABLE_TERM
    return json.dumps({"caption": edit.negative, "principle": edit.principle, "edits": edit.edits}), None


def rules_output(caption: str, *, principles: Sequence[str], weights: dict[str, float] | None, max_edits: int,
                 seed: int) -> tuple[str | None, str | None]:
    return answer(rule_edit(caption, principles=principles, max_edits=max_edits, seed=seed, weights=weights))


def edit_batch(batch: pa.Table, edit: Callable[..., EditResult | None], principles: list[str],
               weights: dict[str, float] | None, max_edits: int) -> pa.Table:
    """The batch with each caption's answer (RAW_OUTPUT) or the reason it has none (EDITOR_REASON), from a
    program editor `edit(caption, principles=, max_edits=, seed=, weights=)` (rules, scene)."""
    raws, reasons = [], []
    for caption, seed in zip(batch.column(schema.CAPTION).to_pylist(), batch.column(schema.SEED).to_pylist()):
        raw, reason = answer(edit(caption, principles=principles, max_edits=max_edits, seed=seed, weights=weights))
        raws.append(raw)
        reasons.append(reason)
    return batch.append_column(schema.RAW_OUTPUT, pa.array(raws, pa.string())).append_column(
        schema.EDITOR_REASON, pa.array(reasons, pa.string()))


def rules_edit_batch(batch: pa.Table, principles: list[str], weights: dict[str, float] | None,
                     max_edits: int, expected_model: str = RULES_MODEL) -> pa.Table:
    """The rules editor's answers; refuses to run on a worker whose editor differs from the driver's (a
    node without the WordNet database on a cluster whose head has it would make other negatives)."""
    if RULES_MODEL != expected_model:
        raise RuntimeError(f"this node's rules editor is {RULES_MODEL} but the job's is {expected_model}: install "
                           "the same lexicon and the WordNet database on every node (`make install`, or "
                           "apt-get install wordnet-base; the cluster image has it), or on none")
    return edit_batch(batch, rule_edit, principles, weights, max_edits)


class RulesEditor:
    name = "rules"
    model = RULES_MODEL
    attempts = 1
    chooses_principle = False
    verifies = False  # negatives.llm.verify is for LLM editors

    def __init__(self, cfg: NegativesConfig) -> None:
        self.kwargs: dict[str, Any] = {"principles": list(cfg.principles), "weights": cfg.principle_weights,
                                       "max_edits": cfg.max_edits, "expected_model": RULES_MODEL}

    def apply(self, ds):
        return ds.map_batches(rules_edit_batch, batch_format="pyarrow", fn_kwargs=self.kwargs, zero_copy_batch=True)
