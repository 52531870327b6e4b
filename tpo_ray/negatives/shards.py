"""Per-shard work of the negatives job: turning input rows into editor requests (in Ray tasks) and
editor answers into triplets and quarantine rows (on the driver, one finished shard at a time)."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from functools import lru_cache
from typing import Any

import pyarrow as pa

from tpo_ray.config import NegativesConfig
from tpo_ray.data import schema
from tpo_ray.data.io import read_parquet, write_parquet_atomic
from tpo_ray.data.quarantine import quarantine_table, raw_json
from tpo_ray.data.sources import UNREADABLE, ShardSpec, conform_row, read_shard
from tpo_ray.negatives.editors.requests import EDIT, KIND, VERDICT, VERIFY, VERIFY_NEGATIVE
from tpo_ray.negatives.editors.rules_stage import RULES_MODEL, rules_output
from tpo_ray.negatives.layout import OutputLayout
from tpo_ray.negatives.principles import caption_material, pick_principle
from tpo_ray.negatives.selection import (
    NO_EDIT_POSSIBLE,
    Candidate,
    ValidationRules,
    apply_verdict,
    parse_verdict,
    select_negatives,
)
from tpo_ray.negatives.validation import (
    DUPLICATE_ID,
    ENGINE_ERROR,
    NO_EDITABLE_TERM,
    UNREADABLE_ROW,
    Proposal,
    TokenCounter,
    approx_clip_tokens,
    tokenizer_counter,
    validate_input,
)

REQUEST_SCHEMA = pa.schema([
    (schema.ID, pa.string()), (schema.CAPTION, pa.string()), (schema.SHARD, pa.int64()), (schema.ROW, pa.int64()),
    (schema.NEGATIVE_INDEX, pa.int32()), (schema.ATTEMPT, pa.int32()), (schema.REQUESTED_PRINCIPLE, pa.string()),
    (schema.SEED, pa.int64()), (KIND, pa.string()), (VERIFY_NEGATIVE, pa.string()),
])
EDITS_TYPE = pa.list_(pa.struct([("from", pa.string()), ("to", pa.string())]))


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from the parts (same everywhere, unlike Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=4).digest(), "little") >> 1


@lru_cache(maxsize=4)
def token_counter(tokenizer_dir: str | None) -> TokenCounter:
    return approx_clip_tokens if tokenizer_dir is None else tokenizer_counter(tokenizer_dir)


# ------------------------------------------------------------------------------------ in Ray tasks
class ShardCountError(RuntimeError):
    """A shard's rows do not add up: counts are tallied independently and must agree."""


def row_schema(columns: pa.Schema) -> pa.Schema:
    """A shard's kept input rows: the declared input columns plus their global row index."""
    return columns.append(pa.field(schema.ROW, pa.int64()))


def editor_request(ncfg: NegativesConfig, row: dict[str, Any], shard: int, k: int, attempt: int,
                   chooses_principle: bool) -> dict[str, Any]:
    """The request for candidate `attempt` of negative `k` of a row (which holds its id, caption and
    global row index). Its seed, and the principle the seed draws among those the caption has
    material for (`principles.caption_material`), depend on nothing else, so a candidate is the same
    whichever pass of the job asks for it."""
    seed = stable_seed(ncfg.seed, row[schema.ID], k, attempt)
    principle = (pick_principle(ncfg.principles, ncfg.principle_weights, random.Random(seed),
                                caption_material(row[schema.CAPTION]))
                 if chooses_principle else None)
    return {schema.ID: row[schema.ID], schema.CAPTION: row[schema.CAPTION], schema.SHARD: shard,
            schema.ROW: row[schema.ROW], schema.NEGATIVE_INDEX: k, schema.ATTEMPT: attempt,
            schema.REQUESTED_PRINCIPLE: principle, schema.SEED: seed, KIND: EDIT, VERIFY_NEGATIVE: None}


