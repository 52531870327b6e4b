"""Captions sources split into deterministic shards: parquet, JSONL or an HF `datasets` folder.

Formats are detected from content (or declared with `negatives.format`); a file the job cannot
read (gzip, CSV, a JSON array) is refused by name, never skipped. Planning reads only what it must
(parquet metadata and the id column, JSONL lines), so a shard is `(file, start, stop)` and any worker
can read just its rows. Planning also fixes the input's declared schema (columns unioned over every
file and row, typed) and its content fingerprint. The same input always gives the same shards, which
is what makes the negatives job resumable. Malformed JSONL lines become rows with `_unreadable` set
instead of failing the file; a missing, empty or corrupt file or a missing required column fails
fast with its name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from tpo_ray.data import schema
from tpo_ray.data.io import filesystem_for, uri_like

log = logging.getLogger(__name__)

UNREADABLE = "_unreadable"  # column holding the raw text of a line that could not be parsed
FORMATS = ("parquet", "jsonl", "hf")
DeclaredFormat = str  # "auto" or one of FORMATS
# Columns the negatives job writes or uses internally: an input that already has them (e.g. a triplets
# output fed back in) would produce duplicate column names no reader can open.
RESERVED_COLUMNS = frozenset({schema.NEGATIVE, schema.PRINCIPLE, schema.EDITS, schema.EDITOR, schema.EDITOR_MODEL,
                              schema.SEED, schema.ATTEMPT, schema.NEGATIVE_INDEX, schema.FALLBACK, schema.SHARD,
                              schema.ROW, schema.REQUESTED_PRINCIPLE, schema.RAW_OUTPUT, schema.EDITOR_REASON,
                              UNREADABLE})
# JSONL columns carry the kind of value inferred at planning (bool, int, float, str, json) in their
# field metadata; a row whose value is of another kind is quarantined, nested values are stored as JSON text.
KIND_KEY = b"tpo_ray.kind"


class SourceError(ValueError):
    """The input cannot be read at all (missing, empty, corrupt, unknown format, missing columns)."""


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
    columns: pa.Schema  # the declared schema of every row: columns unioned over the whole input, typed
    fingerprint: str  # content of the input (names relative to it, sizes, hashes/ETags), not its spelling

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)


# ------------------------------------------------------------------------------- format detection
def sniff_format(head: bytes) -> str:
    """What the first bytes of a file say it is: parquet, arrow, jsonl, or a named unsupported kind."""
    if not head:
        return "empty"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\xff\xff\xff\xff") or head.startswith(b"ARROW1"):
        return "arrow"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith((b"PK\x03\x04", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")):
        return "archive"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text:
        return "empty"
    if text.startswith(b"{"):
        return "jsonl"
    if text.startswith(b"["):
        return "json_array"
    return "unknown"


_UNSUPPORTED = {
    "gzip": "is gzip-compressed; decompress it first (the job reads line ranges of plain files)",
    "archive": "is a compressed archive (zip/bz2/xz/zstd); extract it first",
    "json_array": "is a JSON array; write one object per line (JSONL) or use parquet",
    "arrow": "is an Arrow file outside an HF datasets folder; give the folder `save_to_disk` wrote",
    "unknown": "is not parquet or JSONL (CSV and other text formats are not read); convert it to parquet or JSONL, "
               "or declare negatives.format=jsonl if it is JSONL whose first line is malformed",
}


def _file_format(fs, path: str, shown: str, declared: DeclaredFormat) -> str | None:
    """The file's format, None for an empty file; SourceError for what the job cannot read."""
    with fs.open(path, "rb") as f:
        head = f.read(4096)
    found = sniff_format(head)
    if found == "empty":
        return None
    if declared == "jsonl" and found in ("jsonl", "unknown", "json_array"):
        return "jsonl"  # declared: every line is read as a record, malformed ones are quarantined
    if declared not in ("auto", found) and found in ("parquet", "jsonl"):
        raise SourceError(f"{shown}: negatives.format={declared} but the file's content is {found}")
    if found in ("parquet", "jsonl"):
        return found
    raise SourceError(f"{shown} {_UNSUPPORTED[found]}")


def is_hidden(relative: str) -> bool:
    """Hidden and bookkeeping files (`.DS_Store`, Spark's `_SUCCESS`, tpo_ray's `_job.json`) are not data."""
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _documentation(relative: str) -> bool:
    """README, LICENSE and Markdown files that dataset folders (e.g. from the HF Hub) ship beside the data."""
    name = relative.rsplit("/", 1)[-1].upper()
    return name.startswith(("README", "LICENSE", "LICENCE")) or name.endswith(".MD")


