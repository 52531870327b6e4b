"""Which row groups each worker reads: read lanes keep every worker on its own share of the cache.

A cache of 32 row groups x 8 rows; every test plays the workers' reads of one epoch through
`micro_batch_start` (the worker's own layout) and counts the row groups each worker opens and the
bytes it reads through the filesystem.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tpo_ray.cache.store import CacheError, CacheReader, ReadLanes
from tpo_ray.train.batches import data_layout, micro_batch_start
from tpo_ray.train.checkpoint import TrainState

GROUPS_PER_FILE, FILES, GROUP_ROWS = 16, 2, 8
ROWS = GROUPS_PER_FILE * FILES * GROUP_ROWS


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("cache")
    split = root / "split=train"
    split.mkdir()
    rng = np.random.default_rng(0)
    for f in range(FILES):
        ids = list(range(f * ROWS // FILES, (f + 1) * ROWS // FILES))
        table = pa.table({"id": ids, "payload": [rng.bytes(2048) for _ in ids]})  # incompressible, like latents
        pq.write_table(table, split / f"part-{f}.parquet", row_group_size=GROUP_ROWS)
    return str(root)


class CountingReader(CacheReader):
    """A CacheReader that records every row group it reads and the bytes pulled through its filesystem."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.groups_read: list[tuple[str, int]] = []
        self.bytes_read = 0

    def _read_block(self, block):
        self.groups_read.append((block.file, block.row_group))
        opener = self.fs.open

        def counting_open(path, mode="rb", **kw):
            fh = opener(path, mode, **kw)
            read = fh.read

            def counted(*a):
                data = read(*a)
                self.bytes_read += len(data)
                return data
            fh.read = counted
            return fh
        self.fs.open = counting_open
        try:
            return super()._read_block(block)
        finally:
            self.fs.open = opener


def play(cache: str, world: int, micro: int, grad_accum: int, steps: int, lanes: int,
         max_open_blocks: int = 4) -> tuple[list[CountingReader], list[list[int]]]:
    """Each rank's reader after `steps` steps, and the ids every step used (all ranks together)."""
    global_batch = micro * grad_accum * world
    readers = [CountingReader(cache, "train", seed=3, lanes=ReadLanes(global_batch, lanes),
                              max_open_blocks=max_open_blocks) for _ in range(world)]
    per_step = []
    for step in range(1, steps + 1):
        ids = []
        for rank, reader in enumerate(readers):
            for a in range(grad_accum):
                ids += [r["id"] for r in reader.rows(micro_batch_start(step, a, rank, world, micro, grad_accum), micro)]
        per_step.append(sorted(ids))
    return readers, per_step


def test_four_workers_each_read_about_a_quarter_of_the_row_groups_per_epoch(cache: str) -> None:
    steps = ROWS // 16  # one epoch at a global batch of 16
    readers, per_step = play(cache, world=4, micro=4, grad_accum=1, steps=steps, lanes=4)
    groups = FILES * GROUPS_PER_FILE
    total_bytes = sum((Path(cache) / "split=train" / f"part-{f}.parquet").stat().st_size for f in range(FILES))
    for reader in readers:
        distinct = set(reader.groups_read)
        # a lane is a contiguous quarter of the epoch's block order: 8 groups, +1 where it starts mid-group
        assert len(distinct) <= groups // 4 + 1, len(distinct)
        assert len(reader.groups_read) == len(distinct), "a group was read twice within the epoch"
        assert reader.bytes_read < 0.35 * total_bytes, (reader.bytes_read, total_bytes)
    # nothing lost, nothing twice: the epoch used every row exactly once
    assert sorted(i for ids in per_step for i in ids) == list(range(ROWS))


