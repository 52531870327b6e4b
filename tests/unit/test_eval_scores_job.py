"""`run_score` on images written here (no sampling, no Ray): what each score records and when it is reused,
scores kept across runs of other scorers, only the config's current images scored, the weights checked
before any work, a corrupt image named, and winrates.json's layout."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

import tpo_ray.eval.score_job as score_job
from tests.helpers.clip import tiny_clip_folder
from tpo_ray.config import config_from_dict
from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.eval.score_job import read_scores, run_score

PROMPTS = [("p-0", "a red circle", "color"), ("p-1", "a blue square", "shape"), ("p-2", "two green triangles", "color")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return tiny_clip_folder(tmp_path_factory.mktemp("clip") / "model")


def write_image(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (48, 48), color)
    image.paste((255 - color[0], color[2], color[1]), (8, 8, 30, 40))
    image.save(path)


def sampled(out: Path, models: list[str], prompts=PROMPTS, images: int = 2) -> list[dict[str, Any]]:
    """Index rows and their PNGs under out/samples, as `eval sample` writes them (no image_sha256: the
    scorer hashes the files itself)."""
    rows = []
    for m, model in enumerate(models):
        for p, (pid, text, category) in enumerate(prompts):
            for k in range(images):
                path = out / "samples" / model / f"{pid}_{k}.png"
                write_image(path, (40 * p + 20 * k, 90 + 50 * m, 200 - 30 * p))
                rows.append({"model": model, "prompt_id": pid, "prompt": text, "category": category, "k": k,
                             "seed": k, "path": str(path)})
    write_parquet_atomic(pa.Table.from_pylist(rows), out / "samples" / "index" / f"{'-'.join(models)}.parquet")
    return rows


def config(tmp_path: Path, scorers: dict[str, str | None], **eval_: Any):
    return config_from_dict({
        "output_dir": str(tmp_path / "out"), "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "m")},
        "eval": {"models": {"base": "tiny:sd15", "tdpo": "tiny:sd15"}, "output": str(tmp_path / "eval"),
                 "scorers": list(scorers), "scorer_weights": {k: v for k, v in scorers.items() if v}, **eval_}},
        "test")


@pytest.fixture
def index(tmp_path, monkeypatch) -> list[dict[str, Any]]:
    """Two models' images of three prompts; `current_index` returns them (the sampler's own tests cover
    which rows are current)."""
    rows = sampled(tmp_path / "eval", ["base", "tdpo"])
    monkeypatch.setattr(score_job, "current_index", lambda cfg: list(rows))
    return rows


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_every_score_records_its_scorer_stamp_options_and_image_and_is_reused_only_when_all_match(
        tmp_path, clip, index) -> None:
    pick = tmp_path / "pick"
    shutil.copytree(clip, pick)
    cfg = config(tmp_path, {"clip": str(clip), "pickscore": str(pick)})
    first = run_score(cfg)
    assert first.scored == 24  # 12 images x 2 scorers
    rows = read_scores(first.directory)
    assert {(r["scorer"], r["options"], r["weights"]) for r in rows} == {("clip", "{}", str(clip)),
                                                                       ("pickscore", "{}", str(pick))}
    stamps = {r["scorer"]: r["scorer_stamp"] for r in rows}
    assert stamps["clip"].startswith("files:") and stamps["clip"] == stamps["pickscore"]  # same files, sizes, times
    by_image = {(r["model"], r["prompt_id"], r["k"]): r["image_sha256"] for r in rows}
    assert all(by_image[(r["model"], r["prompt_id"], r["k"])] == sha(r["path"]) for r in index)
    assert run_score(cfg).scored == 0

    write_image(Path(index[0]["path"]), (1, 2, 3))  # sampled again with other content
    again = run_score(cfg)
    assert again.scored == 2  # that image, by both scorers
    rows = read_scores(again.directory)
    assert len(rows) == 24 and {r["image_sha256"] for r in rows if r["prompt_id"] == "p-0" and r["k"] == 0
                                and r["model"] == "base"} == {sha(index[0]["path"])}  # the old image's scores gone

    weights = next(pick.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # replaced (same size, new time): a new stamp
    assert run_score(cfg).scored == 12  # pickscore's; clip's are kept
    moved = tmp_path / "moved"
    shutil.copytree(clip, moved)  # the same files elsewhere (copy2 keeps times): the same stamp
    assert run_score(config(tmp_path, {"clip": str(moved), "pickscore": str(pick)})).scored == 0


def test_a_run_with_fewer_scorers_keeps_the_others_scores(tmp_path, clip, index) -> None:
    run_score(config(tmp_path, {"clip": str(clip), "pickscore": str(clip)}))
    result = run_score(config(tmp_path, {"clip": str(clip)}))
    assert result.scored == 0 and set(result.table["tdpo"]) == {"clip"}
    assert {r["scorer"] for r in read_scores(result.directory)} == {"clip", "pickscore"}
    assert sum(r["scorer"] == "pickscore" for r in read_scores(result.directory)) == 12
    saved = json.loads((Path(result.directory) / "winrates.json").read_text())
    assert set(saved["settings"]["scorers"]) == {"clip"} and set(saved["means"]["base"]) == {"clip"}


def test_only_the_configs_current_images_are_scored(tmp_path, clip, monkeypatch) -> None:
    rows = sampled(tmp_path / "eval", ["base", "tdpo"])
    other = sampled(tmp_path / "eval", ["base", "tdpo"], [("q-0", "a cat", "animal")])  # another prompt set
    assert {r["prompt_id"] for r in rows + other} == {"p-0", "p-1", "p-2", "q-0"}
    current = [r for r in rows if r["prompt_id"] != "p-2"]  # e.g. eval.max_prompts = 2
    monkeypatch.setattr(score_job, "current_index", lambda cfg: list(current))
    result = run_score(config(tmp_path, {"clip": str(clip)}))
    assert result.images == 8 and result.scored == 8
    assert {r["prompt_id"] for r in read_scores(result.directory)} == {"p-0", "p-1"}
    saved = json.loads((Path(result.directory) / "winrates.json").read_text())
    assert saved["pairs"] == 4 and saved["prompts"] == 2 and saved["models"]["tdpo"]["clip"]["n"] == 4
    assert set(saved["by_category"]) == {"color", "shape"}
    assert saved["by_category"]["color"]["tdpo"]["clip"]["n"] == 2


def test_winrates_json_records_the_settings_and_keeps_baseline_and_models(tmp_path, clip, index, monkeypatch) -> None:
    from tpo_ray.eval.scorers import SCORERS

    cfg = config(tmp_path, {"clip": str(clip), "scene": None}, prompts="t2i_compbench", max_prompts=3,
                 images_per_prompt=2, baseline="tdpo")
    # the verifier reads prompts of the scene grammar, not these: every image scores the same
    monkeypatch.setattr(SCORERS["scene"], "score", lambda self, images, prompts: [0.5] * len(images))
    monkeypatch.setattr(score_job, "write_scene_accuracy", lambda directory, index: {})
    result = run_score(cfg)
    saved = json.loads((Path(result.directory) / "winrates.json").read_text())
    assert saved["baseline"] == "tdpo" and list(saved["models"]) == ["base"]
    assert set(saved["models"]["base"]) == {"clip", "scene"}
    settings = saved["settings"]
    assert settings["scorers"]["clip"]["stamp"].startswith("files:") and settings["scorers"]["clip"]["options"] == {}
    assert settings["scorers"]["scene"]["stamp"].startswith("program:scene-verifier:")
    assert (settings["prompts"], settings["max_prompts"], settings["prompt_count"], settings["images_per_prompt"]) == (
        "t2i_compbench", 3, 3, 2)
    assert settings["images"] == {"base": 6, "tdpo": 6} and settings["baseline"] == "tdpo"
    cell = saved["models"]["base"]["scene"]  # every pair ties: 0.5 with an interval, not certainty
    assert (cell["ties"], cell["rate"]) == (6, 0.5) and cell["low"] < 0.5 < cell["high"]


def test_a_corrupt_image_is_named_with_its_model_and_prompt(tmp_path, clip, index) -> None:
    Path(index[3]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=rf"{index[3]['path']} \(model 'base', prompt 'p-1', image 1\) is not a "
                                         r"readable image"):
        run_score(config(tmp_path, {"clip": str(clip)}))


def test_every_missing_weight_is_reported_before_anything_is_read(tmp_path, clip, monkeypatch) -> None:
    from tpo_ray.eval.scorers import ScorerWeightsError

    def untouched(*args, **kwargs):
        raise AssertionError("read before the weights were checked")

    monkeypatch.setattr(score_job, "current_index", untouched)
    monkeypatch.setattr("tpo_ray.eval.scorers.build_scorer", untouched)
    empty = tmp_path / "hps"
    empty.mkdir()
    cfg = config(tmp_path, {"clip": str(clip), "pickscore": str(tmp_path / "nowhere"), "hpsv2": str(empty),
                            "imagereward": None}, hps_version="v2.0")
    with pytest.raises(ScorerWeightsError) as caught:
        run_score(cfg)
    message = str(caught.value)
    assert message.startswith("eval score: 4 scorer weight(s) missing")
    assert f"{tmp_path / 'nowhere'} does not exist" in message
    assert f"{empty}/HPS_v2_compressed.pt is missing" in message and f"{empty}/config.json is missing" in message
    assert "scorer 'imagereward' has no weights configured" in message and "'clip'" not in message


def test_scores_of_an_earlier_format_are_scored_again(tmp_path, clip, index) -> None:
    """scores.parquet written before scores were stamped: model, prompt_id, k, scorer, score, weights."""
    old = [{"model": r["model"], "prompt_id": r["prompt_id"], "k": r["k"], "scorer": "clip", "score": 1.0,
            "weights": str(clip)} for r in index]
    write_parquet_atomic(pa.Table.from_pylist(old), tmp_path / "eval" / "scores.parquet")
    result = run_score(config(tmp_path, {"clip": str(clip)}))
    assert result.scored == 12 and len(read_scores(result.directory)) == 12
    assert all(r["image_sha256"] for r in read_scores(result.directory))
