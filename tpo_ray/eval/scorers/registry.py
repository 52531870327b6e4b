"""The scorer registry: name -> class with `score(images, prompts) -> list[float]`, loaded only from
local paths or `s3://` (no download at run time).

A scorer class declares where its weights are published (`published`) and what the folder or file must
hold (`expects`), so a missing weight is an error that names the file to place and where to get it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from PIL import Image

from tpo_ray.data.io import filesystem_for, is_uri


class ScorerWeightsError(FileNotFoundError):
    """A scorer's weights are not where the config says (or the config names none)."""


class Scorer(Protocol):
    name: ClassVar[str]
    published: ClassVar[str]  # where the weights come from
    expects: ClassVar[str]  # what the configured path must hold
    needs_weights: ClassVar[bool]  # False for a program (the scene verifier): no path is configured

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]: ...


SCORERS: dict[str, type] = {}


def register_scorer(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} registered twice")
        cls.name = name
        SCORERS[name] = cls
        return cls

    return decorate


def local_weights(source: str | None, cls: type, cache_dir: str | Path) -> Path:
    """A local path to the weights: the configured path itself, or an `s3://` copy under `cache_dir`
    (copied once, named by the URI). Missing weights raise `ScorerWeightsError` saying what to place."""
    how = f"place {cls.expects} (published at {cls.published}) there and set eval.scorer_weights.{cls.name}"
    if not source:
        raise ScorerWeightsError(f"scorer {cls.name!r} has no weights configured: {how}")
    if not is_uri(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise ScorerWeightsError(f"scorer {cls.name!r}: {path} does not exist; {how}")
        return path
    fs, p = filesystem_for(source)
    if not fs.exists(p):
        raise ScorerWeightsError(f"scorer {cls.name!r}: {source} does not exist; {how}")
    target = Path(cache_dir).expanduser() / "scorers" / hashlib.sha256(source.encode()).hexdigest()[:16] / Path(p).name
    if not target.exists():
        tmp = target.with_name(target.name + ".partial")
        fs.get(p, str(tmp), recursive=fs.isdir(p))
        tmp.rename(target)
    return target


def projected(output) -> torch.Tensor:
    """CLIP's projected embedding: transformers 4 returns the tensor from `get_*_features`, transformers 5 a
    `BaseModelOutputWithPooling` whose `pooler_output` holds it."""
    return output if hasattr(output, "norm") else output.pooler_output


def build_scorer(name: str, weights: str | None, cache_dir: str | Path = "~/.cache/tpo_ray/models",
                 device: str | None = None):
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; available: {sorted(SCORERS)}")
    cls = SCORERS[name]
    if not needs_weights(name):
        return cls(None, device=device)
    return cls(local_weights(weights, cls, cache_dir), device=device)


def needs_weights(name: str) -> bool:
    return getattr(SCORERS[name], "needs_weights", True)
