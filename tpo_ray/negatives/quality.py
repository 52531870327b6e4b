"""The negatives job's quality report: the figures summed over shards (`stats.json`), a seeded sample
of pairs for a person to read (`sample.md`), and both in MLflow.

Pure tallies first (unit-tested by hand), then the two writers."""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpo_ray.config import TPOConfig
from tpo_ray.data import schema
from tpo_ray.data.io import filesystem_for, join, read_parquet
from tpo_ray.negatives.layout import OutputLayout
from tpo_ray.negatives.shards import STAT_COUNTERS
from tpo_ray.tracking import tracking_run


def rate(part: int, whole: int) -> float:
    """part / whole to 4 decimals; 0.0 when there is nothing to divide (an empty input, a principle with
    no candidates)."""
    return round(part / whole, 4) if whole else 0.0


def aggregate_stats(per_shard: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The job's figures from its shards' stats markers: totals and counters summed (a key a shard lacks
    counts 0), then the rates of `quality_rates` on the sums, never an average of shard rates."""
    totals: dict[str, Any] = {"rows_in": 0, "rows_accepted": 0, "rows_quarantined": 0, "triplets": 0,
                              "fallbacks": 0, "candidates": 0}
    counters: dict[str, Counter] = {name: Counter() for name in STAT_COUNTERS}
    for stats in per_shard.values():
        for key in totals:
            totals[key] += stats.get(key, 0)
        for key, counter in counters.items():
            counter.update(stats.get(key, {}))
    return {**totals, **{k: dict(sorted(v.items())) for k, v in counters.items()}, **quality_rates(totals, counters)}


def quality_rates(totals: dict[str, Any], counters: dict[str, Counter]) -> dict[str, Any]:
    """What a person judges negatives by at a glance: the share of captions that got a negative, the share
    of each principle's editor candidates that passed validation, each principle's share of the
    triplets, and each rejection reason per editor candidate."""
    valid = counters["valid_by_principle"]
    return {"acceptance_rate": rate(totals["rows_accepted"], totals["rows_in"]),
            "acceptance_by_principle": {k: rate(valid.get(k, 0), v)
                                        for k, v in sorted(counters["candidates_by_principle"].items())},
            "principle_share": {k: rate(v, totals["triplets"]) for k, v in sorted(counters["principles"].items())},
            "rejection_rate": {k: rate(v, max(totals["candidates"], totals["rows_in"]))
                               for k, v in sorted(counters["rejected"].items())}}


def principle_mix(stats: dict[str, Any], principles: Sequence[str],
                  weights: dict[str, float] | None) -> dict[str, dict[str, Any]]:
    """The realised principle mix against the requested one, per principle in use: `configured_share`
    (the weights, normalised), `requested` (LLM requests that named it; 0 for editors that choose the
    principle themselves, rules and scene) and `requested_share`, `no_edit` (answers that no edit was
    possible), `accepted` (triplets under it, fallbacks included) and `realised_share`."""
    total_weight = sum(1.0 if weights is None else weights[p] for p in principles)
    requested = stats.get("requested_by_principle", {})
    asked = sum(requested.get(p, 0) for p in principles)
    return {p: {"configured_share": round((1.0 if weights is None else weights[p]) / total_weight, 4),
                "requested": requested.get(p, 0), "requested_share": rate(requested.get(p, 0), asked),
                "no_edit": stats.get("no_edit_by_principle", {}).get(p, 0),
                "accepted": stats["principles"].get(p, 0),
                "realised_share": rate(stats["principles"].get(p, 0), stats["triplets"])}
            for p in principles}


def mix_line(mix: dict[str, dict[str, Any]]) -> str:
    """One line of the mix for the CLI summary: realised share / requested share per principle (the
    configured share where no request named a principle: rules and scene choose their own)."""
    asked = any(m["requested"] for m in mix.values())
    key = "requested_share" if asked else "configured_share"
    parts = ", ".join(f"{p} {m['realised_share']:.2f}/{m[key]:.2f}" for p, m in mix.items())
    return f"principle mix realised/{'requested' if asked else 'configured'}: {parts}"


SAMPLE_PAIRS = 20


def write_sample(layout: OutputLayout, seed: int, n: int = SAMPLE_PAIRS) -> str | None:
    """`sample.md`: n (caption, negative) pairs drawn with the job's seed, for a person to read."""
    from tpo_ray.data.io import uri_like

    fs, p = filesystem_for(join(layout.root, "triplets"))
    files = sorted(fs.glob(p + "/*.parquet")) if fs.exists(p) else []
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for f in rng.sample(files, len(files)):  # a seeded pick of shards, read until 50 x n rows: bounded memory
        rows += read_parquet(uri_like(layout.root, f)).select(
            [schema.CAPTION, schema.NEGATIVE, schema.PRINCIPLE, schema.EDITS]).to_pylist()
        if len(rows) >= 50 * n:
            break
    if not rows:
        return None
    picked = rng.sample(rows, min(n, len(rows)))
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"# {len(picked)} triplets drawn with seed {seed}", "",
             "| caption | negative | principle | edits |", "|---|---|---|---|"]
    edits = lambda r: "; ".join(f"{e['from']} -> {e['to']}" for e in r[schema.EDITS] or [])  # noqa: E731
    lines += [f"| {cell(r[schema.CAPTION])} | {cell(r[schema.NEGATIVE])} | {r[schema.PRINCIPLE]} | {cell(edits(r))} |"
              for r in picked]
    path = join(layout.root, "sample.md")
    fs_out, out = filesystem_for(path)
    fs_out.pipe(out, ("\n".join(lines) + "\n").encode())
    return path


def log_quality(cfg: TPOConfig, layout: OutputLayout, stats: dict[str, Any], sample: str | None = None) -> None:
    """The job's figures as MLflow metrics (one per counter key) and stats.json / sample.md as artifacts,
    read through the output's filesystem (it may be s3://)."""
    from tpo_ray.config import flatten_config

    with tracking_run(cfg.tracking, cfg.output_dir, run_name="negatives", tags={"stage": "negatives"}) as tracker:
        tracker.log_params({f"negatives.{k}": v for k, v in flatten_config(cfg.negatives).items()})
        metrics = {f"negatives/{k}": v for k, v in stats.items() if isinstance(v, (int, float))}
        for group in ("rejected", "principles", "editors", "num_edits", "principle_share", "rejection_rate",
                      "acceptance_by_principle", "requested_by_principle", "no_edit_by_principle", "verify"):
            metrics.update({f"negatives/{group}/{k}": v for k, v in stats.get(group, {}).items()})
        for principle, figures in stats.get("principle_mix", {}).items():
            metrics.update({f"negatives/principle_mix/{principle}/{k}": v for k, v in figures.items()})
        tracker.log_metrics(metrics)
        if not tracker.active:
            return
        with tempfile.TemporaryDirectory() as tmp:  # copied through the filesystem: the output may be s3://
            for path in (layout.stats, sample):
                if path is not None:
                    fs, p = filesystem_for(path)
                    local = Path(tmp) / p.rsplit("/", 1)[-1]
                    local.write_bytes(fs.cat(p))
                    tracker.log_artifact(local)