def verify_request(answer: dict[str, Any]) -> dict[str, Any]:
    """The verification request for a validated candidate (an answer row with its `negative`): the
    same engine is asked whether that negative could still describe the caption's image."""
    return {**{f.name: answer.get(f.name) for f in REQUEST_SCHEMA}, KIND: VERIFY,
            VERIFY_NEGATIVE: answer[schema.NEGATIVE]}


def merge_verdicts(answers: pa.Table) -> pa.Table:
    """A shard's answers with each verification answer applied to the candidate it asked about
    (`verdict` set; `yes` turns the candidate into a rejection, `still_true`) and the verification
    rows themselves dropped, so every row left is one candidate."""
    rows = answers.to_pylist()
    verdicts = {(r[schema.ROW], r[schema.NEGATIVE_INDEX], r[schema.ATTEMPT]): r[VERDICT]
                for r in rows if r.get(KIND) == VERIFY}
    out = []
    for r in rows:
        if r.get(KIND) == VERIFY:
            continue
        verdict = verdicts.get((r[schema.ROW], r[schema.NEGATIVE_INDEX], r[schema.ATTEMPT]))
        if verdict is not None:
            c = apply_verdict(Candidate(0, 0, 0, None, r[schema.REASON]), verdict)
            r = {**r, VERDICT: c.verdict, schema.REASON: c.reason}
        out.append(r)
    return pa.Table.from_pylist(out, schema=answers.schema)


def shard_requests(item: dict[str, Any], *, cfg: dict[str, Any], root: str, attempts: int,
                   chooses_principle: bool, columns: pa.Schema) -> pa.Table:
    """Read one shard, quarantine bad rows, write the shard's good rows aside, return editor requests.

    Rows are fitted to the input's declared schema (`columns`): a value of another type quarantines
    its row instead of failing the shard. The read manifest is written before any request leaves
    this task, so the driver always knows how many answers to expect for a shard by the time the
    first one arrives.
    """
    ncfg = NegativesConfig.model_validate(cfg)
    spec = ShardSpec(**item["spec"])
    duplicates = set(item["duplicates"])
    layout = OutputLayout(root)
    count = token_counter(ncfg.tokenizer)
    good, bad, requests = [], [], []
    rows_read = read_shard(spec)
    if len(rows_read) != spec.num_rows:
        raise ShardCountError(f"shard {spec.index}: read {len(rows_read)} rows from {spec.file} where planning counted "
                              f"{spec.num_rows}; the input changed while the job ran. Rerun the same command")
    for offset, row in enumerate(rows_read):
        global_row = spec.first_row + offset
        if UNREADABLE in row:
            reason = UNREADABLE_ROW
        else:
            reason = validate_input(row, ncfg.max_tokens, count)
            if reason is None:
                row, reason = conform_row(row, columns)
            if reason is None and global_row in duplicates:
                reason = DUPLICATE_ID
        if reason is not None:
            rid = row.get(schema.ID)
            bad.append({schema.ID: None if rid is None else str(rid), schema.STAGE: "input", schema.REASON: reason,
                        schema.RAW: row[UNREADABLE] if UNREADABLE in row else raw_json(row)})
            continue
        row = {**row, schema.ID: str(row[schema.ID]), schema.ROW: global_row}
        good.append(row)
        requests += [editor_request(ncfg, row, spec.index, k, attempt, chooses_principle)
                     for k in range(ncfg.negatives_per_caption) for attempt in range(attempts)]
    write_parquet_atomic(quarantine_table(bad), layout.quarantine_input(spec.index))
    write_parquet_atomic(pa.Table.from_pylist(good, schema=row_schema(columns)), layout.rows(spec.index))
    layout.write_json(layout.read_manifest(spec.index), {
        "rows_in": spec.num_rows, "rows_read": len(rows_read), "valid_rows": len(good),
        "input_quarantined": len(bad), "requests": len(requests),
        "input_rejects": dict(Counter(b[schema.REASON] for b in bad)),
    })
    return pa.Table.from_pylist(requests, schema=REQUEST_SCHEMA)


