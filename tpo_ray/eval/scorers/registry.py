"""The scorer registry: name -> class with `score(images, prompts) -> list[float]`, loaded only from
local paths or `s3://` (no download at run time).

A scorer class declares where its weights are published (`published`), what the folder must hold
(`expects`, and `required(options)`: the files checked before any work), and its options from the eval
config (`options(eval_cfg)`, e.g. HPS's version and antialias). Every score records what produced it:
the scorer, its weights' stamp (`weights_stamp`: a digest of the weight files' names, sizes and
modification times or ETags, so identical weights moved elsewhere keep their scores and a replaced file
does not) or a program's identity, and its options. Loading is strict: a folder that does not hold
every weight of the model (or holds others) is an error naming the folder and keys, never a model left
partly at its random initialisation.
"""

from __future__ import annotations

import hashlib
import shutil
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from tpo_ray.data.io import filesystem_for, is_uri, join


class ScorerWeightsError(FileNotFoundError):
    """A scorer's weights are not where the config says (or the config names none)."""


class ScorerLoadError(ValueError):
    """A scorer's weights are there but are not the model it expects (missing or unexpected keys)."""


class Scorer(Protocol):
    name: ClassVar[str]
    published: ClassVar[str]  # where the weights come from
    expects: ClassVar[str]  # what the configured path must hold
    needs_weights: ClassVar[bool]  # False for a program (the scene verifier): no path is configured

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]: ...


SCORERS: dict[str, type] = {}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def register_scorer(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} registered twice")
        cls.name = name
        SCORERS[name] = cls
        return cls

    return decorate


def scorer_options(name: str, eval_cfg: Any) -> dict[str, Any]:
    """The options of scorer `name` taken from the eval config (`EvalConfig`): {} for most, HPS's
    version and antialias for `hpsv2`. Passed to the scorer and recorded with each of its scores."""
    options = getattr(SCORERS[name], "options", None)
    return dict(options(eval_cfg)) if options is not None else {}


def required_files(name: str, options: dict[str, Any]) -> list[tuple[str, ...]]:
    """What the weights folder of `name` must hold: each entry a tuple of alternatives (one suffices)."""
    required = getattr(SCORERS[name], "required", None)
    return list(required(options)) if required is not None else []


def _how(cls: type) -> str:
    return f"place {cls.expects} (published at {cls.published}) there and set eval.scorer_weights.{cls.name}"


def weights_problems(name: str, source: str | None, options: dict[str, Any]) -> list[str]:
    """Why the weights of `name` at `source` cannot be loaded (empty when every required file is there),
    checked without reading or copying them (s3:// included)."""
    if not needs_weights(name):
        return []
    cls = SCORERS[name]
    if not source:
        return [f"scorer {name!r} has no weights configured: {_how(cls)}"]
    fs, p = filesystem_for(source)
    if not fs.exists(p):
        return [f"scorer {name!r}: {source} does not exist; {_how(cls)}"]
    problems = []
    for alternatives in required_files(name, options):
        if not any(fs.exists(join(p, a)) for a in alternatives):
            what = (f"{join(source, alternatives[0])} is missing" if len(alternatives) == 1
                    else f"{source} holds none of {', '.join(alternatives)}")
            problems.append(f"scorer {name!r}: {what}; place {cls.expects} (published at {cls.published})")
    return problems


def require_files(cls: type, folder: Path, options: dict[str, Any] | None = None) -> None:
    """Raise `ScorerWeightsError` naming the first missing file of a local weights folder."""
    problems = weights_problems(cls.name, str(folder), options or {})
    if problems:
        raise ScorerWeightsError(problems[0])


def weights_stamp(source: str, ignore: Iterable[str] = ()) -> str:
    """A digest of the files under `source` (a folder or a file, local or s3://): each one's path relative
    to it, size and modification time (s3: ETag), read from the listing, not the content, so stamping
    several GB of weights costs nothing. Hidden files and the names in `ignore` are left out."""
    fs, p = filesystem_for(source)
    found = fs.find(p, detail=True) if fs.isdir(p) else {p: fs.info(p)}
    skip = set(ignore)
    entries = []
    for path, info in sorted(found.items()):
        rel = path[len(p):].lstrip("/") or Path(path).name
        if rel in skip or any(part.startswith(".") for part in rel.split("/")):
            continue
        when = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
        entries.append((rel, int(info.get("size") or 0), str(when)))
    return "files:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def scorer_stamp(name: str, source: str | None, options: dict[str, Any]) -> str:
    """What a score of `name` depends on besides the image, prompt and options: its weights' stamp, or
    the program's identity (`identity()`) for a scorer without weights."""
    cls = SCORERS[name]
    if not needs_weights(name):
        return cls.identity()
    ignored = getattr(cls, "ignored_files", None)
    return weights_stamp(str(source), ignored(options) if ignored is not None else ())


