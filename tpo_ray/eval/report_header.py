"""The report's header: what was compared and how, above the fold, and a warning for test-scale models.

`model_facts` reads each compared model's folder without loading it: its family (`model_index.json`),
its sampling scheduler (`scheduler/scheduler_config.json`, the one the sampling pipeline uses) and its
U-Net's parameter count (safetensors headers). `test_scale_reason` flags a model or a scorer whose
numbers describe no real model: a `tiny:` id, or weights below `TEST_SCALE_PARAMS` parameters (the
world's base model has ~4 M, the tiny test models well under 1 M; SD1.5's U-Net has 860 M, the smallest
scorer backbone, CLIP ViT-B/32, 151 M). Hub ids and URIs are not opened; they are named as unchecked.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from tpo_ray.config import TPOConfig
from tpo_ray.data.io import is_uri

TEST_SCALE_PARAMS = 50_000_000
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass
class ModelFacts:
    source: str
    family: str | None = None  # sd15 / sdxl; None: not known without opening a hub id or URI
    scheduler: str | None = None
    params: int | None = None  # the U-Net's parameters
    test_scale: str | None = None  # why this model's numbers describe no real model


def safetensors_params(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone (8-byte length, then JSON)."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
    return total


def folder_params(folder: Path) -> int | None:
    """Parameters of the weight files under `folder` (recursive): exact for safetensors, bytes / 4 for
    pickled files (fp32; an fp16 file counts half, which only makes a real model look smaller, never a
    test model larger). None: no weight file there."""
    files = [f for f in sorted(folder.rglob("*")) if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)]
    if folder.is_file():
        files = [folder]
    if not files:
        return None
    safetensors = [f for f in files if f.suffix == ".safetensors"]
    if safetensors:
        return sum(safetensors_params(f) for f in safetensors)
    return sum(f.stat().st_size for f in files) // 4


def millions(params: int) -> str:
    return f"{params / 1e6:.1f} M" if params < 1e9 else f"{params / 1e9:.2f} B"


def _pipeline_facts(folder: Path, facts: ModelFacts) -> ModelFacts:
    index = folder / "model_index.json"
    if index.is_file():
        name = json.loads(index.read_text()).get("_class_name", "")
        facts.family = "sdxl" if "XL" in name else "sd15"
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        facts.scheduler = json.loads(scheduler.read_text()).get("_class_name")
    if (folder / "unet").is_dir():
        facts.params = folder_params(folder / "unet")
    return facts


def model_facts(cfg: TPOConfig, source: str) -> ModelFacts:
    """What the report can tell about a model source without loading it."""
    from tpo_ray.eval.implicit_job import unet_source_kind

    facts = ModelFacts(source)
    if source.startswith("tiny:"):
        family = source.removeprefix("tiny:")
        folder = Path(cfg.model.cache_dir).expanduser() / f"tiny-{family}"
        facts = _pipeline_facts(folder, facts) if folder.is_dir() else facts
        facts.family = family
        facts.test_scale = f"{source}: a tiny random-weight test model"
        return facts
    if is_uri(source) or not Path(source).expanduser().exists():
        return facts  # a hub id or a bucket: not opened (no downloads for a report)
    folder = Path(source).expanduser()
    kind = unet_source_kind(source)
    if kind == "pipeline":
        _pipeline_facts(folder, facts)
    else:  # a U-Net folder or a training checkpoint: family and scheduler are those of this config's base
        start = model_facts(cfg, cfg.model.pretrained) if cfg.model.pretrained != source else ModelFacts(source)
        facts.family, facts.scheduler = start.family, start.scheduler
        if kind == "unet":
            facts.params = folder_params(folder)
        else:
            init = cfg.train.init_from
            facts.params = folder_params(Path(init).expanduser()) if init and Path(init).expanduser().exists() \
                else start.params
    if facts.params is not None and facts.params < TEST_SCALE_PARAMS:
        facts.test_scale = (f"{source}: a U-Net of {millions(facts.params)} parameters (SD1.5's has 860 M): "
                            "a test-scale model")
    return facts


def scorer_test_scale(name: str, weights: str | None) -> str | None:
    """Why a scorer's numbers measure nothing real (tiny random weights), or None."""
    if weights is None or is_uri(weights) or not Path(weights).expanduser().exists():
        return None
    params = folder_params(Path(weights).expanduser())
    if params is not None and params < TEST_SCALE_PARAMS:
        return f"scorer {name}: weights of {millions(params)} parameters at {weights}: a test-scale model"
    return None
