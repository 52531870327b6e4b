"""LLM editor failures become rejected candidates with the engine's words, never a crashed job.

Tables are shaped like `ray.data.llm`'s output with `should_continue_on_error`: failed rows bypass
the postprocess function and keep the engine's columns plus `__inference_error__`, with no
`raw_output`; a block may hold only such rows, or both kinds.
"""

from __future__ import annotations

import json

import pyarrow as pa

from tpo_ray.data import schema
from tpo_ray.negatives.editors.requests import openai_response
from tpo_ray.negatives.shards import validate_batch
from tpo_ray.negatives.validation import ENGINE_ERROR, HTTP_ERROR, UNPARSABLE_JSON

KW = {"principles": ["content", "attribute", "spatial", "contextual"], "max_edits": 1, "max_tokens": 77,
      "tokenizer": None}
ERROR = "ValueError: prompt of 5000 tokens exceeds max_model_len 4096"


def request(i: int) -> dict:
    return {schema.ID: f"r{i}", schema.CAPTION: "a red dog on the grass", schema.SHARD: 0, schema.ROW: i,
            schema.NEGATIVE_INDEX: 0, schema.ATTEMPT: 0, schema.REQUESTED_PRINCIPLE: "attribute", schema.SEED: 7 + i}


def failed(i: int) -> dict:
    """What the vLLM stage returns for a failed row: the whole data dict, engine columns included."""
    return {**request(i), "messages": [{"role": "user", "content": "..."}], "prompt": "...",
            "prompt_token_ids": None, "num_input_tokens": 0, "request_id": -1, "time_taken_llm": -1,
            "__inference_error__": ERROR}


def succeeded(i: int) -> dict:
    answer = {"caption": "a blue dog on the grass", "principle": "attribute", "edits": [{"from": "red", "to": "blue"}]}
    return {**request(i), schema.RAW_OUTPUT: json.dumps(answer), schema.EDITOR_REASON: None}


def test_a_block_of_only_failed_rows_is_rejected_with_the_engine_error() -> None:
    out = validate_batch(pa.Table.from_pylist([failed(0), failed(1)]), **KW)
    assert out.column(schema.REASON).to_pylist() == [ENGINE_ERROR, ENGINE_ERROR]
    assert out.column(schema.RAW_OUTPUT).to_pylist() == [ERROR, ERROR]
    assert out.column(schema.NEGATIVE).to_pylist() == [None, None]


def test_mixed_blocks_and_clean_blocks_end_in_one_schema() -> None:
    mixed = [failed(0), {**succeeded(1), "__inference_error__": ""}]
    keys = sorted({k for row in mixed for k in row})
    mixed_block = pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in mixed])
    a = validate_batch(mixed_block, **KW)
    b = validate_batch(pa.Table.from_pylist([succeeded(2)]), **KW)
    both = pa.concat_tables([a, b])  # what the driver does with a shard's blocks
    assert both.column(schema.REASON).to_pylist() == [ENGINE_ERROR, None, None]
    assert both.column(schema.NEGATIVE).to_pylist() == [None, "a blue dog on the grass", "a blue dog on the grass"]


def test_http_error_bodies_are_rejected_with_the_body_and_bad_json_stays_unparsable() -> None:
    error_body = {"error": {"message": "This model's maximum context length is 4096 tokens", "code": 400}}
    row = openai_response({**request(0), "http_response": error_body})
    assert row[schema.EDITOR_REASON] == HTTP_ERROR and "maximum context length" in row[schema.RAW_OUTPUT]
    assert openai_response({**request(0), "http_response": None})[schema.EDITOR_REASON] == HTTP_ERROR
    garbage = openai_response({**request(1), "http_response": {"choices": [{"message": {"content": "{not json"}}]}})
    out = validate_batch(pa.Table.from_pylist([row, garbage]), **KW)
    assert out.column(schema.REASON).to_pylist() == [HTTP_ERROR, UNPARSABLE_JSON]


def test_error_bodies_and_completions_in_one_arrow_block_keep_their_kind() -> None:
    """Ray Data holds a block's `http_response` values in one struct column: a completion then carries
    `error: None` and an error body `choices: None`; neither may be misread as the other."""
    ok = {"choices": [{"message": {"content": "hi"}}]}
    error = {"error": {"status": 503, "message": "overloaded"}}
    merged = pa.Table.from_pylist([{"r": ok}, {"r": error}]).column("r").to_pylist()
    assert merged[0]["error"] is None and merged[1]["choices"] is None
    answers = [openai_response({**request(i), "http_response": r}) for i, r in enumerate(merged)]
    assert [a[schema.EDITOR_REASON] for a in answers] == [None, HTTP_ERROR]
    assert answers[0][schema.RAW_OUTPUT] == "hi" and json.loads(answers[1][schema.RAW_OUTPUT]) == error
