"""The scene editor as a Ray Data stage: in-grammar negatives for captions of the world (`tpo_ray/world`).

Answers in the rules editor's JSON, so the same validation and quarantine serve it; a caption outside the
scene grammar has nothing to edit (`no_editable_term`)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from tpo_ray.config import NegativesConfig
from tpo_ray.negatives.editors.rules_stage import edit_batch


def scene_edit_batch(batch: pa.Table, principles: list[str], weights: dict[str, float] | None,
                     max_edits: int) -> pa.Table:
    from tpo_ray.world.edits import scene_edit

    return edit_batch(batch, scene_edit, principles, weights, max_edits)


class SceneEditor:
    name = "scene"
    attempts = 1
    chooses_principle = False
    verifies = False  # negatives.llm.verify is for LLM editors

    def __init__(self, cfg: NegativesConfig) -> None:
        from tpo_ray.world.edits import SCENE_EDITOR_MODEL

        self.model = SCENE_EDITOR_MODEL
        self.kwargs: dict[str, Any] = {"principles": list(cfg.principles), "weights": cfg.principle_weights,
                                       "max_edits": cfg.max_edits}

    def apply(self, ds):
        return ds.map_batches(scene_edit_batch, batch_format="pyarrow", fn_kwargs=self.kwargs, zero_copy_batch=True)
