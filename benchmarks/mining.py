"""Hard-negative mining against its control: does training on the negatives the reference finds most
plausible beat training on random ones, with the same number of triplets, steps and seed?

    data      the demo's generated shapes (`synthetic_table`), tiny random SD1.5 (`tiny:sd15`)
    negatives rules editor, n = 4 candidate negatives per caption
    sft       SFT on the captions, exported; it is the start and the reference of every TDPO run
    cache     triplets with `cache.reference_margins` (the SFT U-Net's m_l - m_w per candidate)
    tdpo      from the SFT U-Net, k = 1 negative per caption: `data.hard_negatives_by` random (the
              control), reference (mined) and clip (highest text similarity), same steps and seed
    eval      `tpo-ray eval implicit` (`run_implicit`) on the same held-out pairs (all candidates,
              never mined) for sft, random, mined, clip; implicit accuracy against sft

Prints one table (held-out acc = the model's own m_w < m_l; implicit acc = (m_l - r_l) - (m_w - r_w) > 0
against sft; by principle), the mean reference margin of each run's training negatives (what mining
selected), and last the headline: mined minus random implicit accuracy. The ± is the binomial standard
error over held-out comparisons (pairs x timesteps x draws; they are not independent, so it is a floor).
Tiny random models: the figure says whether the machinery works and which way it points here, not what
it does for SD. `--quick` takes about 2 minutes on 2 CPU cores (four Ray Train runs), not one.

    python benchmarks/mining.py --quick
    python benchmarks/mining.py --rows 256 --steps 200 --output /tmp/mining
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGIES = {"random": "random", "mined": "reference", "clip": "clip"}  # model name -> data.hard_negatives_by


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 captions, 40 SFT + 60 TDPO steps")
    parser.add_argument("--rows", type=int, default=None, help="generated captions (default 64 quick, 256)")
    parser.add_argument("--candidates", type=int, default=4, help="negatives.negatives_per_caption (n)")
    parser.add_argument("--keep", type=int, default=1, help="data.hard_negatives (k)")
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--steps", type=int, default=None, help="TDPO steps (default 60 quick, 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = args.rows or (64 if args.quick else 256)
    steps = args.steps or (60 if args.quick else 200)
    print(f"# python benchmarks/mining.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {datetime.date.today()} {platform.node()} {platform.processor() or 'cpu'}")
    if args.output:
        run(Path(args.output), rows, steps, args)
    else:
        with tempfile.TemporaryDirectory(prefix="mining-") as tmp:
            run(Path(tmp), rows, steps, args)


def run(out: Path, rows: int, steps: int, args: argparse.Namespace) -> None:
    from tpo_ray.cache.job import run_cache
    from tpo_ray.config import apply_overrides, config_from_dict
    from tpo_ray.data.io import write_parquet_atomic
    from tpo_ray.data.synthetic import synthetic_table
    from tpo_ray.eval.implicit_job import run_implicit
    from tpo_ray.export import run_export
    from tpo_ray.negatives.job import run_negatives
    from tpo_ray.train.driver import run_train

    def variant(cfg, overrides):
        return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides), "benchmark")

    began = time.perf_counter()
    base = config_from_dict({
        "output_dir": str(out),
        "data": {"synthetic": {"num_rows": rows}, "holdout_fraction": 0.25},
        "negatives": {"negatives_per_caption": args.candidates, "shard_size": 128},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(out / "models")},
        # the demo's settings for tiny random models (tpo_ray/demo.py)
        "train": {"loss": {"name": "tdpo", "beta": 1000.0, "tau": None}, "lr": 3e-4, "max_steps": steps,
                  "batch_size": 4, "log_every_steps": 20, "checkpoint_every_steps": steps, "eval_max_pairs": 16,
                  "seed": args.seed, "scaling": {"num_workers": 1}},
        "eval": {"timesteps": [200, 400, 600, 800], "noise_draws": 2},
        "tracking": {"enabled": False},
    }, "benchmark")
    write_parquet_atomic(synthetic_table(rows, 64, args.seed), base.captions_source())
    negatives = run_negatives(base)
    print(f"negatives: {negatives.stats['rows_accepted']} captions -> {negatives.stats['triplets']} triplets "
          f"(n={args.candidates} asked)")

    sft = variant(base, {"train.loss": {"name": "sft"}, "train.max_steps": args.sft_steps, "train.run_name": "sft",
                         "train.checkpoint_every_steps": args.sft_steps, "export.output": str(out / "export-sft")})
    run_cache(sft)
    run_train(sft)
    run_export(sft)
    preference = variant(base, {"train.init_from": str(out / "export-sft" / "unet"), "cache.reference_margins": True})
    cache = run_cache(preference)
    print(f"cache: {cache.manifest['rows']} triplets with reference margins ({cache.seconds:.0f} s)")

    exports = {"sft": str(out / "export-sft")}
    selected = {}
    for name, by in STRATEGIES.items():
        cfg = variant(preference, {"data.hard_negatives": args.keep, "data.hard_negatives_by": by,
                                   "train.run_name": f"tdpo-{name}", "export.output": str(out / f"export-{name}")})
        result = run_train(cfg)
        run_export(cfg)
        exports[name] = str(out / f"export-{name}")
        selected[name] = training_margins(cfg, cache.directory)
        print(f"tdpo {name} ({by}): {selected[name][2]} triplets, {result.metrics.get('step')} steps "
              f"({result.seconds:.0f} s)")

    evaluated = variant(preference, {"eval.models": exports, "eval.baseline": "sft", "eval.output": str(out / "eval")})
    summary = run_implicit(evaluated).summary
    print_table(summary, selected)
    figures = summary["figures"]
    gap = figures["mined"]["overall"]["implicit_acc"] - figures["random"]["overall"]["implicit_acc"]
    print(f"# {summary['pairs']} held-out pairs x {len(summary['timesteps'])} timesteps x "
          f"{summary['noise_draws']} draws; {time.perf_counter() - began:.0f} s in all")
    print(f"implicit_acc mined - random {gap:+.3f}")


def training_margins(cfg, directory: str) -> tuple[float, float, int]:
    """(mean ref_margin, mean text_similarity, rows) of the triplets a run trains on."""
    from tpo_ray.cache.store import CacheReader, RowFilter

    reader = CacheReader(directory, "train", seed=0, shuffle=False, keep=RowFilter.from_data_config(cfg.data))
    rows = reader.rows(0, len(reader))
    return (sum(r["ref_margin"] for r in rows) / len(rows), sum(r["text_similarity"] for r in rows) / len(rows),
            len(rows))


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def print_table(summary: dict, selected: dict) -> None:
    figures = summary["figures"]
    principles = sorted({p for m in figures.values() for p in m["by_principle"]})
    head = ["model", "train ref_margin", "train text_sim", "held-out acc", "implicit acc vs sft",
            *[f"implicit {p}" for p in principles]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, entry in figures.items():
        overall = entry["overall"]
        margin, similarity, _ = selected.get(name, (float("nan"), float("nan"), 0))
        cells = [name, "-" if name == "sft" else f"{margin:+.2e}", "-" if name == "sft" else f"{similarity:.4f}",
                 f"{overall['acc']:.3f} ± {stderr(overall['acc'], overall['n']):.3f}"]
        if "implicit_acc" in overall:
            cells.append(f"{overall['implicit_acc']:.3f} ± {stderr(overall['implicit_acc'], overall['n']):.3f}")
            cells += [f"{entry['by_principle'][p]['implicit_acc']:.3f} (n={entry['by_principle'][p]['n']})"
                      if p in entry["by_principle"] else "-" for p in principles]
        else:
            cells += ["(reference)"] + ["-"] * len(principles)
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
