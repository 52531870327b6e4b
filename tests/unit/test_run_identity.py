"""A run's identity and paths do not depend on the working directory or on how a path is spelled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpo_ray.config import load_config
from tpo_ray.runs import run_identity


def test_relative_paths_resolve_against_the_working_directory_once(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    cfg = load_config(None, ["output_dir=out", "train.init_from=../sft/unet", "model.cache_dir=./models"])
    assert cfg.output_dir == str(tmp_path / "work" / "out")
    assert cfg.train.init_from == str(tmp_path / "sft" / "unet")
    assert cfg.model.cache_dir == str(tmp_path / "work" / "models")
    # Re-validating the dumped config elsewhere (a Ray worker, another command) keeps the same paths.
    monkeypatch.chdir(tmp_path)
    again = load_config(None, [f"{k}={v}" for k, v in (("output_dir", cfg.output_dir),
                                                         ("train.init_from", cfg.train.init_from),
                                                         ("model.cache_dir", cfg.model.cache_dir))])
    assert (again.output_dir, again.train.init_from, again.model.cache_dir) == \
        (cfg.output_dir, cfg.train.init_from, cfg.model.cache_dir)


def test_same_run_from_any_directory_and_any_spelling(tmp_path: Path, monkeypatch) -> None:
    for d in ("a/b", "c", "sft/unet"):
        (tmp_path / d).mkdir(parents=True)
    spellings = [(tmp_path / "a", "out", "../sft/unet"),
                 (tmp_path / "c", "../a/out", str(tmp_path / "sft" / "unet")),
                 (tmp_path / "a" / "b", f"{tmp_path}/a/b/../out/", "../../sft/./unet"),
                 (tmp_path, "./a/out", "sft/unet/")]
    identities = set()
    for cwd, out, init in spellings:
        monkeypatch.chdir(cwd)
        identities.add(run_identity(load_config(None, [f"output_dir={out}", f"train.init_from={init}"])))
    assert len(identities) == 1
    (identity,) = identities
    assert identity.run_dir == f"{tmp_path}/a/out/checkpoints/{identity.name}"
    assert identity.name.startswith("tdpo-")


def test_identity_ignores_length_scale_and_locations_but_not_the_method(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = run_identity(load_config(None, ["output_dir=o"])).name
    same = ["train.max_steps=999", "train.scaling.num_workers=8", "model.cache_dir=/elsewhere",
            "train.log_every_steps=1", "train.eval_max_pairs=3"]
    for override in same:
        assert run_identity(load_config(None, ["output_dir=o", override])).name == base, override
    for override in ["train.loss.beta=1234", "train.lr=1e-5", "data.resolution=128", "model.pretrained=tiny:sdxl"]:
        assert run_identity(load_config(None, ["output_dir=o", override])).name != base, override


def test_uris_hub_ids_and_tiny_models_are_left_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["output_dir=s3://bucket/runs/a", "model.pretrained=stabilityai/stable-diffusion-xl-base-1.0",
                             "train.storage_path=s3://bucket/ckpt"])
    assert cfg.output_dir == "s3://bucket/runs/a"
    assert cfg.model.pretrained == "stabilityai/stable-diffusion-xl-base-1.0"
    identity = run_identity(cfg)
    assert identity.run_dir == f"s3://bucket/ckpt/{identity.name}"
    assert load_config(None, ["model.pretrained=tiny:sd15"]).model.pretrained == "tiny:sd15"
    # A local folder that happens to look like owner/name is a path when it exists.
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert load_config(None, ["model.pretrained=org/model"]).model.pretrained == str(tmp_path / "org" / "model")


def test_no_checkpoint_error_names_the_run_and_folder(tmp_path: Path) -> None:
    identity = run_identity(load_config(None, [f"output_dir={tmp_path}"]))
    with pytest.raises(FileNotFoundError, match=f"no checkpoint of run {identity.name} under {tmp_path}/checkpoints"):
        identity.latest_checkpoint()
    ckpt = Path(identity.run_dir) / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    with pytest.raises(FileNotFoundError):  # a folder without train_state.json is not a finished checkpoint
        identity.latest_checkpoint()
    (ckpt / "train_state.json").write_text("{}")
    assert identity.latest_checkpoint() == str(ckpt)
    assert os.path.isabs(identity.latest_checkpoint())


def test_multi_node_guard_names_every_local_path() -> None:
    from tpo_ray.cluster import local_paths_on_a_cluster

    paths = {"train.storage_path": "/data/ckpt", "cache.output": "s3://bucket/cache"}
    assert local_paths_on_a_cluster(paths, nodes=1, shared_filesystem=False) is None
    assert local_paths_on_a_cluster(paths, nodes=4, shared_filesystem=True) is None
    message = local_paths_on_a_cluster(paths, nodes=4, shared_filesystem=False)
    assert message.startswith("the Ray cluster has 4 nodes but train.storage_path=/data/ckpt is a local path")
    assert "cache.output" not in message.split(":")[0] and "shared_filesystem=true" in message
    assert local_paths_on_a_cluster({k: "s3://b/x" for k in paths}, nodes=4, shared_filesystem=False) is None


def test_a_run_the_cluster_cannot_hold_fails_at_start_locally_and_waits_when_joined(monkeypatch, caplog) -> None:
    """8 workers on a 2-CPU cluster: Ray Train would wait for the worker group forever."""
    import ray

    from tpo_ray.cluster import require_training_resources
    from tpo_ray.config import ConfigError, load_config

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 1e9})
    big = load_config(None, ["train.scaling.num_workers=8"]).train.scaling
    with pytest.raises(ConfigError, match=r"needs 8 CPUs \(train.scaling.num_workers=8 x cpus_per_worker=1\).*"
                                          r"has 2 CPU; lower train.scaling"):
        require_training_resources(big, joined_cluster=False)
    require_training_resources(big, joined_cluster=True)  # an autoscaling cluster may add nodes
    assert "waiting: the cluster may add nodes" in caplog.text
    require_training_resources(load_config(None, ["train.scaling.num_workers=2"]).train.scaling, joined_cluster=False)
