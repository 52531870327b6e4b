"""`run_score` (`tpo-ray eval score`): the images this config compares (`sample_job.current_index`: its models,
its prompts, images sampled from today's weights and settings) scored by every configured scorer, then the
win-rate table against a baseline model.

    <eval.output>/scores.parquet     one row per image and scorer setup: model, prompt_id, k, scorer, score,
                                     scorer_stamp (the weights' stamp, `registry.weights_stamp`, or a
                                     program's identity), options (canonical JSON, e.g. HPS's version and
                                     antialias), image_sha256 (the PNG scored), weights (the configured path)
    <eval.output>/winrates.json      baseline; models {model: {scorer: win rate, interval, wins/losses/ties,
                                     means, n, prompts}}; means {model: {scorer: mean}} over the same pairs;
                                     by_category {category: {model: {scorer: cell}}}; pairs, prompts; settings
                                     (scorers with stamp, options and weights; prompt set, prompts, images per
                                     model, images_per_prompt, baseline, ties, confidence, resamples)
    <eval.output>/scene.json         with the `scene` scorer: each image's verdict (what the verifier read,
                                     which attributes are wrong) and each model's accuracy by attribute and
                                     principle with 95% intervals (recomputed from the images every time)

A score is reused when its model, prompt_id, k, scorer, scorer_stamp, options and image_sha256 all match:
an image sampled again with new content, replaced weights or another HPS version is scored again, and
identical weights moved to another path are not. scores.parquet keeps every score it holds (other
scorers, models, prompt sets, weights), dropping only those of images the index now holds with other
content; the win rates use the configured scorers on the current images alone (`current_scores`).
Images of one (prompt, k) share their seed across models (`sample_job.sample_seed`), so the comparison
is paired; the bootstrap resamples prompts (`eval.winrate`). Every configured scorer's weights are
checked before anything is loaded (one error lists each missing file); scoring runs where the command
runs, one scorer at a time in batches, under `eval_lock` (one writer per eval folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, join, write_parquet_atomic
from tpo_ray.eval.sample_job import current_index, eval_baseline, eval_dir
from tpo_ray.eval.winrate import summarize

log = logging.getLogger(__name__)
BATCH = 16
RESAMPLES = 2000
CONFIDENCE = 0.95
TIES = "half"
KEY = ("model", "prompt_id", "k", "scorer", "scorer_stamp", "options", "image_sha256")

SCORE_SCHEMA = pa.schema([("model", pa.string()), ("prompt_id", pa.string()), ("k", pa.int64()),
                          ("scorer", pa.string()), ("score", pa.float64()), ("scorer_stamp", pa.string()),
                          ("options", pa.string()), ("image_sha256", pa.string()), ("weights", pa.string())])


@dataclass
class ScoreResult:
    directory: str
    images: int
    table: dict[str, dict[str, Any]]
    baseline: str
    seconds: float
    scored: int = 0  # scores computed now (the rest were in scores.parquet, same image, scorer and options)
    scene: dict[str, Any] | None = None  # scene.json's per-model accuracies, with the `scene` scorer
    winrates: dict[str, Any] | None = None  # winrates.json as written


@dataclass(frozen=True)
class ScorerSetup:
    """What a score of one configured scorer depends on besides the image and prompt."""
    name: str
    weights: str | None  # eval.scorer_weights[name] (None for a program)
    stamp: str
    options: dict[str, Any]

    @property
    def options_json(self) -> str:
        return json.dumps(self.options, sort_keys=True)


def _what(row: dict[str, Any] | None) -> str:
    return "" if not row else f" (model {row.get('model')!r}, prompt {row.get('prompt_id')!r}, image {row.get('k')})"


def read_image_bytes(path: str, row: dict[str, Any] | None = None) -> bytes:
    fs, p = filesystem_for(path)
    try:
        with fs.open(p, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise FileNotFoundError(f"cannot read sampled image {path}{_what(row)}: {err}; sample it again "
                                "(tpo-ray eval sample)") from err


def decode_image(data: bytes, path: str, row: dict[str, Any] | None = None):
    """The RGB image of PNG bytes; an unreadable one is a ValueError naming its path and row."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"sampled image {path}{_what(row)} is not a readable image ({type(err).__name__}: {err}); "
                         "delete it and sample it again (tpo-ray eval sample)") from err


