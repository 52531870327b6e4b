"""Tensors <-> parquet bytes. Shapes live in the cache manifest, so a row stores only raw fp16 data."""

from __future__ import annotations

import numpy as np
import torch


def pack(t: torch.Tensor) -> bytes:
    return t.detach().to(torch.float16).cpu().contiguous().numpy().tobytes()


def unpack(values: list[bytes], shape: list[int]) -> torch.Tensor:
    """Stack N packed tensors of one shape into an fp32 tensor [N, *shape]."""
    buf = np.frombuffer(b"".join(values), dtype=np.float16).reshape(len(values), *shape)
    return torch.from_numpy(buf.astype(np.float32))
