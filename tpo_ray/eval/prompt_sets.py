"""Prompt sets for evaluation: the packaged public benchmarks by name, or the user's own file.

`load_prompts("parti")` / `load_prompts("t2i_compbench")` read the lists in `tpo_ray/eval/prompts/`
(sources and licences in the README there), `load_prompts("scenes")` the world's held-out prompts; a
path reads a text file (one prompt per line), a table (`.tsv`/`.csv` with a header row), a parquet or
a JSONL file (a `prompt`, `caption` or `Prompt` column, and `category`/`Category` when present). A
prompt's id comes from its content, `<set>-<sha1(text)[:10]>` (`-2`, `-3`, ... after exact repeats, in
order), or from the column `eval.prompt_id_column` names: editing a file keeps the ids, and so the
images and scores, of the prompts it did not change. `eval_prompts(cfg)` is the one place that says
which prompts an eval samples, scores and reports: the whole set, or with `eval.max_prompts` a subset
seeded by `train.seed` and balanced across the set's categories.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

PACKAGED = {"parti": "parti.tsv", "t2i_compbench": "t2i_compbench.tsv", "styles": "styles.tsv"}
TEXT_COLUMNS = ("prompt", "caption", "Prompt")
CATEGORY_COLUMNS = ("category", "Category")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # ids name image files: <model>/<id>_<k>.png
NO_CATEGORY = "(none)"  # the group of prompts without a category when a subset is balanced


@dataclass(frozen=True)
class Prompt:
    id: str  # "<set>-<sha1(text)[:10]>" (or the file's id column)
    text: str
    category: str | None = None


def content_ids(set_name: str, texts: list[str]) -> list[str]:
    """`<set>-<sha1(text)[:10]>` per text; the second and later copies of an exact repeat get `-2`, `-3`."""
    seen: Counter[str] = Counter()
    out = []
    for text in texts:
        base = f"{set_name}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:10]}"
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def _category(value: Any) -> str | None:
    """A category as text: numbers from parquet/JSONL become their string, empty means none."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _lines(text: str) -> list[str]:
    """Lines split at `\\n` (and `\\r\\n`) only: `str.splitlines` also splits at U+2028, U+0085, form feeds
    and friends, which may stand inside a prompt."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _table(text: str, delimiter: str) -> list[dict]:
    # TSV has no quoting (a prompt may start with a quotation mark, as PartiPrompts' do); CSV has
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting))


def _packaged(name: str) -> list[Prompt]:
    raw = resources.files("tpo_ray.eval").joinpath("prompts", PACKAGED[name]).read_text(encoding="utf-8-sig")
    rows = [(r["Prompt"].strip(), _category(r.get("Category"))) for r in _table(raw, "\t")]
    return [Prompt(i, text, cat) for i, (text, cat) in zip(content_ids(name, [t for t, _ in rows]), rows)]


def _records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8-sig")  # a BOM is not part of the first prompt
    if path.suffix in (".jsonl", ".json"):
        return [json.loads(line) for line in _lines(text) if line.strip()]
    if path.suffix in (".tsv", ".csv"):
        return _table(text, "\t" if path.suffix == ".tsv" else ",")
    return [{"prompt": line} for line in _lines(text)]


WORLD_PROMPTS = 256  # `scenes`: the world's held-out prompts


def world_prompts() -> list[Prompt]:
    """Held-out scenes of the world (a color/shape pair no training caption shows), category = that pair."""
    from tpo_ray.world.scenes import held_out_scenes

    scenes = held_out_scenes(WORLD_PROMPTS)
    texts = [s.caption() for s in scenes]
    return [Prompt(i, t, f"{s.color} {s.shape}") for i, t, s in zip(content_ids("scenes", texts), texts, scenes)]


def _file_prompts(path: Path, id_column: str | None) -> list[Prompt]:
    texts: list[str] = []
    rows: list[tuple[Any, str, str | None]] = []  # (declared id, text, category)
    for i, record in enumerate(_records(path)):
        column = next((c for c in TEXT_COLUMNS if c in record), None)
        if column is None:
            raise ValueError(f"{path}: row {i} has no prompt column (one of {TEXT_COLUMNS}); it has {sorted(record)}")
        if id_column is not None and id_column not in record:
            raise ValueError(f"{path}: row {i} has no column eval.prompt_id_column={id_column!r}; it has "
                             f"{sorted(record)}")
        text = str(record[column] or "").strip()
        if text:
            category = next((record[c] for c in CATEGORY_COLUMNS if c in record), None)
            rows.append((record.get(id_column) if id_column else None, text, _category(category)))
            texts.append(text)
    if not rows:
        raise ValueError(f"{path} holds no prompts")
    if id_column is None:
        ids = content_ids(path.stem, texts)
    else:
        ids = [str(declared).strip() if declared is not None else "" for declared, _, _ in rows]
        bad = [i for i in ids if not SAFE_ID.match(i)]
        if bad:
            raise ValueError(f"{path}: eval.prompt_id_column={id_column!r} holds ids that cannot name image files, "
                             f"e.g. {bad[0]!r}; ids are letters, digits, '.', '_' and '-', starting with a letter "
                             "or digit")
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(f"{path}: eval.prompt_id_column={id_column!r} repeats ids {repeated[:5]}; every "
                             "prompt needs its own id")
    return [Prompt(i, text, cat) for i, (_, text, cat) in zip(ids, rows)]


def load_prompts(name_or_path: str, id_column: str | None = None) -> list[Prompt]:
    """The prompts of a packaged set (by name) or of a file, in file order; empty lines are skipped, a
    file without a prompt column is refused naming its columns. `id_column`: the file's column of
    prompt ids (`eval.prompt_id_column`); None = ids from each prompt's text."""
    builtin = name_or_path == "scenes" or name_or_path in PACKAGED
    if builtin and id_column is not None:
        raise ValueError(f"eval.prompt_id_column={id_column!r} names a column of a prompt file, but "
                         f"eval.prompts={name_or_path!r} is a packaged set (its ids come from its texts); unset it")
    if name_or_path == "scenes":
        return world_prompts()
    if name_or_path in PACKAGED:
        return _packaged(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"eval.prompts={name_or_path!r} is neither a packaged set ({', '.join([*PACKAGED, 'scenes'])}) "
                                "nor a file")
    if id_column is not None and path.suffix not in (".parquet", ".jsonl", ".json", ".tsv", ".csv"):
        raise ValueError(f"eval.prompt_id_column={id_column!r}: {path} is a text file (one prompt per line, no "
                         "columns); use a .tsv, .csv, .jsonl or .parquet file, or unset it")
    return _file_prompts(path, id_column)