# a shard's tallies by key (summed over shards by quality.aggregate_stats)
STAT_COUNTERS = ("rejected", "principles", "editors", "num_edits", "candidates_by_principle", "valid_by_principle",
                 "requested_by_principle", "no_edit_by_principle", "verify")
NO_PRINCIPLE = "none"  # stats key of candidates with no principle (no answer to read one from, nothing asked)
INFERENCE_ERROR = "__inference_error__"  # set by ray.data.llm stages on rows the engine failed (continue on error)
ANSWER_SCHEMA = REQUEST_SCHEMA.append(pa.field(schema.RAW_OUTPUT, pa.string())).append(
    pa.field(schema.EDITOR_REASON, pa.string()))


def editor_answers(batch: pa.Table) -> pa.Table:
    """Any editor's output block in one schema: the request columns, `raw_output`, `editor_reason`.

    `ray.data.llm` with continue-on-error passes failed rows around the postprocess function: they
    carry the engine's columns and `__inference_error__` but no `raw_output`, and a block may hold
    only such rows. Here a failed row becomes a rejected candidate (`engine_error`, the engine's
    message as its raw output) instead of a KeyError or a schema clash between blocks.
    """
    names = set(batch.column_names)
    missing = [c for c in (schema.SHARD, schema.ROW) if c not in names]
    if missing:
        raise KeyError(f"editor output lacks {missing}: cannot tell which shard and row its answers belong to "
                       f"(columns: {sorted(names)})")
    n = batch.num_rows
    columns = {f.name: batch.column(f.name).cast(f.type) if f.name in names else pa.nulls(n, f.type)
               for f in ANSWER_SCHEMA}
    if INFERENCE_ERROR in names:
        errors = [e or None for e in batch.column(INFERENCE_ERROR).cast(pa.string()).to_pylist()]
        raws, reasons = columns[schema.RAW_OUTPUT].to_pylist(), columns[schema.EDITOR_REASON].to_pylist()
        columns[schema.RAW_OUTPUT] = pa.array([e if e else r for e, r in zip(errors, raws)], pa.string())
        columns[schema.EDITOR_REASON] = pa.array([ENGINE_ERROR if e else r for e, r in zip(errors, reasons)],
                                                 pa.string())
    return pa.table(columns, schema=ANSWER_SCHEMA)


def validate_batch(batch: pa.Table, *, principles: list[str], max_edits: int, max_tokens: int,
                   tokenizer: str | None) -> pa.Table:
    """Parse and validate each editor answer in parallel; adds negative/principle/edits/reason, and for a
    verification answer its `verdict` (an engine error there counts as unparsable: the candidate stays)."""
    batch = editor_answers(batch)
    rules = ValidationRules(tuple(principles), max_edits, max_tokens)
    count = token_counter(tokenizer)
    negatives, principles_out, edits, reasons, verdicts = [], [], [], [], []
    captions = batch.column(schema.CAPTION).to_pylist()
    raws = batch.column(schema.RAW_OUTPUT).to_pylist()
    editor_reasons = batch.column(schema.EDITOR_REASON).to_pylist()
    requested = batch.column(schema.REQUESTED_PRINCIPLE).to_pylist()  # None where the editor picks the principle
    kinds = batch.column(KIND).to_pylist()
    for caption, raw, editor_reason, asked, kind in zip(captions, raws, editor_reasons, requested, kinds):
        if kind == VERIFY:
            proposal, reason = None, None
            verdicts.append("unparsable" if editor_reason else parse_verdict(raw))
        else:
            proposal, reason = (None, editor_reason) if editor_reason else rules.check(caption, raw, count, asked)
            verdicts.append(None)
        negatives.append(proposal.negative if proposal else None)
        principles_out.append(proposal.principle if proposal else None)
        edits.append(json.dumps(proposal.edits) if proposal else None)
        reasons.append(reason)
    for name, values in ((schema.NEGATIVE, negatives), (schema.PRINCIPLE, principles_out),
                         (schema.EDITS, edits), (schema.REASON, reasons), (VERDICT, verdicts)):
        batch = batch.append_column(name, pa.array(values, pa.string()))
    return batch


