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


def test_s3_copies_only_the_components_a_stage_needs(tiny_model_dirs, s3_bucket, tmp_path: Path) -> None:
    """The cache driver fingerprints VAE and text encoders without downloading the U-Net; a training
    worker then fetches the U-Net alone."""
    from tpo_ray.cache.job import model_identity
    from tpo_ray.config import TPOConfig
    from tpo_ray.models.loading import model_fingerprint

    uri = f"{s3_bucket}/models/partial-sdxl"
    upload(tiny_model_dirs["sdxl"], uri)
    cfg = TPOConfig.model_validate({"model": {"pretrained": uri, "cache_dir": str(tmp_path / "cache")}})
    identity = model_identity(cfg)
    (local,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in local.iterdir()) == ["model_index.json", "scheduler", "text_encoder",
                                                        "text_encoder_2", "tokenizer", "tokenizer_2", "vae"]
    assert identity["fingerprint"] == model_fingerprint(tiny_model_dirs["sdxl"])
    unet_only = load_components(cfg.model, parts=("unet",))
    assert unet_only.unet is not None and (local / "unet").is_dir()
    assert not list(local.glob("*.tmp-*"))


def test_hub_patterns_skip_single_files_variants_and_other_formats() -> None:
    from huggingface_hub.utils import filter_repo_objects

    from tpo_ray.models.loading import hub_allow_patterns

    repo = ["model_index.json", "README.md", "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0_0.9vae.safetensors",
            "sd_xl_offset_example-lora_1.0.safetensors", "scheduler/scheduler_config.json",
            "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
            "text_encoder/model.onnx", "text_encoder/flax_model.msgpack", "text_encoder/openvino_model.bin",
            "text_encoder_2/config.json", "text_encoder_2/model.safetensors", "tokenizer/vocab.json",
            "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/model.onnx", "unet/model.onnx_data", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors", "big/diffusion_pytorch_model-00001-of-00002.safetensors",
            "big/diffusion_pytorch_model.safetensors.index.json"]
    kept = set(filter_repo_objects(repo, allow_patterns=hub_allow_patterns()))
    assert kept == {"model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                    "text_encoder/model.safetensors", "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
                    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
                    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                    "vae/diffusion_pytorch_model.safetensors", "big/diffusion_pytorch_model-00001-of-00002.safetensors",
                    "big/diffusion_pytorch_model.safetensors.index.json"}
