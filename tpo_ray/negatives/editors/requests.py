"""Plain request/response functions for LLM editors (no Ray, no vllm: testable on CPU).

Request rows carry `caption`, `requested_principle`, `seed` and `request_kind`; these functions turn
a row into a chat request for vLLM or an OpenAI-compatible endpoint, and an engine answer back into
the row's `raw_output`. The columns the job needs later are kept; prompts are not carried further.
A row of kind `edit` asks for a negative; a row of kind `verify` asks the same engine whether the
candidate negative in `verify_negative` could still describe the image of the caption (one short
greedy answer, yes or no). With `guided_json`, the request also carries the answer's JSON schema,
so an engine that decodes under a schema (vLLM structured outputs; `response_format` on an
OpenAI-compatible server) can only answer in the shape validation expects.
"""

from __future__ import annotations

import json
from typing import Any

from tpo_ray.config import LLMSettings
from tpo_ray.data import schema
from tpo_ray.negatives.principles import build_messages, verify_messages
from tpo_ray.negatives.validation import HTTP_ERROR

KIND = "request_kind"  # "edit" (ask for a negative) or "verify" (ask whether a negative is still true)
VERIFY_NEGATIVE = "verify_negative"  # the candidate negative a verify request asks about
VERDICT = "verdict"  # the verification answer of a candidate: yes / no / unparsable (selection.parse_verdict)
EDIT, VERIFY = "edit", "verify"
REQUEST_COLUMNS = (schema.ID, schema.CAPTION, schema.SHARD, schema.ROW, schema.NEGATIVE_INDEX, schema.ATTEMPT,
                   schema.REQUESTED_PRINCIPLE, schema.SEED, KIND, VERIFY_NEGATIVE)
VERIFY_MAX_TOKENS = 16  # "yes"/"no", with room for a model that starts with a word or two of prose


def is_verify(row: dict[str, Any]) -> bool:
    return row.get(KIND) == VERIFY


def messages_for(row: dict[str, Any], max_edits: int, template_version: str) -> list[dict[str, str]]:
    if is_verify(row):
        return verify_messages(row[schema.CAPTION], row[VERIFY_NEGATIVE])
    return build_messages(row[schema.CAPTION], row[schema.REQUESTED_PRINCIPLE], max_edits, template_version)


ANSWER_SCHEMA_NAME = "negative_caption"


def answer_schema(principle: str | None, max_edits: int) -> dict[str, Any]:
    """JSON schema of an editor's answer: `no_edit` (true: the caption holds nothing to change under the
    principle), the edited caption, the requested principle (the only value allowed when the request
    names one) and up to max_edits {from, to} edits. Properties are listed in the order the
    instruction asks for them (guided decoding generates them in schema order), so the model decides
    whether an edit is possible before it writes one.

    One flat object with every property required and no conditionals: what vLLM's structured outputs
    and OpenAI's strict `json_schema` both honour. Hence `edits` may be empty in either branch; a
    non-empty caption with no edits is rejected by validation, and a `no_edit` answer is read before
    anything else (`selection.no_edit_answer`)."""
    edit = {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["from", "to"], "additionalProperties": False}
    return {
        "type": "object",
        "properties": {
            "no_edit": {"type": "boolean"},
            "caption": {"type": "string"},
            "principle": {"type": "string"} if principle is None else {"type": "string", "enum": [principle]},
            "edits": {"type": "array", "items": edit, "minItems": 0, "maxItems": max_edits},
        },
        "required": ["no_edit", "caption", "principle", "edits"],
        "additionalProperties": False,
    }


VERDICT_SCHEMA_NAME = "still_true"


def verdict_schema(root_object: bool) -> dict[str, Any]:
    """JSON schema of a verification answer: the JSON string "yes" or "no" (vLLM), or for an OpenAI
    endpoint, whose `json_schema` must be an object, `{"answer": "yes" | "no"}`. Either parses with
    `selection.parse_verdict`."""
    answer = {"type": "string", "enum": ["yes", "no"]}
    if not root_object:
        return answer
    return {"type": "object", "properties": {"answer": answer}, "required": ["answer"], "additionalProperties": False}


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
    if is_verify(row):  # a verdict: greedy and short
        sampling.update({"temperature": 0.0, "top_p": 1.0, "max_tokens": VERIFY_MAX_TOKENS})
    if guided_json:  # one key ("json") for both kinds: Arrow holds every row's dict in one struct
        shape = verdict_schema(False) if is_verify(row) else answer_schema(row[schema.REQUESTED_PRINCIPLE], max_edits)
        sampling["structured_outputs"] = {"json": json.dumps(shape)}
    return {
        **kept(row),
        "messages": messages_for(row, max_edits, settings.template_version),
        "sampling_params": sampling,
    }


def kept(row: dict[str, Any]) -> dict[str, Any]:
    """The request columns of a row (a row from before request kinds has none: an edit request)."""
    return {k: row.get(k) for k in REQUEST_COLUMNS}


def vllm_response(row: dict[str, Any]) -> dict[str, Any]:
    return {**kept(row), schema.RAW_OUTPUT: row.get("generated_text"),
            schema.EDITOR_REASON: None}


def openai_request(row: dict[str, Any], *, llm: dict[str, Any], max_edits: int,
                   guided_json: bool = False) -> dict[str, Any]:
    """Row -> row + `payload`, an OpenAI chat-completions request body; `guided_json` adds a
    `response_format` of type `json_schema` (honoured by `vllm serve` and OpenAI-style servers).

    The response format travels as JSON text: Ray Data holds every row's payload of a block in one
    Arrow struct, and the edit and verification schemas differ in shape (unified, they would gain
    each other's properties as nulls, or fail to unify). The HTTP session decodes it into the body it
    sends (`ray_llm.request_body`)."""
    settings = LLMSettings.model_validate(llm)
    verify = is_verify(row)
    payload = {
        "model": settings.model,
        "messages": messages_for(row, max_edits, settings.template_version),
        "temperature": 0.0 if verify else settings.temperature,
        "top_p": 1.0 if verify else settings.top_p,
        "max_tokens": VERIFY_MAX_TOKENS if verify else settings.max_new_tokens,
        "seed": int(row[schema.SEED]),
    }
    if guided_json:
        name, shape = ((VERDICT_SCHEMA_NAME, verdict_schema(True)) if verify else
                       (ANSWER_SCHEMA_NAME, answer_schema(row[schema.REQUESTED_PRINCIPLE], max_edits)))
        payload["response_format"] = json.dumps({"type": "json_schema", "json_schema": {"name": name, "schema": shape}})
    return {**kept(row), "payload": payload}


def openai_response(row: dict[str, Any]) -> dict[str, Any]:
    """Extract the answer text. A response that is an error body (an `error` field, or no `choices`)
    is rejected as `http_error` with the body as its raw output, so quarantine shows what the endpoint
    said; an empty choice is `raw_output=None` (rejected later as unparsable).

    Between stages Ray Data holds every row's response in one Arrow struct, so a success row in a
    block with error bodies carries `error: None` and an error row `choices: None`: fields that are
    None are absent, not errors.
    """
    response = row.get("http_response")
    keep = kept(row)
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