# ------------------------------------------------------------------------------------- on the driver
def finalize_shard(index: int, answers: pa.Table | None, ncfg: NegativesConfig, layout: OutputLayout,
                   editor_name: str, editor_model: str, columns: pa.Schema) -> dict[str, Any]:
    """Write the shard's triplets and output quarantine, then its stats marker; returns the stats.

    Rows accepted and rows quarantined are counted where each decision is made; the shard fails
    (and is redone on rerun) unless they add up to the rows read, which add up to the rows planned.
    """
    manifest = layout.read_json(layout.read_manifest(index))
    if manifest is None:
        raise RuntimeError(f"shard {index}: read manifest missing; the read task did not finish")
    rows_table = read_parquet(layout.rows(index))
    rows = {r[schema.ROW]: r for r in rows_table.to_pylist()}
    by_row: dict[int, list[Candidate]] = {}
    for a in (merge_verdicts(answers).to_pylist() if answers is not None else []):
        by_row.setdefault(a[schema.ROW], []).append(answer_candidate(a))
    rules = ValidationRules(tuple(ncfg.principles), ncfg.max_edits, ncfg.max_tokens)
    count = token_counter(ncfg.tokenizer)
    fallback = _fallback_editor(ncfg) if ncfg.fallback == "rules" else None
    triplets, quarantine = [], []
    stats = {"rows_in": manifest["rows_in"], "rows_accepted": 0, "triplets": 0, "fallbacks": 0, "candidates": 0,
             **{name: Counter() for name in STAT_COUNTERS}}
    stats["rejected"].update(manifest["input_rejects"])
    input_quarantined = manifest.get("input_quarantined", sum(manifest["input_rejects"].values()))
    edit_quarantined = 0
    for row_index in sorted(rows):
        row = rows[row_index]
        candidates = by_row.get(row_index, [])
        stats["candidates"] += len(candidates)
        selection = select_negatives(
            row[schema.CAPTION], candidates, n=ncfg.negatives_per_caption, rules=rules, count_tokens=count,
            fallback=fallback, fallback_seed=lambda k, j, rid=row[schema.ID]: stable_seed(ncfg.seed, rid, k, "fb", j),
        )
        for c in candidates:  # after the selection, which marks duplicates of an earlier pick as rejected
            count_candidate(stats, c)
        for c in selection.rejected:
            if c.reason == NO_EDITABLE_TERM:
                continue  # recorded once for the row below
            stats["rejected"][c.reason] += 1
            quarantine.append({schema.ID: row[schema.ID], schema.STAGE: "editor_output", schema.REASON: c.reason,
                               schema.RAW: c.raw})
        if not selection.accepted:
            edit_quarantined += 1
            stats["rejected"][NO_EDITABLE_TERM] += 1
            quarantine.append({schema.ID: row[schema.ID], schema.STAGE: "edit", schema.REASON: NO_EDITABLE_TERM,
                               schema.RAW: raw_json({k: v for k, v in row.items() if k != schema.ROW})})
            continue
        stats["rows_accepted"] += 1
        carried = {k: v for k, v in row.items() if k != schema.ROW}
        for acc in selection.accepted:
            editor = "rules" if acc.fallback else editor_name
            stats["triplets"] += 1
            stats["fallbacks"] += int(acc.fallback)
            stats["principles"][acc.principle] += 1
            stats["editors"][editor] += 1
            stats["num_edits"][str(len(acc.edits))] += 1
            triplets.append({**carried, schema.NEGATIVE: acc.negative, schema.PRINCIPLE: acc.principle,
                             schema.EDITS: acc.edits, schema.EDITOR: editor,
                             schema.EDITOR_MODEL: RULES_MODEL if acc.fallback else editor_model,
                             schema.SEED: acc.seed, schema.ATTEMPT: acc.attempt,
                             schema.NEGATIVE_INDEX: acc.negative_index, schema.FALLBACK: acc.fallback})
    stats["rows_quarantined"] = input_quarantined + edit_quarantined
    rows_read = manifest.get("rows_read", manifest["rows_in"])
    if not (rows_read == manifest["rows_in"] == stats["rows_accepted"] + stats["rows_quarantined"]
            and len(rows) == manifest["valid_rows"]):
        raise ShardCountError(
            f"shard {index}: rows do not add up: planned {manifest['rows_in']}, read {rows_read}, accepted "
            f"{stats['rows_accepted']} + quarantined {stats['rows_quarantined']} ({input_quarantined} at input, "
            f"{edit_quarantined} at edit), {len(rows)} of {manifest['valid_rows']} valid rows kept")
    write_parquet_atomic(_triplet_table(triplets, columns), layout.triplets(index))
    write_parquet_atomic(quarantine_table(quarantine), layout.quarantine_output(index))
    stats = {k: dict(v) if isinstance(v, Counter) else v for k, v in stats.items()}
    layout.write_json(layout.done(index), stats)
    layout.remove(layout.rows(index))
    layout.remove(layout.read_manifest(index))
    return stats


