"""How many real prompts the offline `rules` editor can edit, per prompt set and category.

The rules editor is the offline editor and the fallback for every LLM output that fails validation: a
prompt it cannot edit gets no negative when the LLM misses. Counts `rule_edit(prompt) is not None`
(seeded, one edit) over the benchmark prompt lists packaged in `tpo_ray/eval/prompts/`, 2,500 real
COCO 2017 val captions (`benchmarks/data/coco_val2017_captions.tsv`, source and licence in
benchmarks/data/README.md) and the COCO-style captions in `benchmarks/data/coco_style_captions.txt`
(written for this project in the style of COCO captions: not real data). Every edit made at seeds 0-2 with 1 and 2
edits is also checked by the negatives job's answer validation (it must accept all of them).
`--sample N` prints N accepted edits drawn at random (seeded) for a person to read. `--job` also runs
the negatives job itself (rules editor, a local Ray) over each set and prints its `stats.json`
acceptance figures: acceptance rate, per principle, rejections per reason, edit counts.
`benchmarks/negatives_quality.py` measures the accepted negatives themselves (principle mix, each
check's flags) and draws the sample graded in docs/negatives.md.

    python benchmarks/negatives_coverage.py            # every set
    python benchmarks/negatives_coverage.py --set parti --misses 10
    python benchmarks/negatives_coverage.py --sample 25
    python benchmarks/negatives_coverage.py --job      # + the job's acceptance figures (~1 min)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COCO_STYLE = ROOT / "benchmarks" / "data" / "coco_style_captions.txt"  # written for the project: not real
COCO_VAL2017 = ROOT / "benchmarks" / "data" / "coco_val2017_captions.tsv"  # real COCO captions


def prompt_sets() -> dict[str, str]:
    from tpo_ray.eval.prompt_sets import PACKAGED

    return {**{name: name for name in PACKAGED}, "coco_style": str(COCO_STYLE), "coco_val2017": str(COCO_VAL2017)}


def coverage(name: str) -> tuple[dict[str, list[int]], list[str], list[tuple[str, str, str]]]:
    """(category -> [edited, total], prompts not edited, (prompt, negative, principle) of the edited)."""
    from tpo_ray.eval.prompt_sets import load_prompts
    from tpo_ray.negatives.rules import rule_edit

    edited: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses, accepted = [], []
    for p in load_prompts(prompt_sets()[name]):
        out = rule_edit(p.text, seed=p.id)
        edited[p.category or "-"][0] += out is not None
        edited[p.category or "-"][1] += 1
        if out is None:
            misses.append(p.text)
        else:
            accepted.append((p.text, out.negative, out.principle))
    return edited, misses, accepted


def validated(name: str) -> tuple[int, dict[str, int]]:
    """(edits checked, rejections by reason): every edit at seeds 0-2 with 1 and 2 edits, through the
    validation the negatives job applies to every candidate."""
    from tpo_ray.eval.prompt_sets import load_prompts
    from tpo_ray.negatives.rules import checked_edits

    checked, rejected = 0, defaultdict(int)
    for _, _, reason in checked_edits((p.id, p.text) for p in load_prompts(prompt_sets()[name])):
        checked += 1
        if reason is not None:
            rejected[reason] += 1
    return checked, dict(rejected)


def job_figures(name: str, workdir: Path) -> dict:
    """The negatives job's stats.json over one prompt set (rules editor, 2 negatives per caption)."""
    import pyarrow as pa

    from tpo_ray.config import load_config
    from tpo_ray.data.io import write_parquet_atomic
    from tpo_ray.eval.prompt_sets import load_prompts
    from tpo_ray.negatives.job import run_negatives

    rows = [{"id": p.id, "caption": p.text} for p in load_prompts(prompt_sets()[name])]
    source = workdir / name / "captions.parquet"
    write_parquet_atomic(pa.Table.from_pylist(rows), source)
    cfg = load_config(None, [f"output_dir={workdir / name}", f"negatives.input={source}",
                             f"negatives.output={workdir / name / 'negatives'}", "negatives.negatives_per_caption=2",
                             "tracking.enabled=false"])
    return run_negatives(cfg).stats


def main() -> None:
    sets = prompt_sets()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", choices=sorted(sets), help="default: every set")
    parser.add_argument("--misses", type=int, default=5, help="show this many prompts it could not edit, per set")
    parser.add_argument("--sample", type=int, default=0, help="print this many accepted edits over all sets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")
    parser.add_argument("--quick", action="store_true", help="accepted for the benchmark convention; already fast")
    parser.add_argument("--job", action="store_true", help="also run the negatives job over each set")
    args = parser.parse_args()
    from tpo_ray.negatives.lexicon import LEXICON_VERSION

    print(f"# python benchmarks/negatives_coverage.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {datetime.date.today()} {platform.node()} lexicon v{LEXICON_VERSION}")
    pool, lowest, bad_edits = [], 1.0, 0
    for name in args.set or sorted(sets):
        edited, misses, accepted = coverage(name)
        pool += accepted
        total, n = sum(e for e, _ in edited.values()), sum(t for _, t in edited.values())
        lowest = min(lowest, total / n)
        print(f"\n{name}: {total}/{n} prompts editable ({total / n:.1%})")
        for category, (ok, k) in sorted(edited.items()):
            if category != "-":
                print(f"  {category:20s} {ok:5d}/{k:<5d} {ok / k:6.1%}")
        for text in misses[:args.misses]:
            print(f"  not editable: {text[:100]}")
        checked, rejected = validated(name)
        print(f"  validation: {checked} edits (seeds 0-2, 1 and 2 edits), {sum(rejected.values())} rejected {rejected}")
        bad_edits += sum(rejected.values())
        if args.job:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                stats = job_figures(name, Path(tmp))
            print(f"  job (rules editor, 2 negatives per caption): {stats['rows_accepted']}/{stats['rows_in']} captions "
                  f"accepted ({stats['acceptance_rate']:.1%}), {stats['triplets']} triplets, "
                  f"{stats['rows_quarantined']} quarantined")
            print(f"    candidates accepted, by principle: {stats['acceptance_by_principle']}")
            print(f"    principle share of triplets: {stats['principle_share']}")
            print(f"    rejected, by reason: {stats['rejected']}")
            print(f"    triplets by edit count: {stats['num_edits']}")
    if args.sample:
        print(f"\n{args.sample} accepted edits (seed {args.seed}):")
        for i, (caption, negative, principle) in enumerate(random.Random(args.seed).sample(pool, args.sample), 1):
            print(f"{i:3d}. [{principle}] {caption}\n     -> {negative}")
    print(f"\nlowest coverage {lowest:.3f}; edits rejected by validation: {bad_edits}")


if __name__ == "__main__":
    main()
