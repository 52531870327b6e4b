"""The world's base model: an SD1.5-layout pipeline (AutoencoderKL, CLIPTextModel and a CLIP tokenizer,
UNet2DConditionModel, DDIM scheduler) at the scale two CPU cores can pretrain.

The same classes and layout as SD1.5, so `models.loading`, the cache, training, sampling and export
treat it as they treat SD1.5: no code path exists only for it. Images are 64x64; the VAE downsamples by
8, as SD's does, to 4x8x8 latents. The tokenizer holds every word of the scene grammar as one token.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tpo_ray.models.tokenizer import build_word_tokenizer
from tpo_ray.world.scenes import BACKGROUNDS, COLORS, COUNTS, POSITIONS, SHAPES, SIZES, TIMES

IMAGE_SIZE = 64
# The shipped base model (an SD1.5 diffusers folder; how it was made: weights/README.md there).
BASE_MODEL_DIR = Path(__file__).parent / "weights" / "base"
TEXT_HIDDEN = 64
# SD1.5's noise schedule: the world's model is trained and sampled as SD is.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, prediction_type="epsilon")


def world_words() -> list[str]:
    """Every word of the scene grammar (plural shapes included), for the tokenizer."""
    phrases = [*COUNTS.values(), *SIZES, *COLORS, *SHAPES, *(s + "s" for s in SHAPES), *POSITIONS, *BACKGROUNDS,
               *TIMES, "of"]
    return list(dict.fromkeys(w for p in phrases for w in p.split()))


def build_tokenizer() -> CLIPTokenizer:
    return build_word_tokenizer(world_words())


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    vocab = tokenizer.get_vocab()
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=TEXT_HIDDEN,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))


def build_vae() -> AutoencoderKL:
    # scaling_factor is set after training, to 1 / std of the training latents (SD's 0.18215 was found so)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 32, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE, scaling_factor=1.0)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8, in_channels=4, out_channels=4, block_out_channels=(64, 128),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=(4, 8), norm_num_groups=32)


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def assemble_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                      unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    """The parts as an SD1.5 pipeline (DDIM sampler, no safety checker), ready for `save_pretrained`."""
    scheduler = DDIMScheduler(**SCHEDULE, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
