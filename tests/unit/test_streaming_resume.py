"""The `ray_data` loader resumes without replaying: Ray Data assigns blocks dynamically, so the
consumed samples cannot be re-found anyway; a resume starts a fresh pass at the epoch reached and
takes only what is left of it."""

from __future__ import annotations

import pyarrow as pa

from tpo_ray.train.worker import StreamingSource


class Shard:
    """A worker's shard of `rows` rows; counts the batches it materialises."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.materialised = 0
        self.seeds: list[int] = []

    def iter_batches(self, batch_size: int, local_shuffle_seed: int, **_):
        self.seeds.append(local_shuffle_seed)
        for start in range(0, self.rows - batch_size + 1, batch_size):
            self.materialised += 1
            yield pa.table({"i": list(range(start, start + batch_size))})


def test_a_resume_replays_no_batch_and_keeps_the_epoch() -> None:
    shard = Shard(rows=40)  # 10 micro-batches of 4 per epoch
    source = StreamingSource(seed=7, micro=4, skip_batches=25, batches_per_epoch=10, shard=shard)
    source.rows(0, 4)
    assert shard.materialised == 1, "the resume replayed consumed batches"
    assert source.epochs(0, 4) == [2, 2, 2, 2]  # 25 batches done: epoch 2, 5 of its batches left
    for _ in range(4):
        source.rows(0, 4)
    source.rows(0, 4)  # the 6th batch after the resume opens epoch 3
    assert source.epochs(0, 4) == [3] * 4 and shard.materialised == 6
    assert shard.seeds[0] != shard.seeds[1] and shard.seeds[1] == 7 + 3  # the rest of epoch 2: another shuffle


def test_a_fresh_run_reads_whole_epochs_from_the_start() -> None:
    shard = Shard(rows=8)
    source = StreamingSource(seed=0, micro=4, skip_batches=0, batches_per_epoch=2, shard=shard)
    got = [source.rows(0, 4)[0]["i"] for _ in range(4)]
    assert got == [0, 4, 0, 4] and shard.seeds == [0, 1]
