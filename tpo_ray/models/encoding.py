"""Encode images and captions into training tensors with a loaded model's frozen parts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from tpo_ray.data.images import decode_image, encode_latents, prepare_image
from tpo_ray.models.conditioning import PROMPT_ENCODERS, Conditioning, sd15_text_states, sdxl_time_ids
from tpo_ray.models.loading import DiffusionComponents


def encode_captions(components: DiffusionComponents, captions: Sequence[str]) -> Conditioning:
    return PROMPT_ENCODERS[components.family](components.text_encoders, components.tokenizers, captions)


def encode_captions_pooled(components: DiffusionComponents, captions: Sequence[str]) -> tuple[Conditioning, torch.Tensor]:
    """The conditioning and each caption's pooled text embedding [N, P] from the same text-encoder pass:
    SDXL's projected `text_embeds` of text_encoder_2 (its pooled conditioning), SD1.5's CLIPTextModel
    `pooler_output` (the end token's final state, which the conditioning itself does not use)."""
    if components.family == "sd15":
        hidden, pooled = sd15_text_states(components.text_encoders, components.tokenizers, captions)
        return Conditioning(hidden), pooled
    cond = encode_captions(components, captions)
    return cond, cond.pooled


def caption_embeddings(components: DiffusionComponents, captions: Sequence[str], prompt_embeds: torch.Tensor) -> torch.Tensor:
    """[N, D] per-caption embeddings for Diffusion-RPO's prompt similarity: the mean of the token
    states of each caption's own tokens (start, words, end), not of the 77 padded positions, where
    the padding would dominate and make every short caption look alike."""
    tokenizer = components.tokenizers[0]
    mask = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").attention_mask.to(prompt_embeds.device, prompt_embeds.dtype)
    return (prompt_embeds * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)


def encode_images(
    components: DiffusionComponents, images: Sequence[bytes | Image.Image], resolution: int, center_crop: bool = True,
    generator: torch.Generator | None = None, crop_seeds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents x0 [N, 4, R/8, R/8] and SDXL time ids [N, 6] (original size, crop, target size).

    With `center_crop=False` each image is cropped at a random offset drawn from its own seed in
    `crop_seeds` (one per image, e.g. from the row id), so the crop does not depend on batching.
    """
    if not center_crop and (crop_seeds is None or len(crop_seeds) != len(images)):
        raise ValueError("random crops (center_crop=False) need one crop seed per image")
    pixels, time_ids = [], []
    for i, data in enumerate(images):
        rng = None if center_crop else np.random.default_rng(crop_seeds[i])
        image = data if isinstance(data, Image.Image) else decode_image(data)
        px, original, crop = prepare_image(image, resolution, center_crop, rng)
        pixels.append(px)
        time_ids.append(sdxl_time_ids(original, crop, (resolution, resolution)))
    return encode_latents(components.vae, torch.stack(pixels), generator), torch.stack(time_ids)


def attach_time_ids(cond: Conditioning, time_ids: torch.Tensor) -> Conditioning:
    """Micro-conditioning only exists where the model has a pooled (SDXL) embedding."""
    return cond if cond.pooled is None else cond.with_time_ids(time_ids.to(cond.pooled))
