"""The LAION aesthetic predictor (improved-aesthetic-predictor, Schuhmann et al.): a 5-layer linear MLP
on the L2-normalised CLIP ViT-L/14 image embedding, predicting a 1-10 rating; the prompt is not used.

The published weights (`sac+logos+ava1-l14-linearMSE.pth`) are a state dict of `layers.{0,2,4,6,7}`
(Linear layers; the Dropouts between them hold no weights), read here with `weights_only=True` into
the same module, and the CLIP model is `openai/clip-vit-large-patch14` in transformers layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from tpo_ray.eval.scorers.registry import (WEIGHT_FILES, load_clip, load_state_dict_strictly, projected,
                                           register_scorer, require_files)

MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_FOLDER = "clip"


def aesthetic_mlp(input_size: int = 768) -> nn.Sequential:
    """The predictor's layers as published (no activations between the Linear layers)."""
    return nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


class AestheticPredictor(nn.Module):
    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = aesthetic_mlp(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_scorer("aesthetic")
class AestheticScore:
    published = ("https://github.com/christophschuhmann/improved-aesthetic-predictor (" + MLP_FILE + ") and "
                 "https://huggingface.co/openai/clip-vit-large-patch14")
    expects = f"a folder with {MLP_FILE} and the openai/clip-vit-large-patch14 model in a subfolder {CLIP_FOLDER}/"

    @staticmethod
    def required(options: dict) -> list[tuple[str, ...]]:
        return [(MLP_FILE,), (f"{CLIP_FOLDER}/config.json",), tuple(f"{CLIP_FOLDER}/{f}" for f in WEIGHT_FILES)]

    def __init__(self, folder: Path, device: str | None = None) -> None:
        from transformers import CLIPProcessor

        require_files(type(self), folder)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.clip = load_clip(type(self), folder / CLIP_FOLDER).eval().to(self.device)
        self.processor = CLIPProcessor.from_pretrained(folder / CLIP_FOLDER)
        self.mlp = AestheticPredictor(self.clip.config.projection_dim)
        load_state_dict_strictly(type(self), folder / MLP_FILE, self.mlp,
                                 torch.load(folder / MLP_FILE, map_location="cpu", weights_only=True))
        self.mlp.eval().to(self.device)

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        pixel = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        emb = projected(self.clip.get_image_features(pixel_values=pixel))
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return self.mlp(emb.float()).squeeze(-1).cpu().tolist()
