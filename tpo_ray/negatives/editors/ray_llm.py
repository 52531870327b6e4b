"""LLM editors on `ray.data.llm`: vLLM engines on GPU actors, or an OpenAI-compatible endpoint.

`vllm` is the production path (prefix caching on, since every request shares the instruction);
`openai` sends the same requests to a server the user already runs (`vllm serve`, Ray Serve LLM).
One processor answers both request kinds of a pass: edits, and with `negatives.llm.verify` the
verification of chosen negatives (`editors/requests.py`), so the verification pass reuses the pass's
engine instead of starting a second one on the same GPUs.
Both ask for answers in the validated JSON shape (guided decoding), and neither lets one failed
request stop the job: vLLM runs with `should_continue_on_error` (failed rows come back with
`__inference_error__`, see `shards.editor_answers`), and the HTTP client turns every failure
(error status, retries used up, a body that is not JSON) into an error answer that the job
quarantines as `http_error`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from functools import partial
from importlib import metadata
from typing import Any

from tpo_ray.config import NegativesConfig

# The versions this module is written against: ray.data.llm's request format (the
# `structured_outputs` key, `__inference_error__` rows) changes between Ray releases, and each Ray
# release pins one vLLM (ray[llm]==2.60.* pins vllm==0.29.0). pyproject's `llm` extra says the same
# (tests/unit/test_llm_editor_robust.py checks that the two agree).
LLM_REQUIREMENTS = {"ray": ">=2.60,<2.61", "vllm": ">=0.29,<0.30"}
LLM_EXTRA = "pip install 'tpo_ray[llm]'"
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
MAX_ERROR_TEXT = 2000


class LLMVersionError(RuntimeError):
    """The installed ray/vllm are not the versions the vLLM editor is written against."""


def installed_llm_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LLM_REQUIREMENTS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_llm_versions(installed: Mapping[str, str | None]) -> None:
    """Raise unless every package in LLM_REQUIREMENTS is installed within its range."""
    from packaging.specifiers import SpecifierSet

    if installed.get("vllm") is None:
        raise ImportError(f"negatives.editor='vllm' needs the llm extra: {LLM_EXTRA} (GPU nodes)")
    wrong = [f"{name} {installed.get(name)} (needs {name}{spec})" for name, spec in LLM_REQUIREMENTS.items()
             if installed.get(name) is None or installed[name] not in SpecifierSet(spec)]
    if wrong:
        wanted = ", ".join(f"{name}{spec}" for name, spec in LLM_REQUIREMENTS.items())
        raise LLMVersionError(
            f"negatives.editor='vllm' is written against {wanted} (ray.data.llm's vLLM stage); installed: "
            f"{'; '.join(wrong)}. Install the pinned versions with {LLM_EXTRA}, or use editor=openai against a "
            "`vllm serve` endpoint")


def _ray_llm():
    try:
        import ray.data.llm as ray_llm
    except ImportError as err:  # pragma: no cover - ray[data] ships it
        raise ImportError(f"ray.data.llm is unavailable; install ray[data]{LLM_REQUIREMENTS['ray']}") from err
    return ray_llm


def vllm_processor_config(cfg: NegativesConfig):
    """The `vLLMEngineProcessorConfig` for this job (building it needs no vllm)."""
    ray_llm = _ray_llm()
    llm = cfg.llm
    engine_kwargs = {"enable_prefix_caching": True, "tensor_parallel_size": llm.tensor_parallel_size,
                     "max_model_len": 4096, **llm.engine_kwargs}
    return ray_llm.vLLMEngineProcessorConfig(
        model_source=llm.model,
        engine_kwargs=engine_kwargs,
        batch_size=llm.batch_size,
        concurrency=llm.concurrency,
        should_continue_on_error=True,  # a failed row becomes a rejected candidate, not a failed job
        chat_template_stage=True,
        tokenize_stage=True,
        detokenize_stage=True,
    )


# ------------------------------------------------------------------------------ HTTP error handling
def answer_body(status: int, text: str) -> dict[str, Any]:
    """The JSON object handed to the postprocess function for one HTTP answer.

    A 2xx JSON object passes through. Anything else (an error status, an empty or non-JSON body, a
    JSON value that is not an object) becomes `{"error": {"status", "message"}}`, one shape for every
    failure so Arrow can hold successes and failures in one column.
    """
    body: Any = None
    if text.strip():
        try:
            body = json.loads(text)
        except ValueError:
            body = None
    if 200 <= status < 300 and isinstance(body, dict) and body:
        return body
    what = text[:MAX_ERROR_TEXT] if text.strip() else "empty response body"
    if 200 <= status < 300:
        what = f"response is not a JSON object: {what}"
    return {"error": {"status": status, "message": what}}


def request_body(data: Any) -> Any:
    """The JSON body ray.data.llm's HTTP stage serialised from a row's `payload`, with a
    `response_format` that travelled as JSON text (`requests.openai_request`) decoded into the object
    the endpoint expects; any other body is sent as it is."""
    if not isinstance(data, str):
        return data
    try:
        body = json.loads(data)
    except ValueError:
        return data
    if not isinstance(body, dict) or not isinstance(body.get("response_format"), str):
        return data
    return json.dumps({**body, "response_format": json.loads(body["response_format"])})


class _Answer:
    """What ray.data.llm's HTTP stage reads from a response: `status`, `reason` and `json()`.

    The status it sees is always 200: retries have already been made by `TolerantSession` (the
    stage's own retry loop raises once retries are used up), and the real status is in the body.
    """

    status = 200
    reason = "OK"

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    async def __aenter__(self) -> _Answer:
        return self

    async def __aexit__(self, *exc) -> bool:
        return False

    async def json(self) -> dict[str, Any]:
        return self.body


class TolerantSession:
    """An aiohttp session for `HttpRequestProcessorConfig(session_factory=...)` whose `post` never
    raises: retryable statuses (429, 5xx gateway errors) and connection errors are retried with
    exponential backoff, and whatever is left is answered as an error body (`answer_body`)."""

    def __init__(self, max_retries: int = 0, base_wait_s: float = 1.0) -> None:
        self.max_retries = max_retries
        self.base_wait_s = base_wait_s
        self._session = None

    async def __aenter__(self) -> TolerantSession:
        import aiohttp

        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc) -> bool:
        await self._session.close()
        return False

    def post(self, url: str, **kwargs: Any):  # awaited by the stage: `async with await session.post(...)`
        return self._post(url, **kwargs)

    async def _post(self, url: str, **kwargs: Any) -> _Answer:
        import aiohttp

        if "data" in kwargs:
            kwargs["data"] = request_body(kwargs["data"])

        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                async with self._session.post(url, **kwargs) as response:
                    status, text = response.status, await response.text(errors="replace")
            except (asyncio.TimeoutError, aiohttp.ClientError) as err:
                if not last:
                    await asyncio.sleep(self.base_wait_s * 2 ** attempt)
                    continue
                return _Answer({"error": {"status": 0, "message": f"{type(err).__name__}: {err}"[:MAX_ERROR_TEXT]}})
            if status in RETRYABLE_STATUS and not last:
                await asyncio.sleep(self.base_wait_s * 2 ** attempt)
                continue
            return _Answer(answer_body(status, text))
        raise AssertionError("unreachable: the last attempt always returns")  # pragma: no cover


def http_processor_config(cfg: NegativesConfig, base_wait_s: float = 1.0):
    ray_llm = _ray_llm()
    llm = cfg.llm
    key = os.environ.get(llm.api_key_env)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return ray_llm.HttpRequestProcessorConfig(
        url=llm.base_url.rstrip("/") + "/chat/completions",
        headers=headers,
        qps=llm.qps,
        concurrency=llm.concurrency,
        batch_size=llm.batch_size,
        max_retries=0,  # TolerantSession retries; the stage's own loop would raise when they run out
        session_factory=partial(TolerantSession, max_retries=llm.max_request_retries, base_wait_s=base_wait_s),
    )


# -------------------------------------------------------------------------------------- the editors
class _RayLLMEditor:
    """A `ray.data.llm` processor around plain request/response functions."""

    name: str
    chooses_principle = True

    def __init__(self, cfg: NegativesConfig) -> None:
        self.cfg = cfg
        self.model = cfg.llm.model or ""
        self.attempts = 1 + cfg.retries
        self.verifies = cfg.llm.verify
        self.request_kwargs = {"llm": cfg.llm.model_dump(mode="json"), "max_edits": cfg.max_edits,
                               "guided_json": cfg.llm.guided_json}

    def processor_parts(self):  # -> (processor config, request fn, response fn)
        raise NotImplementedError

    def build_processor(self):
        config, request, response = self.processor_parts()
        return _ray_llm().build_processor(config, preprocess=partial(request, **self.request_kwargs),
                                          postprocess=response)

    def apply(self, ds):
        return self.build_processor()(ds)


class VLLMEditor(_RayLLMEditor):
    name = "vllm"

    def processor_parts(self):
        from tpo_ray.negatives.editors.requests import vllm_request, vllm_response

        check_llm_versions(installed_llm_versions())
        return vllm_processor_config(self.cfg), vllm_request, vllm_response


class OpenAIEditor(_RayLLMEditor):
    name = "openai"

    def processor_parts(self):
        from tpo_ray.negatives.editors.requests import openai_request, openai_response

        return http_processor_config(self.cfg), openai_request, openai_response
