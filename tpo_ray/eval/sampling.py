"""Sampling with the model being trained or exported, and image grids for MLflow and reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image

NO_SAFETY_CHECKER = {"safety_checker": None, "requires_safety_checker": False}


def image_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid


def build_pipeline(model_dir, family: str, unet):
    """The base pipeline around `unet` (no copy: samples show the weights as they are now).

    VAE and text encoders load in the U-Net's dtype and move to its device. The dtype must be
    explicit: SDXL's published text-encoder configs say `torch_dtype: float16`, which transformers 5
    honours, and an fp16 encoder next to an fp32 (or bf16) U-Net fails in the first projection. The
    safety checker is left out: previews are for the person training, not for publication.
    """
    from diffusers import DiffusionPipeline

    extra = NO_SAFETY_CHECKER if family == "sd15" else {}
    pipe = DiffusionPipeline.from_pretrained(model_dir, unet=unet, dtype=unet.dtype, **extra)
    return pipe.to(unet.device)


@torch.no_grad()
def sample_grid(pipe, prompts: Sequence[str], steps: int, resolution: int, seed: int = 0) -> Image.Image:
    """One image per prompt from a fixed seed, so grids from different steps compare directly."""
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    images = pipe(list(prompts), num_inference_steps=steps, height=resolution, width=resolution,
                  generator=generator, output_type="pil").images
    return image_grid(images)
