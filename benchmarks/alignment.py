"""The TPO paper's comparisons on the scene world, through the project's real stages, read by the verifier.

    data       rendered scenes of the world's training stream (`synthetic_table`), per seed
    negatives  the demo's editor, `scene` (in-grammar edits, `run_negatives`), 1 negative per caption; 4 per
               caption for the mining runs; the `rules` editor's own for tdpo-rules
    base       the world's shipped SD1.5-layout base model (`--base`, default tpo_ray/world/weights/base)
    sft        SFT on the true captions, exported: the start and the reference of every preference run
    runs       from the SFT U-Net, the same steps, the demo's settings (tpo_ray/demo.py: LR, TDPO_BETA;
               the demo's global batch on one worker): tdpo, tkto, dpo (Diffusion-DPO on image pairs rendered
               from the same triplets, `world.preference_data.image_pairs`), tkto-nospatial
               (data.principles without spatial), tdpo-random / tdpo-mined (4 candidates, 1 kept at random
               or by the SFT U-Net's reference margin), tdpo-spoiled (a share of the negatives replaced by
               true rewrites, `world.preference_data.spoil_negatives`), tdpo-rules (the rules editor's general
               lexicon, whose words the world mostly never uses); tdpo keeps 4 checkpoints, each exported
    eval       `run_eval`: held-out implicit preference against SFT on the clean triplets' held-out pairs,
               and held-out scene prompts (color/shape pairs no training caption shows) sampled from every
               model and read back by the scene verifier (scene.json)

Each seed changes the data, the negatives, training and the sampling seeds. Tables: per comparison, each
model's verifier accuracy (all attributes right, by principle, by attribute) over the images pooled across
seeds, with 95% Wilson intervals over those images (prompts x seeds; the seeds' mean when every seed has as
many images), and its held-out implicit accuracy against SFT pooled over comparisons (pairs x timesteps x
noise draws x seeds; not independent, so its Wilson interval is a floor). Then Pearson r between implicit
accuracy and verifier accuracy across the tdpo checkpoints (one point per checkpoint and seed), with a
Fisher-z 95% interval. The last line: TDPO minus SFT all-correct accuracy, with a Newcombe 95% interval.
`--quick` (1 seed, 128 captions, 30 preference steps, 24 prompts, 2 checkpoints) does less at every stage than
one seed of the measured run in docs/world.md, which took 847 s on 2 CPU cores.
Rerunning the same command with the same `--output` resumes: every stage finds its finished work.

    python benchmarks/alignment.py --quick --output /tmp/alignment
    python benchmarks/alignment.py --seeds 3 --output /tmp/alignment --json /tmp/alignment.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpo_ray.demo import EVAL_PROMPTS, SFT_STEPS, TDPO_BETA, TDPO_STEPS, TDPO_TAU  # noqa: E402
from tpo_ray.world.accuracy import proportion  # noqa: E402
from tpo_ray.world.model import BASE_MODEL_DIR  # noqa: E402
from tpo_ray.negatives.lexicon import PRINCIPLES  # noqa: E402  (content, attribute, spatial, contextual)
from tpo_ray.world.scenes import ATTRIBUTES  # noqa: E402

NO_SPATIAL = ["content", "attribute", "contextual"]
COMPARISONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # name -> (models, columns)
    "methods": (("base", "sft", "tdpo", "tkto", "dpo"), ("all", *PRINCIPLES, "implicit")),
    "methods by attribute": (("base", "sft", "tdpo", "tkto", "dpo"), ATTRIBUTES),
    "tkto without spatial edits": (("sft", "tkto", "tkto-nospatial"),
                                   ("all", "spatial", "position", "implicit", "implicit spatial")),
    "hard-negative mining": (("sft", "tdpo-random", "tdpo-mined"), ("all", *PRINCIPLES, "implicit")),
    "negatives' quality": (("sft", "tdpo", "tdpo-spoiled", "tdpo-rules"), ("all", *PRINCIPLES, "implicit")),
}


@dataclass(frozen=True)
class Settings:
    base: str
    seeds: int
    rows: int
    sft_steps: int
    steps: int
    prompts: int
    checkpoints: int
    candidates: int
    share: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 128 captions, 30 steps, 24 prompts, 2 checkpoints")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3; 1 with --quick)")
    parser.add_argument("--rows", type=int, default=None, help="generated captions per seed (default 512, 128 quick)")
    parser.add_argument("--sft-steps", type=int, default=SFT_STEPS)
    parser.add_argument("--steps", type=int, default=None, help=f"preference steps (default {TDPO_STEPS}, 30 quick)")
    parser.add_argument("--prompts", type=int, default=None,
                        help=f"held-out scene prompts per model and seed (default {EVAL_PROMPTS}, 24 quick)")
    parser.add_argument("--checkpoints", type=int, default=None, help="tdpo checkpoints in the correlation (default 4, "
                        "2 quick)")
    parser.add_argument("--candidates", type=int, default=4, help="negatives per caption for the mining runs")
    parser.add_argument("--share", type=float, default=0.5, help="share of negatives replaced by true rewrites")
    parser.add_argument("--base", default=str(BASE_MODEL_DIR), help="the base model (a diffusers SD1.5 folder)")
    parser.add_argument("--output", default=None, help="working folder (default: a temporary one); reuse it to resume")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (Path(args.base) / "model_index.json").is_file():
        sys.exit(f"--base {args.base} holds no diffusers pipeline (model_index.json); pretrain the world's base "
                 "model or pass another folder")
    s = Settings(base=str(Path(args.base).resolve()), seeds=args.seeds or (1 if args.quick else 3),
                 rows=args.rows or (128 if args.quick else 512), sft_steps=args.sft_steps,
                 steps=args.steps or (30 if args.quick else TDPO_STEPS),
                 prompts=args.prompts or (24 if args.quick else EVAL_PROMPTS),
                 checkpoints=args.checkpoints or (2 if args.quick else 4),
                 candidates=args.candidates, share=args.share)
    print(f"# python benchmarks/alignment.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {datetime.date.today()} {platform.node()} {platform.processor() or 'cpu'}; {s}")
    if args.output:
        run(Path(args.output).resolve(), s, args.json)
    else:
        with tempfile.TemporaryDirectory(prefix="alignment-") as tmp:
            run(Path(tmp), s, args.json)


def run(out: Path, s: Settings, json_path: str | None) -> None:
    began = time.perf_counter()
    settings_file = out / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != asdict(s):
        sys.exit(f"{out} holds a run with other settings ({settings_file}); use another --output")
    out.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(asdict(s), indent=1))
    per_seed = {seed: run_seed(out / f"seed{seed}", seed, s) for seed in range(s.seeds)}
    tables = {name: {m: pooled(per_seed, m) for m in models} for name, (models, _) in COMPARISONS.items()}
    for name, (_, columns) in COMPARISONS.items():
        print_table(name, tables[name], columns)
    corr = checkpoint_correlation(per_seed)
    tdpo, sft = tables["methods"]["tdpo"]["all"], tables["methods"]["sft"]["all"]
    gap, low, high = newcombe(tdpo, sft)
    if json_path:
        Path(json_path).write_text(json.dumps({"settings": asdict(s), "seeds": per_seed, "tables": tables,
                                               "correlation": corr, "headline": {"tdpo_minus_sft_all": gap,
                                                                                 "interval": [low, high]}},
                                              indent=1, default=str))
    print(f"# {s.seeds} seed(s); {time.perf_counter() - began:.0f} s in all")
    print(f"verifier all-correct accuracy, TDPO minus SFT {gap:+.3f} [{low:+.3f}, {high:+.3f}]")


def run_seed(folder: Path, seed: int, s: Settings) -> dict[str, Any]:
    """Every stage of one seed; returns its figures (scene.json's tables, implicit figures, counts)."""
    from tpo_ray.cache.job import run_cache
    from tpo_ray.data.io import write_parquet_atomic
    from tpo_ray.data.synthetic import synthetic_table
    from tpo_ray.demo import demo_config
    from tpo_ray.negatives.job import run_negatives
    from tpo_ray.pipeline import run_eval

    def stage(label: str, since: float, figure: str = "") -> None:
        print(f"seed {seed}: {label:<16} {time.perf_counter() - since:6.1f} s  {figure}", flush=True)

    demo = demo_config(folder)
    base = variant(demo, {
        "data.synthetic": {"num_rows": s.rows, "seed": seed}, "negatives.seed": seed, "model.pretrained": s.base,
        "train.seed": seed, "train.max_steps": s.steps, "train.checkpoint_every_steps": s.steps,
        # the demo's global batch on one worker: one process per run on a small machine
        "train.batch_size": demo.train.batch_size * demo.train.scaling.num_workers, "train.scaling.num_workers": 1,
        "tracking.enabled": False, "eval.max_prompts": s.prompts})
    t = time.perf_counter()
    if not Path(base.captions_source()).is_file():
        write_parquet_atomic(synthetic_table(s.rows, base.data.synthetic.image_size, seed), base.captions_source())
    negatives = run_negatives(base)
    stage("negatives", t, f"{negatives.stats['triplets']} triplets")
    t = time.perf_counter()
    sft = variant(base, {"train.loss": {"name": "sft"}, "train.max_steps": s.sft_steps, "train.run_name": "sft",
                         "train.checkpoint_every_steps": s.sft_steps, "export.output": str(folder / "export-sft")})
    run_cache(sft)
    exports = {"base": s.base, "sft": train_and_export(sft)}
    stage("sft", t, f"{s.sft_steps} steps")
    pref = variant(base, {"train.init_from": str(folder / "export-sft" / "unet")})
    t = time.perf_counter()
    counts = {"triplets": negatives.stats["triplets"], **write_variants(folder, seed, s.share, base.data.resolution)}
    mining = {"negatives.negatives_per_caption": s.candidates, "negatives.output": str(folder / "negatives-mining"),
              "cache.reference_margins": True, "data.hard_negatives": 1}
    counts["mining_candidates"] = run_negatives(variant(pref, mining)).stats["triplets"]
    rules = {"negatives.editor": "rules", "negatives.output": str(folder / "negatives-rules")}
    counts["rules_triplets"] = run_negatives(variant(pref, rules)).stats["triplets"]
    stage("data", t, f"{counts['pairs']} image pairs (skipped {counts['pairs_skipped']}), {counts['spoiled']} "
          f"spoiled negatives, {counts['mining_candidates']} mining candidates")
    every = -(-s.steps // s.checkpoints)
    runs = {
        "tdpo": {"train.checkpoint_every_steps": every, "train.keep_checkpoints": s.checkpoints},
        "tkto": {"train.loss": {"name": "tkto", "beta": TDPO_BETA, "tau": TDPO_TAU}},
        "tkto-nospatial": {"train.loss": {"name": "tkto", "beta": TDPO_BETA, "tau": TDPO_TAU},
                           "data.principles": NO_SPATIAL},
        "dpo": {"train.loss": {"name": "dpo", "beta": TDPO_BETA}, "cache.input": str(folder / "pairs" / "pairs.parquet")},
        "tdpo-random": {**mining, "data.hard_negatives_by": "random"},
        "tdpo-mined": {**mining, "data.hard_negatives_by": "reference"},
        "tdpo-spoiled": {"cache.input": str(folder / "spoiled" / "triplets.parquet")},
        "tdpo-rules": rules,
    }
    configs = {}
    for name, overrides in runs.items():
        t = time.perf_counter()
        # named runs: the run digest leaves out cache.input, so tdpo and tdpo-spoiled would share one name
        configs[name] = cfg = variant(pref, {**overrides, "train.run_name": name,
                                             "export.output": str(folder / f"export-{name}")})
        cache = run_cache(cfg)
        exports[name] = train_and_export(cfg)
        stage(name, t, f"{cache.manifest['rows']['train']} cached training rows")
    t = time.perf_counter()
    steps = checkpoint_exports(configs["tdpo"], folder)
    exports.update({name: path for name, (path, _) in steps.items()})
    evaluated = run_eval(variant(pref, {"eval.models": exports, "eval.baseline": "sft",
                                        "eval.output": str(folder / "eval")}))
    stage("eval", t, f"{len(exports)} models")
    return {"scene": evaluated["score"].scene, "implicit": evaluated["implicit"].summary["figures"],
            "checkpoints": {name: step for name, (_, step) in steps.items()}, "counts": counts}


def write_variants(folder: Path, seed: int, share: float, size: int) -> dict[str, Any]:
    """The image pairs and the spoiled triplets made from the seed's negatives, written once (they are
    deterministic: a resumed run keeps the files, and with them their caches); returns their counts."""
    import pyarrow as pa

    from tpo_ray.data.io import read_parquet, write_parquet_atomic
    from tpo_ray.world.preference_data import SPOILED, image_pairs, spoil_negatives

    triplets = read_parquet(str(folder / "negatives" / "triplets")).to_pylist()
    pairs = image_pairs(triplets, size, seed)
    spoiled = spoil_negatives(triplets, share, seed)
    for path, table in ((folder / "pairs" / "pairs.parquet", pairs.table),
                        (folder / "spoiled" / "triplets.parquet", pa.Table.from_pylist(spoiled))):
        if not path.is_file():
            write_parquet_atomic(table, str(path))
    return {"pairs": pairs.table.num_rows, "pairs_skipped": pairs.reasons(), "spoiled": sum(r[SPOILED] for r in spoiled)}


def variant(cfg, overrides: dict[str, Any]):
    from tpo_ray.config import apply_overrides, config_from_dict

    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides), "benchmark")


