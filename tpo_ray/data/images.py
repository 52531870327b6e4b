"""Image decoding and the resize/crop that training and caching share (no horizontal flip: it would
break left/right edits)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image


# PIL's own decompression-bomb limit (about 89.5 megapixels); `cache.max_image_pixels` overrides it.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageError(ValueError):
    """An image that cannot be used; `reason` is its quarantine reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def decode_image(data: bytes | None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The fully decoded RGB image, or an ImageError naming why not: missing, empty, not an image
    (SVG, text), corrupt or truncated, or larger than `max_pixels` (checked from the header, before
    any pixel is decoded, so a decompression bomb costs nothing)."""
    if data is None:
        raise ImageError("missing_image", "the row has no image")
    if isinstance(data, dict):  # HF `Image` feature rows: {"bytes": ..., "path": ...}
        data = data.get("bytes")
    if not data:
        raise ImageError("empty_image", "the image has 0 bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError("image_too_large", str(err)) from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageError("not_an_image", f"{type(err).__name__}: {err}") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError("image_too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit above decides
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError("corrupt_image", f"{type(err).__name__}: {err}") from None


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
