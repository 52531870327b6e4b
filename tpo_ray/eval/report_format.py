"""Numbers as the report prints them: no negative zero, intervals beside every accuracy, the names of
the two held-out quantities, and the reward-against-caption-accuracy fit with an honest caption.

Pure functions (no I/O): `report.py` and its sections call them, `tests/unit/test_eval_report_format.py`
checks them by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# One name per quantity (docs/evaluation.md), shown wherever the quantity or its MLflow key appears.
CAPTION_ACC = "caption accuracy"  # P(m_w < m_l): the model itself prefers c_w; `acc`, MLflow val/model_acc
IMPLICIT_ACC = "implicit reward accuracy"  # P((m_l - r_l) - (m_w - r_w) > 0); `implicit_acc`, val/implicit_acc
METRIC_LABELS = {
    "train/loss": "training loss (train/loss)",
    "val/model_acc": f"{CAPTION_ACC} (val/model_acc)",
    "val/ref_acc": f"reference's {CAPTION_ACC} (val/ref_acc)",
    "val/implicit_acc": f"{IMPLICIT_ACC} (val/implicit_acc)",
}
MIN_FIT_MODELS = 4  # Fisher's z interval on r needs n > 3; below it a line through 2-3 points says nothing


def number(value: float | None, digits: int = 3) -> str:
    """`value` to `digits` decimals; "-" for None/NaN; never "-0.000" (a value that rounds to zero is 0)."""
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text


def signed(value: float | None, significant: int = 3) -> str:
    """A mean margin: sign and `significant` digits (margins of near-identical models are ~1e-5, which
    fixed decimals print as -0.00000); exactly zero prints 0."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    return f"{value:+.{significant}g}"


def interval(bounds: Sequence[float] | None, digits: int = 3) -> str:
    """"[low, high]", or "[no interval]" when a figure carries none (a summary from an older version)."""
    if not bounds or len(bounds) != 2:
        return "[no interval]"
    return f"[{number(bounds[0], digits)}, {number(bounds[1], digits)}]"


def with_interval(value: float | None, bounds: Sequence[float] | None, digits: int = 3) -> str:
    return f"{number(value, digits)} {interval(bounds, digits)}"


@dataclass(frozen=True)
class FitSummary:
    """The fit of a mean reward against caption accuracy across models, as far as the points allow."""

    n: int
    r: float | None  # None: undefined (constant x or y) or too few models
    r_interval: tuple[float, float] | None  # Fisher z, 95%
    slope: float | None
    intercept: float | None
    text: str  # the caption under the plot


def fisher_interval(r: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of Pearson's r over n points by Fisher's z transform (needs n > 3)."""
    if n <= 3:
        raise ValueError(f"Fisher's z interval needs more than 3 points, got {n}")
    centre, half = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12)), z / math.sqrt(n - 3)
    return math.tanh(centre - half), math.tanh(centre + half)


def fit_summary(xs: Sequence[float], ys: Sequence[float], what: str = "reward") -> FitSummary:
    """Least squares `what` = slope x caption accuracy + intercept with Pearson's r and its interval, or a
    caption saying why there is none: fewer than `MIN_FIT_MODELS` models, every model at one accuracy, or
    r undefined because every model has the same mean `what` (never "r = 0.000")."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    n = int(x.size)
    if n < MIN_FIT_MODELS:
        return FitSummary(n, None, None, None, None, f"{n} models: too few models for a fit (needs {MIN_FIT_MODELS})")
    if np.ptp(x) == 0:
        return FitSummary(n, None, None, None, None, f"{n} models, all at one {CAPTION_ACC}: no fit, r undefined")
    slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
    line = f"fit: {what} = {slope:.4g} x {CAPTION_ACC} + {intercept:.4g}, n = {n}"
    if np.ptp(y) == 0:
        return FitSummary(n, None, None, slope, intercept, f"{line}; r undefined (every model has the same mean {what})")
    r = float(np.corrcoef(x, y)[0, 1])
    low, high = fisher_interval(r, n)
    return FitSummary(n, r, (low, high), slope, intercept,
                      f"{line}; r = {number(r)} [{number(low)}, {number(high)}] (95%, Fisher z)")
