"""Win rates between models on the same prompts and seeds, with bootstrap intervals, and the fit of a
reward against implicit preference across checkpoints (the TPO paper's comparison and regression).

Pure functions of score arrays: a sample's scores for model A and model B come from the same prompt
and seed, so the comparison is paired. A tie (equal scores, e.g. both images identical) counts half a
win by default (`ties="half"`), or is left out of the rate (`ties="drop"`, the count is reported); the
choice is explicit because reward models tie often on near-identical images of a barely moved model.
Intervals are percentile bootstrap intervals over prompts: a prompt's several images (one per seed) are
resampled together, so images of one prompt never count as independent evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
    mean_a: float
    mean_b: float


TIE_TOLERANCE = 1e-6  # relative: scores this close are a tie


def _outcomes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """+1 A wins, -1 B wins, 0 tie. Scores within `TIE_TOLERANCE` (relative) tie: one image scored in two
    batches of another size differs in the last float bits, which is not a preference."""
    close = np.abs(a - b) <= TIE_TOLERANCE * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    return np.where(close, 0.0, np.sign(a - b))


def _rate(outcomes: np.ndarray, ties: Ties) -> float:
    wins, losses = float((outcomes > 0).sum()), float((outcomes < 0).sum())
    tied = float(outcomes.size) - wins - losses
    if ties == "half":
        return (wins + 0.5 * tied) / outcomes.size if outcomes.size else float("nan")
    return wins / (wins + losses) if wins + losses else float("nan")


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], groups: Sequence[str] | None = None,
             ties: Ties = "half", confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> WinRate:
    """How often A's sample scores above B's sample of the same prompt and seed.

    `groups` (one per sample, e.g. the prompt) are what the bootstrap resamples; None = each sample."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected two equally long, non-empty score lists, got {a.shape} and {b.shape}")
    if ties not in ("half", "drop"):
        raise ValueError(f"ties must be 'half' or 'drop', got {ties!r}")
    outcomes = _outcomes(a, b)
    keys = np.arange(a.size) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    if len(keys) != a.size:
        raise ValueError(f"{len(keys)} groups for {a.size} samples")
    members = [np.flatnonzero(keys == g) for g in range(int(keys.max()) + 1)]
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(resamples):
        picked = rng.integers(0, len(members), len(members))
        sample = outcomes[np.concatenate([members[g] for g in picked])]
        rates.append(_rate(sample, ties))
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.nanpercentile(rates, [tail, 100 - tail])
    return WinRate(_rate(outcomes, ties), float(low), float(high), int((outcomes > 0).sum()),
                   int((outcomes < 0).sum()), int((outcomes == 0).sum()), float(a.mean()), float(b.mean()))


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


@dataclass(frozen=True)
class LinearFit:
    slope: float
    intercept: float
    r: float  # Pearson correlation
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
    r = float(np.corrcoef(xs, ys)[0, 1]) if np.ptp(ys) else 0.0
    return LinearFit(float(slope), float(intercept), r, int(xs.size))
