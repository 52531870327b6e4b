"""Where the negatives job writes, local or s3:// (DESIGN.md "Contracts").

    DIR/triplets/shard-00000.parquet           accepted negatives
    DIR/quarantine/shard-00000-input.parquet   rejected input rows
    DIR/quarantine/shard-00000-output.parquet  rejected editor outputs and uneditable captions
    DIR/stats.json                             totals of the whole job
    DIR/_progress/shard-00000.json             per-shard stats, written last: the shard is complete
    DIR/_work/                                 per-shard scratch, removed when the shard completes
    DIR/_job.json                              input and settings of the job (resume checks them)
"""

from __future__ import annotations

import json
from typing import Any

from tpo_ray.data.io import filesystem_for, join


class OutputLayout:
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self._path = filesystem_for(self.root)

    def _shard(self, folder: str, index: int, suffix: str) -> str:
        return join(self.root, folder, f"shard-{index:05d}{suffix}")

    def triplets(self, index: int) -> str:
        return self._shard("triplets", index, ".parquet")

    def quarantine_input(self, index: int) -> str:
        return self._shard("quarantine", index, "-input.parquet")

    def quarantine_output(self, index: int) -> str:
        return self._shard("quarantine", index, "-output.parquet")

    def rows(self, index: int) -> str:
        return self._shard("_work", index, ".rows.parquet")

    def read_manifest(self, index: int) -> str:
        return self._shard("_work", index, ".read.json")

    def done(self, index: int) -> str:
        return self._shard("_progress", index, ".json")

    @property
    def job(self) -> str:
        return join(self.root, "_job.json")

    @property
    def stats(self) -> str:
        return join(self.root, "stats.json")

    def write_json(self, path: str, data: dict[str, Any]) -> None:
        """Temp file + rename, so a marker is either absent or complete."""
        fs, p = filesystem_for(path)
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{p}.tmp"
        with fs.open(tmp, "w") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True))
        fs.mv(tmp, p)

    def read_json(self, path: str) -> dict[str, Any] | None:
        fs, p = filesystem_for(path)
        if not fs.exists(p):
            return None
        with fs.open(p, "r") as f:
            return json.loads(f.read())

    def clear_partial(self) -> None:
        """Remove what shards that never completed left (scratch, triplets, quarantine); only called
        when no shard is complete, so nothing a finished shard wrote is lost."""
        for folder in ("_work", "triplets", "quarantine"):
            path = filesystem_for(join(self.root, folder))[1]
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def completed(self) -> dict[int, dict[str, Any]]:
        """Per-shard stats of every completed shard."""
        folder = filesystem_for(join(self.root, "_progress"))[1]
        if not self.fs.exists(folder):
            return {}
        out = {}
        for path in sorted(self.fs.glob(folder + "/shard-*.json")):
            index = int(path.rsplit("shard-", 1)[1].split(".")[0])
            with self.fs.open(path, "r") as f:
                out[index] = json.loads(f.read())
        return out

    def remove(self, path: str) -> None:
        fs, p = filesystem_for(path)
        if fs.exists(p):
            fs.rm(p)
