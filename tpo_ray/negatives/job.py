"""`run_negatives`: the Ray Data job that turns captions into (c_w, c_l) triplets, resumably.

Plan shards from the input (deterministic), skip shards whose stats marker exists, then stream the
rest: read + input checks (Ray tasks) -> editor (rules tasks, hf actors, vLLM engines or HTTP
clients) -> output checks (Ray tasks) -> the driver gathers each shard's answers and writes it as
soon as all have arrived (temp + rename, marker last). LLM editors ask for one candidate per
negative; a shard with negatives whose candidates were all rejected sets its answers aside and
asks again for only those, in a second pass over the editor (and further ones, up to
`1 + negatives.retries` candidates per negative). With `negatives.llm.verify`, the next pass also
carries a verification request for each negative's chosen candidate, answered by the same engine
(one processor handles both request kinds); `yes` rejects it as `still_true` and that negative asks
again. A killed job rerun with the same command redoes only unfinished shards, producing exactly the
rows of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tpo_ray.config import TPOConfig
from tpo_ray.data import schema
from tpo_ray.data.io import absolute_local, filesystem_for, join, read_parquet, write_parquet_atomic
from tpo_ray.data.sources import SourcePlan, plan_source
from tpo_ray.negatives.editors import EditorStage, build_editor
from tpo_ray.negatives.editors.rules_stage import RULES_MODEL
from tpo_ray.negatives.layout import OutputLayout
from tpo_ray.negatives.quality import aggregate_stats, log_quality, write_sample
from tpo_ray.negatives.principles import TEMPLATE_VERSION, VERIFY_TEMPLATE_VERSION
from tpo_ray.negatives.quality import principle_mix
from tpo_ray.negatives.selection import Candidate, ValidationRules, next_requests
from tpo_ray.negatives.shards import (
    REQUEST_SCHEMA,
    answer_candidate,
    editor_request,
    finalize_shard,
    merge_verdicts,
    shard_requests,
    token_counter,
    validate_batch,
    verify_request,
)
from tpo_ray.progress import Progress

log = logging.getLogger(__name__)


class NegativesJobError(RuntimeError):
    """The job cannot run as configured (e.g. the output holds another job)."""


@dataclass
class NegativesResult:
    output: str
    stats: dict[str, Any]
    shards_total: int
    shards_skipped: int
    seconds: float
    per_shard: dict[int, dict[str, Any]] = field(default_factory=dict)


def input_path(cfg: TPOConfig) -> str:
    return cfg.negatives.input or cfg.captions_source()


def output_path(cfg: TPOConfig) -> str:
    return cfg.negatives.output or join(cfg.output_dir, "negatives")


def job_identity(cfg: TPOConfig, plan: SourcePlan) -> dict[str, Any]:
    """What must match for a rerun to continue the same job: the input's content (not its path's
    spelling) and the settings; either changed would mix two jobs' rows in one output."""
    n = cfg.negatives
    settings = n.model_dump(mode="json", exclude={"input", "output", "llm", "format"})
    settings["llm"] = {"model": n.llm.model, "template_version": n.llm.template_version,
                       "temperature": n.llm.temperature, "guided_json": n.llm.guided_json} if n.editor != "rules" else None
    if n.editor in LLM_EDITORS:  # only where it changes the rows: a rules job's identity is as before
        settings["llm"]["verify"] = VERIFY_TEMPLATE_VERSION if n.llm.verify else None
    settings["template"] = TEMPLATE_VERSION
    settings["rules_model"] = RULES_MODEL  # the lexicon's version: the rules editor, and every LLM editor's fallback
    return {"input": absolute_local(input_path(cfg)), "input_fingerprint": plan.fingerprint,
            "num_rows": plan.num_rows, "num_shards": len(plan.shards),
            "settings_hash": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16],
            "settings": settings}


IDENTITY_KEYS = ("input_fingerprint", "num_rows", "num_shards", "settings_hash")
LLM_EDITORS = ("hf", "vllm", "openai")