def list_input_files(path: str, declared: DeclaredFormat = "auto") -> tuple[str, list[str]]:
    """(format, sorted files), formats detected from content (or declared). A folder with state.json +
    *.arrow is an HF datasets folder. Every other file in a folder must be readable: none is skipped."""
    fs, p = filesystem_for(path)
    if not fs.exists(p):
        raise SourceError(f"input {path!r} does not exist")
    if fs.isfile(p):
        candidates = [p]
    else:
        names = sorted(fs.find(p))
        if declared in ("auto", "hf") and any(n.endswith("/state.json") for n in names) \
                and any(n.endswith(".arrow") for n in names):
            return "hf", [uri_like(path, n) for n in names if n.endswith(".arrow")]
        if declared == "hf":
            raise SourceError(f"input {path!r} is not an HF datasets folder (no state.json and *.arrow files)")
        candidates = [n for n in names if not is_hidden(n[len(p):].lstrip("/"))]
        docs = [n for n in candidates if _documentation(n[len(p):].lstrip("/"))]
        if docs:
            log.warning("input %s: not reading %d documentation file(s): %s", path, len(docs),
                        ", ".join(d[len(p):].lstrip("/") for d in docs[:5]))
            candidates = [n for n in candidates if n not in docs]
    if not candidates:
        raise SourceError(f"input {path!r} holds no files (parquet, JSONL or an HF datasets folder)")
    formats: dict[str, list[str]] = {}
    problems = []
    for name in candidates:
        try:
            fmt = _file_format(fs, name, uri_like(path, name), declared)
        except SourceError as err:
            problems.append(str(err))
            continue
        if fmt is not None:
            formats.setdefault(fmt, []).append(uri_like(path, name))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise SourceError("; ".join(problems[:3]) + more)
    if len(formats) > 1:
        raise SourceError(f"input {path!r} mixes parquet and JSONL files; point at one format")
    if not formats:
        raise SourceError(f"input {path!r} has no rows (every file is empty)")
    fmt, files = formats.popitem()
    return fmt, files


NO_ID = np.iinfo(np.int64).min  # rows without an id are never duplicates of each other


def _id_hash(ids: list[Any]) -> np.ndarray:
    return np.array(
        [NO_ID if i is None else
         int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little", signed=True) | 1
         for i in ids], dtype=np.int64)


# ------------------------------------------------------------------------------ JSONL records
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def split_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(end offset in `data`, line) for every line; LF, CRLF and a lone CR all end a line.

    Planning (offsets) and reading (rows) both split with this one function, so they always agree
    on how many records a byte range holds.
    """
    for m in _LINE.finditer(data):
        yield m.end(), m.group().rstrip(b"\r\n")


def parse_record(line: bytes) -> dict[str, Any]:
    """A JSON object, or `{UNREADABLE: text}` for a line that is not one."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        obj = None
    return obj if isinstance(obj, dict) else {UNREADABLE: line.decode("utf-8", "replace")}


def value_kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "json"  # beyond int64: kept as JSON text
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


KIND_TYPES = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string(), "json": pa.string()}


class ColumnTally:
    """Kinds of value seen per JSONL column; the most common kind becomes the column's declared type."""

    def __init__(self) -> None:
        self.kinds: dict[str, Counter] = {}

    def add(self, record: dict[str, Any]) -> None:
        for name, value in record.items():
            counter = self.kinds.setdefault(name, Counter())
            kind = value_kind(value)
            if kind is not None:
                counter[kind] += 1

    def schema(self) -> pa.Schema:
        fields = []
        for name, counter in self.kinds.items():
            if name == UNREADABLE:
                continue
            numbers = counter["int"] + counter["float"]
            votes = Counter({k: v for k, v in counter.items() if k not in ("int", "float")})
            if numbers:
                votes["float" if counter["float"] else "int"] = numbers
            # most values win; ties go to the most permissive kind (text, then JSON)
            kind = max(votes, key=lambda k: (votes[k], k == "str", k == "json")) if votes else "str"
            fields.append(pa.field(name, KIND_TYPES[kind], metadata={KIND_KEY: kind.encode()}))
        return pa.schema(fields)


def conform_row(row: dict[str, Any], columns: pa.Schema) -> tuple[dict[str, Any], str | None]:
    """The row fitted to the declared schema, or the reason it does not fit (`wrong_type:<column>`).

    Only JSONL columns (kind in their metadata) are checked: parquet and Arrow values are typed already.
    A missing column is null; an int is accepted where the column holds floats; nested values in a
    `json` column become JSON text.
    """
    out = dict(row)
    for f in columns:
        kind = (f.metadata or {}).get(KIND_KEY)
        if kind is None or f.name in (schema.ID, schema.CAPTION):
            continue
        value = out.get(f.name)
        got = value_kind(value)
        if kind == b"json":
            out[f.name] = None if value is None else json.dumps(value, ensure_ascii=False)
        elif got is not None and got.encode() != kind and not (kind == b"float" and got == "int"):
            return row, f"wrong_type:{f.name}"
        elif kind == b"float" and got == "int":
            out[f.name] = float(value)
    for name in columns.names:
        out.setdefault(name, None)
    return out, None