def load_image(path: str, row: dict[str, Any] | None = None):
    """The RGB image at `path` (local or s3://); errors name the path and, given its index row, the model,
    prompt and image."""
    return decode_image(read_image_bytes(path, row), path, row)


def image_sha256(row: dict[str, Any]) -> str:
    """The index's `image_sha256` of a row, else the hash of its file."""
    return row.get("image_sha256") or hashlib.sha256(read_image_bytes(row["path"], row)).hexdigest()


def scorer_setups(cfg: TPOConfig) -> list[ScorerSetup]:
    """Each configured scorer with its options and stamp; every missing weight file is reported at once
    (`ScorerWeightsError`), before any weight is read."""
    from tpo_ray.eval.scorers import ScorerWeightsError
    from tpo_ray.eval.scorers.registry import needs_weights, scorer_options, scorer_stamp, weights_problems

    ec = cfg.eval
    options = {name: scorer_options(name, ec) for name in ec.scorers}
    problems = [p for name in ec.scorers for p in weights_problems(name, ec.scorer_weights.get(name), options[name])]
    if problems:
        raise ScorerWeightsError(f"eval score: {len(problems)} scorer weight(s) missing, nothing was scored: "
                                 + "; ".join(problems))
    return [ScorerSetup(name, ec.scorer_weights.get(name) if needs_weights(name) else None,
                        scorer_stamp(name, ec.scorer_weights.get(name), options[name]), options[name])
            for name in ec.scorers]


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY)


def _wanted(index: list[dict[str, Any]], hashes: list[str], setup: ScorerSetup) -> list[tuple]:
    return [(r["model"], r["prompt_id"], r["k"], setup.name, setup.stamp, setup.options_json, h)
            for r, h in zip(index, hashes)]


def run_score(cfg: TPOConfig) -> ScoreResult:
    from tpo_ray.eval.lock import eval_lock

    start = time.perf_counter()
    setups = scorer_setups(cfg)  # before the lock and any loading: a missing weight costs nothing
    directory = eval_dir(cfg)
    with eval_lock(directory, "score"):
        index = current_index(cfg)
        if not index:
            raise FileNotFoundError(f"no current samples of this config's models and prompts under {directory}/samples: "
                                    "run `tpo-ray eval sample` with this config")
        baseline = eval_baseline(cfg)
        hashes = [image_sha256(r) for r in index]
        known = {_key(r): r for r in read_scores(directory)}
        new: list[dict[str, Any]] = []
        for setup in setups:
            todo = [(r, h) for r, h, key in zip(index, hashes, _wanted(index, hashes, setup)) if key not in known]
            if todo:
                new += _score(cfg, setup, todo)
            log.info("eval: %s scored %d images (%d scored before)", setup.name, len(todo), len(index) - len(todo))
        rows = _merged(list(known.values()), new, index, hashes)
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=SCORE_SCHEMA), join(directory, "scores.parquet"))
        by_key = {_key(r): r for r in rows}
        current = [by_key[key] for setup in setups for key in _wanted(index, hashes, setup)]
        winrates = _winrates(cfg, setups, index, current, baseline)
        fs, p = filesystem_for(join(directory, "winrates.json"))
        fs.pipe(p, json.dumps(winrates, indent=1, allow_nan=False).encode())
        scene = write_scene_accuracy(directory, index) if "scene" in cfg.eval.scorers else None
    return ScoreResult(directory, len(index), winrates["models"], baseline, time.perf_counter() - start, len(new),
                       scene, winrates)