def local_weights(source: str | None, cls: type, cache_dir: str | Path) -> Path:
    """A local path to the weights: the configured path itself, or an `s3://` copy under `cache_dir`
    (copied once per content stamp, so replaced weights are copied again). Missing weights raise
    `ScorerWeightsError` saying what to place."""
    if not source:
        raise ScorerWeightsError(f"scorer {cls.name!r} has no weights configured: {_how(cls)}")
    if not is_uri(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise ScorerWeightsError(f"scorer {cls.name!r}: {path} does not exist; {_how(cls)}")
        return path
    fs, p = filesystem_for(source)
    if not fs.exists(p):
        raise ScorerWeightsError(f"scorer {cls.name!r}: {source} does not exist; {_how(cls)}")
    key = hashlib.sha256(f"{source}|{weights_stamp(source)}".encode()).hexdigest()[:16]
    target = Path(cache_dir).expanduser() / "scorers" / key / Path(p).name
    if not target.exists():
        tmp = target.with_name(target.name + ".partial")
        if tmp.exists():  # a copy that was killed: fs.get would nest the new one inside it
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        fs.get(p, str(tmp), recursive=fs.isdir(p))
        tmp.rename(target)
    return target


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_keys(cls: type, folder: Path, missing: Iterable[str], unexpected: Iterable[str],
               mismatched: Iterable[Any] = (), hint: str = "") -> None:
    """Raise `ScorerLoadError` when loading `folder` left any weight missing (at its random
    initialisation), found keys the model does not have, or found tensors of another shape."""
    missing, unexpected, mismatched = list(missing), list(unexpected), list(mismatched)
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{len(missing)} missing ({_few(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({_few(unexpected)})" if unexpected else "",
             f"{len(mismatched)} of another shape ({_few(str(m[0] if isinstance(m, tuple) else m) for m in mismatched)})"
             if mismatched else ""]
    raise ScorerLoadError(f"scorer {cls.name!r}: {folder} is not the model it expects{hint}, its weights do not "
                          f"match the architecture: keys {'; '.join(p for p in parts if p)}. Place {cls.expects} "
                          f"(published at {cls.published})")


def load_state_dict_strictly(cls: type, folder: Path, module: torch.nn.Module, state_dict: dict) -> None:
    """`module.load_state_dict(state_dict)` failing with `check_keys`'s message (names the folder)."""
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # a shape mismatch
        raise ScorerLoadError(f"scorer {cls.name!r}: {folder} is not the model it expects: {err}. Place "
                              f"{cls.expects} (published at {cls.published})") from err
    check_keys(cls, folder, result.missing_keys, result.unexpected_keys)


def load_clip(cls: type, folder: Path):
    """transformers' `CLIPModel` from `folder`, every weight read from it (`check_keys`): a folder of a
    CLIP text encoder alone, or of another model, is refused instead of scoring with a random CLIP."""
    from transformers import CLIPModel

    try:
        model, info = CLIPModel.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ScorerLoadError(f"scorer {cls.name!r}: {folder} does not load as a CLIP model: {err}. Place "
                              f"{cls.expects} (published at {cls.published})") from err
    kind = type(model).config_class.model_type  # "clip" (model.config keeps the folder's own model_type)
    try:
        saved = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        saved = None
    hint = f" (its config.json is a {saved!r}, not a {kind!r})" if saved and saved != kind else ""
    check_keys(cls, folder, info.get("missing_keys", ()), info.get("unexpected_keys", ()),
               info.get("mismatched_keys", ()), hint)
    return model


def projected(output) -> torch.Tensor:
    """CLIP's projected embedding: transformers 4 returns the tensor from `get_*_features`, transformers 5 a
    `BaseModelOutputWithPooling` whose `pooler_output` holds it."""
    return output if hasattr(output, "norm") else output.pooler_output


def build_scorer(name: str, weights: str | None, cache_dir: str | Path = "~/.cache/tpo_ray/models",
                 device: str | None = None, options: dict[str, Any] | None = None):
    """Scorer `name` loaded from `weights` with `options` (`scorer_options`)."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; available: {sorted(SCORERS)}")
    cls = SCORERS[name]
    if not needs_weights(name):
        return cls(None, device=device, **(options or {}))
    return cls(local_weights(weights, cls, cache_dir), device=device, **(options or {}))


def needs_weights(name: str) -> bool:
    return getattr(SCORERS[name], "needs_weights", True)
