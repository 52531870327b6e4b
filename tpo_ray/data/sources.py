"""Captions sources split into deterministic shards: parquet, JSONL or an HF `datasets` folder.

Planning reads only what it must (parquet metadata and the id column, JSONL line offsets, Arrow
record-batch sizes), so a shard is `(file, start, stop)` and any worker can read just its rows.
The same input always gives the same shards, which is what makes the negatives job resumable.
Malformed JSONL lines become rows with `_unreadable` set instead of failing the file; a missing,
empty or corrupt file fails fast with its name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from tpo_ray.data import schema
from tpo_ray.data.io import filesystem_for

UNREADABLE = "_unreadable"  # column holding the raw text of a line that could not be parsed
FORMATS = ("parquet", "jsonl", "hf")


class SourceError(ValueError):
    """The input cannot be read at all (missing, empty, corrupt, unknown format)."""


@dataclass(frozen=True)
class ShardSpec:
    index: int
    file: str  # full path or URI
    format: str
    start: int  # first row (parquet/hf) or byte offset (jsonl)
    stop: int  # row after the last (parquet/hf) or byte offset after the last line (jsonl)
    first_row: int  # global index of the shard's first row
    num_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SourcePlan:
    shards: list[ShardSpec]
    duplicate_rows: frozenset[int]  # global indices of every occurrence of an id after its first

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)


def _uri(fs, path: str, original: str) -> str:
    return path if "://" not in original else f"{original.split('://', 1)[0]}://{path}"


def list_input_files(path: str) -> tuple[str, list[str]]:
    """(format, sorted files). A folder with state.json + *.arrow is an HF datasets folder."""
    fs, p = filesystem_for(path)
    if not fs.exists(p):
        raise SourceError(f"input {path!r} does not exist")
    if fs.isfile(p):
        files = [p]
    else:
        names = sorted(fs.find(p))
        if any(n.endswith("/state.json") for n in names) and any(n.endswith(".arrow") for n in names):
            return "hf", [_uri(fs, n, path) for n in names if n.endswith(".arrow")]
        files = [n for n in names if n.endswith((".parquet", ".jsonl", ".json")) and "/." not in n]
    if not files:
        raise SourceError(f"input {path!r} holds no .parquet, .jsonl or HF datasets files")
    formats = {"parquet" if f.endswith(".parquet") else "jsonl" for f in files}
    if len(formats) > 1:
        raise SourceError(f"input {path!r} mixes parquet and JSONL files; point at one format")
    return formats.pop(), [_uri(fs, f, path) for f in files]


NO_ID = np.iinfo(np.int64).min  # rows without an id are never duplicates of each other


def _id_hash(ids: list[Any]) -> np.ndarray:
    return np.array(
        [NO_ID if i is None else
         int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little", signed=True) | 1
         for i in ids], dtype=np.int64)


def _parquet_shards(file: str, shard_size: int) -> Iterator[tuple[int, int, list[Any]]]:
    fs, p = filesystem_for(file)
    try:
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            n = pf.metadata.num_rows
            ids = pf.read(columns=[schema.ID]).column(0).to_pylist() if schema.ID in pf.schema_arrow.names else [None] * n
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceError(f"{file}: not a readable parquet file ({err})") from None
    for start in range(0, n, shard_size):
        stop = min(n, start + shard_size)
        yield start, stop, ids[start:stop]


def _jsonl_shards(file: str, shard_size: int) -> Iterator[tuple[int, int, list[Any]]]:
    fs, p = filesystem_for(file)
    with fs.open(p, "rb") as f:
        start, offset, ids = 0, 0, []
        for line in f:
            offset += len(line)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                ids.append(obj.get(schema.ID) if isinstance(obj, dict) else None)
            except (json.JSONDecodeError, UnicodeDecodeError):
                ids.append(None)
            if len(ids) == shard_size:
                yield start, offset, ids
                start, ids = offset, []
        if ids:
            yield start, offset, ids


def _hf_shards(file: str, shard_size: int) -> Iterator[tuple[int, int, list[Any]]]:
    table = _read_arrow_stream(file, columns=[schema.ID])
    ids = table.column(0).to_pylist() if table.num_columns else [None] * table.num_rows
    for start in range(0, table.num_rows, shard_size):
        yield start, min(table.num_rows, start + shard_size), ids[start:start + shard_size]


def _read_arrow_stream(file: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = filesystem_for(file)
    try:
        with fs.open(p, "rb") as f:
            table = ipc.open_stream(f).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceError(f"{file}: not a readable Arrow stream ({err})") from None
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    return table


PLANNERS = {"parquet": _parquet_shards, "jsonl": _jsonl_shards, "hf": _hf_shards}


def plan_source(path: str, shard_size: int) -> SourcePlan:
    """Shards of at most `shard_size` rows and the rows whose id repeats an earlier row's id."""
    fmt, files = list_input_files(path)
    shards: list[ShardSpec] = []
    hashes: list[np.ndarray] = []
    first_row = 0
    for file in files:
        for start, stop, ids in PLANNERS[fmt](file, shard_size):
            shards.append(ShardSpec(len(shards), file, fmt, start, stop, first_row, len(ids)))
            hashes.append(_id_hash(ids))
            first_row += len(ids)
    if first_row == 0:
        raise SourceError(f"input {path!r} has no rows")
    return SourcePlan(shards, _duplicates(np.concatenate(hashes)))


def _duplicates(hashes: np.ndarray) -> frozenset[int]:
    """Global indices of repeated ids (8 bytes of memory per input row, sorted once)."""
    order = np.argsort(hashes, kind="stable")
    sorted_h = hashes[order]
    repeat = np.zeros(len(hashes), dtype=bool)
    repeat[1:] = (sorted_h[1:] == sorted_h[:-1]) & (sorted_h[1:] != NO_ID)
    return frozenset(int(r) for r in order[repeat])


def read_shard(spec: ShardSpec | dict[str, Any]) -> list[dict[str, Any]]:
    """The shard's rows as dicts, in input order; unparsable JSONL lines carry `_unreadable`."""
    s = ShardSpec(**spec) if isinstance(spec, dict) else spec
    if s.format == "parquet":
        fs, p = filesystem_for(s.file)
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            table = _parquet_rows(pf, s.start, s.stop)
        return table.to_pylist()
    if s.format == "hf":
        return _read_arrow_stream(s.file).slice(s.start, s.stop - s.start).to_pylist()
    fs, p = filesystem_for(s.file)
    rows = []
    with fs.open(p, "rb") as f:
        f.seek(s.start)
        data = f.read(s.stop - s.start)
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            rows.append(obj if isinstance(obj, dict) else {UNREADABLE: line.decode("utf-8", "replace")})
        except (json.JSONDecodeError, UnicodeDecodeError):
            rows.append({UNREADABLE: line.decode("utf-8", "replace")})
    return rows


def _parquet_rows(pf: pq.ParquetFile, start: int, stop: int) -> pa.Table:
    groups, offset, first = [], 0, None
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if offset + n > start and offset < stop:
            groups.append(i)
            first = offset if first is None else first
        offset += n
    table = pf.read_row_groups(groups)
    return table.slice(start - first, stop - start)
