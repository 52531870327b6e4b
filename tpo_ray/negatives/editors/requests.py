"""Plain request/response functions for LLM editors (no Ray, no vllm: testable on CPU).

Request rows carry `caption`, `requested_principle` and `seed`; these functions turn a row into
a chat request for vLLM or an OpenAI-compatible endpoint, and an engine answer back into the
row's `raw_output`. The columns the job needs later are kept; prompts are not carried further.
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


def vllm_request(row: dict[str, Any], *, llm: dict[str, Any], max_edits: int) -> dict[str, Any]:
    """Row -> row + `messages` + per-row `sampling_params` (the seed makes each retry a new draw)."""
    settings = LLMSettings.model_validate(llm)
    return {
        **{k: row[k] for k in REQUEST_COLUMNS},
        "messages": messages_for(row, max_edits, settings.template_version),
        "sampling_params": {"temperature": settings.temperature, "top_p": settings.top_p,
                            "max_tokens": settings.max_new_tokens, "seed": int(row[schema.SEED])},
    }


def vllm_response(row: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row[k] for k in REQUEST_COLUMNS}, schema.RAW_OUTPUT: row.get("generated_text"),
            schema.EDITOR_REASON: None}


def openai_request(row: dict[str, Any], *, llm: dict[str, Any], max_edits: int) -> dict[str, Any]:
    """Row -> row + `payload`, an OpenAI chat-completions request body."""
    settings = LLMSettings.model_validate(llm)
    return {
        **{k: row[k] for k in REQUEST_COLUMNS},
        "payload": {
            "model": settings.model,
            "messages": messages_for(row, max_edits, settings.template_version),
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_new_tokens,
            "seed": int(row[schema.SEED]),
        },
    }


def openai_response(row: dict[str, Any]) -> dict[str, Any]:
    """Extract the answer text. A response without choices (an error body) is rejected as `http_error`
    with the body as its raw output, so quarantine shows what the endpoint said; an empty choice is
    `raw_output=None` (rejected later as unparsable)."""
    response = row.get("http_response")
    keep = {k: row[k] for k in REQUEST_COLUMNS}
    try:
        choices = response["choices"]
    except (KeyError, TypeError):
        body = json.dumps(response, default=str)[:2000]
        return {**keep, schema.RAW_OUTPUT: body, schema.EDITOR_REASON: HTTP_ERROR}
    try:
        content = choices[0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    return {**keep, schema.RAW_OUTPUT: content, schema.EDITOR_REASON: None}
