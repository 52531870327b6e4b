"""One local Ray cluster (2 CPUs) for the whole integration session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """Started after the S3 server so Ray workers inherit its endpoint and test credentials."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
