"""Where a cache lives, what it was built from, and deterministic reads for training.

    <cache root>/<kind>-<fingerprint>/manifest.json      model, resolution, crop, shapes, row counts
    <cache root>/<kind>-<fingerprint>/split=train/*.parquet
    <cache root>/<kind>-<fingerprint>/split=val/*.parquet
    <cache root>/<kind>-<fingerprint>/null_cond.safetensors   the empty caption (SFT caption dropout)

The fingerprint covers the frozen encoders, resolution, crop policy and input: a run with another
model, resolution or input finds no cache under its key and is told which caches exist instead.

`CacheReader` maps a global sample position to a row: blocks (parquet row groups) in a seeded
permutation per epoch, rows permuted within a block. Position p always means the same row for a
given seed and `ReadLanes`, so a resumed run continues exactly where it stopped, with any number of
workers.

Read lanes keep each worker on its own row groups. Each epoch's row sequence is cut into `lanes`
contiguous segments; every step takes `global_batch / lanes` rows from each lane, and the step's
positions are laid out lane by lane, so a worker whose positions are contiguous (see
`tpo_ray.train.batches.micro_batch_start`) reads only its lanes' row groups: with 16 workers each
downloads 1/16 of the cache per epoch instead of all of it. The lane count is fixed when a run
starts (the worker count then) and kept in its checkpoints, so a resume with another worker count
sees the same rows in the same steps.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tpo_ray.cache.examples import REF_MARGIN, TEXT_SIMILARITY
from tpo_ray.data import schema
from tpo_ray.data.io import filesystem_for, join, uri_like


class CacheError(RuntimeError):
    """The cache is missing, incomplete or built for another model/resolution."""


# Bumped when what the encoder writes changes, so caches of an older layout are rebuilt, never read:
# 2 = seeded random crops for center_crop=false, RPO embeddings over the caption's own tokens;
# 3 = triplets carry `principle` and `num_edits` (read-time filters);
# 4 = keyed by the input's content; rows that make no example are quarantined, not skipped;
# 5 = each row carries its example key (`schema.EXAMPLE`), which seeds its noise;
# 6 = triplets carry `text_similarity` (and `ref_margin` with cache.reference_margins); near-synonym
#     triplets are quarantined above cache.max_text_similarity; keyed by those settings (`options`).
CACHE_FORMAT = 6


def cache_fingerprint(model_fingerprint: str, kind: str, resolution: int, center_crop: bool,
                      input_fingerprint: str, options: dict[str, Any] | None = None) -> str:
    """The cache's key: what it encodes (the input's content, not its path) with which model and how;
    `options` are the settings of what else it computes per row (`cache.job.cache_options`)."""
    key = json.dumps({"model": model_fingerprint, "kind": kind, "resolution": resolution, "center_crop": center_crop,
                      "input": input_fingerprint, "format": CACHE_FORMAT, "options": options or {}}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def cache_dir(root: str, kind: str, fingerprint: str) -> str:
    return join(root, f"{kind}-{fingerprint}")


def read_manifest(directory: str) -> dict[str, Any] | None:
    fs, p = filesystem_for(join(directory, "manifest.json"))
    if not fs.exists(p):
        return None
    return json.loads(fs.cat(p))


def find_cache(root: str, kind: str, fingerprint: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the matching cache, or a CacheError naming what exists and how to fix it."""
    manifest = read_manifest(cache_dir(root, kind, fingerprint))
    if manifest is not None and manifest.get("complete"):
        return manifest
    fs, p = filesystem_for(root)
    others = []
    if fs.exists(p):
        for sub in sorted(fs.ls(p, detail=False)):
            m = read_manifest(uri_like(root, sub))
            if m is not None and m.get("kind") == kind:
                others.append(f"{m['fingerprint']} (model {m['model']['source']}, resolution {m['resolution']}, "
                              f"center_crop {m['center_crop']}, input {m['source']} with content "
                              f"{m.get('input_fingerprint', 'unknown')}{_options_text(m.get('options'))})")
    hint = f"; caches there were built for: {', '.join(others)}" if others else ""
    raise CacheError(
        f"no {kind} cache for model {wanted['source']} at resolution {wanted['resolution']} "
        f"(center_crop {wanted['center_crop']}, input {wanted['input']} with content {wanted['input_fingerprint']}"
        f"{_options_text(wanted.get('options'))}) under {root}{hint}. "
        "Run `tpo-ray cache` with this config first"
    )


