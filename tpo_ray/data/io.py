"""Filesystem access for local paths and URIs (s3://, gs://, ...) through fsspec.

One helper resolves a path or URI to `(filesystem, path)` so readers, writers, model loading and
checkpoint code share the same rules, including `AWS_ENDPOINT_URL` for S3-compatible stores.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def is_uri(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def uri_like(root: str, path: str) -> str:
    """`path` as listed by fsspec (no scheme) given back the scheme of `root` (`s3://...`); local unchanged."""
    return f"{str(root).split('://', 1)[0]}://{path}" if "://" in str(root) else path


def absolute_local(path: str) -> str:
    """A local path made absolute and canonical (user expanded, `..` and symlinks resolved); URIs unchanged.

    Run identities and cache keys hash paths: `./out`, `out` and `/abs/out` must be one place,
    whatever the working directory the command was started from.
    """
    if is_uri(path):
        return path
    return str(Path(str(path).removeprefix("file://")).expanduser().resolve())


def filesystem_for(path: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol). S3 honours AWS_ENDPOINT_URL (MinIO, moto, ...)."""
    path = str(path)
    if not is_uri(path):
        return fsspec.filesystem("file"), str(Path(path.removeprefix("file://")).expanduser().absolute())
    protocol = path.split("://", 1)[0]
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        protocol = "s3"
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    fs = fsspec.filesystem(protocol, **options)
    return fs, path.split("://", 1)[1]


def join(base: str | Path, *parts: str) -> str:
    """Join path parts with '/', keeping a URI scheme intact."""
    out = str(base).rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write to `<path>.tmp-<pid>` then rename: readers never see a partial shard, and a failed write
    (full disk, lost connection) leaves no temp file behind."""
    fs, p = filesystem_for(path)
    parent = p.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{p}.tmp-{os.getpid()}"
    buf = io.BytesIO()
    pq.write_table(table, buf)
    try:
        with fs.open(tmp, "wb") as f:
            f.write(buf.getvalue())
        fs.mv(tmp, p)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def read_parquet(path: str | Path) -> pa.Table:
    fs, p = filesystem_for(path)
    return pq.read_table(p, filesystem=fs)


@contextmanager
def swapped_folder(output: Path, what: str) -> Iterator[Path]:
    """A staging folder next to `output`, swapped in whole when the block ends without an error: the old
    folder renamed away, the new one renamed in, the old one removed. On an error nothing of the staging
    folder is left and `output` is untouched, so a reader sees the old folder or the whole new one, never a
    mix. Staging and old folders left by a killed writer (`what`: export, report) are removed first."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for leftover in [*output.parent.glob(f".{output.name}.staging-*"), *output.parent.glob(f".{output.name}.old-*")]:
        logging.getLogger(__name__).warning("%s: removing %s, left by a %s that was stopped", what, leftover, what)
        shutil.rmtree(leftover, ignore_errors=True)
    tag = uuid.uuid4().hex[:8]
    staging = output.with_name(f".{output.name}.staging-{tag}")  # created by the writer
    try:
        yield staging
        old = output.with_name(f".{output.name}.old-{tag}")
        if output.exists():
            output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
