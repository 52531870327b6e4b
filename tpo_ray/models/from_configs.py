"""Random-weight pipelines with the real SD1.5 / SDXL architectures, built from their published configs.

Tiny models make unit tests fast, but they hide what only real shapes show: SDXL's penultimate
hidden states and pooled projection, `force_upcast` VAEs, text-encoder configs that say
`torch_dtype: float16`, ZeRO-3 partitioning of large tensors, memory. This writes a diffusers
folder that loads exactly like the published pipeline (same configs, tokenizer files, scheduler,
model_index), only with seeded random weights, so `model.pretrained: <folder>` exercises the real
loading, caching, training, export and sampling paths without downloading anything.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from tpo_ray.models.loading import pipeline_components

log = logging.getLogger(__name__)

COPIED = ("scheduler", "tokenizer", "tokenizer_2", "feature_extractor")


def _save_diffusers(cls_name: str, source: Path, target: Path) -> None:
    import diffusers

    cls = getattr(diffusers, cls_name)
    model = cls.from_config(cls.load_config(source))
    model.save_pretrained(target, safe_serialization=True)
    del model


def _save_transformers(cls_name: str, source: Path, target: Path) -> None:
    """Save random weights, then restore the published config.json (its `torch_dtype` included)."""
    import transformers

    if cls_name == "StableDiffusionSafetyChecker":
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker as cls
        from transformers import CLIPConfig as config_cls
    else:
        cls = getattr(transformers, cls_name)
        config_cls = cls.config_class
    config = config_cls.from_pretrained(source)
    model = cls(config).to(torch.float32)
    model.save_pretrained(target, safe_serialization=True)
    del model
    shutil.copyfile(source / "config.json", target / "config.json")


def save_random_pipeline(config_dir: str | Path, target: str | Path, seed: int = 0,
                         include: tuple[str, ...] | None = None) -> Path:
    """Write a pipeline folder to `target` from `config_dir` (a published layout without weights).

    Every component named in model_index.json is built from its config with weights drawn from
    `seed` (or copied when it has no weights: scheduler, tokenizers, feature extractor). `include`
    limits the weighted components built (e.g. leave out `safety_checker` to save time); the
    folder is complete only when it is None.
    """
    source, target = Path(config_dir), Path(target)
    index = json.loads((source / "model_index.json").read_text())
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for name in pipeline_components(index):
        library, cls_name = index[name]
        if name in COPIED:
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)
        elif include is not None and name not in include:
            continue
        elif library == "diffusers":
            _save_diffusers(cls_name, source / name, target / name)
        else:
            _save_transformers(cls_name, source / name, target / name)
        log.info("random %s: %s/%s", cls_name, target.name, name)
    shutil.copyfile(source / "model_index.json", target / "model_index.json")
    return target
