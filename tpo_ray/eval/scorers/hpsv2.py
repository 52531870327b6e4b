"""HPSv2 (Human Preference Score v2, Wu et al., 2023), v2.0 or v2.1 weights (`eval.hps_version`): an open_clip
ViT-H/14 CLIP fine-tuned on human preferences; the score is 100 x cos(image, text), the scale of HPSv2's
benchmark (`hpsv2/evaluation.py`; `hpsv2.score` returns the cosine itself).

The published `HPS_v2_compressed.pt` (v2.0) and `HPS_v2.1_compressed.pt` (v2.1, the names of
`hpsv2.utils.hps_version_map`) are `{"state_dict": ...}` of an open_clip `CLIP` (`ViT-H-14`); scores of the two
versions are not comparable. We run it as transformers' `CLIPModel`, the same architecture (the laion ViT-H/14
is published in both layouts), not with open_clip: `open_clip_torch` needs torchvision, whose wheels pin one
torch release and build each (installing it replaced our pinned CPU torch, and a CUDA torchvision does not load
against a CPU torch). The open_clip state dict is renamed onto `CLIPModel` key by key
(`open_clip_to_transformers`): each attention's stacked `in_proj` splits into `q/k/v_proj`, the projections
`visual.proj` and `text_projection` (applied as `x @ proj`) are transposed into `Linear` weights. Any key the
renaming does not know is an error, and the result loads strictly (an error naming the file and the keys), so
nothing is silently left at its random initialisation.

Preprocessing is HPSv2's validation transform (`image_transform(224, is_train=False)` of its open_clip fork):
RGB -> `ToTensor` -> torchvision `Resize(224, bicubic)` of the short side on the tensor -> centre crop -> OpenAI
mean/std. The resize does not name `antialias`, so it follows the installed torchvision: >= 0.17 (January 2024)
antialiases tensors, older releases did not. `eval.hps_antialias` picks one (recorded with every score): the
HPSv2 paper's v2.0 benchmark (2023) and the Diffusion-DPO/KTO numbers predate torchvision 0.17 (false); a fresh
`pip install hpsv2` today antialiases (true). Prompts are tokenised by the CLIP tokenizer to 77 tokens; the
text feature is read at the end-of-text token, which the causal text mask makes independent of the padding
after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tpo_ray.eval.scorers.registry import (ScorerLoadError, load_state_dict_strictly, projected, register_scorer,
                                           require_files)

CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}  # hpsv2.utils.hps_version_map
CHECKPOINT = CHECKPOINTS["v2.1"]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# open_clip name -> CLIPModel name, for the keys outside the residual blocks
_TOP = {
    "logit_scale": "logit_scale",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_TOWERS = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
           "transformer.resblocks.": "text_model.encoder.layers."}
_BLOCK = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2.",
          "attn.out_proj.": "self_attn.out_proj."}


def _rename_block_key(rest: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One residual-block key (after `resblocks.<i>.`) as CLIPEncoderLayer keys, or None if unknown."""
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]  # weight | bias
        q, k, v = value.chunk(3, dim=0)
        return {f"self_attn.q_proj.{kind}": q, f"self_attn.k_proj.{kind}": k, f"self_attn.v_proj.{kind}": v}
    for old, new in _BLOCK.items():
        if rest.startswith(old) and rest[len(old):] in ("weight", "bias"):
            return {new + rest[len(old):]: value}
    return None


def open_clip_to_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip `CLIP` state dict (ViT towers, as `HPS_v2.1_compressed.pt` holds) under transformers'
    `CLIPModel` names. Raises ValueError listing the keys it does not know."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif key == "attn_mask":  # the causal mask, a buffer some open_clip versions saved; CLIPModel builds it
            continue
        else:
            tower = next((t for t in _TOWERS if key.startswith(t)), None)
            renamed = None
            if tower is not None:
                index, _, rest = key[len(tower):].partition(".")
                renamed = _rename_block_key(rest, value) if index.isdigit() else None
            if renamed is None:
                unknown.append(key)
                continue
            out.update({f"{_TOWERS[tower]}{index}.{k}": v for k, v in renamed.items()})
    if unknown:
        raise ValueError(f"not an open_clip CLIP (ViT) state dict: unknown keys {sorted(unknown)[:10]}")
    return out


