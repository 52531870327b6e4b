"""The `hf` editor: any local transformers causal LM with a chat template, batched `generate`.

For users without vLLM, and for CPU tests with a tiny random model (whose garbage answers must be
rejected and replaced by the fallback). Runs as a Ray Data actor pool that loads the model once.
A batch may mix edit and verification requests (`negatives.llm.verify`): each kind is generated in
its own `generate` call, verification greedy and short (`requests.VERIFY_MAX_TOKENS`).
"""

from __future__ import annotations

import pyarrow as pa

from tpo_ray.config import LLMSettings, NegativesConfig
from tpo_ray.data import schema
from tpo_ray.negatives.editors.requests import VERIFY_MAX_TOKENS, is_verify, messages_for


class HFGenerator:
    """Callable class for `map_batches`: loads tokenizer and model in `__init__`, generates in `__call__`."""

    def __init__(self, llm: dict, max_edits: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = LLMSettings.model_validate(llm)
        self.max_edits = max_edits
        device = self.settings.device
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(self.settings.model)
        self.tokenizer.padding_side = "left"  # decoder-only models generate after the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.settings.model).to(self.device).eval()
        self.generated_tokens = 0  # new tokens generated so far (pad excluded): the cost figure of a run

    def prompts(self, rows: list[dict]) -> list[str]:
        return [self.tokenizer.apply_chat_template(messages_for(r, self.max_edits, self.settings.template_version),
                                                   add_generation_prompt=True, tokenize=False) for r in rows]

    def generate(self, rows: list[dict], *, max_new_tokens: int, temperature: float) -> list[str]:
        """Answers to `rows` (one kind of request), sampled at `temperature` (0: greedy)."""
        import torch

        enc = self.tokenizer(self.prompts(rows), return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        torch.manual_seed(sum(int(r[schema.SEED]) for r in rows) % (2**31))  # reproducible for a given batch
        sample = temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
                top_p=self.settings.top_p if sample else None, pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1]:]
        self.generated_tokens += int((new != self.tokenizer.pad_token_id).sum())
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        texts: list[str | None] = [None] * len(rows)
        for verify in (False, True):
            picked = [i for i, r in enumerate(rows) if is_verify(r) == verify]
            if not picked:
                continue
            answers = self.generate([rows[i] for i in picked],
                                    max_new_tokens=VERIFY_MAX_TOKENS if verify else self.settings.max_new_tokens,
                                    temperature=0.0 if verify else self.settings.temperature)
            for i, text in zip(picked, answers):
                texts[i] = text
        return batch.append_column(schema.RAW_OUTPUT, pa.array(texts, pa.string())).append_column(
            schema.EDITOR_REASON, pa.array([None] * len(texts), pa.string()))


class HFEditor:
    name = "hf"
    chooses_principle = True

    def __init__(self, cfg: NegativesConfig) -> None:
        self.cfg = cfg
        self.model = cfg.llm.model or ""
        self.attempts = 1 + cfg.retries
        self.verifies = cfg.llm.verify

    def apply(self, ds):
        from ray.data import ActorPoolStrategy

        llm = self.cfg.llm
        return ds.map_batches(
            HFGenerator,
            fn_constructor_kwargs={"llm": llm.model_dump(mode="json"), "max_edits": self.cfg.max_edits},
            batch_size=llm.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=llm.concurrency),
            num_gpus=1 if llm.device == "cuda" else 0,
        )
