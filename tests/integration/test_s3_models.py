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


def test_a_resume_checkpoint_on_s3_is_downloaded_once_per_node(s3_bucket, tmp_path: Path, monkeypatch) -> None:
    """Four workers of one node resume from an s3:// checkpoint: local rank 0 downloads it, the others
    wait and read the same copy, which is deleted once every rank has loaded."""
    import threading

    import ray.train

    from tpo_ray.train.node_copy import node_folder, node_local_copy

    local = tmp_path / "ckpt"
    (local / "deepspeed" / "state").mkdir(parents=True)
    (local / "train_state.json").write_text('{"step": 3}')
    for rank in range(4):
        (local / "deepspeed" / "state" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"x" * 1000)
    uri = f"{s3_bucket}/run/checkpoint_000003"
    upload(local, uri)

    downloads = []
    original = ray.train.Checkpoint.to_directory
    monkeypatch.setattr(ray.train.Checkpoint, "to_directory",
                        lambda self, path=None: downloads.append(path) or original(self, path))
    barrier = threading.Barrier(4)
    seen, errors = {}, []

    def worker(local_rank: int) -> None:
        try:
            with node_local_copy(ray.train.Checkpoint(uri), local_rank, barrier.wait) as folder:
                seen[local_rank] = (folder, sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.pt")),
                                    (folder / "train_state.json").read_text())
        except Exception as err:  # re-raised below, with the rank
            errors.append((local_rank, err))
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(downloads) == 1, f"{len(downloads)} downloads of one checkpoint by 4 workers of a node"
    folder = node_folder(ray.train.Checkpoint(uri).path)
    assert {s[0] for s in seen.values()} == {folder}
    assert all(s[1] == [f"deepspeed/state/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4)]
               and s[2] == '{"step": 3}' for s in seen.values())
    assert not folder.exists()  # removed once every rank had loaded


def test_a_local_checkpoint_is_read_in_place(tmp_path: Path) -> None:
    import ray.train

    from tpo_ray.train.node_copy import node_local_copy

    (tmp_path / "train_state.json").write_text("{}")
    with node_local_copy(ray.train.Checkpoint(str(tmp_path)), 1, lambda: None) as folder:
        assert folder == tmp_path