def hps_pixels(images: Sequence[Image.Image], size: int, antialias: bool = True) -> torch.Tensor:
    """HPSv2's validation transform as a (N, 3, size, size) float32 batch: ToTensor, then torchvision's
    tensor `Resize(size, bicubic)` (short side to `size`; antialiased as torchvision >= 0.17 does, or not as
    before it), `CenterCrop(size)`, OpenAI mean/std."""
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    batch = []
    for image in images:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        h, w = x.shape[1:]
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = size, int(size * long / short)
        new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", align_corners=False,
                          antialias=antialias)[0]
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        batch.append((x[:, top:top + size, left:left + size] - mean) / std)
    return torch.stack(batch)


@register_scorer("hpsv2")
class HPSv2Score:
    published = ("https://huggingface.co/xswu/HPSv2 (" + " or ".join(CHECKPOINTS.values()) + ") with the config.json "
                 "and tokenizer files of https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    expects = (f"a folder with {CHECKPOINTS['v2.1']} (eval.hps_version v2.1) or {CHECKPOINTS['v2.0']} (v2.0) plus "
               "the config.json and tokenizer files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the open_clip "
               "ViT-H-14 in transformers layout; its weights are not read)")

    @staticmethod
    def options(eval_cfg) -> dict:
        return {"version": eval_cfg.hps_version, "antialias": eval_cfg.hps_antialias}

    @staticmethod
    def required(options: dict) -> list[tuple[str, ...]]:
        return [(CHECKPOINTS[options.get("version", "v2.1")],), ("config.json",)]

    @staticmethod
    def ignored_files(options: dict) -> list[str]:
        """The other version's checkpoint: placing it next to this one does not change this one's scores."""
        return [f for v, f in CHECKPOINTS.items() if v != options.get("version", "v2.1")]

    def __init__(self, folder: Path, device: str | None = None, version: str = "v2.1", antialias: bool = True) -> None:
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

        if version not in CHECKPOINTS:
            raise ValueError(f"scorer 'hpsv2': version {version!r} is not one of {sorted(CHECKPOINTS)}")
        require_files(type(self), folder, {"version": version})
        self.version, self.antialias = version, antialias
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        checkpoint = torch.load(folder / CHECKPOINTS[version], map_location="cpu", weights_only=True)
        self.model = CLIPModel(CLIPConfig.from_pretrained(folder))
        try:
            state_dict = open_clip_to_transformers(checkpoint.get("state_dict", checkpoint))
        except ValueError as err:
            raise ScorerLoadError(f"scorer 'hpsv2': {folder / CHECKPOINTS[version]}: {err}") from err
        load_state_dict_strictly(type(self), folder / CHECKPOINTS[version], self.model, state_dict)
        self.model.eval().to(self.device)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder)
        self.image_size = self.model.config.vision_config.image_size
        self.context_length = self.model.config.text_config.max_position_embeddings  # 77

    @torch.no_grad()
    def cosine(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        pixel = hps_pixels(images, self.image_size, self.antialias).to(self.device)
        text = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                              max_length=self.context_length, return_tensors="pt").to(self.device)
        image_emb = projected(self.model.get_image_features(pixel_values=pixel)).float()
        text_emb = projected(self.model.get_text_features(input_ids=text["input_ids"],
                                                          attention_mask=text["attention_mask"])).float()
        return F.cosine_similarity(image_emb, text_emb, dim=-1).cpu()

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        return (100.0 * self.cosine(images, prompts)).tolist()
