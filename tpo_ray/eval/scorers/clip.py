"""CLIP score and PickScore: both are CLIP models (transformers' `CLIPModel`) scoring an image against
its prompt; they differ in weights and in the scale of the score.

- `clip`: 100 x max(cos(image, text), 0), the CLIPScore of torchmetrics (Hessel et al., 2021 use
  2.5 x the same cosine), with any CLIP checkpoint in transformers layout (the TPO paper: ViT-H/14).
- `pickscore`: logit_scale.exp() x cos(image, text), as the PickScore authors compute it, with the
  `yuvalkirstain/PickScore_v1` weights (a ViT-H/14 CLIP in transformers layout) and the processor of
  `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (its preprocessor and tokenizer files in the same folder).

Both load strictly (`registry.load_clip`): a folder whose weights are not a whole CLIP (a CLIP text
encoder, another model) is an error naming it and the keys, not a randomly initialised CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from tpo_ray.eval.scorers.registry import WEIGHT_FILES, load_clip, projected, register_scorer, require_files


class _ClipScorer:
    published = ""
    expects = ""

    @staticmethod
    def required(options: dict) -> list[tuple[str, ...]]:
        return [("config.json",), WEIGHT_FILES]

    def __init__(self, folder: Path, device: str | None = None) -> None:
        from transformers import CLIPProcessor

        require_files(type(self), folder)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_clip(type(self), folder).eval().to(self.device)
        self.processor = CLIPProcessor.from_pretrained(folder)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-norm projected image embeddings [N, D]."""
        pixel = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        emb = projected(self.model.get_image_features(pixel_values=pixel))
        return (emb / emb.norm(dim=-1, keepdim=True)).float().cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm projected text embeddings [N, D] (77 tokens, as CLIP was trained)."""
        text = self.processor(text=list(texts), padding="max_length", truncation=True, max_length=77,
                              return_tensors="pt").to(self.device)
        emb = projected(self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]))
        return (emb / emb.norm(dim=-1, keepdim=True)).float().cpu()

    def cosine(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        return (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(dim=-1)


@register_scorer("clip")
class ClipScore(_ClipScorer):
    published = "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (or any CLIP in transformers layout)"
    expects = "a CLIP model folder in transformers layout (config.json, weights, preprocessor and tokenizer files)"

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        return (100.0 * self.cosine(images, prompts).clamp(min=0)).tolist()


@register_scorer("pickscore")
class PickScore(_ClipScorer):
    published = ("https://huggingface.co/yuvalkirstain/PickScore_v1 (weights) with the processor files of "
                 "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    expects = "the PickScore_v1 folder (config.json, model weights) plus the CLIP-ViT-H-14 preprocessor and tokenizer files"

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        return (self.model.logit_scale.exp().float().cpu() * self.cosine(images, prompts)).tolist()
