"""Win rates between models on the same prompts and seeds, with bootstrap intervals, and the fit of a
reward against implicit preference across checkpoints (the TPO paper's comparison and regression).

Pure functions of score arrays: a sample's scores for model A and model B come from the same prompt
and seed, so the comparison is paired. A tie (equal scores, e.g. both images identical) counts half a
win by default (`ties="half"`), or is left out of the rate (`ties="drop"`, the count is reported); the
choice is explicit because reward models tie often on near-identical images of a barely moved model.
Intervals are percentile bootstrap intervals over prompts: a prompt's several images (one per seed) are
resampled together, so images of one prompt never count as independent evidence. With `ties="half"` each
resample draws every tie it holds as a win or a loss with probability 1/2 (ties split at random, not
counted as exactly half a win), so ties widen the interval like the coin flips they stand for: an
all-tie comparison reads 0.5 with the interval of a fair coin over that many prompts, not the certainty
`0.500 [0.500, 0.500]`. With `ties="drop"` an all-tie comparison has no rate: rate and interval are NaN
(None in JSON). `summarize` builds the paired table from score rows: win rates, the means on the same
(prompt, k) pairs, and the same per prompt category.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Ties = Literal["half", "drop"]


@dataclass(frozen=True)
class WinRate:
    rate: float  # P(A beats B), ties as `ties` says
    low: float  # bootstrap interval (percentile), `confidence` wide
    high: float
    wins: int
    losses: int
    ties: int
    mean_a: float  # over the same pairs as the rate
    mean_b: float
    n: int = 0  # pairs (wins + losses + ties)
    prompts: int = 0  # groups the bootstrap resampled


TIE_TOLERANCE = 1e-6  # relative: scores this close are a tie


def _outcomes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """+1 A wins, -1 B wins, 0 tie. Scores within `TIE_TOLERANCE` (relative) tie: one image scored in two
    batches of another size differs in the last float bits, which is not a preference."""
    close = np.abs(a - b) <= TIE_TOLERANCE * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    return np.where(close, 0.0, np.sign(a - b))


def _rate(wins: np.ndarray | float, losses: np.ndarray | float, tied: np.ndarray | float, ties: Ties):
    """The win rate from counts (arrays: one rate per resample); NaN where nothing decides it."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if ties == "half":
            return (wins + 0.5 * tied) / (wins + losses + tied)
        return wins / (wins + losses)


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], groups: Sequence[str] | None = None,
             ties: Ties = "half", confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> WinRate:
    """How often A's sample scores above B's sample of the same prompt and seed.

    `groups` (one per sample, e.g. the prompt) are what the bootstrap resamples; None = each sample.
    The point rate counts a tie as half a win (`ties="half"`); the interval draws ties as coin flips
    (module docstring)."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected two equally long, non-empty score lists, got {a.shape} and {b.shape}")
    if ties not in ("half", "drop"):
        raise ValueError(f"ties must be 'half' or 'drop', got {ties!r}")
    outcomes = _outcomes(a, b)
    keys = np.arange(a.size) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    if len(keys) != a.size:
        raise ValueError(f"{len(keys)} groups for {a.size} samples")
    n_groups = int(keys.max()) + 1
    per_group = [np.bincount(keys, weights=(outcomes == o).astype(float), minlength=n_groups) for o in (1, -1, 0)]
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, n_groups, (resamples, n_groups))
    wins, losses, tied = (g[picked].sum(axis=1) for g in per_group)
    if ties == "half":  # each tie a coin flip: Binomial(tied, 1/2) of them become wins, the rest losses
        won = rng.binomial(tied.astype(np.int64), 0.5)
        wins, losses, tied = wins + won, losses + (tied - won), np.zeros_like(tied)
    rates = _rate(wins, losses, tied, ties)
    tail = (1.0 - confidence) / 2 * 100
    low, high = (np.nanpercentile(rates, [tail, 100 - tail]) if not np.isnan(rates).all() else (math.nan, math.nan))
    w, lo, t = (int((outcomes == o).sum()) for o in (1, -1, 0))
    return WinRate(float(_rate(w, lo, t, ties)) if (w + lo or ties == "half") else math.nan, float(low), float(high),
                   w, lo, t, float(a.mean()), float(b.mean()), int(a.size), n_groups)


def win_rate_table(scores: dict[str, dict[str, Sequence[float]]], baseline: str,
                   groups: Sequence[str] | None = None, **options) -> dict[str, dict[str, WinRate]]:
    """The paper's layout: rows are models, columns scorers, each cell the model's win rate over
    `baseline` (and both means). `scores[model][scorer]` lists the samples in one shared order."""
    if baseline not in scores:
        raise ValueError(f"baseline {baseline!r} is not among the models {sorted(scores)}")
    table = {}
    for model, by_scorer in scores.items():
        if model == baseline:
            continue
        missing = set(scores[baseline]) - set(by_scorer)
        if missing:
            raise ValueError(f"model {model!r} has no scores for {sorted(missing)}")
        table[model] = {scorer: win_rate(by_scorer[scorer], scores[baseline][scorer], groups, **options)
                        for scorer in scores[baseline]}
    return table


def paired_scores(rows: Sequence[dict[str, Any]], baseline: str
                  ) -> tuple[dict[str, dict[str, list[float]]], list[tuple[str, int]]]:
    """Scores in one shared (prompt, k) order per model and scorer, over the samples every model has a
    score of every scorer for; and those (prompt_id, k) keys. Rows: model, prompt_id, k, scorer, score."""
    by_model: dict[str, dict[tuple[str, int], dict[str, float]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {}).setdefault((r["prompt_id"], r["k"]), {})[r["scorer"]] = r["score"]
    if baseline not in by_model:
        raise ValueError(f"eval.baseline={baseline!r} has no scores; models scored: {sorted(by_model)}")
    scorers = sorted({r["scorer"] for r in rows})
    shared = sorted(set.intersection(*({key for key, s in v.items() if set(scorers) <= set(s)}
                                       for v in by_model.values())))
    if not shared:
        raise ValueError(f"no (prompt, image) has a score of every scorer {scorers} for every model {sorted(by_model)}")
    table = {m: {s: [v[key][s] for key in shared] for s in scorers} for m, v in by_model.items()}
    return table, shared


def _cells(table: dict[str, dict[str, WinRate]]) -> dict[str, dict[str, dict[str, Any]]]:
    return {model: {scorer: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(c).items()}
                    for scorer, c in cells.items()} for model, cells in table.items()}


def summarize(rows: Sequence[dict[str, Any]], baseline: str, categories: dict[str, str | None] | None = None,
              **options) -> dict[str, Any]:
    """The win-rate table of score `rows` (one per model, prompt_id, k and scorer) against `baseline`, over
    the (prompt, k) pairs every model has (`paired_scores`), as plain dicts (NaN as None):

        models       {model: {scorer: WinRate fields}}, every model but the baseline
        means        {model: {scorer: mean}}, the baseline's included, over the same pairs as the rates
        by_category  {category: {model: {scorer: WinRate fields}}}, prompts grouped by `categories`
                     (prompt_id -> category; prompts without one are in no category)
        pairs, prompts   how many (prompt, k) pairs and prompts the rates are over

    `options` go to `win_rate` (ties, confidence, resamples, seed)."""
    scores, shared = paired_scores(rows, baseline)
    groups = [prompt for prompt, _ in shared]
    out: dict[str, Any] = {
        "models": _cells(win_rate_table(scores, baseline, groups, **options)),
        "means": {m: {s: float(np.mean(v)) for s, v in by_scorer.items()} for m, by_scorer in scores.items()},
        "pairs": len(shared), "prompts": len(set(groups)), "by_category": {}}
    for category in sorted({c for c in (categories or {}).values() if c is not None}):
        where = [i for i, prompt in enumerate(groups) if (categories or {}).get(prompt) == category]
        if not where:
            continue
        part = {m: {s: [v[i] for i in where] for s, v in by_scorer.items()} for m, by_scorer in scores.items()}
        out["by_category"][category] = _cells(win_rate_table(part, baseline, [groups[i] for i in where], **options))
    return out


@dataclass(frozen=True)
class LinearFit:
    slope: float
    intercept: float
    r: float  # Pearson correlation; NaN when every y is the same (undefined, not 0)
    n: int


def linear_fit(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    """Least-squares line y = slope x + intercept and Pearson's r: a reward (y) against implicit
    preference (x) over the checkpoints of a run."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.size < 2:
        raise ValueError(f"a fit needs at least two (x, y) points of equal count, got {xs.size} and {ys.size}")
    if np.ptp(xs) == 0:
        raise ValueError("every x is the same: the slope is undefined")
    slope, intercept = np.polyfit(xs, ys, 1)
    r = float(np.corrcoef(xs, ys)[0, 1]) if np.ptp(ys) else float("nan")
    return LinearFit(float(slope), float(intercept), r, int(xs.size))