def balanced_subset(prompts: list[Prompt], n: int, seed: int) -> list[Prompt]:
    """`n` prompts taken round-robin over the categories, each category's prompts in a seeded order.

    Category order and each prompt's rank depend only on (seed, category) and (seed, prompt id), so the
    same n and seed give the same subset, a larger n extends a smaller one, and editing one prompt
    moves no other prompt in or out. Prompts without a category form one group."""
    from tpo_ray.negatives.shards import stable_seed

    groups: dict[str, list[Prompt]] = {}
    for p in prompts:
        groups.setdefault(p.category if p.category is not None else NO_CATEGORY, []).append(p)
    queues = [sorted(members, key=lambda p: (stable_seed(seed, "eval-prompt", p.id), p.id))
              for _, members in sorted(groups.items(), key=lambda kv: (stable_seed(seed, "eval-category", kv[0]), kv[0]))]
    out: list[Prompt] = []
    depth = 0
    while len(out) < n:
        for queue in queues:
            if depth < len(queue) and len(out) < n:
                out.append(queue[depth])
        depth += 1
    return out


def eval_prompts(cfg) -> list[Prompt]:
    """The prompts an eval samples, scores and reports: `eval.prompts` (ids from `eval.prompt_id_column`
    or the texts), all in file order, or with `eval.max_prompts` = N < the set's size the balanced
    subset of N seeded by `train.seed` (`balanced_subset`, in its round-robin order)."""
    prompts = load_prompts(cfg.eval.prompts, cfg.eval.prompt_id_column)
    n = cfg.eval.max_prompts
    if n is None or n >= len(prompts):
        return prompts
    return balanced_subset(prompts, n, cfg.train.seed)
