"""The LLM path does not break on engine or endpoint failures, asks again only for what was rejected,
decodes under the answer's JSON schema, and refuses ray/vllm versions it was not written against.

Engine output is built the way ray.data.llm 2.60 builds it (its postprocess wrapper, its block
builder), HTTP answers come from a local OpenAI-compatible server through Ray's own HTTP stage code,
and tests/integration/test_negatives_job.py runs the whole job against that server on Ray.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from functools import partial
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.openai_server import ChatServer
from tests.helpers.scripted_llm import captions, fault_for, good_answer, scripted
from tpo_ray.config import load_config
from tpo_ray.data import schema
from tpo_ray.data.io import read_parquet, write_parquet_atomic
from tpo_ray.data.sources import plan_source
from tpo_ray.negatives.editors import ray_llm
from tpo_ray.negatives.editors.requests import (
    answer_schema,
    openai_request,
    openai_response,
    vllm_request,
    vllm_response,
)
from tpo_ray.negatives.job import ShardCollector, retry_requests
from tpo_ray.negatives.layout import OutputLayout
from tpo_ray.negatives.shards import INFERENCE_ERROR, finalize_shard, shard_requests, validate_batch
from tpo_ray.negatives.validation import ENGINE_ERROR, HTTP_ERROR
from tpo_ray.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
PINNED = {"ray": "2.60.0", "vllm": "0.29.0"}


def job_cfg(tmp_path: Path, source: Path, *overrides: str):
    """Attribute edits only: the scripted answers swap the colour (red -> blue), which validation reads
    as an attribute edit and rejects as `principle_mismatch` under any other requested principle."""
    return load_config(None, [f"output_dir={tmp_path}", f"negatives.input={source}", f"negatives.output={tmp_path / 'neg'}",
                              "tracking.enabled=false", "negatives.editor=openai", "negatives.llm.model=m",
                              "negatives.llm.base_url=http://127.0.0.1:9/v1", "negatives.principles=[attribute]",
                              *overrides])


class ScriptedEditor:
    """What ShardCollector needs of an editor; answers come from `engine` (no Ray)."""

    name, model, chooses_principle = "openai", "m", True

    def __init__(self, attempts: int, verifies: bool = False) -> None:
        self.attempts = attempts
        self.verifies = verifies


def answer_with(engine, requests: pa.Table) -> pa.Table:
    """The editor stage on a request table: `engine(request row) -> raw answer`, then validation."""
    rows = [{**r, schema.RAW_OUTPUT: engine(r), schema.EDITOR_REASON: None} for r in requests.to_pylist()]
    table = pa.Table.from_pylist(rows) if rows else None
    return validate_batch(table, principles=["content", "attribute", "spatial", "contextual"], max_edits=1,
                          max_tokens=77, tokenizer=None)


def shard_setup(tmp_path: Path, n_rows: int, *overrides: str):
    source = tmp_path / "in.parquet"
    write_parquet_atomic(pa.Table.from_pylist(captions(n_rows)), source)
    cfg = job_cfg(tmp_path, source, *overrides)
    plan = plan_source(str(source), cfg.negatives.shard_size)
    layout = OutputLayout(str(tmp_path / "neg"))
    return cfg, plan, layout


def first_requests(cfg, plan, layout, attempts: int) -> list[pa.Table]:
    return [shard_requests({"spec": s.to_dict(), "duplicates": []}, cfg=cfg.negatives.model_dump(mode="json"),
                           root=layout.root, attempts=attempts, chooses_principle=True, columns=plan.columns)
            for s in plan.shards]


def run_passes(cfg, plan, layout, engine) -> tuple[ShardCollector, int]:
    """The job's pass loop with `engine` in place of the Ray pipeline; returns the collector and passes run."""
    editor = ScriptedEditor(1 + cfg.negatives.retries)
    collector = ShardCollector(cfg, layout, editor, [s.index for s in plan.shards], Progress(plan.num_rows, "c", "n"),
                               {s.index: s.num_rows for s in plan.shards}, plan.columns)
    tables, passes = first_requests(cfg, plan, layout, attempts=1), 0
    while tables:
        passes += 1
        for t in tables:
            if t.num_rows:
                collector.add(answer_with(engine, t))
        tables = [read_parquet(f) for f in collector.end_pass()]
    return collector, passes


