"""Tiny SD1.5- and SDXL-shaped models built from configs and saved in diffusers layout.

Tests and the demo load them back through `models.loading`, the same loader real weights use, so
every code path (subfolders, schedulers, two text encoders, pooled embeddings, time ids) is
exercised on CPU in seconds. Weights are random but seeded: the same seed writes the same files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tpo_ray.models.tokenizer import BOS, EOS, build_byte_tokenizer, byte_level_vocab

log = logging.getLogger(__name__)

TINY_FAMILIES = ("sd15", "sdxl")
TEXT_HIDDEN = 32
TIME_EMBED_DIM = 8


def _text_config(projection_dim: int = TEXT_HIDDEN) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(byte_level_vocab()),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,  # SDXL conditions on the penultimate layer: keep at least two
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=len(byte_level_vocab()) - 2,
        eos_token_id=len(byte_level_vocab()) - 1,
        pad_token_id=len(byte_level_vocab()) - 1,
    )


def _vae() -> AutoencoderKL:
    # Four blocks give the real 8x spatial downsampling, so latent shapes match SD at any resolution.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        # Like SD's 0.18215, chosen so that latents have about unit variance (measured on the
        # synthetic images with this random VAE); smaller latents would drown the caption signal.
        scaling_factor=0.9,
    )


def _scheduler(prediction_type: str) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _unet(cross_attention_dim: int, sdxl: bool) -> UNet2DConditionModel:
    extra = {}
    if sdxl:
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_HIDDEN,
        )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
        **extra,
    )


def build_tiny_pipeline(family: str = "sd15", seed: int = 0, prediction_type: str = "epsilon"):
    """An untrained SD1.5- or SDXL-shaped pipeline with random weights drawn from `seed`."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {list(TINY_FAMILIES)}")
    torch.manual_seed(seed)
    vae = _vae()
    scheduler = _scheduler(prediction_type)
    if family == "sd15":
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(_text_config()),
            tokenizer=build_byte_tokenizer(),
            unet=_unet(TEXT_HIDDEN, sdxl=False),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config()),
        tokenizer=build_byte_tokenizer(),
        tokenizer_2=build_byte_tokenizer(),
        unet=_unet(2 * TEXT_HIDDEN, sdxl=True),
        scheduler=scheduler,
    )


def save_tiny_model(path: str | Path, family: str = "sd15", seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a tiny pipeline in diffusers layout (safetensors) to `path`; returns the path."""
    path = Path(path)
    pipe = build_tiny_pipeline(family, seed, prediction_type)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path, safe_serialization=True)
    log.info("saved tiny %s model to %s", family, path)
    return path


def save_tiny_clip(path: str | Path, seed: int = 0, projection_dim: int = 16) -> Path:
    """A CLIPModel (text and vision towers) of tiny widths with the byte tokenizer and CLIP's own image
    preprocessing, in the transformers layout the published CLIP checkpoints use: `clip` and `pickscore`
    scorer weights for tests that run them through Ray. Random, so its scores measure nothing."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = Path(path)
    torch.manual_seed(seed)
    vocab = byte_level_vocab()
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": TEXT_HIDDEN, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
                     "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]},
        vision_config={"hidden_size": TEXT_HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 224, "patch_size": 32},
        projection_dim=projection_dim)
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=build_byte_tokenizer()).save_pretrained(path)
    return path