def export_once(cfg, checkpoint: str) -> str:
    """Export `checkpoint` to `cfg.export.output` unless that folder already holds it (as the pipeline
    does): re-exporting would change the weights' mtime, and with it the implicit eval's key."""
    from tpo_ray.export import run_export
    from tpo_ray.pipeline import EXPORT_RECORD

    folder = Path(cfg.export.output)
    record = folder / EXPORT_RECORD
    if not (record.is_file() and json.loads(record.read_text()).get("checkpoint") == checkpoint):
        run_export(variant(cfg, {"export.checkpoint": checkpoint}))
        record.write_text(json.dumps({"checkpoint": checkpoint}))
    return str(folder)


def train_and_export(cfg) -> str:
    from tpo_ray.train.driver import run_train

    return export_once(cfg, run_train(cfg).checkpoint)


def checkpoint_exports(cfg, folder: Path) -> dict[str, tuple[str, int]]:
    """name -> (export, step) of every kept checkpoint of the run; the last one is the run's own export."""
    from tpo_ray.runs import run_identity
    from tpo_ray.train.checkpoint import STATE

    found = run_identity(cfg).checkpoints()
    out = {}
    for checkpoint in found:
        step = json.loads((Path(checkpoint) / STATE).read_text())["step"]
        if checkpoint == found[-1]:
            out["tdpo"] = (str(folder / "export-tdpo"), step)
            continue
        name = f"tdpo-step{step}"
        out[name] = (export_once(variant(cfg, {"export.output": str(folder / f"export-tdpo-step{step}")}),
                                 checkpoint), step)
    return out


