"""Multi-node guards: a local path that Ray workers on other nodes would read or write is refused at start.

On one machine every process sees the same disk. On a cluster a Ray Data task or a Train worker
on another node writes a "local" path to that node's own disk: shards, caches and checkpoints
scatter and a later stage does not find them, silently. So before any work, a stage lists the
paths its workers touch; with more than one node each must be a URI (`s3://...`) unless the user
declares the filesystem shared (`shared_filesystem: true`: NFS, EFS, Lustre mounted at the same
path on every node).
"""

from __future__ import annotations

from tpo_ray.config import ConfigError
from tpo_ray.data.io import is_uri


def local_paths_on_a_cluster(paths: dict[str, str], nodes: int, shared_filesystem: bool) -> str | None:
    """The error message for `paths` ({config field: path}) on `nodes` nodes, or None when they are fine."""
    if nodes <= 1 or shared_filesystem:
        return None
    local = {field: path for field, path in paths.items() if path and not is_uri(path)}
    if not local:
        return None
    listed = ", ".join(f"{field}={path}" for field, path in local.items())
    return (f"the Ray cluster has {nodes} nodes but {listed} {'is a local path' if len(local) == 1 else 'are local paths'}"
            ": workers on other nodes would use their own disks. Use s3:// (or another URI) for "
            f"{', '.join(local)}, or set shared_filesystem=true if the path is mounted on every node")


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def require_shared_paths(paths: dict[str, str], shared_filesystem: bool) -> None:
    """Raise a ConfigError naming the fields when a multi-node cluster would scatter `paths`."""
    message = local_paths_on_a_cluster(paths, alive_nodes(), shared_filesystem)
    if message:
        raise ConfigError(message)
