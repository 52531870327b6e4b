"""One copy of the resume checkpoint per node, not one per worker.

`Checkpoint.as_directory()` downloads the whole checkpoint in every worker that calls it (Ray shares a
download only within one `Checkpoint` object, and each worker builds its own). With `s3://` storage,
8 workers per node would each fetch every rank's shards: for SD1.5 ZeRO-2 bf16 about 15-20 GB per
copy. Here the node's local rank 0 downloads into a node-local folder named by the checkpoint's
path, the other local ranks wait at a barrier, every rank reads its part from that folder, and local
rank 0 deletes it once all have loaded. A checkpoint already on a local filesystem is read in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _is_local(checkpoint) -> bool:
    import pyarrow.fs

    return isinstance(getattr(checkpoint, "filesystem", None), pyarrow.fs.LocalFileSystem)


def node_folder(checkpoint_path: str) -> Path:
    """The node-local folder of a checkpoint's copy: the same on every rank of the node."""
    digest = hashlib.sha256(checkpoint_path.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tpo-resume-{digest}"


@contextlib.contextmanager
def node_local_copy(checkpoint, local_rank: int, barrier: Callable[[], None]) -> Iterator[Path]:
    """The checkpoint as a local folder: downloaded once per node by local rank 0. Every rank of the
    run calls it (it holds two barriers)."""
    if _is_local(checkpoint):
        yield Path(checkpoint.path)
        return
    folder = node_folder(checkpoint.path)
    if local_rank == 0:
        shutil.rmtree(folder, ignore_errors=True)  # a copy left by a killed run may be partial
        checkpoint.to_directory(str(folder))
    barrier()
    yield folder
    # Only after every rank loaded: a rank that failed inside the block raises without this barrier
    # (its peers may be inside the engine's load collectives; Ray tears the group down), and the next
    # attempt's local rank 0 removes the copy before downloading again.
    barrier()
    if local_rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
