"""`run_report` (`tpo-ray report`): one static HTML folder a person opens in a browser.

    <eval.output>/report/index.html        the page (no script, no network: opens from a file or a bucket)
    <eval.output>/report/images/...        the sampled images it shows (copied, so the folder stands alone)
    <eval.output>/report/plots/*.png       win rates with intervals, implicit preference by principle and
                                           timestep, reward against implicit preference, training curves
    (and the style reproduction table when `tpo-ray eval style` ran)

What it shows is what the eval wrote (`eval implicit`, `eval sample`, `eval score`); a part that was not
run is named as missing, never faked. Training curves come from the MLflow store the config tracks to
(every training run of `tracking.experiment`). The folder is also logged to MLflow as an artifact
(`report/`) of a run named "report".
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import filesystem_for, is_uri, join
from tpo_ray.eval.sample_job import eval_dir, eval_models, read_index
from tpo_ray.eval.score_job import read_scores

log = logging.getLogger(__name__)

CURVE_METRICS = ("train/loss", "val/model_acc", "val/implicit_acc")


@dataclass
class ReportResult:
    index: str  # the page
    images: int
    plots: int
    missing: list[str] = field(default_factory=list)  # parts of the eval not found (named on the page too)
    seconds: float = 0.0


def report_dir(cfg: TPOConfig) -> str:
    return join(eval_dir(cfg), "report")


def _read_json(path: str) -> Any | None:
    fs, p = filesystem_for(path)
    return json.loads(fs.cat(p)) if fs.exists(p) else None


def correlation_points(implicit: dict[str, Any] | None, scores: list[dict[str, Any]]) -> dict[str, list]:
    """Per scorer: (model, implicit accuracy, mean reward) over the models both evals cover (the paper's
    regression of reward on implicit preference across checkpoints)."""
    if not implicit or not scores:
        return {}
    figures = implicit["figures"]
    means: dict[tuple[str, str], list[float]] = {}
    for r in scores:
        means.setdefault((r["scorer"], r["model"]), []).append(r["score"])
    out: dict[str, list] = {}
    for (scorer, model), values in sorted(means.items()):
        if model in figures:
            out.setdefault(scorer, []).append((model, figures[model]["overall"]["acc"], sum(values) / len(values)))
    return out


def training_curves(cfg: TPOConfig) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run name: {metric: [(step, value)]}} of every training run in the config's MLflow experiment."""
    if not cfg.tracking.enabled:
        return {}
    try:
        from mlflow.tracking import MlflowClient

        from tpo_ray.tracking import tracking_uri

        client = MlflowClient(tracking_uri(cfg.tracking, cfg.output_dir))
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            return {}
        curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for run in client.search_runs([experiment.experiment_id], max_results=50):
            name = run.data.tags.get("tpo_ray.run_name")
            if not name:
                continue
            for metric in CURVE_METRICS:
                history = client.get_metric_history(run.info.run_id, metric)
                if history:
                    curves.setdefault(name, {})[metric] = sorted((h.step, h.value) for h in history)
        return curves
    except Exception as err:  # a report without curves beats no report
        log.warning("report: training curves not read from MLflow (%s: %s)", type(err).__name__, err)
        return {}


# --- plots (matplotlib, Agg) ---------------------------------------------------------------------------

def _figure(width: float = 6.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=100)


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return f"plots/{path.name}"


