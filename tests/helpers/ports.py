"""A free TCP port on 127.0.0.1 for a test server or a test Ray node."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just handed out and released: free now, not reserved (another process can
    take it before the caller binds it, so callers that can should retry on another)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
