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