def pooled(per_seed: dict[int, dict], model: str) -> dict[str, dict[str, Any]]:
    """A model's figures over every seed's images (verifier) and comparisons (implicit, against sft)."""
    out: dict[str, dict[str, Any]] = {}
    scene = [f["scene"][model] for f in per_seed.values()]
    n = sum(t["n"] for t in scene)
    for key in ("all", *ATTRIBUTES):
        out[key] = proportion(sum(t["attributes"][key]["right"] for t in scene), n)
    for key in PRINCIPLES:
        out[key] = proportion(sum(t["principles"][key]["right"] for t in scene), n)
    implicit = [f["implicit"][model] for f in per_seed.values()]
    groups = {"implicit": [i["overall"] for i in implicit]}
    groups.update({f"implicit {p}": [i["by_principle"].get(p, {}) for i in implicit] for p in PRINCIPLES})
    for key, figures in groups.items():
        if all("implicit_acc" in g for g in figures):  # sft is the reference: no implicit figure of its own
            out[key] = proportion(sum(g["implicit_acc"] * g["n"] for g in figures), sum(g["n"] for g in figures))
    return out


def print_table(title: str, table: dict[str, dict[str, Any]], columns: tuple[str, ...]) -> None:
    print(f"\n{title}: verifier accuracy over pooled images, implicit accuracy vs sft over pooled comparisons; "
          "[95% Wilson]")
    print("| model | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for model, cells in table.items():
        shown = [f"{cells[c]['accuracy']:.3f} [{cells[c]['interval'][0]:.2f}, {cells[c]['interval'][1]:.2f}]"
                 if c in cells else "-" for c in columns]
        print(f"| {model} | " + " | ".join(shown) + " |")


def checkpoint_correlation(per_seed: dict[int, dict]) -> dict[str, Any]:
    """Pearson r of (implicit accuracy vs sft, verifier all-correct accuracy) over the tdpo checkpoints of
    every seed, with its Fisher-z 95% interval (n > 3 points)."""
    points = [{"seed": seed, "model": name, "step": step, "implicit": f["implicit"][name]["overall"]["implicit_acc"],
               "all": f["scene"][name]["attributes"]["all"]["accuracy"]}
              for seed, f in per_seed.items() for name, step in sorted(f["checkpoints"].items(), key=lambda x: x[1])]
    from tpo_ray.eval.winrate import linear_fit

    try:
        fit = linear_fit([p["implicit"] for p in points], [p["all"] for p in points])
        r, slope, intercept = (fit.r if fit.r or len({p["all"] for p in points}) > 1 else float("nan"),
                               fit.slope, fit.intercept)
    except ValueError:  # under two points, or every checkpoint at the same implicit accuracy
        r = slope = intercept = float("nan")
    low, high = fisher_interval(r, len(points))
    print("\nimplicit preference vs verifier accuracy across the tdpo checkpoints")
    print("| seed | step | implicit acc vs sft | all correct |")
    print("|---|---|---|---|")
    for p in points:
        print(f"| {p['seed']} | {p['step']} | {p['implicit']:.3f} | {p['all']:.3f} |")
    print(f"Pearson r {r:+.3f} [{low:+.3f}, {high:+.3f}] (Fisher z, 95%; n = {len(points)} checkpoint x seed points); "
          f"all correct = {slope:+.3f} x implicit acc {intercept:+.3f}")
    return {"points": points, "r": r, "interval": [low, high], "n": len(points), "slope": slope, "intercept": intercept}


def fisher_interval(r: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n <= 3 or math.isnan(r):
        return (float("nan"), float("nan"))
    centre, half = math.atanh(max(-0.999999, min(0.999999, r))), z / math.sqrt(n - 3)
    return (math.tanh(centre - half), math.tanh(centre + half))


def newcombe(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, float]:
    """a - b of two proportions with Newcombe's hybrid Wilson 95% interval (the samples treated as
    independent; they share prompts and seeds, so the interval is conservative)."""
    pa, pb = a["accuracy"], b["accuracy"]
    (la, ua), (lb, ub) = a["interval"], b["interval"]
    d = pa - pb
    return d, d - math.hypot(pa - la, ub - pb), d + math.hypot(ua - pa, pb - lb)


if __name__ == "__main__":
    main()
