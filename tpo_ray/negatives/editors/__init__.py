"""Caption editors behind one interface: a Ray Data stage that fills `raw_output` for request rows.

Every editor answers in the same JSON (caption, principle, edits), so one validation path serves
all of them. LLM editors also answer verification requests (`request_kind` = verify, see
`editors/requests.py`) through the same engine when `negatives.llm.verify` is on. `rules` is offline and deterministic, `scene` edits captions of the scene world within its
grammar (`tpo_ray/world/edits.py`); `hf`, `vllm` and `openai` are LLMs (imported
lazily: vllm is the optional `llm` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tpo_ray.config import NegativesConfig


class EditorStage(Protocol):
    name: str
    model: str  # recorded as `editor_model` in every triplet
    attempts: int  # most candidates per negative (1 + retries for LLMs), asked for one pass at a time
    chooses_principle: bool  # False: the editor picks among the principles the caption allows
    verifies: bool  # True: the job asks the editor whether each chosen negative is still true (request_kind=verify)

    def apply(self, ds):  # ray.data.Dataset -> ray.data.Dataset with RAW_OUTPUT, EDITOR_REASON
        ...


def _rules(cfg: NegativesConfig) -> EditorStage:
    from tpo_ray.negatives.editors.rules_stage import RulesEditor

    return RulesEditor(cfg)


def _hf(cfg: NegativesConfig) -> EditorStage:
    from tpo_ray.negatives.editors.hf import HFEditor

    return HFEditor(cfg)


def _vllm(cfg: NegativesConfig) -> EditorStage:
    from tpo_ray.negatives.editors.ray_llm import VLLMEditor

    return VLLMEditor(cfg)


def _openai(cfg: NegativesConfig) -> EditorStage:
    from tpo_ray.negatives.editors.ray_llm import OpenAIEditor

    return OpenAIEditor(cfg)


def _scene(cfg: NegativesConfig) -> EditorStage:
    from tpo_ray.negatives.editors.scene_stage import SceneEditor

    return SceneEditor(cfg)


EDITORS: dict[str, Callable[[NegativesConfig], EditorStage]] = {
    "rules": _rules, "hf": _hf, "vllm": _vllm, "openai": _openai, "scene": _scene,
}


def build_editor(cfg: NegativesConfig) -> EditorStage:
    return EDITORS[cfg.editor](cfg)
