"""How good the rules editor's negatives are on real captions, per prompt set, and a sample to grade.

Runs the negatives job's own per-caption path without Ray: the rules editor's answer for each caption
(`rules_output`, the seed the job gives negative 0, attempt 0), the job's answer validation
(`ValidationRules.check`, `NegativesConfig` defaults unless overridden) and its selection with the rules
fallback (`select_negatives`, the job's fallback seeds). Per set it reports:

- coverage: the share of captions that get an accepted negative (and that the editor could edit at all);
- the principle mix: requested (the configured weights), available (the share of captions with material
  for each principle) and realised (each principle's share of the accepted negatives);
- validation's rejections by reason, over every answer the editor gave (first answers and fallbacks);
  whatever reasons `validate_proposal` returns are counted, so new checks show up without a change here;
- the share of accepted negatives flagged by each check applied on its own: `lexicon.still_true` over
  each edit (by the kind it names), the edits `validation.derive_edits` finds (by kind) and a principle
  `validation.derived_principle` reads that differs from the one reported (these three are looked up at
  run time: one the code base does not have is not run), and the error classes issue 24 lists, by
  pattern (`issue:<class>`: "baby" -> "boy", "near" -> "opposite", "young boy" -> "elderly boy", ...).

It prints a table and writes the figures to a JSON file keyed by what produced them: the lexicon version,
the commit (and the files under tpo_ray/negatives/ changed since it), the settings and each set file's
sha256. `--sample N` writes N accepted rows per set, drawn with `--seed`, to a CSV (with empty grade
columns) and a markdown file, for a person to read and grade (docs/negatives.md, "Graded sample");
`--grades CSV` prints a graded file's figures: per set and criterion, the rows that pass, with 95% Wilson
intervals, and the failing rows.

Sets: `coco_val2017` (2,500 real COCO 2017 val captions, benchmarks/data/README.md), `parti` and
`t2i_compbench` (the packaged benchmark prompt lists), and `coco_style` (captions written for this
project in COCO's style: not real data; only when asked for).

    python benchmarks/negatives_quality.py                                   # coco_val2017, parti, t2i_compbench
    python benchmarks/negatives_quality.py --set coco_val2017 --set coco_style
    python benchmarks/negatives_quality.py --sample 60 --seed 24             # + 60 rows per set to grade
    python benchmarks/negatives_quality.py negatives.max_edits=2             # NegativesConfig overrides
    python benchmarks/negatives_quality.py --grades benchmarks/data/graded_negatives.csv   # graded figures
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import platform
import random
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "benchmarks" / "data"
SETS = {  # name -> (packaged set name or file, what it is)
    "coco_val2017": (str(DATA / "coco_val2017_captions.tsv"), "real photo captions (COCO 2017 val, 2,500)"),
    "parti": ("parti", "PartiPrompts (packaged)"),
    "t2i_compbench": ("t2i_compbench", "T2I-CompBench val prompts (packaged)"),
    "coco_style": (str(DATA / "coco_style_captions.txt"), "written for the project in COCO's style: not real"),
}
DEFAULT_SETS = ("coco_val2017", "parti", "t2i_compbench")
GRADES = ("grammatical", "minimal", "contradicts", "principle_right")

# The error classes issue 24 lists, as patterns over an edit (source, target) and the caption around it.
_NEAR = {"near", "next to", "beside", "by"}
_QUANTIFIERS = {"several", "many", "some", "a few", "few", "multiple", "a couple of", "lots of", "a lot of", "numerous"}
_YOUNG_NOUNS = {"boy", "boys", "girl", "girls", "child", "children", "kid", "kids", "baby", "babies", "toddler",
                "toddlers", "infant", "infants", "teenager", "teenagers"}
_OLD = {"elderly", "old", "aged", "senior", "middle-aged", "adult", "grown"}
_SHAPES = {"circles", "ovals", "squares", "triangles", "rectangles", "hexagons", "spirals", "cubes", "spheres"}
ISSUE_CLASSES: dict[str, Any] = {  # name -> (source, target, caption words after the source) -> bool
    "still_true:baby->boy": lambda a, b, rest: a in {"baby", "babies"} and b in {"boy", "boys", "girl", "girls"}
    and rest[:1] != ["blue"] and rest[:1] != ["pink"],
    "still_true:ship->ferry": lambda a, b, _: a in {"ship", "ships"} and b in {"ferry", "ferries"},
    "still_true:near->relation": lambda a, b, _: a in _NEAR and b in {"opposite", "behind", "in front of",
                                                                      "across from"},
    "still_true:holding->touching": lambda a, b, _: a.startswith("hold") and b.startswith("touch"),
    "still_true:quantifier": lambda a, b, _: a in _QUANTIFIERS and b in _QUANTIFIERS,
    "still_true:sitting->resting": lambda a, b, _: a.startswith("sit") and b.startswith("rest"),
    "nonsense:riding->catching": lambda a, b, _: a.startswith("rid") and b.startswith("catch"),
    "nonsense:age_contradicts_noun": lambda a, b, rest: b.split()[-1] in _OLD and rest[:1] and rest[0] in _YOUNG_NOUNS,
    "nonsense:into->out_of": lambda a, b, rest: a == "into" and b == "out of" and bool({"lake", "water"} & set(rest[:3])),
    "nonsense:verb_as_shape": lambda a, b, rest: b in _SHAPES and rest[:1] and rest[0] in {"a", "an", "the"},
    "nonsense:legs->knees": lambda a, b, _: a in {"leg", "legs"} and b in {"knee", "knees"},
    "nonsense:pose_for_a_photo->cartoon": lambda a, b, rest: a in {"photo", "picture"} and rest[:1] != ["of"]
    and b in {"cartoon", "drawing", "painting"},  # "poses for a photo", not "a photo of ..." (a medium swap)
}


def issue_classes(negative: str, edits: list[dict[str, str]]) -> list[str]:
    """The issue-24 error classes an edit falls in, by pattern over the edit and the words after its new
    text in the negative (a floor, not a proof)."""
    out = []
    for e in edits:
        a, b = " ".join(e["from"].lower().split()), " ".join(e["to"].lower().split())
        a, b = a.removeprefix("an ").removeprefix("a "), b.removeprefix("an ").removeprefix("a ")
        at = negative.lower().find(e["to"].lower())
        rest = re.findall(r"[\w'-]+", negative.lower()[at + len(e["to"]):]) if at >= 0 else []
        out += [name for name, match in ISSUE_CLASSES.items() if a and b and match(a, b, rest)]
    return out


@dataclass
class Row:
    """One caption's outcome: the accepted negative (or none) and every answer validation refused."""
    id: str
    caption: str
    negative: str | None = None
    principle: str | None = None
    edits: list[dict[str, str]] = field(default_factory=list)
    fallback: bool = False
    editable: bool = False
    available: frozenset[str] = frozenset()
    answers: int = 0  # editor answers validated: the first, then any fallback ones
    rejected: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # checks that flag the accepted negative
    first_flags: list[str] = field(default_factory=list)  # checks that flag the editor's first answer