def _options_text(options: dict[str, Any] | None) -> str:
    """The triplet options of a cache (`cache.max_text_similarity`, `cache.reference_margins`), for messages."""
    if not options:
        return ""
    margins = options.get("reference_margins")
    return (f", cache.max_text_similarity {options.get('max_text_similarity')}, cache.reference_margins "
            f"{'on (start U-Net ' + str(margins.get('reference')) + ')' if margins else 'off'}")


@dataclass(frozen=True)
class Block:
    file: str
    row_group: int
    num_rows: int
    kept: tuple[int, ...] | None = None  # row indices that pass the RowFilter (None: all rows)


MINING_COLUMNS = {"reference": REF_MARGIN, "clip": TEXT_SIMILARITY, "random": None}


@dataclass(frozen=True)
class RowFilter:
    """Which triplets training uses (`data.principles`, `data.max_edits`, `data.hard_negatives`), decided
    at read time so that one cache serves every ablation of a sweep. Rows without the column's value are
    dropped by a filter on that column (they cannot be shown to satisfy it).

    Hard-negative mining is group-wise: of the rows that pass the other filters, each caption id keeps
    its `hard_negatives` hardest candidates, so the mask must see the whole split at once (`CacheReader`
    reads the filter's columns of every row group first). Only the training split is filtered: held-out
    pairs stay all candidates, so mined and unmined models are compared on the same pairs."""

    principles: frozenset[str] | None = None
    max_edits: int | None = None
    hard_negatives: int | None = None
    hard_negatives_by: str = "reference"

    @classmethod
    def from_data_config(cls, data) -> RowFilter | None:
        if data.principles is None and data.max_edits is None and data.hard_negatives is None:
            return None
        return cls(None if data.principles is None else frozenset(data.principles), data.max_edits,
                   data.hard_negatives, data.hard_negatives_by)

    @property
    def columns(self) -> list[str]:
        on = [(schema.PRINCIPLE, self.principles is not None), (schema.NUM_EDITS, self.max_edits is not None)]
        if self.hard_negatives is not None:
            on += [(schema.ID, True), (schema.EXAMPLE, True)]
            metric = MINING_COLUMNS[self.hard_negatives_by]
            on += [(metric, metric is not None)]
        return [c for c, wanted in on if wanted]

    def missing_columns_error(self, directory: str, missing: list[str]) -> CacheError:
        """Why a cache cannot serve this filter, and how to get one that can."""
        if REF_MARGIN in missing:
            return CacheError(f"{directory}: the cache has no {REF_MARGIN} column; data.hard_negatives_by=reference "
                              "ranks candidates by the start U-Net's margins: build the cache with "
                              "cache.reference_margins=true (`tpo-ray cache`), or use data.hard_negatives_by=clip "
                              "or random")
        return CacheError(f"{directory}: the cache has no {missing} column (built before format {CACHE_FORMAT}, or "
                          "not a triplet cache); data.principles / data.max_edits / data.hard_negatives need it")

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean keep-mask over the table's rows (the table holds at least `columns`; with hard-negative
        mining, every row of the split)."""
        keep = np.ones(table.num_rows, dtype=bool)
        if self.principles is not None:
            values = table.column(schema.PRINCIPLE).to_pylist()
            keep &= np.array([v in self.principles for v in values], dtype=bool)
        if self.max_edits is not None:
            values = table.column(schema.NUM_EDITS).to_pylist()
            keep &= np.array([v is not None and v <= self.max_edits for v in values], dtype=bool)
        if self.hard_negatives is not None:
            keep &= self._hardest(table, keep)
        return keep

    def _hardest(self, table: pa.Table, candidates: np.ndarray) -> np.ndarray:
        """Per caption id, the `hard_negatives` candidates first in `mining_order`."""
        ids = table.column(schema.ID).to_pylist()
        keys = table.column(schema.EXAMPLE).to_pylist()
        metric = MINING_COLUMNS[self.hard_negatives_by]
        values = table.column(metric).to_pylist() if metric else [None] * table.num_rows
        groups: dict[str, list[int]] = {}
        for i in np.flatnonzero(candidates):
            groups.setdefault(ids[i], []).append(int(i))
        keep = np.zeros(table.num_rows, dtype=bool)
        for rows in groups.values():
            ranked = sorted(rows, key=lambda i: mining_order(self.hard_negatives_by, values[i], keys[i]))
            keep[ranked[: self.hard_negatives]] = True
        return keep


def mining_order(by: str, value: float | None, example: str) -> tuple:
    """Sort key of one candidate, hardest first: `reference` the smallest margin m_l - m_w (the start
    model finds c_l nearly as plausible as c_w), `clip` the highest c_w/c_l text similarity, `random` a
    hash of the example key (the same subset for every train.seed and every reader). A missing value
    ranks last; ties go to the smaller example key, so the choice never depends on the row order."""
    if by == "random":
        return (0, hashlib.blake2b(f"hard-negatives:{example}".encode(), digest_size=8).hexdigest(), example)
    if value is None or value != value:  # null or NaN
        return (1, 0.0, example)
    return (0, float(value) if by == "reference" else -float(value), example)


@dataclass(frozen=True)
class ReadLanes:
    """How global positions map onto lanes: position `step * global_batch + j` is row
    `step * per_lane + j % per_lane` of lane `j // per_lane`. One lane is the plain epoch order."""

    global_batch: int = 1
    lanes: int = 1

    def __post_init__(self) -> None:
        if self.lanes < 1 or self.global_batch % self.lanes:
            raise ValueError(f"{self.lanes} read lanes do not split a global batch of {self.global_batch}")

    @property
    def per_lane(self) -> int:
        return self.global_batch // self.lanes

    def locate(self, position: int) -> tuple[int, int]:
        """(lane, index within the lane's own stream) of a global position."""
        step, j = divmod(position, self.global_batch)
        lane, i = divmod(j, self.per_lane)
        return lane, step * self.per_lane + i


class CacheReader:
    """Deterministic, resumable sample order over one split of a cache (see the module docstring)."""

    def __init__(self, directory: str, split: str, seed: int, shuffle: bool = True,
                 lanes: ReadLanes = ReadLanes(), max_open_blocks: int = 4, keep: RowFilter | None = None) -> None:
        self.directory, self.split, self.seed, self.shuffle, self.lanes = directory, split, seed, shuffle, lanes
        fs, p = filesystem_for(join(directory, f"split={split}"))
        files = sorted(f for f in fs.glob(p + "/*.parquet")) if fs.exists(p) else []
        self.fs = fs
        self.blocks: list[Block]
        self._footers: dict[str, pq.FileMetaData] = {}  # read once: a block read then fetches only its columns
        blocks, columns = [], []  # every row group; the filter's columns of each (with a filter)
        for f in files:
            with fs.open(f, "rb") as fh:
                pf = pq.ParquetFile(fh)
                meta = self._footers[f] = pf.metadata
                missing = [] if keep is None else [c for c in keep.columns if c not in pf.schema_arrow.names]
                if missing:
                    raise keep.missing_columns_error(directory, missing)
                for i in range(meta.num_row_groups):
                    blocks.append(Block(f, i, meta.row_group(i).num_rows))
                    if keep is not None:
                        columns.append(pf.read_row_group(i, columns=keep.columns))
        if keep is not None:
            blocks = self._filtered(blocks, columns, keep)
        self.blocks = [b for b in blocks if b.num_rows]
        self.num_rows = sum(b.num_rows for b in self.blocks)
        # lane l holds rows [bounds[l], bounds[l + 1]) of every epoch's order
        self._lane_bounds = [lane * self.num_rows // lanes.lanes for lane in range(lanes.lanes + 1)]
        self._open: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._max_open = max_open_blocks
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._row_perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.num_rows

    @staticmethod
    def _filtered(blocks: list[Block], columns: list[pa.Table], keep: RowFilter) -> list[Block]:
        """The blocks with the rows the filter keeps, decided over the whole split (mining is per caption
        id, and one id's candidates may lie in several row groups)."""
        if not blocks:
            return blocks
        mask = keep.mask(pa.concat_tables(columns, promote_options="default"))
        out, start = [], 0
        for block in blocks:
            kept = np.flatnonzero(mask[start:start + block.num_rows])
            out.append(Block(block.file, block.row_group, len(kept), tuple(int(i) for i in kept)))
            start += block.num_rows
        return out

    @staticmethod
    def _remember(cache: OrderedDict, key, make, limit: int = 4):
        if key not in cache:
            cache[key] = make()
            if len(cache) > limit:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's block order and the cumulative row count at the end of each; O(blocks) memory."""
        def make():
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))
            return order, np.cumsum([self.blocks[b].num_rows for b in order])

        return self._remember(self._epochs, epoch, make)

    def _position(self, epoch: int, offset: int) -> tuple[int, int]:
        """(block index, row in block) of the epoch's offset-th sample."""
        order, ends = self._epoch_order(epoch)
        i = int(np.searchsorted(ends, offset, side="right"))
        block = int(order[i])
        within = offset - (int(ends[i - 1]) if i else 0)
        if not self.shuffle:
            return block, within
        perm = self._remember(self._row_perms, (epoch, block), lambda: np.random.default_rng(
            [self.seed, epoch, block]).permutation(self.blocks[block].num_rows))
        return block, int(perm[within])

    def _lane_epoch(self, position: int) -> tuple[int, int, int]:
        """(lane, epoch, offset in the lane's segment) of a global position."""
        lane, index = self.lanes.locate(position)
        size = self._lane_bounds[lane + 1] - self._lane_bounds[lane]
        return (lane, *divmod(index, size))

    def locate(self, position: int) -> tuple[int, int]:
        """(block index, row in block) of a global position; a lane wraps into its next epoch on its own."""
        lane, epoch, offset = self._lane_epoch(position)
        return self._position(epoch, self._lane_bounds[lane] + offset)

    def epochs(self, start: int, count: int) -> list[int]:
        """The epoch each position of [start, start + count) falls in (its lane's pass over the data)."""
        return [self._lane_epoch(pos)[1] for pos in range(start, start + count)]

    def _block(self, index: int) -> pa.Table:
        block = self.blocks[index]
        return self._remember(self._open, (block.file, block.row_group), lambda: self._read_block(block),
                              self._max_open)

    def _read_block(self, block: Block) -> pa.Table:
        with self.fs.open(block.file, "rb") as fh:
            return pq.ParquetFile(fh, metadata=self._footers[block.file]).read_row_group(block.row_group)

    def rows(self, start: int, count: int) -> list[dict[str, Any]]:
        """Rows at global positions [start, start + count); positions wrap into later epochs."""
        if self.num_rows < self.lanes.lanes:
            raise CacheError(f"{self.directory}: split {self.split!r} holds {self.num_rows} rows, fewer than its "
                             f"{self.lanes.lanes} read lanes (one per worker at the run's start)")
        located = [self.locate(pos) for pos in range(start, start + count)]
        out: list[dict[str, Any] | None] = [None] * count
        by_block: dict[int, list[int]] = {}
        for k, (b, _) in enumerate(located):
            by_block.setdefault(b, []).append(k)
        for b, ks in by_block.items():
            kept = self.blocks[b].kept
            rows = [located[k][1] if kept is None else kept[located[k][1]] for k in ks]
            taken = self._block(b).take(pa.array(rows)).to_pylist()
            for k, row in zip(ks, taken):
                out[k] = row
        return out  # type: ignore[return-value]
