"""The report's PNG plots (matplotlib, Agg): win rates, caption accuracy by breakdown, reward against
caption accuracy, and training curves with one panel per stage and metric. Every accuracy is drawn with
its interval. Each function writes one file and returns its path relative to the report folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tpo_ray.eval.report_format import CAPTION_ACC, METRIC_LABELS, FitSummary


def _figure(width: float = 6.0, height: float = 3.6, columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(width * columns, height), dpi=100, squeeze=False)
    return plt, fig, list(axes[0])


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return f"plots/{path.name}"


def _errors(value: float, bounds: list[float] | None) -> tuple[float, float]:
    if not bounds or len(bounds) != 2 or None in bounds or value is None:
        return 0.0, 0.0
    return max(value - bounds[0], 0.0), max(bounds[1] - value, 0.0)


def plot_win_rates(winrates: dict[str, Any], path: Path) -> str:
    plt, fig, (ax,) = _figure()
    models = list(winrates["models"])
    scorers = sorted({s for cells in winrates["models"].values() for s in cells})
    width = 0.8 / max(len(scorers), 1)
    for j, scorer in enumerate(scorers):
        cells = [c if c and c.get("rate") is not None else None for c in
                 (winrates["models"][m].get(scorer) for m in models)]
        rates = [c["rate"] if c else float("nan") for c in cells]
        err = [_errors(c["rate"], [c["low"], c["high"]]) if c else (0.0, 0.0) for c in cells]
        ax.bar([i + j * width for i in range(len(models))], rates, width, yerr=list(zip(*err)) or None, capsize=3,
               label=scorer)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks([i + width * (len(scorers) - 1) / 2 for i in range(len(models))], models)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"win rate over {winrates['baseline']}")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _order(keys) -> list[str]:
    return sorted(keys, key=lambda k: (not k.lstrip("-").isdigit(), int(k) if k.lstrip("-").isdigit() else k))


def plot_implicit(figures: dict[str, Any], breakdown: str, label: str, path: Path) -> str:
    """Caption accuracy per group of `breakdown`, one line per model, with its bootstrap interval."""
    plt, fig, (ax,) = _figure()
    for model, entry in figures.items():
        groups = entry[breakdown]
        keys = _order(groups)
        accs = [groups[k]["acc"] for k in keys]
        err = [_errors(groups[k]["acc"], groups[k].get("acc_interval")) for k in keys]
        ax.errorbar(range(len(keys)), accs, yerr=list(zip(*err)), marker="o", capsize=3, label=model)
        ax.set_xticks(range(len(keys)), keys)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xlabel(label)
    ax.set_ylabel(f"{CAPTION_ACC} (m_w < m_l)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_correlation(scorer: str, points: list[tuple[str, float, float]], fit: FitSummary, path: Path) -> str:
    plt, fig, (ax,) = _figure(5.0, 3.6)
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    ax.scatter(xs, ys)
    for model, x, y in points:
        ax.annotate(model, (x, y), fontsize=8)
    if fit.slope is not None and fit.intercept is not None:
        grid = [min(xs), max(xs)]
        ax.plot(grid, [fit.slope * x + fit.intercept for x in grid], color="C1")
    ax.set_xlabel(f"{CAPTION_ACC} (held-out)")
    ax.set_ylabel(f"mean {scorer}")
    return _save(plt, fig, path)


def plot_curve_panels(title: str, lines: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> str:
    """One panel per metric of one stage (its own y axis), one line per run (`lines[label][metric]`)."""
    metrics = [m for m in METRIC_LABELS if any(m in per for per in lines.values())]
    metrics += sorted({m for per in lines.values() for m in per} - set(metrics))
    plt, fig, axes = _figure(4.6, 3.2, columns=len(metrics))
    for ax, metric in zip(axes, metrics):
        for label, per in sorted(lines.items()):
            if metric in per:
                ax.plot([s for s, _ in per[metric]], [v for _, v in per[metric]], label=label, marker=".")
        ax.set_title(f"{title}: {METRIC_LABELS.get(metric, metric)}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return _save(plt, fig, path)