def _score(cfg: TPOConfig, setup: ScorerSetup, todo: list[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    from tpo_ray.eval.scorers import build_scorer

    scorer = build_scorer(setup.name, setup.weights, cfg.model.cache_dir,
                          device="cuda" if cfg.eval.use_gpu else None, options=setup.options)
    out = []
    for i in range(0, len(todo), BATCH):
        chunk = todo[i:i + BATCH]
        images = []
        for r, want in chunk:
            data = read_image_bytes(r["path"], r)
            if hashlib.sha256(data).hexdigest() != want:
                raise ValueError(f"sampled image {r['path']}{_what(r)} changed since it was indexed (sha256 "
                                 f"{want[:12]}... in the index): sample it again (tpo-ray eval sample)")
            images.append(decode_image(data, r["path"], r))
        scores = scorer.score(images, [r["prompt"] for r, _ in chunk])
        out += [{"model": r["model"], "prompt_id": r["prompt_id"], "k": r["k"], "scorer": setup.name, "score": s,
                 "scorer_stamp": setup.stamp, "options": setup.options_json, "image_sha256": h,
                 "weights": setup.weights} for (r, h), s in zip(chunk, scores)]
    return out


def _merged(known: list[dict[str, Any]], new: list[dict[str, Any]], index: list[dict[str, Any]],
            hashes: list[str]) -> list[dict[str, Any]]:
    """The rows scores.parquet keeps: every known score but those of an image the index now holds with
    other content (or a score from before images were hashed), plus the new ones; sorted."""
    current = {(r["model"], r["prompt_id"], r["k"]): h for r, h in zip(index, hashes)}
    kept = [r for r in known if current.get((r["model"], r["prompt_id"], r["k"]), r.get("image_sha256"))
            == r.get("image_sha256")]
    rows = {_key(r): {name: r.get(name) for name in SCORE_SCHEMA.names} for r in [*kept, *new]}
    return sorted(rows.values(), key=lambda r: tuple("" if v is None else str(v) for v in _key(r)))


def _winrates(cfg: TPOConfig, setups: list[ScorerSetup], index: list[dict[str, Any]], current: list[dict[str, Any]],
              baseline: str) -> dict[str, Any]:
    from tpo_ray.eval.prompt_sets import eval_prompts

    # the prompt set's categories as it reads now (relabelled categories keep their images and scores)
    categories = {r["prompt_id"]: r.get("category") for r in index}
    categories.update({p.id: p.category for p in eval_prompts(cfg)})
    summary = summarize(current, baseline, categories, ties=TIES, confidence=CONFIDENCE, resamples=RESAMPLES)
    images: dict[str, int] = {}
    for r in index:
        images[r["model"]] = images.get(r["model"], 0) + 1
    settings = {
        "scorers": {s.name: {"stamp": s.stamp, "options": s.options, "weights": s.weights} for s in setups},
        "prompts": cfg.eval.prompts, "max_prompts": cfg.eval.max_prompts,
        "prompt_count": len({r["prompt_id"] for r in index}), "images_per_prompt": cfg.eval.images_per_prompt,
        "images": images, "baseline": baseline, "ties": TIES, "confidence": CONFIDENCE, "resamples": RESAMPLES,
        "interval": "percentile bootstrap over prompts; ties drawn as coin flips in each resample"}
    return _json_safe({"baseline": baseline, "models": summary["models"], "means": summary["means"],
                       "by_category": summary["by_category"], "pairs": summary["pairs"], "prompts": summary["prompts"],
                       "settings": settings})


def _json_safe(value: Any) -> Any:
    """NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def current_scores(cfg: TPOConfig) -> list[dict[str, Any]]:
    """The rows of scores.parquet this config's win rates are computed from: its current images
    (`current_index`) scored by its scorers with today's weights and options. For the report, which must
    not average scores of other images, prompt sets or weights."""
    setups = scorer_setups(cfg)
    index = current_index(cfg)
    hashes = [image_sha256(r) for r in index]
    by_key = {_key(r): r for r in read_scores(eval_dir(cfg))}
    return [by_key[key] for setup in setups for key in _wanted(index, hashes, setup) if key in by_key]


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


def read_scores(directory: str) -> list[dict[str, Any]]:
    """The rows of `scores.parquet` (every score kept, of any scorer, model or prompt set: filter with
    `current_scores`), or none before the first scoring. Files written before scores were stamped lack
    scorer_stamp, options and image_sha256 (None here)."""
    from tpo_ray.data.io import read_parquet

    fs, p = filesystem_for(join(directory, "scores.parquet"))
    if not fs.exists(p):
        return []
    rows = read_parquet(join(directory, "scores.parquet")).to_pylist()
    return [{name: r.get(name) for name in SCORE_SCHEMA.names} for r in rows]
