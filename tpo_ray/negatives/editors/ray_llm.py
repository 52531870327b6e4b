"""LLM editors on `ray.data.llm`: vLLM engines on GPU actors, or an OpenAI-compatible endpoint.

`vllm` is the production path (prefix caching on, since every request shares the instruction);
`openai` sends the same requests to a server the user already runs (`vllm serve`, Ray Serve LLM).
"""

from __future__ import annotations

import os
from functools import partial

from tpo_ray.config import NegativesConfig


def _ray_llm():
    try:
        import ray.data.llm as ray_llm
    except ImportError as err:  # pragma: no cover - ray[data] ships it
        raise ImportError("ray.data.llm is unavailable; install ray[data]>=2.50") from err
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


def http_processor_config(cfg: NegativesConfig):
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
        max_retries=llm.max_request_retries,
    )


class _RayLLMEditor:
    """A `ray.data.llm` processor around plain request/response functions."""

    name: str
    chooses_principle = True

    def __init__(self, cfg: NegativesConfig) -> None:
        self.cfg = cfg
        self.model = cfg.llm.model or ""
        self.attempts = 1 + cfg.retries
        self.request_kwargs = {"llm": cfg.llm.model_dump(mode="json"), "max_edits": cfg.max_edits}

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

        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise ImportError("negatives.editor='vllm' needs the llm extra: pip install 'tpo_ray[llm]' (GPU)") from err
        return vllm_processor_config(self.cfg), vllm_request, vllm_response


class OpenAIEditor(_RayLLMEditor):
    name = "openai"

    def processor_parts(self):
        from tpo_ray.negatives.editors.requests import openai_request, openai_response

        return http_processor_config(self.cfg), openai_request, openai_response
