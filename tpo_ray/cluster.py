"""Cluster guards at start: local paths on a multi-node cluster, and training runs the cluster cannot hold.

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


def training_resources(scaling) -> dict[str, float]:
    """What one training run's workers reserve (`train.scaling`): the one place that computes it."""
    return {"CPU": scaling.num_workers * scaling.cpus_per_worker,
            "GPU": float(scaling.num_workers if scaling.use_gpu else 0)}


def copies_that_fit(need: dict[str, float], have: dict[str, float]) -> int:
    """How many runs needing `need` the resources `have` hold at once (0: not even one)."""
    return min(int(have.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)


def shortfall_message(scaling, have: dict[str, float], what: str = "a training run") -> str:
    need = training_resources(scaling)
    gpus = f" and {need['GPU']:g} GPUs" if need["GPU"] else ""
    has = ", ".join(f"{have.get(k, 0.0):g} {k}" for k in need if need[k] > 0)
    return (f"{what} needs {need['CPU']:g} CPUs{gpus} (train.scaling.num_workers={scaling.num_workers} x "
            f"cpus_per_worker={scaling.cpus_per_worker:g}{', use_gpu' if scaling.use_gpu else ''}) but the cluster "
            f"has {has}; lower train.scaling or add nodes")


def require_training_resources(scaling, joined_cluster: bool) -> None:
    """Fail at start when the cluster cannot hold the run's workers (Ray Train would wait for them
    forever). A cluster joined through RAY_ADDRESS may autoscale: there it is a warning only."""
    import logging

    import ray

    have = ray.cluster_resources()
    if copies_that_fit(training_resources(scaling), have) >= 1:
        return
    if joined_cluster:
        logging.getLogger(__name__).warning("%s (waiting: the cluster may add nodes)",
                                            shortfall_message(scaling, have))
        return
    raise ConfigError(shortfall_message(scaling, have))
