"""Where a cache lives, what it was built from, and deterministic reads for training.

    <cache root>/<kind>-<fingerprint>/manifest.json      model, resolution, crop, shapes, row counts
    <cache root>/<kind>-<fingerprint>/split=train/*.parquet
    <cache root>/<kind>-<fingerprint>/split=val/*.parquet
    <cache root>/<kind>-<fingerprint>/null_cond.safetensors   the empty caption (SFT caption dropout)

The fingerprint covers the frozen encoders, resolution, crop policy and input: a run with another
model, resolution or input finds no cache under its key and is told which caches exist instead.

`CacheReader` maps a global sample position to a row: blocks (parquet row groups) in a seeded
permutation per epoch, rows permuted within a block. Position p always means the same row for a
given seed, so a resumed run continues exactly where it stopped, with any number of workers.
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

from tpo_ray.data.io import filesystem_for, join


class CacheError(RuntimeError):
    """The cache is missing, incomplete or built for another model/resolution."""


# Bumped when what the encoder writes changes, so caches of an older layout are rebuilt, never read:
# 2 = seeded random crops for center_crop=false, RPO embeddings over the caption's own tokens.
CACHE_FORMAT = 2


def cache_fingerprint(model_fingerprint: str, kind: str, resolution: int, center_crop: bool, source: str) -> str:
    key = json.dumps({"model": model_fingerprint, "kind": kind, "resolution": resolution, "center_crop": center_crop,
                      "source": source, "format": CACHE_FORMAT}, sort_keys=True)
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
            m = read_manifest(_uri_like(root, sub))
            if m is not None and m.get("kind") == kind:
                others.append(f"{m['fingerprint']} (model {m['model']['source']}, resolution {m['resolution']}, "
                              f"center_crop {m['center_crop']}, input {m['source']})")
    hint = f"; caches there were built for: {', '.join(others)}" if others else ""
    raise CacheError(
        f"no {kind} cache for model {wanted['source']} at resolution {wanted['resolution']} "
        f"(center_crop {wanted['center_crop']}, input {wanted['input']}) under {root}{hint}. "
        "Run `tpo-ray cache` with this config first"
    )


def _uri_like(root: str, path: str) -> str:
    return f"{root.split('://', 1)[0]}://{path}" if "://" in root else path


@dataclass(frozen=True)
class Block:
    file: str
    row_group: int
    num_rows: int


class CacheReader:
    """Deterministic, resumable sample order over one split of a cache."""

    def __init__(self, directory: str, split: str, seed: int, shuffle: bool = True, max_open_blocks: int = 4) -> None:
        self.directory, self.split, self.seed, self.shuffle = directory, split, seed, shuffle
        fs, p = filesystem_for(join(directory, f"split={split}"))
        files = sorted(f for f in fs.glob(p + "/*.parquet")) if fs.exists(p) else []
        self.fs = fs
        self.blocks: list[Block] = []
        for f in files:
            with fs.open(f, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
            self.blocks += [Block(f, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)
                            if meta.row_group(i).num_rows]
        self.num_rows = sum(b.num_rows for b in self.blocks)
        self._open: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._max_open = max_open_blocks
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._row_perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_rows

    def _position(self, epoch: int, offset: int) -> tuple[int, int]:
        """(block index, row in block) of the epoch's offset-th sample; O(blocks) memory."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))
            sizes = np.array([self.blocks[b].num_rows for b in order])
            self._epoch_cache = (epoch, order, np.cumsum(sizes))
            self._row_perm = None
        _, order, ends = self._epoch_cache
        i = int(np.searchsorted(ends, offset, side="right"))
        block = int(order[i])
        within = offset - (int(ends[i - 1]) if i else 0)
        if not self.shuffle:
            return block, within
        if self._row_perm is None or self._row_perm[0] != block:
            perm = np.random.default_rng([self.seed, epoch, block]).permutation(self.blocks[block].num_rows)
            self._row_perm = (block, perm)
        return block, int(self._row_perm[1][within])

    def _block(self, index: int) -> pa.Table:
        block = self.blocks[index]
        key = (block.file, block.row_group)
        if key not in self._open:
            with self.fs.open(block.file, "rb") as fh:
                self._open[key] = pq.ParquetFile(fh).read_row_group(block.row_group)
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        self._open.move_to_end(key)
        return self._open[key]

    def rows(self, start: int, count: int) -> list[dict[str, Any]]:
        """Rows at global positions [start, start + count); positions wrap into later epochs."""
        if self.num_rows == 0:
            raise CacheError(f"{self.directory}: split {self.split!r} is empty")
        out = []
        for pos in range(start, start + count):
            epoch, offset = divmod(pos, self.num_rows)
            b, r = self._position(epoch, offset)
            out.append(self._block(b).slice(r, 1).to_pylist()[0])
        return out
