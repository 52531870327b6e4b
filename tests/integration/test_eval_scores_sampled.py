"""`eval sample` then `eval score` on Ray with tiny models: the scores are of the sampler's current images
(the index's image_sha256), the config's prompts alone, and a larger prompt subset scores only its new
images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpo_ray.config import apply_overrides, config_from_dict
from tpo_ray.eval.sample_job import current_index, run_sample
from tpo_ray.eval.score_job import read_scores, run_score

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_scores_follow_the_samplers_current_images_and_prompts(tmp_path: Path) -> None:
    from tests.helpers.clip import tiny_clip_folder

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p, "category": c}) for p, c in [
        ("a red circle", "color"), ("a blue square", "shape"), ("a green triangle", "color")]) + "\n")
    clip = tiny_clip_folder(tmp_path / "clip")
    cfg = config_from_dict({
        "output_dir": str(tmp_path / "out"), "data": {"resolution": 64},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "models")},
        "eval": {"prompts": str(prompts), "models": {"base": "tiny:sd15", "same": "tiny:sd15"}, "max_prompts": 2,
                 "num_inference_steps": 2, "scorers": ["clip", "pickscore"],
                 "scorer_weights": {"clip": str(clip), "pickscore": str(clip)}},
    }, "test")
    run_sample(cfg)
    index = current_index(cfg)
    assert len(index) == 4
    result = run_score(cfg)
    assert (result.images, result.scored) == (4, 8)
    rows = read_scores(result.directory)
    assert {(r["model"], r["prompt_id"], r["k"], r["image_sha256"]) for r in rows} == {
        (r["model"], r["prompt_id"], r["k"], r["image_sha256"]) for r in index}
    saved = json.loads((Path(result.directory) / "winrates.json").read_text())
    assert saved["settings"]["prompt_count"] == 2 and saved["settings"]["images"] == {"base": 2, "same": 2}
    for cell in saved["models"]["same"].values():  # the same model and seeds: every image ties, no certainty
        assert (cell["ties"], cell["rate"]) == (2, 0.5) and cell["low"] < 0.5 < cell["high"]

    more = config_from_dict(apply_overrides(cfg.model_dump(mode="json"), {"eval.max_prompts": 3}), "test")
    run_sample(more)
    bigger = run_score(more)
    assert (bigger.images, bigger.scored) == (6, 4)  # the third prompt's two images, by both scorers
    assert len(read_scores(bigger.directory)) == 12
    saved = json.loads((Path(bigger.directory) / "winrates.json").read_text())
    assert saved["pairs"] == 3 and set(saved["by_category"]) == {"color", "shape"}