def plot_win_rates(winrates: dict[str, Any], path: Path) -> str:
    plt, fig, ax = _figure()
    models = list(winrates["models"])
    scorers = sorted({s for cells in winrates["models"].values() for s in cells})
    width = 0.8 / max(len(scorers), 1)
    for j, scorer in enumerate(scorers):
        rates = [winrates["models"][m][scorer]["rate"] for m in models]
        low = [r - winrates["models"][m][scorer]["low"] for m, r in zip(models, rates)]
        high = [winrates["models"][m][scorer]["high"] - r for m, r in zip(models, rates)]
        ax.bar([i + j * width for i in range(len(models))], rates, width, yerr=[low, high], capsize=3, label=scorer)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks([i + width * (len(scorers) - 1) / 2 for i in range(len(models))], models)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"win rate over {winrates['baseline']}")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_implicit(implicit: dict[str, Any], breakdown: str, label: str, path: Path) -> str:
    plt, fig, ax = _figure()
    for model, entry in implicit["figures"].items():
        groups = entry[breakdown]
        keys = sorted(groups, key=lambda k: (not k.lstrip("-").isdigit(), int(k) if k.lstrip("-").isdigit() else k))
        ax.plot(range(len(keys)), [groups[k]["acc"] for k in keys], marker="o", label=model)
        ax.set_xticks(range(len(keys)), keys)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xlabel(label)
    ax.set_ylabel("implicit preference (acc: m_w < m_l)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_correlation(scorer: str, points: list, path: Path) -> tuple[str, str]:
    from tpo_ray.eval.winrate import linear_fit

    plt, fig, ax = _figure(5.0, 3.6)
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    ax.scatter(xs, ys)
    for model, x, y in points:
        ax.annotate(model, (x, y), fontsize=8)
    caption = f"{len(points)} models"
    try:
        fit = linear_fit(xs, ys)
        grid = [min(xs), max(xs)]
        ax.plot(grid, [fit.slope * x + fit.intercept for x in grid], color="C1")
        caption = f"fit: {scorer} = {fit.slope:.4g} x implicit + {fit.intercept:.4g}, r = {fit.r:.3f}, n = {fit.n}"
    except ValueError as err:  # fewer than two models, or all at one accuracy
        caption += f"; no fit ({err})"
    ax.set_xlabel("implicit preference (held-out acc)")
    ax.set_ylabel(f"mean {scorer}")
    return _save(plt, fig, path), caption


def plot_curves(metric: str, curves: dict[str, dict[str, list]], path: Path) -> str:
    plt, fig, ax = _figure()
    for run, metrics in sorted(curves.items()):
        if metric in metrics:
            ax.plot([s for s, _ in metrics[metric]], [v for _, v in metrics[metric]], label=run, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


# --- the page ------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]], attrs: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.grid{display:flex;gap:8px;flex-wrap:wrap}
figure{margin:0;text-align:center;font-size:12px}img.sample{width:160px;height:160px;image-rendering:pixelated}
.missing{color:#a33}pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:300px;font-size:12px}
.prompt{margin:12px 0 4px;font-weight:600}"""


class _Page:
    """The report being written: its folder, its sections in order, and what it counted."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.sections: list[str] = []
        self.images = 0
        self.plots = 0
        (out / "plots").mkdir(parents=True, exist_ok=True)
        (out / "images").mkdir(parents=True, exist_ok=True)

    def plot(self, name: str) -> Path:
        self.plots += 1
        return self.out / "plots" / name

    def add(self, title: str, body: str) -> None:
        self.sections.append(f"<h2>{title}</h2>{body}")


def _win_rate_section(page: _Page, winrates: dict[str, Any], scores: list[dict[str, Any]]) -> None:
    """The paper's table: rows models, columns scorers, each cell the win rate over the baseline."""
    baseline = winrates["baseline"]
    scorers = sorted({s for cells in winrates["models"].values() for s in cells})
    means: dict[tuple[str, str], list[float]] = {}
    for r in scores:
        means.setdefault((r["model"], r["scorer"]), []).append(r["score"])
    rows = []
    for model in [baseline, *winrates["models"]]:
        cells = [_e(model)]
        for scorer in scorers:
            values = means.get((model, scorer), [])
            mean = f"{sum(values) / len(values):.4f}" if values else "-"
            if model == baseline:
                cells.append(f"baseline<br><small>mean {mean}</small>")
                continue
            c = winrates["models"][model][scorer]
            cells.append(f"{c['rate']:.3f} [{c['low']:.3f}, {c['high']:.3f}]<br><small>mean {mean}; "
                         f"{c['wins']}/{c['losses']}/{c['ties']} w/l/t</small>")
        rows.append(cells)
    src = plot_win_rates(winrates, page.plot("win_rates.png"))
    page.add(f"Win rates over {_e(baseline)}", "<p>Paired by prompt and seed; 95% bootstrap intervals over prompts; "
             "ties count one half.</p>" + _table(["model", *scorers], rows, 'id="winrates"')
             + f'<img class="plot" src="{src}" alt="win rates">')


def _implicit_section(page: _Page, implicit: dict[str, Any]) -> None:
    rows = []
    for model, entry in implicit["figures"].items():
        o = entry["overall"]
        relative = f"{o['implicit_acc']:.3f}" if "implicit_acc" in o else "reference"
        principles = ", ".join(f"{k} {v['acc']:.3f}" for k, v in entry["by_principle"].items()) or "-"
        rows.append([_e(model), f"{o['acc']:.3f}", f"{o['margin']:+.5f}", relative, _e(principles)])
    body = _table(["model", "acc (m_w < m_l)", "mean margin", f"implicit acc vs {implicit['reference']}",
                   "acc by principle"], rows, 'id="implicit"')
    for breakdown, label in (("by_principle", "principle"), ("by_timestep", "timestep"), ("by_edits", "edits")):
        if any(entry[breakdown] for entry in implicit["figures"].values()):
            src = plot_implicit(implicit, breakdown, label, page.plot(f"implicit_{breakdown}.png"))
            body += f'<img class="plot" src="{src}" alt="implicit {label}">'
    page.add("Implicit preference", f"<p>{implicit['pairs']} held-out pairs, timesteps {_e(implicit['timesteps'])}, "
             f"{implicit['noise_draws']} noise draws each; every model sees the same x_t.</p>" + body)


def _style_section(page: _Page, style: dict[str, Any]) -> None:
    names = list(style["styles"])
    rows = [[_e(model), f"{e['rate']:.3f}", str(e["n"]),
             *[f"{e['by_style'][n]['rate']:.2f}" if n in e["by_style"] else "-" for n in names]]
            for model, e in style["models"].items()]
    page.add("Style reproduction", "<p>Share of samples closest, in CLIP space, to the style their prompt requests "
             "among: " + _e(", ".join(f"{n} ({d})" for n, d in style["styles"].items())) + "</p>"
             + _table(["model", "in the requested style", "samples", *names], rows, 'id="style"'))


def _correlation_section(page: _Page, points: dict[str, list]) -> None:
    body = ""
    for scorer, pts in points.items():
        src, caption = plot_correlation(scorer, pts, page.plot(f"correlation_{scorer}.png"))
        body += (f'<figure><img class="plot" src="{src}" alt="correlation {scorer}">'
                 f"<figcaption>{_e(caption)}</figcaption></figure>")
    page.add("Reward against implicit preference", body)


def _curves_section(page: _Page, curves: dict[str, dict[str, list]]) -> None:
    body = ""
    for metric in CURVE_METRICS:
        if any(metric in m for m in curves.values()):
            src = plot_curves(metric, curves, page.plot(f"curve_{metric.replace('/', '_')}.png"))
            body += f'<img class="plot" src="{src}" alt="{_e(metric)}">'
    page.add("Training curves (MLflow)", body)


def _scene_section(page: _Page, scene: dict[str, Any]) -> None:
    """The verifier's accuracy table: rows models, columns attributes, all correct, then principles."""
    models = scene["models"]
    first = next(iter(models.values()))
    attributes, principles = list(first["attributes"]), list(first["principles"])

    def cell(c: dict[str, Any]) -> str:
        return f"{c['accuracy']:.2f}<br><small>[{c['interval'][0]:.2f}, {c['interval'][1]:.2f}]</small>"

    rows = [[_e(model), str(t["n"]), *(cell(t["attributes"][a]) for a in attributes),
             *(cell(t["principles"][p]) for p in principles)] for model, t in models.items()]
    page.add("What the models draw (scene verifier)",
             "<p>Share of sampled images whose attribute the verifier reads back as the prompt states it, with 95% "
             "Wilson intervals; <em>all</em>: every attribute right; a principle: every attribute it edits right.</p>"
             + _table(["model", "images", *attributes, *(f"{p} (principle)" for p in principles)], rows,
                      'id="scene"'))


def verdict_line(verdict: dict[str, Any] | None) -> str:
    """Under an image: "all right", or each wrong attribute with what the verifier read instead."""
    if verdict is None:
        return ""
    if not verdict["wrong"]:
        return "verifier: all right"
    return "wrong: " + ", ".join(f"{a} ({verdict['read'].get(a) or 'none'})" for a in verdict["wrong"])


def _samples_section(page: _Page, index: list[dict[str, Any]], scores: list[dict[str, Any]], prompts: int,
                     scene: dict[str, Any] | None = None) -> None:
    """Prompt by prompt, the models side by side (the same seed), each image's scores (and, with the scene
    scorer, the verifier's verdict) under it; the images are copied into the folder so it stands alone."""
    verdicts = {(v["model"], v["prompt_id"], v["k"]): v for v in (scene or {}).get("verdicts", [])}
    score_of = {(r["model"], r["prompt_id"], r["k"], r["scorer"]): r["score"] for r in scores}
    scorers = sorted({key[3] for key in score_of})
    models = sorted({r["model"] for r in index})
    by_prompt: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in index:
        by_prompt.setdefault((r["prompt_id"], r["k"]), {})[r["model"]] = r
    shown = set(sorted({r["prompt_id"] for r in index})[:prompts])
    body = ""
    for (prompt_id, k), by_model in sorted((key, v) for key, v in by_prompt.items() if key[0] in shown):
        first = next(iter(by_model.values()))
        body += (f'<div class="prompt">{_e(first["prompt"])} <small>({_e(prompt_id)}, seed {first["seed"]})</small>'
                 '</div><div class="grid">')
        for model in models:
            r = by_model.get(model)
            if r is None:
                body += f'<figure class="missing">{_e(model)}: not sampled</figure>'
                continue
            name = f"images/{file_name(model)}/{file_name(prompt_id)}_{k}.png"
            (page.out / name).parent.mkdir(parents=True, exist_ok=True)
            fs, p = filesystem_for(r["path"])
            fs.get(p, str(page.out / name))
            page.images += 1
            line = " ".join(f"{s} {score_of[(model, prompt_id, k, s)]:.3f}" for s in scorers
                            if (model, prompt_id, k, s) in score_of)
            verdict = verdict_line(verdicts.get((model, prompt_id, k)))
            body += (f'<figure><img class="sample" src="{_e(name)}" alt="{_e(model)}">'
                     f"<figcaption>{_e(model)}<br>{_e(line)}" + (f"<br>{_e(verdict)}" if verdict else "")
                     + "</figcaption></figure>")
        body += "</div>"
    page.add("Samples", f"<p>Same seed for every model in a row; first {prompts} prompts (eval.report_prompts).</p>"
             + body)


def file_name(text: str) -> str:
    """A name safe in a path and a URL (letters, digits, `._-`); a changed name gets a short digest of the
    original, so two names never share a file."""
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "_"
    return safe if safe == text else f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _configs_section(page: _Page, cfg: TPOConfig) -> None:
    text = ""
    configs = None if is_uri(cfg.output_dir) else Path(cfg.output_dir) / "configs"
    for f in sorted(configs.glob("*.yaml")) if configs is not None and configs.is_dir() else []:
        text += f"<h3>{_e(f.name)}</h3><pre>{_e(f.read_text())}</pre>"
    models = _e(json.dumps(dict(cfg.eval.models) or {"base": cfg.model.pretrained}, indent=1))
    page.add("Configs", f"<h3>models compared</h3><pre>{models}</pre>" + text)


def build_report(cfg: TPOConfig, out: Path) -> ReportResult:
    """Write the report folder into `out` (local) from the eval outputs of `cfg`."""
    start = time.perf_counter()
    directory = eval_dir(cfg)
    implicit = _read_json(join(directory, "implicit", "summary.json"))
    winrates = _read_json(join(directory, "winrates.json"))
    style = _read_json(join(directory, "style.json"))
    wanted = set(eval_models(cfg))  # an earlier eval's models still in the index are not this report's
    scene = _read_json(join(directory, "scene.json")) if "scene" in cfg.eval.scorers else None
    if scene is not None:
        scene = {"models": {m: t for m, t in scene["models"].items() if m in wanted},
                 "verdicts": [v for v in scene["verdicts"] if v["model"] in wanted]}
    scores = [r for r in read_scores(directory) if r["model"] in wanted]
    index = [r for r in read_index(directory) if r["model"] in wanted]
    curves = training_curves(cfg)
    missing = [what for what, value in (("implicit preference (tpo-ray eval implicit)", implicit),
                                        ("samples (tpo-ray eval sample)", index),
                                        ("reward scores (tpo-ray eval score)", winrates),
                                        *([("scene verifier (tpo-ray eval score with eval.scorers: [scene])",
                                            scene and scene["models"])] if "scene" in cfg.eval.scorers else []),
                                        ("training curves (no training run in the MLflow experiment)", curves))
               if not value]
    page = _Page(out)
    if scene and scene["models"]:
        _scene_section(page, scene)
    if winrates:
        _win_rate_section(page, winrates, scores)
    if implicit:
        _implicit_section(page, implicit)
    if style:
        _style_section(page, style)
    points = correlation_points(implicit, scores)
    if points:
        _correlation_section(page, points)
    if curves:
        _curves_section(page, curves)
    if index:
        _samples_section(page, index, scores, cfg.eval.report_prompts, scene)
    _configs_section(page, cfg)
    gaps = "".join(f'<li class="missing">{_e(m)}: not found</li>' for m in missing)
    html_text = (f"<!doctype html><html><head><meta charset='utf-8'><title>tpo_ray report: {_e(cfg.output_dir)}"
                 f"</title><style>{STYLE}</style></head><body><h1>tpo_ray evaluation</h1><p>{_e(directory)}; "
                 f"made {time.strftime('%Y-%m-%d %H:%M:%S')}</p>" + (f"<ul>{gaps}</ul>" if gaps else "")
                 + "".join(page.sections) + "</body></html>")
    (out / "index.html").write_text(html_text, encoding="utf-8")
    return ReportResult(str(out / "index.html"), page.images, page.plots, missing, time.perf_counter() - start)


def run_report(cfg: TPOConfig) -> ReportResult:
    """Build the report next to the eval outputs (a bucket gets a copy of the finished folder)."""
    from tpo_ray.tracking import tracking_run

    target = report_dir(cfg)
    if is_uri(target):
        staging = Path(tempfile.mkdtemp(prefix="tpo_ray_report_"))
        result = build_report(cfg, staging)
        fs, p = filesystem_for(target)
        fs.put(str(staging) + "/", p, recursive=True)
        shutil.rmtree(staging, ignore_errors=True)
        result.index = join(target, "index.html")
    else:
        out = Path(target)
        if out.exists():
            shutil.rmtree(out)  # a fresh page: no image of an earlier eval is left behind
        result = build_report(cfg, out)
    with tracking_run(cfg.tracking, cfg.output_dir, run_name="report", tags={"stage": "report"}) as tracker:
        if not is_uri(target):
            tracker.log_artifacts(target, "report")
    log.info("report: %d images, %d plots -> %s (%.1f s)", result.images, result.plots, result.index, result.seconds)
    return result
