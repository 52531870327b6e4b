"""The report's HTML: the header and one function per section, each appending to a `Page`.

Strings only, plus the plots (`report_plots`) and the sample images each section copies into the page's
folder. What a section shows has already been cut to the config's models, prompts and scorers
(`report.report_inputs`).
"""

from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path
from typing import Any

from tpo_ray.data.io import filesystem_for
from tpo_ray.eval.report_format import (
    CAPTION_ACC,
    IMPLICIT_ACC,
    METRIC_LABELS,
    fit_summary,
    interval,
    number,
    signed,
    with_interval,
)
from tpo_ray.eval.report_plots import plot_correlation, plot_curve_panels, plot_implicit, plot_win_rates

STYLE = """body{font-family:system-ui,sans-serif;margin:16px 24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.grid{display:flex;gap:8px;flex-wrap:wrap}
figure{margin:0;text-align:center;font-size:12px;max-width:200px}figure.plot{max-width:none;display:inline-block}figure.baseline{outline:3px solid #36c}
img.sample{width:192px;height:192px;object-fit:contain;image-rendering:auto;background:#eee}
.missing,.broken{color:#a33}.prompt{margin:12px 0 4px;font-weight:600}.best{color:#070;font-weight:600}
header#summary{border:1px solid #ccc;background:#fafafa;padding:8px 16px;margin-bottom:16px}
header h1{margin:4px 0 8px;font-size:22px}dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;
margin:0;font-size:14px}dl.facts dt{font-weight:600}dl.facts dd{margin:0}
.warning{background:#fff3cd;border:2px solid #c90;color:#633;padding:6px 10px;margin:6px 0;font-weight:600}
.warning ul{margin:2px 0 0;padding-left:20px;font-weight:400}
small{color:#555}"""


def e(value: Any) -> str:
    return html.escape(str(value))


