"""Sampling a prompt set from several models on Ray Data: the same seed per (prompt, image) for every
model, images as files plus a parquet index, and a rerun that samples nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tpo_ray.config import apply_overrides, config_from_dict
from tpo_ray.eval.prompt_sets import content_ids
from tpo_ray.eval.sample_job import read_index, run_sample

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_two_models_get_the_same_seeds_and_a_rerun_resumes(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    cfg = config_from_dict({
        "output_dir": str(tmp_path / "out"), "data": {"resolution": 64},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "models")},
        "eval": {"prompts": str(prompts), "models": {"a": "tiny:sd15", "b": "tiny:sd15"}, "images_per_prompt": 2,
                 "num_inference_steps": 2, "sample_batch_size": 2},
    }, "test")
    first = run_sample(cfg)
    assert (first.sampled, first.skipped) == (12, 0)
    index = read_index(first.directory)
    assert len(index) == 12 and {r["model"] for r in index} == {"a", "b"}
    by_key = {(r["model"], r["prompt_id"], r["k"]): r for r in index}
    pixels = lambda r: np.asarray(Image.open(r["path"]))  # noqa: E731
    for (model, prompt_id, k), row in by_key.items():
        if model == "a":
            twin = by_key[("b", prompt_id, k)]
            assert twin["seed"] == row["seed"]
            assert np.array_equal(pixels(row), pixels(twin))  # the same model and seed: the same image
    first_id = content_ids("prompts", ["a red circle"])[0]
    a0, a1 = by_key[("a", first_id, 0)], by_key[("a", first_id, 1)]
    assert a0["seed"] != a1["seed"] and not np.array_equal(pixels(a0), pixels(a1))
    assert pixels(a0).shape == (64, 64, 3)

    again = run_sample(cfg)
    assert (again.sampled, again.skipped) == (0, 12) and len(read_index(again.directory)) == 12
    more = run_sample(config_from_dict({**cfg.model_dump(mode="json"),
                                        "eval": {**cfg.eval.model_dump(mode="json"), "images_per_prompt": 3}}, "test"))
    assert (more.sampled, more.skipped) == (6, 12)  # only the new third image of each prompt and model


def test_scores_and_win_rates_of_the_samples(tmp_path: Path) -> None:
    import json

    from tests.helpers.clip import tiny_clip_folder
    from tpo_ray.eval.score_job import run_score

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    clip = tiny_clip_folder(tmp_path / "clip")
    cfg = config_from_dict({
        "output_dir": str(tmp_path / "out"), "data": {"resolution": 64},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "models")},
        "eval": {"prompts": str(prompts), "models": {"base": "tiny:sd15", "same": "tiny:sd15"}, "images_per_prompt": 2,
                 "num_inference_steps": 2, "scorers": ["clip", "pickscore"],
                 "scorer_weights": {"clip": str(clip), "pickscore": str(clip)}},
    }, "test")
    run_sample(cfg)
    result = run_score(cfg)
    assert result.images == 8 and result.baseline == "base" and list(result.table) == ["same"]
    for cell in result.table["same"].values():  # the same model and seeds: every image ties (coin flips in the CI)
        assert (cell["ties"], cell["rate"]) == (4, 0.5) and cell["low"] <= 0.5 <= cell["high"]
        assert cell["mean_a"] == pytest.approx(cell["mean_b"])
    saved = json.loads((Path(result.directory) / "winrates.json").read_text())
    assert saved["baseline"] == "base" and set(saved["models"]["same"]) == {"clip", "pickscore"}
    assert result.scored == 16  # 8 images x 2 scorers
    again = run_score(cfg)  # nothing new: every image was scored with the same weights
    assert again.scored == 0 and again.table == result.table
    other = tmp_path / "clip-b"
    import shutil

    shutil.copytree(clip, other)
    for f in other.rglob("*.safetensors"):  # other weights: the copy is stamped as the original until they change
        f.write_bytes(f.read_bytes())
    moved = run_score(config_from_dict(apply_overrides(cfg.model_dump(mode="json"),
                                                       {"eval.scorer_weights.pickscore": str(other)}), "test"))
    assert moved.scored == 8  # pickscore's weights changed: its images are scored again, clip's are kept


def test_style_reproduction_of_sampled_style_prompts_and_its_report_table(tmp_path: Path) -> None:
    import json

    from tpo_ray.eval.report import run_report
    from tpo_ray.eval.style import run_style
    from tpo_ray.models.tiny import save_tiny_clip

    prompts = tmp_path / "styles.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "an oil painting, a fox", "category": "oil_painting"},
        {"prompt": "pixel art, a fox", "category": "pixel_art"},
        {"prompt": "a fox", "category": None}]) + "\n")  # no style requested: left out
    clip = save_tiny_clip(tmp_path / "clip")
    cfg = config_from_dict({
        "output_dir": str(tmp_path / "out"), "data": {"resolution": 64}, "tracking": {"enabled": False},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "models")},
        "eval": {"prompts": str(prompts), "models": {"a": "tiny:sd15", "b": "tiny:sd15"}, "num_inference_steps": 2,
                 "scorers": [], "scorer_weights": {"clip": str(clip)}},
    }, "test")
    run_sample(cfg)
    result = run_style(cfg)
    assert set(result.table) == {"a", "b"}
    for entry in result.table.values():
        assert entry["n"] == 2 and set(entry["by_style"]) == {"oil_painting", "pixel_art"}
    assert result.table["a"] == result.table["b"]  # the same model and seeds find the same styles
    saved = json.loads(Path(result.path).read_text())
    assert saved["models"] == result.table and "watercolor" in saved["styles"]
    page = Path(run_report(cfg).index).read_text()
    assert 'id="style"' in page and page.count("<tr><td>a</td>") >= 1
