"""Plain request/response functions for LLM editors (no Ray, no vllm: testable on CPU).

Request rows carry `caption`, `requested_principle` and `seed`; these functions turn a row into
a chat request for vLLM or an OpenAI-compatible endpoint, and an engine answer back into the
row's `raw_output`. The columns the job needs later are kept; prompts are not carried further.
With `guided_json`, the request also carries the answer's JSON schema, so an engine that decodes
under a schema (vLLM structured outputs; `response_format` on an OpenAI-compatible server) can only
answer in the shape validation expects.
"""

from __future__ import annotations

import json
from typing import Any

from tpo_ray.config import LLMSettings
from tpo_ray.data import schema
from tpo_ray.negatives.principles import build_messages
from tpo_ray.negatives.validation import HTTP_ERROR

REQUEST_COLUMNS = (schema.ID, schema.CAPTION, schema.SHARD, schema.ROW, schema.NEGATIVE_INDEX, schema.ATTEMPT,
                   schema.REQUESTED_PRINCIPLE, schema.SEED)


def messages_for(row: dict[str, Any], max_edits: int, template_version: str) -> list[dict[str, str]]:
    return build_messages(row[schema.CAPTION], row[schema.REQUESTED_PRINCIPLE], max_edits, template_version)


ANSWER_SCHEMA_NAME = "negative_caption"


def answer_schema(principle: str | None, max_edits: int) -> dict[str, Any]:
    """JSON schema of an editor's answer: the edited caption, the requested principle (the only value
    allowed when the request names one) and 1..max_edits {from, to} edits. Properties are listed in
    the order the instruction asks for them (guided decoding generates them in schema order)."""
    edit = {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["from", "to"], "additionalProperties": False}
    return {
        "type": "object",
        "properties": {
            "caption": {"type": "string"},
            "principle": {"type": "string"} if principle is None else {"type": "string", "enum": [principle]},
            "edits": {"type": "array", "items": edit, "minItems": 1, "maxItems": max_edits},
        },
        "required": ["caption", "principle", "edits"],
        "additionalProperties": False,
    }


def vllm_request(row: dict[str, Any], *, llm: dict[str, Any], max_edits: int,
                 guided_json: bool = False) -> dict[str, Any]:
    """Row -> row + `messages` + per-row `sampling_params` (the seed makes each retry a new draw).

    `guided_json` adds `structured_outputs: {"json": <schema as text>}`, which ray.data.llm (2.60)
    turns into `vllm.sampling_params.StructuredOutputsParams`; the schema travels as a string so
    Arrow keeps it intact between stages (a nested dict would become a struct with null-filled keys).
    """
    settings = LLMSettings.model_validate(llm)
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p,
                "max_tokens": settings.max_new_tokens, "seed": int(row[schema.SEED])}
    if guided_json:
        sampling["structured_outputs"] = {
            "json": json.dumps(answer_schema(row[schema.REQUESTED_PRINCIPLE], max_edits))}
    return {
        **{k: row[k] for k in REQUEST_COLUMNS},
        "messages": messages_for(row, max_edits, settings.template_version),
        "sampling_params": sampling,
    }


def vllm_response(row: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row[k] for k in REQUEST_COLUMNS}, schema.RAW_OUTPUT: row.get("generated_text"),
            schema.EDITOR_REASON: None}


def openai_request(row: dict[str, Any], *, llm: dict[str, Any], max_edits: int,
                   guided_json: bool = False) -> dict[str, Any]:
    """Row -> row + `payload`, an OpenAI chat-completions request body; `guided_json` adds a
    `response_format` of type `json_schema` (honoured by `vllm serve` and OpenAI-style servers)."""
    settings = LLMSettings.model_validate(llm)
    payload = {
        "model": settings.model,
        "messages": messages_for(row, max_edits, settings.template_version),
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_new_tokens,
        "seed": int(row[schema.SEED]),
    }
    if guided_json:
        payload["response_format"] = {"type": "json_schema", "json_schema": {
            "name": ANSWER_SCHEMA_NAME, "schema": answer_schema(row[schema.REQUESTED_PRINCIPLE], max_edits)}}
    return {**{k: row[k] for k in REQUEST_COLUMNS}, "payload": payload}


def openai_response(row: dict[str, Any]) -> dict[str, Any]:
    """Extract the answer text. A response that is an error body (an `error` field, or no `choices`)
    is rejected as `http_error` with the body as its raw output, so quarantine shows what the endpoint
    said; an empty choice is `raw_output=None` (rejected later as unparsable).

    Between stages Ray Data holds every row's response in one Arrow struct, so a success row in a
    block with error bodies carries `error: None` and an error row `choices: None`: fields that are
    None are absent, not errors.
    """
    response = row.get("http_response")
    keep = {k: row[k] for k in REQUEST_COLUMNS}
    if isinstance(response, dict):
        response = {k: v for k, v in response.items() if v is not None}
    if not isinstance(response, dict) or "error" in response or "choices" not in response:
        body = json.dumps(response, default=str)[:2000]
        return {**keep, schema.RAW_OUTPUT: body, schema.EDITOR_REASON: HTTP_ERROR}
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    return {**keep, schema.RAW_OUTPUT: content, schema.EDITOR_REASON: None}
