"""Image decoding and the resize/crop that training and caching share (no horizontal flip: it would
break left/right edits)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def decode_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def prepare_image(
    img: Image.Image, resolution: int, center_crop: bool = True, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Resize the short side to `resolution`, crop a square.

    Returns pixels [3, R, R] in [-1, 1], the original (h, w) and the crop (top, left), the last two
    being SDXL's micro-conditioning.
    """
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    if center_crop or rng is None:
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    else:
        top = int(rng.integers(0, new_h - resolution + 1))
        left = int(rng.integers(0, new_w - resolution + 1))
    img = img.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return pixels, (h, w), (top, left)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x0 = vae.encode(pixels).latent_dist.sample() * scaling_factor, [N, 4, R/8, R/8]."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.sample(generator=generator) * vae.config.scaling_factor
