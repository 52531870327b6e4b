"""Eval models are checked and stamped on the driver before any work: one error lists every model that
cannot be sampled; the stamp follows the weights, the settings follow steps/guidance; a second writer
of the eval folder is refused before Ray starts; a failed atomic parquet write leaves no temp file."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from tpo_ray.config import config_from_dict
from tpo_ray.eval.sample_job import plan_samples, run_sample
from tpo_ray.eval.sampling import ModelSourceError, describe_models, model_source_kind, sampling_settings


def make_cfg(tmp_path: Path, models: dict[str, str], **eval_fields) -> object:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    return config_from_dict({
        "output_dir": str(tmp_path / "out"), "data": {"resolution": 32},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(tmp_path / "models")},
        "eval": {"prompts": str(prompts), "models": models, "num_inference_steps": 2, **eval_fields}}, "test")


def test_every_bad_model_is_listed_in_one_error_with_what_was_found(tmp_path: Path, tiny_model_dirs) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("x")
    cfg = make_cfg(tmp_path, {"good": str(tiny_model_dirs["sd15"]), "missing": str(tmp_path / "nope"),
                              "empty": str(tmp_path / "empty"), "stray": str(tmp_path / "stray"),
                              "tiny": "tiny:sd99"})
    with pytest.raises(ModelSourceError) as err:
        describe_models(cfg)
    message = str(err.value)
    assert message.startswith("eval.models: 4 of 5 cannot be sampled, nothing was sampled: ")
    assert f"missing={str(tmp_path / 'nope')!r}: no such folder" in message
    assert "empty=" in message and "an empty folder, without model_index.json" in message
    assert "stray=" in message and "a folder holding ['notes.txt'], without model_index.json" in message
    assert "tiny='tiny:sd99': tiny families are" in message and "good=" not in message


def test_bad_models_fail_before_ray_starts(tmp_path: Path, monkeypatch) -> None:
    import tpo_ray.ray_utils

    monkeypatch.setattr(tpo_ray.ray_utils, "ensure_ray", lambda: pytest.fail("Ray started"))
    with pytest.raises(ModelSourceError, match="1 of 2 cannot be sampled"):
        run_sample(make_cfg(tmp_path, {"base": "tiny:sd15", "bad": str(tmp_path / "nope")}))


def test_the_stamp_follows_the_weights_and_settings_follow_steps_and_guidance(tmp_path: Path, tiny_model_dirs,
                                                                             caplog) -> None:
    export = tmp_path / "export"
    shutil.copytree(tiny_model_dirs["sd15"], export)
    cfg = make_cfg(tmp_path, {"tdpo": str(export)})
    before = describe_models(cfg)["tdpo"]
    assert before.kind == "pipeline" and before.family == "sd15" and before == describe_models(cfg)["tdpo"]
    weights = next((export / "unet").glob("diffusion_pytorch_model*"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # retrained in place
    after = describe_models(cfg)["tdpo"]
    assert after.stamp != before.stamp and after.scheduler == before.scheduler
    settings = sampling_settings(cfg, after)
    assert settings["num_inference_steps"] == 2 and settings["guidance_scale"] == 7.5
    assert settings["dtype"] == "float32" and settings["resolution"] == 32
    other = make_cfg(tmp_path, {"tdpo": str(export)}, num_inference_steps=50, guidance_scale=5.0)
    changed = sampling_settings(other, after)
    assert {k for k in settings if settings[k] != changed[k]} == {"num_inference_steps", "guidance_scale"}


def test_checkpoint_and_unet_folders_are_recognised_and_stamped_with_the_base(tmp_path: Path, tiny_model_dirs) -> None:
    from tpo_ray.train.checkpoint import WEIGHTS

    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    (ckpt / WEIGHTS).write_bytes(b"0" * 10)
    unet = tmp_path / "unet"
    shutil.copytree(tiny_model_dirs["sd15"] / "unet", unet)
    assert (model_source_kind(str(ckpt)), model_source_kind(str(unet))) == ("checkpoint", "unet")
    assert model_source_kind("tiny:sd15") == model_source_kind("owner/name") == "pipeline"
    cfg = make_cfg(tmp_path, {"ckpt": str(ckpt), "unet": str(unet)})
    found = describe_models(cfg)
    assert found["ckpt"].kind == "checkpoint" and found["unet"].kind == "unet"
    assert found["ckpt"].family == "sd15"
    stamp = found["ckpt"].stamp
    (ckpt / WEIGHTS).write_bytes(b"1" * 11)
    assert describe_models(cfg)["ckpt"].stamp != stamp
    bad = make_cfg(tmp_path, {"ckpt": str(ckpt)})
    bad.train.init_from = str(tmp_path / "no-sft")
    with pytest.raises(ModelSourceError, match="start U-Net train.init_from=.* is not a folder"):
        describe_models(bad)


def test_unstamped_index_rows_of_older_runs_count_as_stale(tmp_path: Path, caplog) -> None:
    import logging

    from tpo_ray.data.io import write_parquet_atomic
    from tpo_ray.eval.prompt_sets import eval_prompts

    cfg = make_cfg(tmp_path, {"base": "tiny:sd15"})
    old = [{"model": "base", "prompt_id": p.id, "prompt": p.text, "category": None, "k": 0, "seed": 1,
            "path": "x.png"} for p in eval_prompts(cfg)]
    write_parquet_atomic(pa.Table.from_pylist(old), str(tmp_path / "out" / "eval" / "samples" / "index" / "a.parquet"))
    with caplog.at_level(logging.INFO, logger="tpo_ray.eval.sample_job"):
        todo, done = plan_samples(cfg)
    assert (len(todo), done) == (2, 0)
    assert "eval: base: 2 images resampled: sampled before images were stamped" in caplog.text


def test_a_second_writer_of_the_eval_folder_is_refused_before_ray(tmp_path: Path, monkeypatch) -> None:
    import tpo_ray.ray_utils
    from tpo_ray.eval.lock import EvalLockedError, eval_lock

    monkeypatch.setattr(tpo_ray.ray_utils, "ensure_ray", lambda: pytest.fail("Ray started"))
    cfg = make_cfg(tmp_path, {"base": "tiny:sd15"})
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with eval_lock(str(tmp_path / "out" / "eval"), "sample"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(30)
        with pytest.raises(EvalLockedError, match=rf"in use by pid {os.getpid()} .*\(eval sample since "):
            run_sample(cfg)
    finally:
        release.set()
        holder.join()
    assert not (tmp_path / "out" / "eval" / "samples" / "index").exists()


def test_a_failed_atomic_write_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    from fsspec.implementations.local import LocalFileSystem

    from tpo_ray.data.io import write_parquet_atomic

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalFileSystem, "mv", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_parquet_atomic(pa.table({"x": [1]}), str(tmp_path / "shards" / "part-0.parquet"))
    assert os.listdir(tmp_path / "shards") == []
    assert json.dumps(sorted(os.listdir(tmp_path))) == '["shards"]'
