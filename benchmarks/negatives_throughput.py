"""Throughput and memory of the negatives job with the rules editor.

Generates N synthetic captions (parquet), runs `tpo-ray negatives` in a fresh process with its own
local Ray, samples the resident memory of the driver and of every Ray process it starts, and
prints captions/s and peak RSS per size. Last line: the headline figure.

    python benchmarks/negatives_throughput.py            # 100k and 1M captions
    python benchmarks/negatives_throughput.py --quick    # 5k and 20k, well under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from tpo_ray.data.synthetic import synthetic_captions


def write_captions(path: Path, n: int) -> None:
    writer = None
    batch: list[dict] = []
    for row in synthetic_captions(n):
        batch.append(row)
        if len(batch) == 50_000:
            table = pa.Table.from_pylist(batch)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            batch = []
    if batch:
        table = pa.Table.from_pylist(batch)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(driver RSS, total RSS of driver + all descendants incl. Ray's raylet, GCS and workers)."""
    try:
        driver = proc.memory_info().rss
        total = driver
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return driver, total
    except psutil.Error:
        return 0, 0


def run_size(n: int, shard_size: int, workdir: Path) -> dict:
    source = workdir / f"captions-{n}.parquet"
    write_captions(source, n)
    out = workdir / f"neg-{n}"
    cmd = [sys.executable, "-m", "tpo_ray.cli", "negatives", f"negatives.input={source}", f"negatives.output={out}",
           f"negatives.shard_size={shard_size}", "tracking.enabled=false", f"output_dir={workdir}"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_DEDUP_LOGS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    ps = psutil.Process(proc.pid)
    peak_driver = peak_total = 0
    while proc.poll() is None:
        driver, total = tree_rss(ps)
        peak_driver, peak_total = max(peak_driver, driver), max(peak_total, total)
        time.sleep(0.25)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"negatives run failed for n={n}:\n{proc.stderr.read()[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows_in"] == n == stats["rows_accepted"] + stats["rows_quarantined"]
    return {"n": n, "seconds": seconds, "captions_per_s": n / seconds, "job_captions_per_s": stats["captions_per_s_this_run"],
            "peak_driver_mb": peak_driver / 2**20, "peak_total_mb": peak_total / 2**20, "triplets": stats["triplets"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes within a minute")
    parser.add_argument("--sizes", type=int, nargs="*", help="caption counts (default 100000 1000000)")
    parser.add_argument("--shard-size", type=int, default=None)
    args = parser.parse_args()
    sizes = args.sizes or ([5_000, 20_000] if args.quick else [100_000, 1_000_000])
    shard_size = args.shard_size or (2_000 if args.quick else 20_000)
    print(f"cpus={os.cpu_count()} shard_size={shard_size} editor=rules")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = run_size(n, shard_size, Path(tmp))
            results.append(r)
            print(f"n={r['n']:>9,}  wall {r['seconds']:7.1f} s  {r['captions_per_s']:8.0f} captions/s (wall, incl. Ray "
                  f"start)  {r['job_captions_per_s']:8.0f} captions/s (job)  peak RSS driver {r['peak_driver_mb']:6.0f} MB"
                  f"  all Ray processes {r['peak_total_mb']:6.0f} MB  triplets {r['triplets']:,}")
    small, large = results[0], results[-1]
    ratio = large["peak_total_mb"] / small["peak_total_mb"]
    print(f"peak RSS ratio {large['n']:,} vs {small['n']:,}: driver {large['peak_driver_mb'] / small['peak_driver_mb']:.2f}"
          f", all processes {ratio:.2f}")
    print(f"captions/s {large['captions_per_s']:.0f} at n={large['n']:,}; rss_ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
