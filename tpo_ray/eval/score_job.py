"""`run_score` (`tpo-ray eval score`): every sampled image scored by every configured scorer, then the
win-rate table against a baseline model.

    <eval.output>/scores.parquet     model, prompt_id, k, scorer, score (one row per image and scorer)
    <eval.output>/winrates.json      {model: {scorer: win rate, interval, wins/losses/ties, means}}

Images of one (prompt, k) share their seed across models (`sample_job.sample_seed`), so the comparison
is paired; the bootstrap resamples prompts (`eval.winrate`). Scoring runs where the command runs, one
scorer at a time over the index in batches.
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
from tpo_ray.eval.sample_job import eval_dir, eval_models, read_index
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


def _load(path: str):
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
    from tpo_ray.eval.scorers import build_scorer

    start = time.perf_counter()
    directory = eval_dir(cfg)
    index = read_index(directory)
    if not index:
        raise FileNotFoundError(f"no samples under {directory}/samples: run `tpo-ray eval sample` with this config")
    baseline = cfg.eval.baseline or next(iter(eval_models(cfg)))
    rows: list[dict[str, Any]] = []
    for name in cfg.eval.scorers:
        scorer = build_scorer(name, cfg.eval.scorer_weights.get(name), cfg.model.cache_dir,
                              device="cuda" if cfg.eval.use_gpu else None)
        for i in range(0, len(index), BATCH):
            chunk = index[i:i + BATCH]
            scores = scorer.score([_load(r["path"]) for r in chunk], [r["prompt"] for r in chunk])
            rows += [{"model": r["model"], "prompt_id": r["prompt_id"], "k": r["k"], "scorer": name, "score": s}
                     for r, s in zip(chunk, scores)]
        log.info("eval: %s scored %d images", name, len(index))
    write_parquet_atomic(pa.Table.from_pylist(rows), join(directory, "scores.parquet"))
    scores, groups = paired_scores(rows, baseline)
    table = {model: {scorer: asdict(cell) for scorer, cell in cells.items()}
             for model, cells in win_rate_table(scores, baseline, groups).items()}
    fs, p = filesystem_for(join(directory, "winrates.json"))
    fs.pipe(p, json.dumps({"baseline": baseline, "models": table}, indent=1).encode())
    return ScoreResult(directory, len(index), table, baseline, time.perf_counter() - start)