def set_source(name: str) -> Path:
    """The file a set is read from (packaged sets: their TSV in tpo_ray/eval/prompts/)."""
    from tpo_ray.eval.prompt_sets import PACKAGED

    source = SETS[name][0]
    return ROOT / "tpo_ray" / "eval" / "prompts" / PACKAGED[source] if source in PACKAGED else Path(source)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_state() -> dict[str, Any]:
    """The commit the figures were made at, and the files under tpo_ray/negatives/ that differ from it (a
    shared working tree may hold work not yet committed)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    changed = [line[3:] for line in git("--no-optional-locks", "status", "--porcelain", "--", "tpo_ray/negatives").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip(), "changed_files": changed}


def optional(module: Any, name: str) -> Any:
    """A check another part of the code base provides, or None while it does not (yet)."""
    return getattr(module, name, None)


def edit_pairs(caption: str, negative: str, edits: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    """(source, target, kind) of the reported edits and of the edits validation derives itself."""
    from tpo_ray.negatives import validation

    pairs = [(e["from"], e["to"], "reported") for e in edits]
    derive = optional(validation, "derive_edits")
    if derive is not None:
        for e in derive(caption, negative):
            source = next((getattr(e, a) for a in ("source", "from_", "a", "old") if hasattr(e, a)), None)
            target = next((getattr(e, a) for a in ("target", "to", "b", "new") if hasattr(e, a)), None)
            if isinstance(source, (list, tuple)):
                source, target = " ".join(source), " ".join(target or ())
            pairs.append((source or "", target or "", str(getattr(e, "kind", "edit"))))
    return pairs


def check_flags(caption: str, negative: str, principle: str, edits: list[dict[str, str]]) -> list[str]:
    """The checks that flag a negative, each applied on its own."""
    from tpo_ray.negatives import lexicon, validation

    flags = set()
    still_true = optional(lexicon, "still_true")
    for source, target, kind in edit_pairs(caption, negative, edits):
        if kind not in ("reported", "replace"):  # a plain replacement is what every negative is
            flags.add(f"derived:{kind}")
        if source and target:
            why = still_true(source, target) if still_true else ("synonym" if lexicon.is_synonym_swap(source, target)
                                                                  else None)
            if why:
                flags.add(f"still_true:{why}")
    flags.update(f"issue:{name}" for name in issue_classes(negative, edits))
    derived_principle = optional(validation, "derived_principle")
    if derived_principle is not None:
        try:
            derived = derived_principle(caption, negative)
        except TypeError:  # another signature than (caption, negative): reported as not run
            derived = None
        if derived is not None and derived != principle:
            flags.add(f"principle_differs:{derived}")
    return sorted(flags)


def run_caption(prompt: Any, ncfg: Any, rules: Any, count: Any) -> Row:
    """One caption through the rules editor, validation and selection with the rules fallback, as in the job."""
    from tpo_ray.negatives.editors.rules_stage import rules_output
    from tpo_ray.negatives.rules import editable_principles
    from tpo_ray.negatives.selection import Candidate, select_negatives
    from tpo_ray.negatives.shards import stable_seed
    from tpo_ray.negatives.validation import parse_proposal

    answers: list[str | None] = []

    def edit(caption: str, seed: int) -> tuple[str | None, str | None]:
        raw, reason = rules_output(caption, principles=ncfg.principles, weights=ncfg.principle_weights,
                                   max_edits=ncfg.max_edits, seed=seed)
        answers.append(raw)
        return raw, reason

    row = Row(prompt.id, prompt.text, available=frozenset(editable_principles(prompt.text)))
    seed = stable_seed(ncfg.seed, prompt.id, 0, 0)
    raw, reason = edit(prompt.text, seed)
    row.editable = reason is None
    proposal = None
    if reason is None:
        proposal, reason = rules.check(prompt.text, raw, count)
        first = parse_proposal(raw)
        row.first_flags = check_flags(prompt.text, first.negative, first.principle, first.edits)
    selection = select_negatives(prompt.text, [Candidate(0, 0, seed, raw, reason, proposal)], n=1, rules=rules,
                                 count_tokens=count, fallback=edit,
                                 fallback_seed=lambda k, j: stable_seed(ncfg.seed, prompt.id, k, "fb", j))
    if row.editable:
        fallbacks = [rules.check(prompt.text, a, count)[1] for a in answers[1:] if a is not None]
        row.answers = 1 + len(fallbacks)
        row.rejected = [r for r in [reason, *fallbacks] if r is not None]
    if selection.accepted:
        a = selection.accepted[0]
        row.negative, row.principle, row.edits, row.fallback = a.negative, a.principle, a.edits, a.fallback
        row.flags = check_flags(row.caption, a.negative, a.principle, a.edits)
    return row


def run_set(name: str, ncfg: Any) -> list[Row]:
    """Every caption of the set through `run_caption`."""
    from tpo_ray.eval.prompt_sets import load_prompts
    from tpo_ray.negatives.selection import ValidationRules
    from tpo_ray.negatives.shards import token_counter

    rules = ValidationRules(tuple(ncfg.principles), ncfg.max_edits, ncfg.max_tokens)
    count = token_counter(ncfg.tokenizer)
    return [run_caption(p, ncfg, rules, count) for p in load_prompts(SETS[name][0])]


def share(counter: Counter, total: int) -> dict[str, float]:
    return {k: round(v / total, 4) if total else 0.0 for k, v in sorted(counter.items())}


def figures(rows: list[Row], ncfg: Any) -> dict[str, Any]:
    accepted = [r for r in rows if r.negative is not None]
    weights = ncfg.principle_weights or {p: 1.0 for p in ncfg.principles}
    total_weight = sum(weights[p] for p in ncfg.principles)
    answers = sum(r.answers for r in rows)
    rejected = Counter(reason for r in rows for reason in r.rejected)
    flags = Counter(f for r in accepted for f in r.flags)
    return {
        "captions": len(rows),
        "editable": sum(r.editable for r in rows),
        "accepted": len(accepted),
        "coverage": round(len(accepted) / len(rows), 4),
        "fallbacks": sum(r.fallback for r in accepted),
        "principle_requested": {p: round(weights[p] / total_weight, 4) for p in ncfg.principles},
        "principle_available": share(Counter(p for r in rows for p in r.available), len(rows)),
        "principle_realised": share(Counter(r.principle for r in accepted), len(accepted)),
        "editor_answers": answers,
        "rejected": dict(sorted(rejected.items())),
        "rejected_share": share(rejected, answers),
        "flagged": dict(sorted(flags.items())),
        "flagged_share": share(flags, len(accepted)),
        "flagged_any": sum(bool(r.flags) for r in accepted),
        "first_answers_flagged_share": share(Counter(f for r in rows for f in r.first_flags),
                                             sum(r.editable for r in rows)),
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    def pct(x: float) -> str:
        return f"{x:.1%}"

    print(f"\n{'set':15s} {'captions':>8s} {'editable':>9s} {'accepted':>9s} {'coverage':>9s} {'rejected':>9s} "
          f"{'flagged':>8s}")
    for name, f in results.items():
        print(f"{name:15s} {f['captions']:8d} {f['editable']:9d} {f['accepted']:9d} {pct(f['coverage']):>9s} "
              f"{sum(f['rejected'].values()):9d} {f['flagged_any']:8d}")
    for name, f in results.items():
        print(f"\n{name}:")
        print("  principle      requested  available  realised")
        for p in f["principle_requested"]:
            print(f"  {p:13s} {pct(f['principle_requested'][p]):>10s} {pct(f['principle_available'].get(p, 0)):>10s} "
                  f"{pct(f['principle_realised'].get(p, 0)):>9s}")
        print(f"  validation over {f['editor_answers']} editor answers, rejected by reason:")
        for reason, n in f["rejected"].items():
            print(f"    {reason:24s} {n:6d} {pct(f['rejected_share'][reason]):>7s}")
        print(f"  accepted negatives flagged by each check (of {f['accepted']}):")
        for flag, n in f["flagged"].items():
            print(f"    {flag:40s} {n:6d} {pct(f['flagged_share'][flag]):>7s}")
        print("  the editor's first answers flagged by each check (before validation):")
        for flag, x in f["first_answers_flagged_share"].items():
            print(f"    {flag:40s} {pct(x):>13s}")


def write_json(path: Path, key: dict[str, Any], results: dict[str, Any]) -> str:
    """Add this run to the JSON file under a key naming what produced it (a rerun of the same replaces)."""
    runs = json.loads(path.read_text()) if path.is_file() else {}
    name = (f"lexicon-v{key['lexicon_version']}@{key['commit'][:10]}"
            f"{'+changes' if key['changed_files'] else ''} {key['settings_digest']}")
    runs[name] = {"key": key, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  "sets": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
    return name


def write_sample(rows_by_set: dict[str, list[Row]], n: int, seed: int, csv_path: Path, command: str) -> None:
    """n accepted rows per set drawn with `seed` (per set: random.Random(f"{seed}:{set}")), as a CSV with
    empty grade columns and as markdown."""
    drawn = []
    for name, rows in rows_by_set.items():
        accepted = [r for r in rows if r.negative is not None]
        drawn += [(name, i, r) for i, r in enumerate(random.Random(f"{seed}:{name}").sample(accepted, n), 1)]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["set", "n", "id", "caption", "negative", "principle", "edits", "fallback", "flags", *GRADES,
                      "note"])
        for name, i, r in drawn:
            out.writerow([name, i, r.id, r.caption, r.negative, r.principle, json.dumps(r.edits), r.fallback,
                          " ".join(r.flags), *[""] * len(GRADES), ""])
    md = [f"<!-- {command} -->", "", "| set | n | caption | negative | principle | flags |", "|---|---|---|---|---|---|"]
    md += [f"| {name} | {i} | {r.caption} | {r.negative} | {r.principle} | {' '.join(r.flags)} |"
           for name, i, r in drawn]
    csv_path.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(f"\n{len(drawn)} rows to grade: {csv_path} (and {csv_path.with_suffix('.md').name})")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre, half = p + z * z / (2 * n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def grade_report(path: Path) -> dict[str, dict[str, Any]]:
    """Per set of a graded sample CSV (grade columns 1 = pass, 0 = fail): rows passing each criterion and
    all four, with 95% Wilson intervals; prints them with the failing rows."""
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        graded = [r for r in rows if r["set"] == name]
        if any(r[g] not in ("0", "1") for r in graded for g in GRADES):
            raise ValueError(f"{path}: set {name} has rows without a 0/1 grade in {GRADES}")
        passes = {g: sum(r[g] == "1" for r in graded) for g in GRADES}
        passes["all_four"] = sum(all(r[g] == "1" for g in GRADES) for r in graded)
        out[name] = {"rows": len(graded), **{g: {"pass": k, "wilson95": [round(x, 3) for x in wilson(k, len(graded))]}
                                             for g, k in passes.items()}}
        print(f"\n{name}: {len(graded)} rows graded")
        for g, k in passes.items():
            lo, hi = wilson(k, len(graded))
            print(f"  {g:16s} {k:3d}/{len(graded)} {k / len(graded):6.1%}  95% CI [{lo:.1%}, {hi:.1%}]")
        for r in graded:
            failed = [g for g in GRADES if r[g] != "1"]
            if failed:
                print(f"  fails {'/'.join(failed)}: {r['caption']} -> {r['negative']} ({r['note']})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. negatives.max_edits=2")
    parser.add_argument("--set", action="append", choices=sorted(SETS), help=f"default: {', '.join(DEFAULT_SETS)}")
    parser.add_argument("--sample", type=int, default=0, help="write this many accepted rows per set to grade")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")
    parser.add_argument("--sample-out", type=Path, default=DATA / "negatives_sample.csv")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "negatives_quality.json")
    parser.add_argument("--grades", type=Path, help="only report a graded sample CSV (grade columns 0/1)")
    parser.add_argument("--quick", action="store_true", help="accepted for the benchmark convention; already fast")
    args = parser.parse_args()
    if args.grades:
        grade_report(args.grades)
        return
    from tpo_ray.config import load_config
    from tpo_ray.negatives.lexicon import LEXICON_VERSION

    command = f"python benchmarks/negatives_quality.py {' '.join(sys.argv[1:])}".rstrip()
    ncfg = load_config(None, list(args.overrides)).negatives
    settings = ncfg.model_dump(include={"principles", "principle_weights", "max_edits", "max_tokens", "seed",
                                        "fallback", "tokenizer"}, mode="json")
    sets = args.set or list(DEFAULT_SETS)
    key = {"lexicon_version": LEXICON_VERSION, **git_state(), "settings": settings,
           "settings_digest": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10],
           "set_files": {s: {"path": str(set_source(s).relative_to(ROOT)), "sha256": sha256(set_source(s))}
                         for s in sets}}
    print(f"# {command}")
    print(f"# {datetime.date.today()} {platform.node()} lexicon v{LEXICON_VERSION} commit {key['commit'][:10]}"
          f"{' + uncommitted ' + ', '.join(key['changed_files']) if key['changed_files'] else ''}")
    rows_by_set, results = {}, {}
    for name in sets:
        start = time.perf_counter()
        rows_by_set[name] = run_set(name, ncfg)
        results[name] = {**figures(rows_by_set[name], ncfg), "seconds": round(time.perf_counter() - start, 1),
                         "what": SETS[name][1]}
    print_table(results)
    print(f"\nfigures: {args.json} [{write_json(args.json, key, results)}]")
    if args.sample:
        write_sample(rows_by_set, args.sample, args.seed, args.sample_out, command)


if __name__ == "__main__":
    main()
