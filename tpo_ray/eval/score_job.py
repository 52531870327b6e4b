"""`run_score` (`tpo-ray eval score`): every sampled image scored by every configured scorer, then the
win-rate table against a baseline model.

    <eval.output>/scores.parquet     model, prompt_id, k, scorer, score, weights (one row per image and scorer)
    <eval.output>/winrates.json      {model: {scorer: win rate, interval, wins/losses/ties, means}}
    <eval.output>/scene.json         with the `scene` scorer: each image's verdict (what the verifier read,
                                     which attributes are wrong) and each model's accuracy by attribute and
                                     principle with 95% intervals (recomputed from the images every time)

Images of one (prompt, k) share their seed across models (`sample_job.sample_seed`), so the comparison
is paired; the bootstrap resamples prompts (`eval.winrate`). Scoring runs where the command runs, one
scorer at a time over the index in batches; an image already scored with the same scorer and weights is
not scored again (a rerun after more sampling scores only the new images).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, join, write_parquet_atomic
from tpo_ray.eval.sample_job import eval_baseline, eval_dir, eval_models, read_index
from tpo_ray.eval.winrate import win_rate_table

log = logging.getLogger(__name__)
BATCH = 16


@dataclass
class ScoreResult:
    directory: str
    images: int
    table: dict[str, dict[str, Any]]
    baseline: str
    seconds: float
    scored: int = 0  # scores computed now (the rest were in scores.parquet, same image and weights)
    scene: dict[str, Any] | None = None  # scene.json's per-model accuracies, with the `scene` scorer


def load_image(path: str):
    from PIL import Image

    fs, p = filesystem_for(path)
    with fs.open(p, "rb") as fh:
        image = Image.open(fh)
        image.load()
    return image.convert("RGB")


def paired_scores(rows: list[dict[str, Any]], baseline: str) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """Scores in one shared (prompt, k) order per model and scorer, over the samples every model has;
    and the prompt of each position (the bootstrap's groups)."""
    by_model: dict[str, dict[tuple[str, int], dict[str, float]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {}).setdefault((r["prompt_id"], r["k"]), {})[r["scorer"]] = r["score"]
    if baseline not in by_model:
        raise ValueError(f"eval.baseline={baseline!r} has no samples; models sampled: {sorted(by_model)}")
    shared = sorted(set.intersection(*(set(v) for v in by_model.values())))
    scorers = sorted({r["scorer"] for r in rows})
    table = {m: {s: [v[key][s] for key in shared] for s in scorers} for m, v in by_model.items()}
    return table, [prompt for prompt, _ in shared]


def run_score(cfg: TPOConfig) -> ScoreResult:
    from tpo_ray.eval.scorers import SCORERS, build_scorer
    from tpo_ray.eval.scorers.registry import needs_weights

    start = time.perf_counter()
    directory = eval_dir(cfg)
    models = eval_models(cfg)
    index = [r for r in read_index(directory) if r["model"] in models]  # not an earlier eval's other models
    if not index:
        raise FileNotFoundError(f"no samples of {sorted(models)} under {directory}/samples: run `tpo-ray eval sample` "
                                "with this config")
    baseline = eval_baseline(cfg)
    known = read_scores(directory)
    rows: list[dict[str, Any]] = []
    scored = 0
    for name in cfg.eval.scorers:
        # what a score is keyed by besides the image: the weights, or a program's own identity (its code)
        weights = cfg.eval.scorer_weights.get(name) if needs_weights(name) else SCORERS[name].identity()
        have = {(r["model"], r["prompt_id"], r["k"]): r for r in known
                if r["scorer"] == name and r.get("weights") == weights}
        todo = [r for r in index if (r["model"], r["prompt_id"], r["k"]) not in have]
        rows += [have[key] for key in ((r["model"], r["prompt_id"], r["k"]) for r in index) if key in have]
        if not todo:
            continue
        scorer = build_scorer(name, cfg.eval.scorer_weights.get(name), cfg.model.cache_dir,
                              device="cuda" if cfg.eval.use_gpu else None)
        for i in range(0, len(todo), BATCH):
            chunk = todo[i:i + BATCH]
            scores = scorer.score([load_image(r["path"]) for r in chunk], [r["prompt"] for r in chunk])
            rows += [{"model": r["model"], "prompt_id": r["prompt_id"], "k": r["k"], "scorer": name, "score": s,
                      "weights": weights} for r, s in zip(chunk, scores)]
        scored += len(todo)
        log.info("eval: %s scored %d images (%d scored before)", name, len(todo), len(index) - len(todo))
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=SCORE_SCHEMA), join(directory, "scores.parquet"))
    scores, groups = paired_scores(rows, baseline)
    table = {model: {scorer: asdict(cell) for scorer, cell in cells.items()}
             for model, cells in win_rate_table(scores, baseline, groups).items()}
    fs, p = filesystem_for(join(directory, "winrates.json"))
    fs.pipe(p, json.dumps({"baseline": baseline, "models": table}, indent=1).encode())
    scene = write_scene_accuracy(directory, index) if "scene" in cfg.eval.scorers else None
    return ScoreResult(directory, len(index), table, baseline, time.perf_counter() - start, scored, scene)


def write_scene_accuracy(directory: str, index: list[dict[str, Any]]) -> dict[str, Any]:
    """scene.json: every image's verdict and every model's accuracy table (`world.accuracy`)."""
    from tpo_ray.eval.scorers.scene import scene_accuracy, scene_verdicts

    verdicts = scene_verdicts(index, load_image)
    models = scene_accuracy(verdicts)
    rows = [{"model": m, "prompt_id": pid, "k": k, "read": v.read, "wrong": v.wrong()}
            for (m, pid, k), v in sorted(verdicts.items())]
    fs, p = filesystem_for(join(directory, "scene.json"))
    fs.pipe(p, json.dumps({"models": models, "verdicts": rows}, indent=1).encode())
    return models


SCORE_SCHEMA = pa.schema([("model", pa.string()), ("prompt_id", pa.string()), ("k", pa.int64()),
                          ("scorer", pa.string()), ("score", pa.float64()), ("weights", pa.string())])


def read_scores(directory: str) -> list[dict[str, Any]]:
    """The rows of `scores.parquet`, or none before the first scoring (reused for images already scored
    with the same weights; read by the report)."""
    from tpo_ray.data.io import read_parquet

    fs, p = filesystem_for(join(directory, "scores.parquet"))
    return read_parquet(join(directory, "scores.parquet")).to_pylist() if fs.exists(p) else []