def read_dir(path: Path) -> list[dict]:
    return [r for f in sorted(path.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


# ------------------------------------------------------------------ engine failures, as Ray shapes them
def vllm_block(rows: list[dict]) -> pa.Table:
    """A block of the vLLM processor's output: ray's postprocess wrapper on each row, ray's block builder."""
    from ray.data._internal.arrow_block import ArrowBlockBuilder
    from ray.llm._internal.batch.stages.base import wrap_postprocess

    post = wrap_postprocess(vllm_response, "__data", include_error_column=True)
    builder = ArrowBlockBuilder()
    for row in rows:
        builder.add(post({"__data": row}))
    return builder.build()


def engine_row(request: dict, *, error: str | None = None, text: str | None = None) -> dict:
    """A row after ray.data.llm's vLLM stage: the request, the chat template and engine columns."""
    req = vllm_request(request, llm={"model": "m"}, max_edits=1, guided_json=True)
    req["sampling_params"].pop("structured_outputs")  # the engine stage pops it before generating
    common = {**req, "prompt": "<|system|>...", "request_id": -1 if error else 3, "time_taken_llm": -1 if error else 0.2,
              "params": "" if error else "SamplingParams(...)", "batch_uuid": "ab12", "num_input_tokens": 0,
              "prompt_token_ids": None}
    if error:
        return {**common, "generated_text": "", "__inference_error__": error}
    return {**common, "generated_text": text, "generated_tokens": [1, 2, 3], "num_generated_tokens": 3,
            "__inference_error__": ""}


def test_engine_failures_in_only_failed_and_mixed_blocks_end_as_quarantine_rows(tmp_path: Path) -> None:
    cfg, plan, layout = shard_setup(tmp_path, 4, "negatives.retries=0")
    requests = first_requests(cfg, plan, layout, attempts=1)[0].to_pylist()
    too_long = "ValueError: The decoder prompt (length 5000) is longer than the maximum model length of 4096."
    failed_only = vllm_block([engine_row(requests[0], error=too_long), engine_row(requests[1], error="RuntimeError: x")])
    mixed = vllm_block([engine_row(requests[2], error=too_long),
                        engine_row(requests[3], text=good_answer(requests[3]["caption"], "attribute"))])
    assert schema.RAW_OUTPUT not in failed_only.column_names  # what used to raise KeyError
    assert {"messages", "prompt", "params", INFERENCE_ERROR} <= set(mixed.column_names)  # extra columns
    answers = pa.concat_tables([validate_batch(b, principles=list(cfg.negatives.principles), max_edits=1,
                                               max_tokens=77, tokenizer=None) for b in (failed_only, mixed)])
    assert answers.column(schema.REASON).to_pylist() == [ENGINE_ERROR, ENGINE_ERROR, ENGINE_ERROR, None]
    stats = finalize_shard(0, answers, cfg.negatives, layout, "vllm", "m", plan.columns)
    quarantine = read_dir(tmp_path / "neg" / "quarantine")
    engine = [q for q in quarantine if q["reason"] == ENGINE_ERROR]
    assert [q["raw"] for q in engine] == [too_long, "RuntimeError: x", too_long]
    assert {q["id"] for q in engine} == {"c0", "c1", "c2"} and all(q["stage"] == "editor_output" for q in engine)
    assert stats["rows_in"] == 4 == stats["rows_accepted"] + stats["rows_quarantined"]
    assert stats["rejected"][ENGINE_ERROR] == 3 and stats["fallbacks"] == 3  # the rules editor stood in


# ------------------------------------------------------------------------------------ second passes
def test_only_rejected_negatives_are_asked_again(tmp_path: Path) -> None:
    """Row c{i} gets its first valid answer at attempt i % 4 (3: never): generations 1, 2, 3, 3."""
    cfg, plan, layout = shard_setup(tmp_path, 12, "negatives.retries=2", "negatives.shard_size=5")
    calls: dict[str, list[int]] = {}

    def engine(r: dict) -> str:
        calls.setdefault(r[schema.ID], []).append(r[schema.ATTEMPT])
        good_at = int(r[schema.ID][1:]) % 4
        return good_answer(r[schema.CAPTION], r[schema.REQUESTED_PRINCIPLE]) if r[schema.ATTEMPT] == good_at else "{no"

    collector, passes = run_passes(cfg, plan, layout, engine)
    assert passes == 3
    assert {rid: len(a) for rid, a in calls.items()} == {f"c{i}": min(i % 4 + 1, 3) for i in range(12)}
    assert all(a == list(range(len(a))) for a in calls.values())  # attempts in order, each once
    triplets = {t["id"]: t for t in read_dir(tmp_path / "neg" / "triplets")}
    for i in range(12):
        t = triplets[f"c{i}"]
        assert (t["fallback"], t["attempt"] if not t["fallback"] else None) == (
            (False, i % 4) if i % 4 < 3 else (True, None))
    stats = {k: sum(s[k] for s in collector.done.values()) for k in ("rows_in", "rows_accepted", "candidates")}
    assert stats == {"rows_in": 12, "rows_accepted": 12, "candidates": sum(len(a) for a in calls.values())}
    assert stats["candidates"] == 3 * 1 + 3 * 2 + 6 * 3 < 12 * 3  # was 36 up front
    assert not list((tmp_path / "neg" / "_work").glob("*"))


def test_what_a_killed_run_set_aside_is_neither_read_nor_left_behind(tmp_path: Path) -> None:
    cfg, plan, layout = shard_setup(tmp_path, 3, "negatives.retries=2")
    work = tmp_path / "neg" / "_work"
    work.mkdir(parents=True)
    stale = {"shard-00000.answers.parquet", "shard-00000.retry-1.parquet"}
    for name in stale:
        write_parquet_atomic(pa.table({"x": [1]}), work / name)
    collector, passes = run_passes(cfg, plan, layout,
                                   lambda r: good_answer(r[schema.CAPTION], r[schema.REQUESTED_PRINCIPLE]))
    assert passes == 1 and collector.done[0]["candidates"] == 3 and not list(work.glob("*"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_passes_choose_what_generating_every_attempt_up_front_chose(tmp_path: Path, seed: int) -> None:
    """Same seeds, same answers: the triplets and the rejections that decided them are those of the
    up-front scheme (two negatives per caption, so duplicates between them also send a retry)."""
    overrides = ("negatives.retries=2", "negatives.negatives_per_caption=2", f"negatives.seed={seed}")

    def engine(r: dict) -> str:
        rng = random.Random(r[schema.SEED])
        pick = rng.choice(["blue", "green", "bad", "bad"])
        return "garbage" if pick == "bad" else good_answer(r[schema.CAPTION], r[schema.REQUESTED_PRINCIPLE], pick)

    cfg, plan, layout = shard_setup(tmp_path / "passes", 12, *overrides)
    run_passes(cfg, plan, layout, engine)
    cfg_up, plan_up, layout_up = shard_setup(tmp_path / "upfront", 12, *overrides)
    for s, requests in zip(plan_up.shards, first_requests(cfg_up, plan_up, layout_up, attempts=3)):
        finalize_shard(s.index, answer_with(engine, requests), cfg_up.negatives, layout_up, "openai", "m",
                       plan_up.columns)
    assert read_dir(tmp_path / "passes" / "neg" / "triplets") == read_dir(tmp_path / "upfront" / "neg" / "triplets")
    rejected = [Counter(tuple(sorted(q.items())) for q in read_dir(tmp_path / run / "neg" / "quarantine"))
                for run in ("passes", "upfront")]
    assert rejected[0] <= rejected[1]  # only rejections that were generated at all, none of them new


def test_retry_requests_carry_the_seed_and_principle_of_the_same_attempt_up_front(tmp_path: Path) -> None:
    cfg, plan, layout = shard_setup(tmp_path, 6, "negatives.retries=2")
    first = first_requests(cfg, plan, layout, attempts=1)[0]
    answers = answer_with(lambda r: "garbage", first)
    again = retry_requests(answers, cfg.negatives, attempts=3, chooses_principle=True)
    up_front = [r for r in first_requests(cfg, plan, layout, attempts=3)[0].to_pylist() if r[schema.ATTEMPT] == 1]
    assert again.to_pylist() == up_front
    assert retry_requests(answers, cfg.negatives, attempts=1, chooses_principle=True).num_rows == 0


# ---------------------------------------------------------------------------------- guided decoding
def test_answer_schema_accepts_the_answer_shape_and_nothing_else() -> None:
    s = answer_schema("attribute", max_edits=2)
    jsonschema.validate({"no_edit": False, **json.loads(good_answer("a red dog", "attribute"))}, s)
    jsonschema.validate({"no_edit": True, "caption": "", "principle": "attribute", "edits": []}, s)
    for bad in ({"no_edit": False, "caption": "a blue dog", "principle": "content",
                 "edits": [{"from": "red", "to": "blue"}]},
                {"no_edit": False, "caption": "a blue dog", "principle": "attribute",
                 "edits": [{"from": "a", "to": "b"}] * 3},
                {"no_edit": False, "caption": "a blue dog", "principle": "attribute"},
                json.loads(good_answer("a red dog", "attribute")),  # no_edit is required: the model decides first
                {"no_edit": "no", "caption": "", "principle": "attribute", "edits": []}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, s)


def request_row() -> dict:
    return {schema.ID: "r1", schema.CAPTION: "a red dog", schema.SHARD: 0, schema.ROW: 3, schema.NEGATIVE_INDEX: 0,
            schema.ATTEMPT: 0, schema.REQUESTED_PRINCIPLE: "spatial", schema.SEED: 99}


def test_the_vllm_processor_sends_the_json_schema_to_the_engine(monkeypatch) -> None:
    monkeypatch.setattr(ray_llm, "installed_llm_versions", lambda: dict(PINNED))
    cfg = load_config(None, ["negatives.editor=vllm", "negatives.llm.model=/models/qwen", "negatives.max_edits=2"])
    processor = ray_llm.VLLMEditor(cfg.negatives).build_processor()
    sent = processor.preprocess(request_row())["__data"]
    # through Arrow, as Ray Data carries it between stages, then what the engine stage reads
    sent = pa.Table.from_pylist([sent]).to_pylist()[0]
    guided = sent["sampling_params"]["structured_outputs"]
    assert set(guided) == {"json"} and json.loads(guided["json"]) == answer_schema("spatial", 2)
    assert sent["sampling_params"]["seed"] == 99 and processor.config.should_continue_on_error is True


def test_the_openai_payload_asks_for_a_json_schema_response() -> None:
    cfg = load_config(None, ["negatives.editor=openai", "negatives.llm.model=served", "negatives.llm.base_url=http://h/v1"])
    processor = ray_llm.OpenAIEditor(cfg.negatives).build_processor()
    payload = processor.preprocess(request_row())["__data"]["payload"]
    fmt = json.loads(payload["response_format"])  # as text through Arrow; the session sends it as an object
    assert json.loads(ray_llm.request_body(json.dumps(payload)))["response_format"] == fmt
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == answer_schema("spatial", 1)
    plain = openai_request(request_row(), llm={"model": "served"}, max_edits=1)["payload"]
    assert "response_format" not in plain  # off unless the editor asks for it


# ------------------------------------------------------------------------------------------ versions
def test_vllm_outside_the_pinned_range_is_refused_naming_both_versions_and_the_extra(monkeypatch) -> None:
    with pytest.raises(ray_llm.LLMVersionError) as err:
        ray_llm.check_llm_versions({"ray": "2.60.0", "vllm": "0.33.0"})
    assert "vllm 0.33.0" in str(err.value) and "vllm>=0.29,<0.30" in str(err.value)
    assert "pip install 'tpo_ray[llm]'" in str(err.value)
    with pytest.raises(ray_llm.LLMVersionError, match=r"ray 2\.59\.1"):
        ray_llm.check_llm_versions({"ray": "2.59.1", "vllm": "0.29.0"})
    with pytest.raises(ImportError, match=r"tpo_ray\[llm\]"):
        ray_llm.check_llm_versions({"ray": "2.60.0", "vllm": None})
    ray_llm.check_llm_versions(PINNED)
    # the editor checks when it starts, before any data moves
    monkeypatch.setattr(ray_llm, "installed_llm_versions", lambda: {"ray": "2.60.0", "vllm": "0.26.1"})
    cfg = load_config(None, ["negatives.editor=vllm", "negatives.llm.model=/models/qwen"])
    with pytest.raises(ray_llm.LLMVersionError, match="vllm 0.26.1"):
        ray_llm.VLLMEditor(cfg.negatives).apply(None)


def test_the_llm_extra_pins_what_the_editor_checks() -> None:
    line = re.search(r"^llm = (\[.*\])$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    extras = json.loads(line)
    pins = {re.split(r"[\[<>=]", e, maxsplit=1)[0]: re.sub(r"^[a-z]+(\[[a-z]+\])?", "", e) for e in extras}
    assert pins == ray_llm.LLM_REQUIREMENTS


# ----------------------------------------------------------------------------- the HTTP path's errors
def test_http_failures_become_error_answers_through_rays_http_stage() -> None:
    from ray.llm._internal.batch.stages.http_request_stage import HttpRequestUDF

    with ChatServer(respond=scripted) as server:
        udf = HttpRequestUDF(data_column="__data", expected_input_keys=["payload"], url=server.url + "/chat/completions",
                             max_retries=0, session_factory=partial(ray_llm.TolerantSession, max_retries=1,
                                                                   base_wait_s=0.01))
        rows = [openai_request({**request_row(), schema.CAPTION: c["caption"], schema.ROW: i},
                               llm={"model": "m"}, max_edits=1, guided_json=True) for i, c in enumerate(captions(7))]

        async def run() -> list[dict]:
            return [o async for o in udf.udf([{**r, "__idx_in_batch": i} for i, r in enumerate(rows)])]

        outs = asyncio.run(run())
        assert server.requests == 8  # the 503 was asked twice (one retry), everything else once
        assert all(b["response_format"]["type"] == "json_schema" for b in server.bodies)
    # Ray Data carries the responses of a block in one Arrow column: successes and error bodies mixed
    outs = pa.Table.from_pylist(outs).to_pylist()
    assert outs[0]["http_response"]["error"] is None and outs[1]["http_response"]["choices"] is None
    answers = {fault_for(rows[o["__idx_in_batch"]][schema.CAPTION]): openai_response(
        {**rows[o["__idx_in_batch"]], "http_response": o["http_response"]}) for o in outs}
    assert answers["dog"][schema.EDITOR_REASON] is None and json.loads(answers["dog"][schema.RAW_OUTPUT])
    for animal, status in (("cat", 400), ("horse", 500), ("bird", 503), ("cow", 200), ("goat", 200)):
        body = json.loads(answers[animal][schema.RAW_OUTPUT])
        assert answers[animal][schema.EDITOR_REASON] == HTTP_ERROR and body["error"]["status"] == status
    assert "Internal Server Error" in answers["horse"][schema.RAW_OUTPUT]
    assert "not a JSON object" in answers["cow"][schema.RAW_OUTPUT]
    assert answers["sheep"] == {**answers["sheep"], schema.EDITOR_REASON: None, schema.RAW_OUTPUT: "{not json"}


def test_an_unreachable_endpoint_is_an_error_answer_not_an_exception() -> None:
    async def post() -> dict:
        async with ray_llm.TolerantSession(max_retries=1, base_wait_s=0.01) as session:
            async with await session.post("http://127.0.0.1:9/v1/chat/completions", data="{}") as response:
                return await response.json()

    body = asyncio.run(post())
    assert body["error"]["status"] == 0 and "Connect" in body["error"]["message"]


def test_guided_json_follows_the_config_switch() -> None:
    from tpo_ray.config import config_from_dict
    from tpo_ray.negatives.editors.ray_llm import _RayLLMEditor

    for switch in (True, False):
        cfg = config_from_dict({"negatives": {"editor": "vllm", "llm": {"model": "/models/m", "guided_json": switch}}},
                               "test")
        assert _RayLLMEditor(cfg.negatives).request_kwargs["guided_json"] is switch
