"""Prompt sets for evaluation: the packaged public benchmarks by name, or the user's own file.

`load_prompts("parti")` / `load_prompts("t2i_compbench")` read the lists in `tpo_ray/eval/prompts/`
(sources and licences in the README there), `load_prompts("scenes")` the world's held-out prompts; a path reads a text file (one prompt per line), a parquet
or a JSONL file (a `prompt` or `caption` column, and `category` when present). Every prompt keeps its
position in the set as its id, so sampling and scoring can be resumed and compared by id.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PACKAGED = {"parti": "parti.tsv", "t2i_compbench": "t2i_compbench.tsv", "styles": "styles.tsv"}
TEXT_COLUMNS = ("prompt", "caption", "Prompt")


@dataclass(frozen=True)
class Prompt:
    id: str  # "<set>-<position>"
    text: str
    category: str | None = None


def _packaged(name: str) -> list[Prompt]:
    raw = resources.files("tpo_ray.eval").joinpath("prompts", PACKAGED[name]).read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(raw), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [Prompt(f"{name}-{i:05d}", r["Prompt"].strip(), r.get("Category")) for i, r in enumerate(rows)]


def _records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"prompt": line} for line in path.read_text(encoding="utf-8").splitlines()]


WORLD_PROMPTS = 256  # `scenes`: the world's held-out prompts (eval.max_prompts takes the first N)


def world_prompts() -> list[Prompt]:
    """Held-out scenes of the world (a color/shape pair no training caption shows), category = that pair."""
    from tpo_ray.world.scenes import held_out_scenes

    return [Prompt(f"scenes-{i:05d}", s.caption(), f"{s.color} {s.shape}")
            for i, s in enumerate(held_out_scenes(WORLD_PROMPTS))]


def load_prompts(name_or_path: str) -> list[Prompt]:
    """The prompts of a packaged set (by name) or of a file; empty lines are skipped, a file without a
    prompt column is refused naming its columns."""
    if name_or_path == "scenes":
        return world_prompts()
    if name_or_path in PACKAGED:
        return _packaged(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"eval.prompts={name_or_path!r} is neither a packaged set ({', '.join([*PACKAGED, 'scenes'])}) "
                                "nor a file")
    out = []
    for i, record in enumerate(_records(path)):
        column = next((c for c in TEXT_COLUMNS if c in record), None)
        if column is None:
            raise ValueError(f"{path}: row {i} has no prompt column (one of {TEXT_COLUMNS}); it has {sorted(record)}")
        text = str(record[column] or "").strip()
        if text:
            out.append(Prompt(f"{path.stem}-{i:05d}", text, record.get("category")))
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return out


def eval_prompts(cfg) -> list[Prompt]:
    """The prompts an eval samples, scores and reports: `eval.prompts`, cut to `eval.max_prompts`."""
    return load_prompts(cfg.eval.prompts)[: cfg.eval.max_prompts]