def answer_candidate(a: dict[str, Any]) -> Candidate:
    """A validated answer row (after `merge_verdicts`) as a selection candidate."""
    proposal = None
    if a[schema.REASON] is None:
        proposal = Proposal(a[schema.NEGATIVE], a[schema.PRINCIPLE], json.loads(a[schema.EDITS]))
    return Candidate(a[schema.NEGATIVE_INDEX], a[schema.ATTEMPT], a[schema.SEED], a[schema.RAW_OUTPUT],
                     a[schema.REASON], proposal, a.get(schema.REQUESTED_PRINCIPLE), a.get(VERDICT))


def count_candidate(stats: dict[str, Any], c: Candidate) -> None:
    """Tally one editor candidate into a shard's counters: by principle (asked for, else reported),
    requests by the principle they named, "no edit possible" answers, and verification verdicts."""
    principle = c.principle or NO_PRINCIPLE
    stats["candidates_by_principle"][principle] += 1
    stats["valid_by_principle"][principle] += int(c.reason is None)
    if c.requested is not None:
        stats["requested_by_principle"][c.requested] += 1
        stats["no_edit_by_principle"][c.requested] += int(c.reason == NO_EDIT_POSSIBLE)
    if c.verdict is not None:
        stats["verify"][c.verdict] += 1


def _fallback_editor(ncfg: NegativesConfig):
    def edit(caption: str, seed: int):
        return rules_output(caption, principles=ncfg.principles, weights=ncfg.principle_weights,
                            max_edits=ncfg.max_edits, seed=seed)
    return edit


def _triplet_table(rows: list[dict[str, Any]], columns: pa.Schema) -> pa.Table:
    """Triplets in the declared schema: every input column (typed, null where a row lacks it) + the job's."""
    fields = list(columns.remove_metadata())
    fields += [pa.field(schema.NEGATIVE, pa.string()), pa.field(schema.PRINCIPLE, pa.string()),
               pa.field(schema.EDITS, EDITS_TYPE), pa.field(schema.EDITOR, pa.string()),
               pa.field(schema.EDITOR_MODEL, pa.string()), pa.field(schema.SEED, pa.int64()),
               pa.field(schema.ATTEMPT, pa.int32()), pa.field(schema.NEGATIVE_INDEX, pa.int32()),
               pa.field(schema.FALLBACK, pa.bool_())]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))