def _check_identity(layout: OutputLayout, identity: dict[str, Any]) -> None:
    """Refuse to mix two jobs in one output folder, unless the earlier one finished no shard: then it
    produced nothing to protect (e.g. it failed at start on a wrong model path), and the corrected
    command starts over there instead of being refused as "different settings"."""
    previous = layout.read_json(layout.job)
    if previous is None:
        layout.write_json(layout.job, identity)
        return
    if "input_fingerprint" not in previous and previous.get("input") is not None \
            and absolute_local(previous["input"]) == identity["input"] \
            and all(previous.get(k) == identity[k] for k in ("num_rows", "num_shards", "settings_hash")):
        log.warning("negatives: %s was started by an older tpo_ray that recorded the input's path, not its content; "
                    "continuing it and recording the content fingerprint from now on", layout.root)
        layout.write_json(layout.job, identity)
        return
    for key in IDENTITY_KEYS:
        if previous.get(key) != identity[key]:
            if not layout.completed():
                log.warning("negatives: %s held a job with another %s that finished no shard; starting over "
                            "with these settings", layout.root, key)
                layout.clear_partial()
                layout.write_json(layout.job, identity)
                return
            what = (f"input content (the input {identity['input']} changed since that job started, or "
                    f"it was made from {previous.get('input')})" if key == "input_fingerprint"
                    else f"{key} ({previous.get(key)!r} vs {identity[key]!r})")
            raise NegativesJobError(
                f"{layout.root} holds a negatives job with a different {what}; its {len(layout.completed())} "
                "finished shards would be stale. Choose a new --output or delete the folder to start over"
            )


def build_pipeline(pending_items: list[dict[str, Any]], cfg: TPOConfig, editor: EditorStage, root: str,
                   columns: pa.Schema):
    """The lazy Ray Dataset of validated editor answers for the pending shards (first pass: one
    candidate per negative)."""
    import ray

    n = cfg.negatives
    ds = ray.data.from_items(pending_items, override_num_blocks=len(pending_items))
    ds = ds.map_batches(
        _requests_for_items, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"cfg": n.model_dump(mode="json"), "root": root, "attempts": 1,
                   "chooses_principle": editor.chooses_principle, "columns": columns},
    )
    return _validated(editor.apply(ds), cfg)


def build_retry_pipeline(request_files: list[str], cfg: TPOConfig, editor: EditorStage):
    """The lazy Ray Dataset of validated answers to a retry pass's requests (one file per shard)."""
    import ray

    ds = ray.data.from_items([{"path": f} for f in request_files], override_num_blocks=len(request_files))
    ds = ds.map_batches(_retry_requests_for_items, batch_size=1, batch_format="pyarrow")
    return _validated(editor.apply(ds), cfg)


def _validated(ds, cfg: TPOConfig):
    n = cfg.negatives
    return ds.map_batches(
        validate_batch, batch_format="pyarrow",
        fn_kwargs={"principles": list(n.principles), "max_edits": n.max_edits, "max_tokens": n.max_tokens,
                   "tokenizer": n.tokenizer},
    )


def _requests_for_items(batch: pa.Table, **kwargs) -> pa.Table:
    tables = [shard_requests(item, **kwargs) for item in batch.column("item").to_pylist()]
    return pa.concat_tables(tables)


def _retry_requests_for_items(batch: pa.Table) -> pa.Table:
    return pa.concat_tables([read_parquet(p).cast(REQUEST_SCHEMA) for p in batch.column("path").to_pylist()])


def retry_requests(answers: pa.Table, ncfg, attempts: int, chooses_principle: bool, verify: bool = False) -> pa.Table:
    """The next pass's requests for one shard (answers with verdicts merged, `shards.merge_verdicts`):
    a new candidate (the next attempt's seed, and the principle that seed draws) for each negative
    whose candidates so far were all rejected and, with `verify`, a verification request for each
    negative's chosen candidate not yet verified.

    Requests are built by `shards.editor_request`, as the first pass's are, so a row's candidates do
    not depend on which pass asked for them.
    """
    rules = ValidationRules(tuple(ncfg.principles), ncfg.max_edits, ncfg.max_tokens)
    count = token_counter(ncfg.tokenizer)
    by_row: dict[int, tuple[dict[str, Any], dict[tuple[int, int], dict[str, Any]], list[Candidate]]] = {}
    for a in answers.to_pylist():
        _, by_key, candidates = by_row.setdefault(a[schema.ROW], (a, {}, []))
        by_key[(a[schema.NEGATIVE_INDEX], a[schema.ATTEMPT])] = a
        candidates.append(answer_candidate(a))
    requests = []
    for row_index in sorted(by_row):
        first, by_key, candidates = by_row[row_index]
        for kind, k, attempt in next_requests(first[schema.CAPTION], candidates, n=ncfg.negatives_per_caption,
                                              attempts=attempts, rules=rules, count_tokens=count, verify=verify):
            requests.append(verify_request(by_key[(k, attempt)]) if kind == "verify" else
                            editor_request(ncfg, first, first[schema.SHARD], k, attempt, chooses_principle))
    return pa.Table.from_pylist(requests, schema=REQUEST_SCHEMA)


