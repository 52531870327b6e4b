"""How many real prompts the offline `rules` editor can edit, per packaged prompt set and category.

The rules editor is the offline editor and the fallback for every LLM output that fails validation: a
prompt it cannot edit gets no negative when the LLM misses. Counts `rule_edit(prompt) is not None`
(seeded, one edit) over the benchmark prompt lists packaged in `tpo_ray/eval/prompts/`.

    python benchmarks/negatives_coverage.py            # every packaged set
    python benchmarks/negatives_coverage.py --set parti --misses 10
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from tpo_ray.eval.prompt_sets import PACKAGED, load_prompts
    from tpo_ray.negatives.rules import rule_edit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", choices=sorted(PACKAGED), help="default: every packaged set")
    parser.add_argument("--misses", type=int, default=5, help="show this many prompts it could not edit, per set")
    args = parser.parse_args()
    print(f"# python benchmarks/negatives_coverage.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {datetime.date.today()} {platform.node()}")
    for name in args.set or sorted(PACKAGED):
        prompts = load_prompts(name)
        edited: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        misses = []
        for p in prompts:
            ok = rule_edit(p.text, seed=p.id) is not None
            edited[p.category or "-"][0] += ok
            edited[p.category or "-"][1] += 1
            if not ok:
                misses.append(p.text)
        total = sum(e for e, _ in edited.values())
        print(f"\n{name}: {total}/{len(prompts)} prompts editable ({total / len(prompts):.1%})")
        for category, (ok, n) in sorted(edited.items()):
            print(f"  {category:20s} {ok:5d}/{n:<5d} {ok / n:6.1%}")
        for text in misses[:args.misses]:
            print(f"  not editable: {text[:100]}")
    print()


if __name__ == "__main__":
    main()
