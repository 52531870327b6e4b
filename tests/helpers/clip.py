"""Tiny random CLIP models of the real architecture, saved with the real CLIP tokenizer and image
processor files (tests/assets), as scorer weights."""

from __future__ import annotations

from pathlib import Path

import torch

ASSETS = Path(__file__).parents[1] / "assets" / "sd-configs" / "sd15"


def tiny_clip_folder(folder: Path, projection_dim: int = 16) -> Path:
    """A CLIPModel (ViT text + vision towers) with tiny widths, saved with the real CLIP tokenizer and
    image processor files, in the transformers layout the published checkpoints use."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 224, "patch_size": 32},
        projection_dim=projection_dim)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor.from_pretrained(ASSETS / "feature_extractor"),
                              tokenizer=CLIPTokenizer.from_pretrained(ASSETS / "tokenizer"))
    processor.save_pretrained(folder)
    return folder