class ShardCollector:
    """Buffers answers per shard; once a pass's answers for a shard have all arrived, either asks
    again for its negatives without an accepted candidate (answers set aside in `_work/`, requests
    written for the next pass) or writes the shard."""

    def __init__(self, cfg: TPOConfig, layout: OutputLayout, editor: EditorStage, pending: list[int],
                 progress: Progress, rows_per_shard: dict[int, int], columns: pa.Schema) -> None:
        self.cfg, self.layout, self.editor, self.columns = cfg, layout, editor, columns
        self.pending = set(pending)
        self.buffers: dict[int, list[pa.Table]] = {}
        self.received: Counter[int] = Counter()
        self.expected: dict[int, int] = {}  # answers expected this pass (first pass: from the read manifest)
        self.progress = progress
        self.rows_per_shard = rows_per_shard
        self.done: dict[int, dict[str, Any]] = {}
        self.pass_index = 0
        self.retrying: dict[int, int] = {}  # shard -> requests it sent into the next pass
        self.set_aside: set[int] = set()  # shards whose earlier passes' answers are in _work/

    def _work(self, index: int, what: str) -> str:
        return join(self.layout.root, "_work", f"shard-{index:05d}.{what}.parquet")

    def add(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        shards = batch.column(schema.SHARD).to_pylist()
        for index in sorted(set(shards)):
            part = batch.filter(pa.compute.equal(batch.column(schema.SHARD), index))
            self.buffers.setdefault(index, []).append(part)
            self.received[index] += part.num_rows
            if index not in self.expected:
                manifest = self.layout.read_json(self.layout.read_manifest(index))
                self.expected[index] = manifest["requests"]
            if self.received[index] == self.expected[index]:
                self._pass_done(index, pa.concat_tables(self.buffers.pop(index)))

    def _pass_done(self, index: int, answers: pa.Table) -> None:
        if index in self.set_aside:
            answers = pa.concat_tables([read_parquet(self._work(index, "answers")), answers])
        answers = merge_verdicts(answers)
        verify = self.editor.verifies
        requests = (retry_requests(answers, self.cfg.negatives, self.editor.attempts, self.editor.chooses_principle,
                                   verify) if self.editor.attempts > 1 or verify else None)
        if requests is None or requests.num_rows == 0:
            self._finalize(index, answers)
            return
        requests_file = self._work(index, f"retry-{self.pass_index + 1}")
        write_parquet_atomic(answers, self._work(index, "answers"))
        write_parquet_atomic(requests, requests_file)
        self.set_aside.add(index)
        self.retrying[index] = requests.num_rows

    def end_pass(self) -> list[str]:
        """Check that every answer of this pass arrived; return the next pass's request files."""
        for index in sorted(self.pending - set(self.done) - set(self.retrying)):
            expected = self.expected.get(index)
            if expected is None:  # no answer in the first pass: fine only if it sent no request
                manifest = self.layout.read_json(self.layout.read_manifest(index))
                expected = manifest["requests"] if manifest is not None else None
            if self.buffers.get(index) or expected:
                raise NegativesJobError(
                    f"shard {index}: {self.received[index]} of {expected} editor answers arrived in pass "
                    f"{self.pass_index + 1}; rerun the same command to redo this shard")
            self._finalize(index, None)
        self.pass_index += 1
        self.expected, self.retrying = dict(self.retrying), {}
        self.received = Counter()
        return [self._work(index, f"retry-{self.pass_index}") for index in sorted(self.expected)]

    def _finalize(self, index: int, answers: pa.Table | None) -> None:
        self.done[index] = finalize_shard(index, answers, self.cfg.negatives, self.layout, self.editor.name,
                                          self.editor.model, self.columns)
        self.set_aside.discard(index)
        fs, work = filesystem_for(join(self.layout.root, "_work"))
        for pattern in (f"shard-{index:05d}.answers.parquet", f"shard-{index:05d}.retry-*.parquet"):
            for path in fs.glob(f"{work}/{pattern}"):  # also what a killed earlier run left
                fs.rm(path)
        self.progress.advance(self.rows_per_shard[index])


def collect_answers(items: list[dict[str, Any]], cfg: TPOConfig, editor: EditorStage, layout: OutputLayout,
                    collector: ShardCollector, columns: pa.Schema) -> None:
    """Run the first pass over the pending shards, then a retry pass over the negatives still
    without an accepted candidate, until none is left or each has had `editor.attempts` candidates.
    Each pass starts the editor anew (for vLLM: engine start-up once per pass)."""
    pipeline = build_pipeline(items, cfg, editor, layout.root, columns)
    while True:
        for batch in pipeline.iter_batches(batch_format="pyarrow", batch_size=None):
            collector.add(batch)
        request_files = collector.end_pass()
        if not request_files:
            return
        log.info("negatives: pass %d asks again for %d negatives of %d shards whose candidates were all rejected",
                 collector.pass_index + 1, sum(collector.expected.values()), len(request_files))
        pipeline = build_retry_pipeline(request_files, cfg, editor)


def _check_totals(stats: dict[str, Any], plan: SourcePlan) -> None:
    """Every planned row was read once and ended accepted or quarantined (each tallied on its own)."""
    if not stats["rows_in"] == plan.num_rows == stats["rows_accepted"] + stats["rows_quarantined"]:
        raise NegativesJobError(
            f"rows do not add up: the input has {plan.num_rows} rows, the shards read {stats['rows_in']}, accepted "
            f"{stats['rows_accepted']} and quarantined {stats['rows_quarantined']}")


def run_negatives(cfg: TPOConfig) -> NegativesResult:
    """Generate negatives for `negatives.input` into `negatives.output`; resumes where it stopped."""
    start = time.perf_counter()
    n = cfg.negatives
    source = input_path(cfg)
    layout = OutputLayout(output_path(cfg))
    plan = plan_source(source, n.shard_size, n.format)
    _check_identity(layout, job_identity(cfg, plan))
    completed = layout.completed()
    pending = [s for s in plan.shards if s.index not in completed]
    log.info("negatives: %d rows in %d shards from %s; %d shards already done, %d to run (editor %s)",
             plan.num_rows, len(plan.shards), source, len(completed), len(pending), n.editor)
    editor = build_editor(n)
    progress = Progress(sum(s.num_rows for s in pending), "captions", "negatives")
    per_shard = dict(completed)
    if pending:
        from tpo_ray.cluster import require_shared_paths
        from tpo_ray.ray_utils import ensure_ray

        ensure_ray()
        require_shared_paths({"negatives.input": source, "negatives.output": layout.root}, cfg.shared_filesystem)
        items = [{"item": {"spec": s.to_dict(),
                           "duplicates": sorted(r for r in plan.duplicate_rows
                                                if s.first_row <= r < s.first_row + s.num_rows)}}
                 for s in pending]
        collector = ShardCollector(cfg, layout, editor, [s.index for s in pending], progress,
                                   {s.index: s.num_rows for s in pending}, plan.columns)
        collect_answers(items, cfg, editor, layout, collector, plan.columns)
        per_shard.update(collector.done)
    progress.close()
    seconds = time.perf_counter() - start
    stats = aggregate_stats(per_shard)
    _check_totals(stats, plan)
    stats["principle_mix"] = principle_mix(stats, n.principles, n.principle_weights)
    stats.update({"shards": len(plan.shards), "shards_skipped": len(completed), "editor": n.editor,
                  "seconds_this_run": round(seconds, 3),
                  "captions_per_s_this_run": round(progress.done / seconds, 2) if seconds > 0 else 0.0})
    layout.write_json(layout.stats, stats)
    sample = write_sample(layout, n.seed)
    log_quality(cfg, layout, stats, sample)
    log.info("negatives: %d triplets for %d of %d captions (%d quarantined, %d fallbacks) -> %s",
             stats["triplets"], stats["rows_accepted"], stats["rows_in"], stats["rows_quarantined"],
             stats["fallbacks"], layout.root)
    return NegativesResult(layout.root, stats, len(plan.shards), len(completed), seconds, per_shard)
