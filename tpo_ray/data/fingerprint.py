"""Content fingerprints of input files: a stage's identity is what its inputs hold, not how their path
is spelled (`./data`, `data` and `/abs/data` are one input; a file rewritten in place is another).

A fingerprint covers each file's name relative to the input, its size and its content: a BLAKE2b
hash of the bytes for local files, the object's ETag (or a hash where the store gives none) for
object stores. Local hashes are remembered per process by (path, inode, size, mtime, ctime) so a Tune
sweep that checks its cache once per trial hashes each file once; ctime changes on every write and
cannot be set back, so a rewrite that keeps the size and restores the mtime is still seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache

from tpo_ray.data.io import filesystem_for, is_uri

CHUNK = 8 << 20


def _hash_stream(f) -> str:
    digest = hashlib.blake2b(digest_size=16)
    while block := f.read(CHUNK):
        digest.update(block)
    return digest.hexdigest()


def _object_tag(info: dict) -> str | None:
    """The content tag an object store reports (S3 ETag, GCS md5/crc32c), if any."""
    return info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("crc32c")


@lru_cache(maxsize=4096)
def _local_hash(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    with open(path, "rb") as f:
        return _hash_stream(f)


def file_fingerprint(file: str) -> tuple[int, str]:
    """(size, content hash or ETag) of one file or object."""
    if not is_uri(file):
        st = os.stat(file.removeprefix("file://"))
        return st.st_size, _local_hash(file.removeprefix("file://"), st.st_ino, st.st_size, st.st_mtime_ns,
                                       st.st_ctime_ns)
    fs, p = filesystem_for(file)
    info = fs.info(p)
    tag = _object_tag(info)
    if tag:
        return int(info.get("size") or 0), f"etag:{str(tag).strip(chr(34))}"
    with fs.open(p, "rb") as f:
        return int(info.get("size") or 0), _hash_stream(f)


def content_fingerprint(root: str, files: list[str]) -> str:
    """One digest for the files under `root`, named relative to it (so the root's spelling is irrelevant)."""
    entries = [[relative_name(root, file), *file_fingerprint(file)] for file in sorted(files)]
    return hashlib.blake2b(json.dumps(entries).encode(), digest_size=16).hexdigest()


def relative_name(root: str, file: str) -> str:
    _, base = filesystem_for(root)
    _, p = filesystem_for(file)
    return p[len(base):].lstrip("/") if p.startswith(base) and p != base else p.rsplit("/", 1)[-1]


def file_stats(root: str, files: list[str]) -> list[list]:
    """Cheap stand-ins for content, read from metadata only: (name, size, mtime and ctime) locally,
    (name, size, ETag) on object stores. Equal stats mean the content fingerprint recorded with them
    still holds, so a consumer (every Tune trial) need not hash the files again."""
    out = []
    for file in sorted(files):
        if not is_uri(file):
            st = os.stat(file.removeprefix("file://"))
            out.append([relative_name(root, file), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
        else:
            fs, p = filesystem_for(file)
            info = fs.info(p)
            out.append([relative_name(root, file), int(info.get("size") or 0), str(_object_tag(info))])
    return out
