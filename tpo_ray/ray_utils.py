"""Connecting to Ray the same way from the CLI, `ray job submit` entrypoints and tests."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOCAL_NODE_IP = "127.0.0.1"


def ensure_ray() -> None:
    """Join the cluster in RAY_ADDRESS (set by `ray job submit`) or start a local one, once."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    # A local instance announces the loopback address (the dashboard binds there too). Ray 2.60's gRPC
    # servers (GCS, raylet, workers) still listen on every interface; measured with `ss -ltnp`.
    local = {} if address else {"_node_ip_address": LOCAL_NODE_IP, "include_dashboard": True}
    ray.init(address=address or None, log_to_driver=True, **local)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") != "1"
    log.info("connected to Ray (%s)", address or "local")


def shutdown_local_ray() -> None:
    """Stop the Ray instance this process started (not a cluster it joined through RAY_ADDRESS)."""
    import sys

    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.shutdown()
