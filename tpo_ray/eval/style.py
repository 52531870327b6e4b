"""`run_style` (`tpo-ray eval style`): how often each model's samples reproduce the style their prompt asks for.

A sample's prompt requests a style by its category (the packaged `styles` set: "an oil painting, a fox in
a snowy forest" has category `oil_painting`). The sample reproduces the style when, in CLIP space
(the `clip` scorer's weights), its image is closer to that style's description than to every other
style's (`eval.styles`, default `tpo_ray.data.style.STYLES`): a zero-shot style classifier, the check
Diffusion-RPO's and MaPO's style-alignment evaluations make with CLIP. Samples whose category is not a
style are left out.

    <eval.output>/style.json    {model: {rate, n, by_style: {style: {rate, n}}}, styles: {name: description}}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, join
from tpo_ray.eval.sample_job import eval_dir, eval_models, read_index

log = logging.getLogger(__name__)
BATCH = 16


@dataclass
class StyleResult:
    path: str
    table: dict[str, Any]
    seconds: float


def closest_style(image_emb: torch.Tensor, style_emb: torch.Tensor) -> list[int]:
    """Index of the style description each image is most similar to (unit-norm embeddings)."""
    return (image_emb @ style_emb.T).argmax(dim=1).tolist()


def style_rates(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{model: {rate, n, by_style}} from rows of (model, style requested, style found)."""
    out: dict[str, Any] = {}
    for row in samples:
        entry = out.setdefault(row["model"], {"hits": 0, "n": 0, "by_style": {}})
        cell = entry["by_style"].setdefault(row["requested"], {"hits": 0, "n": 0})
        hit = int(row["requested"] == row["found"])
        entry["hits"] += hit
        entry["n"] += 1
        cell["hits"] += hit
        cell["n"] += 1
    return {model: {"rate": e["hits"] / e["n"], "n": e["n"],
                    "by_style": {s: {"rate": c["hits"] / c["n"], "n": c["n"]} for s, c in sorted(e["by_style"].items())}}
            for model, e in out.items()}


def run_style(cfg: TPOConfig) -> StyleResult:
    from tpo_ray.data.style import STYLES
    from tpo_ray.eval.score_job import load_image
    from tpo_ray.eval.scorers import build_scorer

    start = time.perf_counter()
    styles = dict(cfg.eval.styles) or STYLES
    if len(styles) < 2:
        raise ValueError(f"eval.styles: a style is found among at least two, got {sorted(styles)}")
    directory = eval_dir(cfg)
    models = eval_models(cfg)
    index = [r for r in read_index(directory) if r.get("category") in styles and r["model"] in models]
    if not index:
        raise FileNotFoundError(f"no sample under {directory}/samples asks for one of the styles {sorted(styles)}: "
                                "sample a style prompt set first (eval.prompts: styles, then tpo-ray eval sample)")
    weights = cfg.eval.scorer_weights.get("clip")
    clip = build_scorer("clip", weights, cfg.model.cache_dir, device="cuda" if cfg.eval.use_gpu else None)
    names = list(styles)
    style_emb = clip.text_embeddings([styles[n] for n in names])
    rows = []
    for i in range(0, len(index), BATCH):
        chunk = index[i:i + BATCH]
        found = closest_style(clip.image_embeddings([load_image(r["path"]) for r in chunk]), style_emb)
        rows += [{"model": r["model"], "requested": r["category"], "found": names[f]} for r, f in zip(chunk, found)]
    table = style_rates(rows)
    path = join(directory, "style.json")
    fs, p = filesystem_for(path)
    fs.pipe(p, json.dumps({"styles": styles, "models": table}, indent=1).encode())
    seconds = time.perf_counter() - start
    log.info("eval style: %d samples of %d models in %.1f s -> %s", len(rows), len(table), seconds, path)
    return StyleResult(path, table, seconds)