# ------------------------------------------------------------------------------------- planners
def _parquet_shards(file: str, shard_size: int, columns: list[pa.Schema]) -> Iterator[tuple[int, int, list[Any]]]:
    fs, p = filesystem_for(file)
    try:
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            n = pf.metadata.num_rows
            columns.append(pf.schema_arrow)
            ids = pf.read(columns=[schema.ID]).column(0).to_pylist() if schema.ID in pf.schema_arrow.names else [None] * n
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceError(f"{file}: not a readable parquet file ({err})") from None
    for start in range(0, n, shard_size):
        stop = min(n, start + shard_size)
        yield start, stop, ids[start:stop]


def _jsonl_shards(file: str, shard_size: int, tally: ColumnTally) -> Iterator[tuple[int, int, list[Any]]]:
    fs, p = filesystem_for(file)
    with fs.open(p, "rb") as f:
        start, offset, ids = 0, 0, []
        for chunk in f:  # split at LF; split_records splits further at CR
            for end, line in split_records(chunk):
                if not line.strip():
                    continue
                record = parse_record(line)
                tally.add(record)
                ids.append(record.get(schema.ID))
                if len(ids) == shard_size:
                    yield start, offset + end, ids
                    start, ids = offset + end, []
            offset += len(chunk)
        if ids:
            yield start, offset, ids


def _hf_shards(file: str, shard_size: int, columns: list[pa.Schema]) -> Iterator[tuple[int, int, list[Any]]]:
    table = _read_arrow_stream(file)
    columns.append(table.schema)
    ids = table.column(schema.ID).to_pylist() if schema.ID in table.column_names else [None] * table.num_rows
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


def _declared_columns(path: str, fmt: str, typed: list[pa.Schema], tally: ColumnTally) -> pa.Schema:
    """Every column of the input, typed; `id` and `caption` must exist, reserved names must not."""
    if fmt == "jsonl":
        columns = tally.schema()
    else:
        try:
            columns = pa.unify_schemas([s.remove_metadata() for s in typed], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise SourceError(f"input {path!r}: its files disagree on column types ({err})") from None
    missing = [c for c in (schema.ID, schema.CAPTION) if c not in columns.names]
    if missing:
        raise SourceError(f"input {path!r} has no {' or '.join(repr(c) for c in missing)} column "
                          f"(columns: {', '.join(columns.names) or 'none'}); every row needs an id and a caption")
    if fmt != "jsonl" and not pa.types.is_string(columns.field(schema.CAPTION).type) \
            and not pa.types.is_large_string(columns.field(schema.CAPTION).type):
        raise SourceError(f"input {path!r}: column 'caption' holds {columns.field(schema.CAPTION).type}, not text")
    reserved = sorted(RESERVED_COLUMNS & set(columns.names))
    if reserved:
        raise SourceError(
            f"input {path!r} already has columns {', '.join(reserved)}, which the negatives job writes: it looks "
            "like a negatives output. Give the captions it was made from, or drop those columns")
    # ids are compared and stored as text; captions are text (a non-text caption is a quarantined row)
    fields = [f.with_type(pa.string()) if f.name in (schema.ID, schema.CAPTION) else f for f in columns]
    return pa.schema(fields)


def plan_source(path: str, shard_size: int, declared: DeclaredFormat = "auto") -> SourcePlan:
    """Shards of at most `shard_size` rows, the rows whose id repeats an earlier row's id, the
    declared schema and the content fingerprint."""
    from tpo_ray.data.fingerprint import content_fingerprint

    fmt, files = list_input_files(path, declared)
    shards: list[ShardSpec] = []
    hashes: list[np.ndarray] = []
    typed: list[pa.Schema] = []
    tally = ColumnTally()
    first_row = 0
    for file in files:
        planner = _jsonl_shards(file, shard_size, tally) if fmt == "jsonl" else \
            (_parquet_shards if fmt == "parquet" else _hf_shards)(file, shard_size, typed)
        for start, stop, ids in planner:
            shards.append(ShardSpec(len(shards), file, fmt, start, stop, first_row, len(ids)))
            hashes.append(_id_hash(ids))
            first_row += len(ids)
    if first_row == 0:
        raise SourceError(f"input {path!r} has no rows")
    columns = _declared_columns(path, fmt, typed, tally)
    return SourcePlan(shards, _duplicates(np.concatenate(hashes)), columns, content_fingerprint(path, files))


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
    with fs.open(p, "rb") as f:
        f.seek(s.start)
        data = f.read(s.stop - s.start)
    return [parse_record(line) for _, line in split_records(data) if line.strip()]


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
