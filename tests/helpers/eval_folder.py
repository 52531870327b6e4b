"""A finished eval folder made by hand (no Ray, no sampling): index, images, scores, win rates and the
implicit summary as `eval sample`, `eval score` and `eval implicit` write them, plus leftovers of an
earlier eval (a model and a scorer this config no longer compares), for the report tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tpo_ray.config import TPOConfig, config_from_dict

PROMPTS = ["a red circle", "a blue square on the left", "two green triangles"]


def cell(rate: float) -> dict:
    return {"rate": rate, "low": rate - 0.1, "high": rate + 0.1, "wins": 2, "losses": 1, "ties": 0,
            "mean_a": 1.0, "mean_b": 0.5}


def group(acc: float, implicit: bool = True) -> dict:
    out = {"n": 12, "pairs": 3, "acc": acc, "margin": -1e-7, "acc_interval": [acc - 0.2, acc + 0.2]}
    if implicit:
        out.update(implicit_acc=0.5, implicit_margin=0.0, implicit_acc_interval=[0.3, 0.7])
    return out


def entry(acc: float, implicit: bool = True) -> dict:
    return {"overall": group(acc, implicit), "by_principle": {"content": group(acc, implicit)},
            "by_timestep": {"300": group(acc, implicit)}, "by_edits": {"1": group(acc, implicit)}}


def make_eval_folder(tmp: Path, size: int = 512, **eval_overrides) -> TPOConfig:
    """A config comparing base (tiny:sd15) and tdpo (a tiny U-Net folder) over three prompts, against base,
    scored by a tiny CLIP; its eval folder also holds model `old` and scorer `pickscore` of an earlier eval."""
    from tpo_ray.eval.implicit_job import SUMMARY_FORMAT, _stamp
    from tpo_ray.eval.sample_job import INDEX_SCHEMA, wanted_rows
    from tpo_ray.eval.sampling import describe_models
    from tpo_ray.eval.score_job import SCORE_SCHEMA, scorer_setups
    from tpo_ray.models.tiny import build_tiny_pipeline, save_tiny_clip

    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    tdpo = tmp / "tdpo-unet"
    build_tiny_pipeline("sd15", seed=1).unet.save_pretrained(tdpo)
    clip = save_tiny_clip(tmp / "clip")
    cfg = config_from_dict({
        "output_dir": str(tmp / "out"), "tracking": {"enabled": False},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp / "models")},
        "eval": {"prompts": str(prompts), "models": {"base": "tiny:sd15", "tdpo": str(tdpo)}, "scorers": ["clip"],
                 "scorer_weights": {"clip": str(clip)}, "output": str(tmp / "eval"), **eval_overrides},
    }, "test")
    directory = tmp / "eval"
    wanted = wanted_rows(cfg, describe_models(cfg))
    wanted += [{**w, "model": "old", "model_stamp": "0" * 16} for w in wanted if w["model"] == "base"]
    setups = scorer_setups(cfg)
    rows, scores = [], []
    for i, w in enumerate(wanted):
        path = directory / "samples" / w["model"] / f"{w['prompt_id']}_{w['k']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (40 * i, 100, 200 if w["model"] == "base" else 50)).save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append({**{c: w.get(c) for c in INDEX_SCHEMA.names}, "category": f"cat{i % 2}", "path": str(path),
                     "image_sha256": sha})
        value = {"base": 1.0, "tdpo": 2.0, "old": 3.0}[w["model"]] + (i % 3)
        for setup in setups:
            scores.append({"model": w["model"], "prompt_id": w["prompt_id"], "k": w["k"], "scorer": setup.name,
                           "score": value, "scorer_stamp": setup.stamp, "options": setup.options_json,
                           "image_sha256": sha, "weights": setup.weights})
        scores.append({"model": w["model"], "prompt_id": w["prompt_id"], "k": w["k"], "scorer": "pickscore",
                       "score": 0.0, "scorer_stamp": "x", "options": "{}", "image_sha256": sha, "weights": "p"})
    (directory / "samples" / "index").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), directory / "samples" / "index" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(scores, schema=SCORE_SCHEMA), directory / "scores.parquet")
    recorded = {s.name: {"stamp": s.stamp, "options": s.options, "weights": s.weights} for s in setups}
    (directory / "winrates.json").write_text(json.dumps({
        "baseline": "base", "models": {"tdpo": {"clip": cell(0.8), "pickscore": cell(0.5)},
                                       "old": {"clip": cell(0.9), "pickscore": cell(0.5)}},
        "means": {"base": {"clip": 2.0}, "tdpo": {"clip": 3.0}},
        "by_category": {"cat0": {"tdpo": {"clip": cell(0.75)}, "old": {"clip": cell(1.0)}},
                        "cat1": {"tdpo": {"clip": cell(0.85)}, "old": {"clip": cell(0.2)}}},
        "settings": {"scorers": recorded, "prompts": cfg.eval.prompts, "max_prompts": cfg.eval.max_prompts,
                     "ties": "half", "interval": "percentile bootstrap over prompts"}}))
    models = dict(cfg.eval.models)
    (directory / "implicit").mkdir()
    (directory / "implicit" / "summary.json").write_text(json.dumps({
        "key": "k", "format": SUMMARY_FORMAT, "reference": "base", "models": {**models, "old": "/gone"},
        "stamps": {n: _stamp(s) for n, s in models.items()}, "pairs": 3, "train_eval_pairs": 3,
        "timesteps": [300, 700], "noise_draws": 2,
        "figures": {"base": entry(0.5, implicit=False), "tdpo": entry(0.7), "old": entry(0.9)}}))
    return cfg
