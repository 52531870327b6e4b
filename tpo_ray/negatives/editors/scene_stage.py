"""The scene editor as a Ray Data stage: in-grammar negatives for captions of the world (`tpo_ray/world`).

Answers in the rules editor's JSON, so the same validation and quarantine serve it; a caption outside the
scene grammar has nothing to edit (`no_editable_term`)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from tpo_ray.config import NegativesConfig
from tpo_ray.data import schema
from tpo_ray.negatives.validation import NO_EDITABLE_TERM


def scene_edit_batch(batch: pa.Table, principles: list[str], weights: dict[str, float] | None,
                     max_edits: int) -> pa.Table:
    from tpo_ray.world.edits import scene_edit

    raws, reasons = [], []
    for caption, seed in zip(batch.column(schema.CAPTION).to_pylist(), batch.column(schema.SEED).to_pylist()):
        edit = scene_edit(caption, principles=principles, max_edits=max_edits, seed=seed, weights=weights)
        raws.append(None if edit is None else
                    json.dumps({"caption": edit.negative, "principle": edit.principle, "edits": edit.edits}))
        reasons.append(NO_EDITABLE_TERM if edit is None else None)
    return batch.append_column(schema.RAW_OUTPUT, pa.array(raws, pa.string())).append_column(
        schema.EDITOR_REASON, pa.array(reasons, pa.string()))


class SceneEditor:
    name = "scene"
    attempts = 1
    chooses_principle = False

    def __init__(self, cfg: NegativesConfig) -> None:
        from tpo_ray.world.edits import SCENE_EDITOR_MODEL

        self.model = SCENE_EDITOR_MODEL
        self.kwargs: dict[str, Any] = {"principles": list(cfg.principles), "weights": cfg.principle_weights,
                                       "max_edits": cfg.max_edits}

    def apply(self, ds):
        return ds.map_batches(scene_edit_batch, batch_format="pyarrow", fn_kwargs=self.kwargs, zero_copy_batch=True)