def test_one_lane_is_the_interleaved_layout_that_reads_everything(cache: str) -> None:
    """What the lanes fix: with one lane a step's rows are consecutive in the epoch order, so when a step
    fits in a row group (micro-batch 2 x 4 workers, groups of 8) every worker opens every group."""
    readers, _ = play(cache, world=4, micro=2, grad_accum=1, steps=ROWS // 8, lanes=1)
    assert all(len(set(r.groups_read)) == FILES * GROUPS_PER_FILE for r in readers)
    lanes, _ = play(cache, world=4, micro=2, grad_accum=1, steps=ROWS // 8, lanes=4)
    assert all(len(set(r.groups_read)) <= FILES * GROUPS_PER_FILE // 4 + 1 for r in lanes)


def test_the_step_rows_do_not_depend_on_the_worker_count(cache: str) -> None:
    """Same lanes and global batch: 1, 2 or 4 workers (with accumulation) use the same rows at every step."""
    _, four = play(cache, world=4, micro=2, grad_accum=2, steps=20, lanes=4)
    _, two = play(cache, world=2, micro=8, grad_accum=1, steps=20, lanes=4)
    _, one = play(cache, world=1, micro=4, grad_accum=4, steps=20, lanes=4)
    assert four == two == one  # 20 steps = 1.25 epochs: also across the epoch boundary
    # two lanes per worker: about half the cache each
    halves, _ = play(cache, world=2, micro=8, grad_accum=1, steps=ROWS // 16, lanes=4)
    assert all(len(set(r.groups_read)) <= FILES * GROUPS_PER_FILE // 2 + 2 for r in halves)


def test_lanes_wrap_into_the_next_epoch_in_a_new_order(cache: str) -> None:
    _, per_step = play(cache, world=4, micro=4, grad_accum=1, steps=2 * ROWS // 16, lanes=4)
    first = [i for ids in per_step[:ROWS // 16] for i in ids]
    second = [i for ids in per_step[ROWS // 16:] for i in ids]
    assert sorted(first) == sorted(second) == list(range(ROWS))
    assert per_step[0] != per_step[ROWS // 16]


def test_micro_batch_start_is_rank_major_and_covers_each_step_once() -> None:
    world, micro, accum = 3, 2, 2
    starts = sorted(micro_batch_start(5, a, r, world, micro, accum) for r in range(world) for a in range(accum))
    assert starts == [4 * 12 + k * micro for k in range(world * accum)]
    assert micro_batch_start(1, 1, 0, world, micro, accum) == 2  # rank 0's second micro-batch follows its first


def test_read_lanes_locate_by_hand() -> None:
    lanes = ReadLanes(global_batch=6, lanes=3)  # 2 rows per lane per step
    assert [lanes.locate(p) for p in range(6)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert lanes.locate(6 + 3) == (1, 3)  # step 1, lane 1, second row of the step -> index 2 + 1
    with pytest.raises(ValueError, match="do not split"):
        ReadLanes(global_batch=6, lanes=4)


def test_layout_errors_name_the_fields() -> None:
    state = TrainState(step=0, global_batch=8, world_size=4, read_lanes=4)
    assert data_layout(state, grad_accum=1, world=2, train_rows=100) == (4, ReadLanes(8, 4))
    with pytest.raises(ValueError, match="train.scaling.num_workers=3"):
        data_layout(state, grad_accum=1, world=3, train_rows=100)
    with pytest.raises(ValueError, match="train.read_lanes=3"):
        data_layout(TrainState(step=0, global_batch=8, world_size=4, read_lanes=3), 1, 4, 100)
    with pytest.raises(ValueError, match="3 training rows"):
        data_layout(state, grad_accum=1, world=4, train_rows=3)


def test_too_few_rows_for_the_lanes_is_a_cache_error(tmp_path: Path) -> None:
    (tmp_path / "split=train").mkdir()
    pq.write_table(pa.table({"id": [0, 1]}), tmp_path / "split=train" / "p.parquet")
    with pytest.raises(CacheError, match="fewer than its 4 read lanes"):
        CacheReader(str(tmp_path), "train", seed=0, lanes=ReadLanes(4, 4)).rows(0, 1)


def test_a_checkpoint_from_before_lanes_resumes_in_plain_epoch_order() -> None:
    legacy = {"step": 3, "global_batch": 2, "world_size": 2, "samples_seen": 6, "skipped_nonfinite": 0}
    assert TrainState(**legacy).read_lanes == 1
    assert collections.Counter(ReadLanes(2, 1).locate(p)[1] for p in range(4)) == collections.Counter(range(4))


def test_principle_and_edit_filters_read_only_the_kept_rows(tmp_path: Path) -> None:
    """`data.principles` / `data.max_edits`: one cache, a different training set per ablation."""
    from tpo_ray.cache.store import RowFilter
    from tpo_ray.config import load_config

    split = tmp_path / "split=train"
    split.mkdir()
    principles = ["content", "attribute", "spatial", "contextual"]
    ids = list(range(64))
    table = pa.table({"id": ids, "principle": [principles[i % 4] for i in ids],
                      "num_edits": pa.array([1 + i % 3 if i % 7 else None for i in ids], pa.int32())})
    pq.write_table(table, split / "p.parquet", row_group_size=8)
    keep = RowFilter.from_data_config(load_config(None, ["data.principles=[content, attribute, contextual]",
                                                         "data.max_edits=2"]).data)
    reader = CacheReader(str(tmp_path), "train", seed=0, keep=keep)
    expected = {i for i in ids if i % 4 != 2 and i % 7 and 1 + i % 3 <= 2}
    assert len(reader) == len(expected)
    assert {r["id"] for r in reader.rows(0, len(reader))} == expected  # one epoch: each kept row once
    assert {r["principle"] for r in reader.rows(0, 3 * len(reader))} == {"content", "attribute", "contextual"}
    assert RowFilter.from_data_config(load_config(None).data) is None

    bare = tmp_path / "bare"
    (bare / "split=train").mkdir(parents=True)
    pq.write_table(pa.table({"id": ids}), bare / "split=train" / "p.parquet")
    with pytest.raises(CacheError, match="no \\['principle', 'num_edits'\\] column"):
        CacheReader(str(bare), "train", seed=0, keep=keep)
