"""ImageReward (Xu et al., 2023): BLIP (a ViT-L/16 image encoder and a BERT-base text encoder with
cross-attention to the image) and an MLP head on the text encoder's first token; the score is
(mlp(text[:, 0]) - 0.16717362830052426) / 1.0333394966054072, as `ImageReward.score` computes it.

The `image-reward` package is not a dependency: it pins `timm==0.6.13` and `fairscale`, and its BLIP copy
imports helpers from `transformers.modeling_utils` that transformers 5 no longer has there. Transformers'
own BLIP port is the same architecture (ported from the same `med.py` and ViT), so the published
`ImageReward.pt` (a plain state dict, loaded by ImageReward with `strict=False`) is renamed onto
`BlipVisionModel` + `BlipTextModel` key by key (`image_reward_to_transformers`):

- `blip.visual_encoder.*` (BLIP's ViT) -> `vision_model.*`: `cls_token`/`pos_embed`/`patch_embed.proj` ->
  `embeddings.class_embedding`/`position_embedding`/`patch_embedding`, `blocks.<i>.{norm1,attn.qkv,attn.proj,
  norm2,mlp.fc1,mlp.fc2}` -> `encoder.layers.<i>.{layer_norm1,self_attn.qkv,self_attn.projection,layer_norm2,
  mlp.fc1,mlp.fc2}`, `norm` -> `post_layernorm` (layer-norm eps 1e-6, BLIP's, not BlipVisionConfig's default);
- `blip.text_encoder.*` -> `text_encoder.*` unchanged (the same module names), except the position-id buffer;
- `mlp.layers.*` unchanged; `blip.vision_proj`/`blip.text_proj` (contrastive heads the score never uses) dropped.

Any other key is an error and the result loads strictly (an error naming the file and the keys). The text
config comes from the published `med_config.json`; the vision tower is the ViT-L/16 at 224 px that ImageReward builds in code
(`BLIP_Pretrain(image_size=224, vit='large')`), unless the folder holds a `vision_config.json` (a
`BlipVisionConfig`; the tests use a tiny one). The tokenizer is `bert-base-uncased` plus BLIP's `[DEC]` and
`[ENC]` tokens, read from `tokenizer/` next to the weights; prompts are padded/truncated to 35 tokens and the
image is resized (bicubic, short side), centre-cropped to 224 and normalised with the OpenAI CLIP mean/std.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tpo_ray.eval.scorers.aesthetic import aesthetic_mlp
from tpo_ray.eval.scorers.registry import ScorerLoadError, load_state_dict_strictly, register_scorer, require_files

CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER = "tokenizer"
VISION_CONFIG = "vision_config.json"  # optional: overrides the ViT-L/16 below
VIT_LARGE = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
             "image_size": 224, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-6}
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_VIT_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
_VIT_BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
              "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def _rename_vit_key(rest: str) -> str | None:
    """A BLIP ViT key (after `blip.visual_encoder.`) as a BlipVisionModel key, or None if unknown."""
    if rest in _VIT_TOP:
        return _VIT_TOP[rest]
    parts = rest.split(".")
    if len(parts) >= 4 and parts[0] == "blocks" and parts[1].isdigit() and parts[-1] in ("weight", "bias"):
        module = ".".join(parts[2:-1])
        if module in _VIT_BLOCK:
            return f"encoder.layers.{parts[1]}.{_VIT_BLOCK[module]}.{parts[-1]}"
    return None


def image_reward_to_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published ImageReward state dict under `ImageRewardModel`'s names (see the module docstring).
    Raises ValueError listing the keys it does not know."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(_UNUSED):
            continue
        new = None
        if key.startswith("blip.visual_encoder."):
            rest = _rename_vit_key(key[len("blip.visual_encoder."):])
            new = None if rest is None else "vision_model." + rest
        elif key.startswith("blip.text_encoder."):
            new = "text_encoder." + key[len("blip.text_encoder."):]
        elif key.startswith("mlp.layers."):
            new = key
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"not an ImageReward state dict: unknown keys {sorted(unknown)[:10]}")
    return out


class RewardHead(nn.Module):
    """ImageReward's `MLP`: the improved-aesthetic-predictor layers (no activations), under `layers`."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.layers = aesthetic_mlp(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """BLIP's image encoder and image-grounded text encoder (transformers' port) with the reward head."""

    def __init__(self, med_config: dict, vision: dict) -> None:
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        super().__init__()
        if not med_config.get("add_cross_attention", False):
            raise ValueError(f"{MED_CONFIG} must set add_cross_attention: true (BLIP's image-grounded text "
                             "encoder attends to the image)")
        text_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id")
        text = BlipTextConfig(**{k: med_config[k] for k in text_keys if k in med_config},
                              encoder_hidden_size=vision["hidden_size"],  # BLIP sets encoder_width to the ViT's
                              is_decoder=True,  # builds the cross-attention layers; forward runs as an encoder
                              bos_token_id=None)  # BLIP's [DEC], used for generation only
        self.vision_model = BlipVisionModel(BlipVisionConfig(**vision))
        self.text_encoder = BlipTextModel(text, add_pooling_layer=False)
        self.mlp = RewardHead(text.hidden_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images and (N, L) prompt tokens -> (N,) normalised rewards."""
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                 encoder_hidden_states=image_embeds, is_decoder=False)
        reward = self.mlp(text.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD


def image_reward_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """ImageReward's transform as a (N, 3, size, size) float32 batch: PIL bicubic resize of the short side,
    centre crop (torchvision's rounding), RGB, [0, 1], OpenAI mean/std."""
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    batch = []
    for image in images:
        w, h = image.size
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        image = image.resize((new_w, new_h), Image.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size)).convert("RGB")
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        batch.append((x - mean) / std)
    return torch.stack(batch)


@register_scorer("imagereward")
class ImageRewardScore:
    published = ("https://huggingface.co/THUDM/ImageReward (" + CHECKPOINT + ", " + MED_CONFIG + ") with the "
                 "tokenizer of https://huggingface.co/google-bert/bert-base-uncased")
    expects = (f"a folder with {CHECKPOINT}, {MED_CONFIG} and the bert-base-uncased tokenizer files "
               f"(vocab.txt, tokenizer_config.json) in a subfolder {TOKENIZER}/")

    @staticmethod
    def required(options: dict) -> list[tuple[str, ...]]:
        return [(CHECKPOINT,), (MED_CONFIG,), (TOKENIZER,)]

    def __init__(self, folder: Path, device: str | None = None) -> None:
        from transformers import BertTokenizer

        require_files(type(self), folder)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        vision = dict(VIT_LARGE)
        if (folder / VISION_CONFIG).exists():
            vision.update(json.loads((folder / VISION_CONFIG).read_text()))
        self.model = ImageRewardModel(json.loads((folder / MED_CONFIG).read_text()), vision)
        state_dict = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)
        try:
            renamed = image_reward_to_transformers(state_dict)
        except ValueError as err:
            raise ScorerLoadError(f"scorer 'imagereward': {folder / CHECKPOINT}: {err}") from err
        load_state_dict_strictly(type(self), folder / CHECKPOINT, self.model, renamed)
        self.model.eval().to(self.device)
        self.image_size = vision["image_size"]
        # BLIP's init_tokenizer: bert-base-uncased plus [DEC] (bos) and [ENC]; ids 30522 and 30523
        self.tokenizer = BertTokenizer.from_pretrained(folder / TOKENIZER)
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self.tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        pixel = image_reward_pixels(images, self.image_size).to(self.device)
        text = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS,
                              return_tensors="pt").to(self.device)
        return self.model(pixel, text["input_ids"], text["attention_mask"]).float().cpu().tolist()
