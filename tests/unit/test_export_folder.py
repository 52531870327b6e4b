"""Export replaces its output folder whole: no stale components, no half-written pipeline, nothing else lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpo_ray.export import replaced_folder


def _pipeline(folder: Path, components: list[str]) -> None:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    for name in components:
        (folder / name).mkdir()
        (folder / name / "config.json").write_text("{}")


def test_an_older_pipeline_is_replaced_without_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _pipeline(out, ["unet", "text_encoder_2", "safety_checker"])  # e.g. an SDXL export before
    with replaced_folder(out) as staging:
        _pipeline(staging, ["unet", "vae"])
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "unet", "vae"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging or old folder left


def test_a_failed_export_leaves_the_previous_one_intact(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _pipeline(out, ["unet"])
    with pytest.raises(RuntimeError, match="disk full"):
        with replaced_folder(out) as staging:
            _pipeline(staging, ["unet"])
            raise RuntimeError("disk full")
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "unet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_folder_that_is_not_a_pipeline_is_refused_untouched(tmp_path: Path) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no pipeline"):
        with replaced_folder(out):
            pass
    assert (out / "thesis.tex").read_text() == "keep me"


def test_a_new_or_empty_folder_is_written(tmp_path: Path) -> None:
    for out in (tmp_path / "a" / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with replaced_folder(out) as staging:
            _pipeline(staging, ["unet"])
        assert (out / "unet" / "config.json").is_file()


# ------------------------------------------------------------- the memory the export's Ray task reserves
def _sized(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: the size is what is read, nothing is written


def _export_cfg(tmp_path: Path, **export):
    from tpo_ray.config import config_from_dict

    return config_from_dict({"output_dir": str(tmp_path / "out"), "model": {"pretrained": str(tmp_path / "base")},
                             "train": {"init_from": str(tmp_path / "sft" / "unet")}, "export": export}, "test")


def test_the_export_reserves_its_peak_estimated_from_the_files(tmp_path: Path) -> None:
    from tpo_ray.export import GiB, export_memory
    from tpo_ray.train.checkpoint import WEIGHTS

    MiB = 2**20
    _sized(tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors", 300 * MiB)
    _sized(tmp_path / "base" / "text_encoder" / "model.safetensors", 100 * MiB)
    (tmp_path / "base" / "model_index.json").write_text("{}")  # not a weight file: not counted
    # what a hub snapshot carries beside them, which a default load does not read: not counted
    _sized(tmp_path / "base" / "unet" / "diffusion_pytorch_model.fp16.safetensors", 150 * MiB)
    _sized(tmp_path / "base" / "unet" / "diffusion_pytorch_model.non_ema.safetensors", 300 * MiB)
    _sized(tmp_path / "base" / "text_encoder" / "pytorch_model.bin", 100 * MiB)
    _sized(tmp_path / "base" / "v1-5-pruned.safetensors", 4000 * MiB)
    _sized(tmp_path / "sft" / "unet" / "diffusion_pytorch_model.safetensors", 200 * MiB)
    _sized(tmp_path / "ckpt" / WEIGHTS, 50 * MiB)
    _sized(tmp_path / "ckpt" / "ema.safetensors", 20 * MiB)
    _sized(tmp_path / "ckpt" / "optimizer.pt", 500 * MiB)  # optimizer states are not loaded by the export
    ckpt = str(tmp_path / "ckpt")
    # fp32 pipeline (2x files) + starting U-Net (2x) + the merged weights + 1 GiB for the process
    assert export_memory(_export_cfg(tmp_path), ckpt) == 2 * 400 * MiB + 2 * 200 * MiB + 50 * MiB + GiB
    assert export_memory(_export_cfg(tmp_path, use_ema=True), ckpt) == 2 * 400 * MiB + 2 * 200 * MiB + 20 * MiB + GiB
    assert export_memory(_export_cfg(tmp_path, memory_gb=24), ckpt) == 24 * GiB  # the user's figure wins


def test_a_base_that_cannot_be_sized_here_reserves_nothing_rather_than_a_guess(tmp_path: Path) -> None:
    from tpo_ray.config import config_from_dict
    from tpo_ray.export import export_memory

    cfg = config_from_dict({"output_dir": str(tmp_path), "model": {"pretrained": "org/some-model-on-the-hub"}}, "t")
    assert export_memory(cfg, str(tmp_path / "ckpt")) == 0


def test_export_memory_must_be_positive() -> None:
    from tpo_ray.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="export.memory_gb"):
        config_from_dict({"export": {"memory_gb": 0}}, "test")


def test_staging_folders_left_by_a_killed_export_are_removed_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _pipeline(out, ["unet"])
    for left in (".export.staging-0badc0de", ".export.old-0badc0de"):  # what a SIGKILL mid-export leaves
        _pipeline(tmp_path / left, ["unet", "vae"])
    _pipeline(tmp_path / ".other.staging-12345678", ["unet"])  # another folder's: not ours to remove
    with replaced_folder(out) as staging:
        _pipeline(staging, ["unet", "vae"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.staging-12345678", "export"]


def test_a_pipeline_rerun_exports_again_when_anything_the_export_is_made_of_changed(tmp_path: Path) -> None:
    import json

    from tpo_ray.config import config_from_dict
    from tpo_ray.export import EXPORT_RECORD, export_identity
    from tpo_ray.pipeline import _exported

    base = {"output_dir": str(tmp_path), "export": {"output": str(tmp_path / "export")}}
    cfg = config_from_dict(base, "t")
    _pipeline(tmp_path / "export", ["unet"])
    (tmp_path / "export" / EXPORT_RECORD).write_text(json.dumps(export_identity(cfg, "/ckpt/step-10")))
    assert _exported(cfg, "/ckpt/step-10") and not _exported(cfg, "/ckpt/step-20")
    for changed in ({"export": {**base["export"], "use_ema": True}, "train": {"ema_decay": 0.999}},
                    {"model": {"pretrained": "/models/other"}}, {"train": {"init_from": "/sft/unet"}},
                    {"model": {"lora": {"enabled": True, "rank": 8}}}):
        assert not _exported(config_from_dict({**base, **changed}, "t"), "/ckpt/step-10"), changed