def table(header: list[str], rows: list[list[str]], attrs: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def file_name(text: str) -> str:
    """A name safe in a path and a URL (letters, digits, `._-`); a changed name gets a short digest of the
    original, so two names never share a file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "_"
    return safe if safe == text else f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


class Page:
    """The report being written: its folder, its sections in order, what it counted and what it lacked."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.sections: list[str] = []
        self.images = 0
        self.plots = 0
        self.broken: list[str] = []  # sample images missing or unreadable (listed on the page)
        (out / "plots").mkdir(parents=True, exist_ok=True)
        (out / "images").mkdir(parents=True, exist_ok=True)

    def plot(self, name: str) -> Path:
        self.plots += 1
        return self.out / "plots" / file_name(name)

    def add(self, title: str, body: str, anchor: str = "") -> None:
        ident = f' id="{anchor}"' if anchor else ""
        self.sections.append(f"<section{ident}><h2>{title}</h2>{body}</section>")


def header(facts: list[tuple[str, str]], warnings: list[str], problems: list[str]) -> str:
    """The box at the top: test-scale warnings first, then what was compared and how (`facts`: term, HTML)."""
    warn = ("<div class='warning' id='test-scale'>&#9888; Test-scale models or scorers: these numbers say nothing "
            "about real models.<ul>" + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul></div>"
            if warnings else "")
    rows = "".join(f"<dt>{e(term)}</dt><dd>{text}</dd>" for term, text in facts)
    gaps = "".join(f"<li class='missing'>{e(p)}</li>" for p in problems)
    return (f"<header id='summary'><h1>tpo_ray evaluation</h1>{warn}<dl class='facts'>{rows}</dl>"
            + (f"<ul>{gaps}</ul>" if gaps else "") + "</header>")


def _cell(c: dict[str, Any] | None) -> str:
    if not c or c.get("rate") is None:
        return "-" if not c else "no pairs"
    return (f"{number(c['rate'])} {interval([c['low'], c['high']])}<br><small>{c.get('wins', '?')}/"
            f"{c.get('losses', '?')}/{c.get('ties', '?')} w/l/t</small>")


def win_rate_section(page: Page, winrates: dict[str, Any], scores: list[dict[str, Any]]) -> None:
    """The paper's table (rows models, columns scorers, each cell the win rate over the baseline), the
    bar plot, and the per-category table when `eval score` wrote one."""
    baseline = winrates["baseline"]
    scorers = sorted({s for cells in winrates["models"].values() for s in cells})
    values: dict[tuple[str, str], list[float]] = {}
    for r in scores:
        values.setdefault((r["model"], r["scorer"]), []).append(r["score"])
    recorded = winrates.get("means") or {}  # eval score's means over the paired images (newer layout)
    rows = []
    for model in [baseline, *winrates["models"]]:
        cells = [e(model) + (" <small>(baseline)</small>" if model == baseline else "")]
        for scorer in scorers:
            mine = values.get((model, scorer), [])
            mean = number(recorded.get(model, {}).get(scorer, sum(mine) / len(mine) if mine else None), 4)
            if model == baseline:
                cells.append(f"baseline<br><small>mean {mean}</small>")
            else:
                cells.append(_cell(winrates["models"][model].get(scorer)) + f"<br><small>mean {mean}</small>")
        rows.append(cells)
    body = ("<p>Paired by prompt and seed; 95% bootstrap intervals over prompts; ties count one half.</p>"
            + table(["model", *scorers], rows, 'id="winrates"'))
    if winrates["models"]:
        src = plot_win_rates(winrates, page.plot("win_rates.png"))
        body += f'<img class="plot" src="{src}" alt="win rates">'
    categories = winrates.get("by_category")
    if categories:
        models = list(winrates["models"])
        header_cells = [f"{m}: {s}" for m in models for s in scorers]
        cat_rows = [[e(category), *(_cell(by_model.get(m, {}).get(s)) for m in models for s in scorers)]
                    for category, by_model in sorted(categories.items())]
        body += (f"<h3>Win rates over {e(baseline)} by prompt category</h3>"
                 + table(["category", *header_cells], cat_rows, 'id="winrates-by-category"'))
    else:
        body += ("<p class='missing'>Win rates by prompt category: not in winrates.json (written by an older "
                 "<code>tpo-ray eval score</code>; rerun it).</p>")
    page.add(f"Win rates over {e(baseline)}", body, "winrates-section")


def implicit_section(page: Page, implicit: dict[str, Any]) -> None:
    figures, reference = implicit["figures"], implicit["reference"]
    rows = []
    for model, entry in figures.items():
        o = entry["overall"]
        relative = (with_interval(o["implicit_acc"], o.get("implicit_acc_interval"))
                    + f"<br><small>margin {signed(o.get('implicit_margin'))}</small>"
                    if "implicit_acc" in o else "reference")
        rows.append([e(model), str(o.get("pairs", "-")), with_interval(o["acc"], o.get("acc_interval")),
                     signed(o["margin"]), relative])
    body = (f"<p><b>{CAPTION_ACC.capitalize()}</b> (MLflow <code>val/model_acc</code>): the share of comparisons "
            "where the model denoises x_t better under the true caption c_w than under the edited c_l "
            f"(m_w &lt; m_l). <b>{IMPLICIT_ACC.capitalize()}</b> (MLflow <code>val/implicit_acc</code>): the share "
            f"where its DPO implicit reward against {e(reference)} prefers c_w, (m_l - r_l) - (m_w - r_w) &gt; 0. "
            "Ties count one half. Intervals: 95% bootstrap over held-out pairs (a pair's timesteps and noise "
            "draws are resampled together).</p>"
            + table(["model", "pairs", f"{CAPTION_ACC} [95%]", "mean margin m_l - m_w",
                     f"{IMPLICIT_ACC} vs {reference} [95%]"], rows, 'id="implicit"'))
    principles = sorted({p for entry in figures.values() for p in entry["by_principle"]})
    if principles:
        cells = [[e(model), *(with_interval(entry["by_principle"][p]["acc"],
                                            entry["by_principle"][p].get("acc_interval"))
                              if p in entry["by_principle"] else "-" for p in principles)]
                 for model, entry in figures.items()]
        body += f"<h3>{CAPTION_ACC.capitalize()} by principle</h3>" + table(["model", *principles], cells,
                                                                          'id="implicit-principles"')
    for breakdown, label in (("by_principle", "principle"), ("by_timestep", "timestep"), ("by_edits", "edits")):
        if any(entry[breakdown] for entry in figures.values()):
            src = plot_implicit(figures, breakdown, label, page.plot(f"implicit_{breakdown}.png"))
            body += f'<img class="plot" src="{src}" alt="{CAPTION_ACC} by {label}">'
    page.add(f"Held-out preference: {CAPTION_ACC} and {IMPLICIT_ACC}",
             f"<p>{implicit['pairs']} held-out pairs, timesteps {e(implicit['timesteps'])}, {implicit['noise_draws']} "
             "noise draws each; every model sees the same x_t.</p>" + body, "implicit-section")


def style_section(page: Page, style: dict[str, Any]) -> None:
    from tpo_ray.world.accuracy import wilson_interval

    names = list(style["styles"])

    def cell(rate: float, n: int) -> str:
        return with_interval(rate, list(wilson_interval(round(rate * n), n)), 2)

    rows = [[e(model), cell(m["rate"], m["n"]), str(m["n"]),
             *[cell(m["by_style"][n]["rate"], m["by_style"][n].get("n", m["n"])) if n in m["by_style"] else "-"
               for n in names]] for model, m in style["models"].items()]
    page.add("Style reproduction", "<p>Share of samples closest, in CLIP space, to the style their prompt requests "
             "(95% Wilson intervals) among: " + e(", ".join(f"{n} ({d})" for n, d in style["styles"].items()))
             + "</p>" + table(["model", "in the requested style", "samples", *names], rows, 'id="style"'))


def correlation_section(page: Page, points: dict[str, list]) -> None:
    body = ""
    for scorer, pts in points.items():
        fit = fit_summary([p[1] for p in pts], [p[2] for p in pts], f"mean {scorer}")
        src = plot_correlation(scorer, pts, fit, page.plot(f"correlation_{scorer}.png"))
        body += (f'<figure class="plot"><img class="plot" src="{src}" alt="correlation {e(scorer)}">'
                 f"<figcaption class='fit'>{e(fit.text)}</figcaption></figure>")
    page.add(f"Reward against {CAPTION_ACC}", body, "correlation-section")


def curves_section(page: Page, curves) -> None:
    body = ""
    for title, lines in curves.panels.items():
        src = plot_curve_panels(title, lines, page.plot(f"curves_{title}.png"))
        body += f'<img class="plot" src="{src}" alt="{e(title)} curves">'
    if curves.left_out:
        body += (f"<p class='missing'>{curves.left_out} of {curves.runs} training runs in the experiment are not "
                 "drawn (the report draws the first 200 MLflow lists).</p>")
    labels = ", ".join(f"{k} = {v}" for k, v in METRIC_LABELS.items())
    page.add("Training curves (MLflow)", f"<p>One panel per stage and metric; Tune trials are named by the "
             f"values they drew. Metric keys: {e(labels)}.</p>" + body, "curves-section")


def scene_section(page: Page, scene: dict[str, Any]) -> None:
    """The verifier's accuracy table: rows models, columns attributes, all correct, then principles."""
    models = scene["models"]
    first = next(iter(models.values()))
    attributes, principles = list(first["attributes"]), list(first["principles"])

    def cell(c: dict[str, Any]) -> str:
        return f"{number(c['accuracy'], 2)}<br><small>{interval(c['interval'], 2)}</small>"

    rows = [[e(model), str(t["n"]), *(cell(t["attributes"][a]) for a in attributes),
             *(cell(t["principles"][p]) for p in principles)] for model, t in models.items()]
    page.add("What the models draw (scene verifier)",
             "<p>Share of sampled images whose attribute the verifier reads back as the prompt states it, with 95% "
             "Wilson intervals; <em>all</em>: every attribute right; a principle: every attribute it edits right.</p>"
             + table(["model", "images", *attributes, *(f"{p} (principle)" for p in principles)], rows,
                     'id="scene"'))


def verdict_line(verdict: dict[str, Any] | None) -> str:
    """Under an image: "all right", or each wrong attribute with what the verifier read instead."""
    if verdict is None:
        return ""
    if not verdict["wrong"]:
        return "verifier: all right"
    return "wrong: " + ", ".join(f"{a} ({verdict['read'].get(a) or 'none'})" for a in verdict["wrong"])


def copy_image(page: Page, source: str, name: str) -> str | None:
    """Copy one sample into the page; None (and the page lists it) when it is missing or unreadable."""
    from PIL import Image

    target = page.out / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fs, p = filesystem_for(source)
        fs.get(p, str(target))
        with Image.open(target) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports a truncated PNG as SyntaxError
        target.unlink(missing_ok=True)
        page.broken.append(f"{source}: {type(err).__name__}: {err}")
        return None
    page.images += 1
    return name


def winners(by_model: dict[str, dict[str, float]], scorers: list[str]) -> dict[str, list[str]]:
    """scorer -> the models with the highest score on one prompt and seed (several: a tie)."""
    out = {}
    for scorer in scorers:
        scored = {m: s[scorer] for m, s in by_model.items() if scorer in s}
        if scored:
            best = max(scored.values())
            out[scorer] = sorted(m for m, v in scored.items() if v == best)
    return out


def samples_section(page: Page, index: list[dict[str, Any]], scores: list[dict[str, Any]], prompts: int,
                    baseline: str | None, scene: dict[str, Any] | None = None) -> None:
    """Prompt by prompt, the models side by side (the same seed), each thumbnail a link to the full image,
    the baseline outlined, each image's scores (and the verifier's verdict) under it, the best model per
    scorer named; the images are copied into the folder so it stands alone."""
    verdicts = {(v["model"], v["prompt_id"], v["k"]): v for v in (scene or {}).get("verdicts", [])}
    score_of: dict[tuple[str, str, int], dict[str, float]] = {}
    for r in scores:
        score_of.setdefault((r["model"], r["prompt_id"], r["k"]), {})[r["scorer"]] = r["score"]
    scorers = sorted({r["scorer"] for r in scores})
    models = sorted({r["model"] for r in index}, key=lambda m: (m != baseline, m))
    by_prompt: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in index:
        by_prompt.setdefault((r["prompt_id"], r["k"]), {})[r["model"]] = r
    shown = set(sorted({r["prompt_id"] for r in index})[:prompts])
    body = ""
    for (prompt_id, k), by_model in sorted((key, v) for key, v in by_prompt.items() if key[0] in shown):
        first = next(iter(by_model.values()))
        best = winners({m: score_of.get((m, prompt_id, k), {}) for m in by_model}, scorers)
        best_text = "; ".join(f"{s}: {', '.join(ms)}" + (" (tie)" if len(ms) > 1 else "") for s, ms in best.items())
        body += (f'<div class="prompt">{e(first["prompt"])} <small>({e(prompt_id)}, seed {first["seed"]}'
                 + (f', category {e(first["category"])}' if first.get("category") else "") + ")</small>"
                 + (f' <span class="best">best: {e(best_text)}</span>' if best_text else "") + '</div><div class="grid">')
        for model in models:
            r = by_model.get(model)
            if r is None:
                body += f'<figure class="missing">{e(model)}: not sampled</figure>'
                continue
            name = copy_image(page, r["path"], f"images/{file_name(model)}/{file_name(prompt_id)}_{k}.png")
            mine = score_of.get((model, prompt_id, k), {})
            line = " ".join(f"{e(s)} {number(mine[s])}" + ("&#9733;" if model in best.get(s, []) else "")
                            for s in scorers if s in mine)
            verdict = verdict_line(verdicts.get((model, prompt_id, k)))
            picture = (f'<a href="{e(name)}"><img class="sample" src="{e(name)}" alt="{e(model)}"></a>' if name
                       else f'<div class="broken">image missing or unreadable:<br>{e(r["path"])}</div>')
            label = e(model) + (" (baseline)" if model == baseline else "")
            body += (f'<figure class="{"baseline" if model == baseline else "sample"}">{picture}'
                     f"<figcaption>{label}<br>{line}" + (f"<br>{e(verdict)}" if verdict else "")
                     + "</figcaption></figure>")
        body += "</div>"
    page.add("Samples", f"<p>Same seed for every model in a row; first {prompts} prompts (eval.report_prompts); "
             "the baseline outlined; &#9733; the best score of a scorer on that prompt and seed; click a thumbnail "
             "for the full image.</p>" + body, "samples-section")
