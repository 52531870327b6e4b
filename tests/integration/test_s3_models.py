"""Model folders on S3 (moto server over HTTP): copied once to the local cache, loaded like local ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tpo_ray.config import ModelConfig
from tpo_ray.data.io import filesystem_for
from tpo_ray.models.loading import ModelLoadError, load_components, resolve_model_dir


def upload(local: Path, uri: str) -> None:
    fs, root = filesystem_for(uri)
    for f in local.rglob("*"):
        if f.is_file():
            fs.put_file(str(f), f"{root}/{f.relative_to(local).as_posix()}")


def test_load_from_s3_matches_local(tiny_model_dirs, s3_bucket, tmp_path: Path) -> None:
    uri = f"{s3_bucket}/models/tiny-sdxl"
    upload(tiny_model_dirs["sdxl"], uri)
    cfg = ModelConfig(pretrained=uri, cache_dir=str(tmp_path / "cache"))
    remote = load_components(cfg)
    local = load_components(ModelConfig(pretrained=str(tiny_model_dirs["sdxl"])))
    assert remote.family == "sdxl" and remote.source_dir.parent == tmp_path / "cache"
    for (name, a), (_, b) in zip(remote.unet.state_dict().items(), local.unet.state_dict().items()):
        assert torch.equal(a, b), name
    assert resolve_model_dir(cfg) == remote.source_dir  # second resolution reuses the copy
    assert remote.fingerprint() == local.fingerprint()


def test_s3_prefix_without_pipeline_is_refused(s3_bucket, tmp_path: Path) -> None:
    fs, root = filesystem_for(f"{s3_bucket}/empty/readme.txt")
    fs.pipe(root, b"not a model")
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        resolve_model_dir(ModelConfig(pretrained=f"{s3_bucket}/empty", cache_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())  # nothing half-copied left behind
