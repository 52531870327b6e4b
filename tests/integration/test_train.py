"""Training on a real local Ray cluster: DDP and DeepSpeed on CPU, resume, rescale, faults, MLflow,
export, and learning (SFT then TDPO beats the SFT model on held-out pairs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tpo_ray.cache.job import run_cache
from tpo_ray.cache.store import CacheError
from tpo_ray.config import TPOConfig, apply_overrides, config_from_dict
from tpo_ray.data.io import write_parquet_atomic
from tpo_ray.data.synthetic import synthetic_table
from tpo_ray.export import run_export
from tpo_ray.negatives.job import run_negatives
from tpo_ray.train.driver import run_train

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, ray_cluster) -> TPOConfig:
    """Generated data, negatives and both caches (single for SFT, triplet for TDPO), built once."""
    out = tmp_path_factory.mktemp("train")
    base = config_from_dict({
        "output_dir": str(out),
        "data": {"synthetic": {"num_rows": 48}, "holdout_fraction": 0.25},
        "model": {"pretrained": "tiny:sd15", "cache_dir": str(out / "models")},
        "tracking": {"enabled": False},
        "train": {"lr": 1e-4, "max_steps": 4, "batch_size": 2, "log_every_steps": 2, "checkpoint_every_steps": 2,
                  "eval_max_pairs": 8, "scaling": {"num_workers": 1}},
        "eval": {"timesteps": [300, 700], "noise_draws": 1},
    })
    write_parquet_atomic(synthetic_table(48, 64), out / "data" / "captions.parquet")
    run_negatives(base)
    run_cache(base)
    run_cache(variant(base, {"train.loss": {"name": "sft"}}))
    return base


def variant(cfg: TPOConfig, overrides: dict) -> TPOConfig:
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides), "test")


def state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "train_state.json").read_text())


def weights(checkpoint: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(checkpoint) / "unet_trainable.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def initial(cfg: TPOConfig) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(Path(cfg.model.cache_dir) / "tiny-sd15" / "unet").state_dict()


def relative_gap(a: dict, b: dict, start: dict) -> float:
    """||a - b|| / ||a - start||: ~0.01 for the same computation in another float order, >1 for other data.

    Adam normalises every component, so a rounding difference can flip the sign of a near-zero
    gradient component and move it by lr; a max-abs comparison would flag that as a mismatch.
    """
    gap = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    moved = sum(float(((a[k] - start[k]) ** 2).sum()) for k in a) ** 0.5
    return gap / moved


def test_one_worker_ddp_checkpoint_contents_and_sqlite_mlflow(workspace: TPOConfig, tmp_path: Path) -> None:
    import mlflow

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = variant(workspace, {"train.run_name": "one-worker", "tracking": {"enabled": True, "tracking_uri": db}})
    result = run_train(cfg)
    ckpt = Path(result.checkpoint)
    assert state(result.checkpoint) == {"step": 4, "global_batch": 2, "world_size": 1, "samples_seen": 8,
                                        "skipped_nonfinite": 0, "read_lanes": 1}
    assert {"unet_trainable.safetensors", "optimizer.pt", "rng-rank0.pt"} <= {p.name for p in ckpt.iterdir()}
    assert result.metrics["step"] == 4 and 0 <= result.metrics["val/model_acc"] <= 1
    client = mlflow.MlflowClient(tracking_uri=db)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.loss.name"] == "tdpo"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [2, 4]
    assert "val/implicit_acc" in run.data.metrics
    assert [a.path for a in client.list_artifacts(result.run_id, "unet")] == ["unet/unet_trainable.safetensors"]
    assert [a.path for a in client.list_artifacts(result.run_id, "samples")] == ["samples/samples_step0000004.png"]


def test_resume_extends_the_run_with_another_worker_count(workspace: TPOConfig) -> None:
    two = variant(workspace, {"train.run_name": "rescale", "train.scaling.num_workers": 2, "train.batch_size": 1})
    first = run_train(two)
    assert state(first.checkpoint)["world_size"] == 2 and state(first.checkpoint)["global_batch"] == 2
    one = variant(two, {"train.scaling.num_workers": 1, "train.max_steps": 6})
    second = run_train(one)
    # the global batch and the read lanes of the run's start are kept
    assert state(second.checkpoint) == {"step": 6, "global_batch": 2, "world_size": 2, "samples_seen": 12,
                                        "skipped_nonfinite": 0, "read_lanes": 2}
    # an uninterrupted one-worker run of 6 steps over the same samples and noise ends at the same weights
    straight = run_train(variant(workspace, {"train.run_name": "straight", "train.max_steps": 6,
                                             "train.read_lanes": 2}))
    assert relative_gap(weights(second.checkpoint), weights(straight.checkpoint), initial(workspace)) < 0.05


def test_one_worker_equals_two_workers(workspace: TPOConfig) -> None:
    lanes = {"train.read_lanes": 2, "train.max_steps": 3}  # the same data order on 1 and 2 workers
    one = run_train(variant(workspace, {"train.run_name": "w1", "train.batch_size": 2, **lanes}))
    two = run_train(variant(workspace, {"train.run_name": "w2", "train.batch_size": 1, **lanes,
                                        "train.scaling.num_workers": 2}))
    accum = run_train(variant(workspace, {"train.run_name": "a2", "train.batch_size": 1, **lanes,
                                          "train.grad_accum_steps": 2}))
    w1, w2, wa = weights(one.checkpoint), weights(two.checkpoint), weights(accum.checkpoint)
    start = initial(workspace)
    assert relative_gap(w1, w2, start) < 0.05 and relative_gap(w1, wa, start) < 0.05
    other = run_train(variant(workspace, {"train.run_name": "w1-seed", "train.batch_size": 2, **lanes,
                                          "train.seed": 1}))
    assert relative_gap(w1, weights(other.checkpoint), start) > 0.5  # the check can tell other data apart
    # the last step's loss is computed on weights that already carry those Adam flips (measured gap 6e-4)
    assert one.metrics["train/loss"] == pytest.approx(two.metrics["train/loss"], abs=5e-3)


def test_deepspeed_zero2_on_two_cpu_workers_resumes(workspace: TPOConfig) -> None:
    cfg = variant(workspace, {"train.run_name": "zero2", "train.backend": "deepspeed", "train.deepspeed.zero_stage": 2,
                              "train.scaling.num_workers": 2, "train.batch_size": 1, "train.max_steps": 2})
    first = run_train(cfg)
    assert (Path(first.checkpoint) / "deepspeed" / "state").is_dir()
    second = run_train(variant(cfg, {"train.max_steps": 4}))
    assert state(second.checkpoint)["step"] == 4 and torch.isfinite(torch.tensor(second.metrics["train/loss"]))


def test_deepspeed_zero3_matches_ddp(workspace: TPOConfig) -> None:
    common = {"train.scaling.num_workers": 2, "train.batch_size": 1, "train.max_steps": 3, "train.max_grad_norm": None,
              "train.checkpoint_every_steps": 3}
    ddp = run_train(variant(workspace, {"train.run_name": "ddp1", **common}))
    zero3 = run_train(variant(workspace, {"train.run_name": "zero3", "train.backend": "deepspeed",
                                          "train.deepspeed.zero_stage": 3, **common}))
    # ZeRO-3 reduce-scatters partitioned, flattened gradients in another order than DDP's all-reduce;
    # Adam then flips near-zero components. Measured gaps: 0.11 and 0.18; other data gives > 1.
    assert relative_gap(weights(ddp.checkpoint), weights(zero3.checkpoint), initial(workspace)) < 0.3


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if run_dir.exists() and any(run_dir.glob("checkpoint_*/train_state.json")):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.01)


def test_killed_worker_restarts_from_checkpoint_with_the_same_result(workspace: TPOConfig) -> None:
    common = {"train.max_steps": 30, "train.checkpoint_every_steps": 5, "train.log_every_steps": 5,
              "train.scaling.num_workers": 2, "train.batch_size": 1}
    cfg = variant(workspace, {"train.run_name": "killed", "train.max_failures": 2, **common})
    from tpo_ray.runs import run_identity

    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint,
                              args=(Path(run_identity(cfg).run_dir), killed))
    killer.start()
    result = run_train(cfg)
    killer.join()
    assert killed, "no worker was killed"
    assert state(result.checkpoint)["step"] == 30 and state(result.checkpoint)["samples_seen"] == 60
    reference = run_train(variant(workspace, {"train.run_name": "unkilled", **common}))
    assert relative_gap(weights(result.checkpoint), weights(reference.checkpoint), initial(workspace)) < 0.05


def test_the_final_checkpoint_is_stored_before_the_final_eval(workspace: TPOConfig, monkeypatch) -> None:
    """A failing final eval costs the eval, not the training: the step-4 checkpoint is on disk, and
    the rerun resumes there, runs only the final eval and marks the run finished."""
    import tpo_ray.train.worker as worker
    from tpo_ray.runs import run_identity

    def final_eval_fails(config):  # runs on the Ray workers, so the patch is made there
        import tpo_ray.train.worker as w

        def evaluate(*args, **kwargs):
            raise RuntimeError("final eval failed")

        real, w.evaluate = w.evaluate, evaluate
        try:
            w.train_loop_per_worker(config)
        finally:
            w.evaluate = real

    cfg = variant(workspace, {"train.run_name": "final-eval-fails"})  # eval_every_steps=0: only the final eval
    monkeypatch.setattr(worker, "train_loop_per_worker", final_eval_fails)
    with pytest.raises(Exception, match="final eval failed"):
        run_train(cfg)
    monkeypatch.undo()
    found = run_identity(cfg).checkpoints()
    assert [state(c)["step"] for c in found] == [2, 4]
    final = found[-1]
    assert not (Path(final) / "final_metrics.json").exists()  # not finished: the rerun must eval again
    result = run_train(cfg)
    assert not result.already_finished and result.checkpoint == final
    assert run_identity(cfg).checkpoints() == found  # nothing trained, no checkpoint added
    assert result.metrics["step"] == 4 and 0 <= result.metrics["val/model_acc"] <= 1 and "train/loss" in result.metrics
    assert json.loads((Path(final) / "final_metrics.json").read_text()) == result.metrics
    again = run_train(cfg)
    assert again.already_finished and again.metrics == result.metrics


def test_stale_cache_is_refused(workspace: TPOConfig) -> None:
    with pytest.raises(CacheError, match=r"no triplet cache .* resolution 32 .* built for: .*resolution 64"):
        run_train(variant(workspace, {"data.resolution": 32}))


def test_lora_with_adapters_off_reference_and_export_merges(workspace: TPOConfig, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    cfg = variant(workspace, {"train.run_name": "lora", "model.lora.enabled": True, "train.lr": 1e-2,
                              "export.output": str(tmp_path / "export")})
    assert cfg.resolved_reference() == "lora_off"
    result = run_train(cfg)
    assert all("lora" in k for k in weights(result.checkpoint))
    exported = run_export(cfg)
    pipe = StableDiffusionPipeline.from_pretrained(exported.output, safety_checker=None, requires_safety_checker=False)
    base = UNet2DConditionModel.from_pretrained(Path(workspace.model.cache_dir) / "tiny-sd15" / "unet")
    assert not any("lora" in k for k in pipe.unet.state_dict())
    assert max_diff(pipe.unet.state_dict(), base.state_dict()) > 0  # the adapters were merged in
    image = pipe("two red circles", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


def test_full_finetune_export_holds_the_checkpoint_weights(workspace: TPOConfig, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    cfg = variant(workspace, {"train.run_name": "one-worker", "export.output": str(tmp_path / "export")})
    result = run_train(cfg)  # already trained by the first test or trained now; either way its latest checkpoint
    exported = run_export(cfg)
    unet = UNet2DConditionModel.from_pretrained(exported.output / "unet")
    assert max_diff({k: v for k, v in unet.state_dict().items() if k in weights(result.checkpoint)},
                    weights(result.checkpoint)) == 0


@pytest.fixture
def mlflow_server(tmp_path: Path):
    import urllib.request

    from tests.helpers.ports import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        raise RuntimeError("mlflow server did not start")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_metrics_and_weights_reach_a_real_mlflow_server(workspace: TPOConfig, mlflow_server: str) -> None:
    import mlflow

    cfg = variant(workspace, {"train.run_name": "server", "train.max_steps": 2,
                              "tracking": {"enabled": True, "tracking_uri": mlflow_server, "experiment": "srv"}})
    result = run_train(cfg)
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.run_id)
    assert run.data.params["train.loss.beta"] == "5000.0"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [2]
    assert client.list_artifacts(result.run_id, "unet")[0].file_size > 0


@pytest.mark.slow
def test_sft_then_tdpo_beats_the_sft_model_on_held_out_pairs(tmp_path: Path) -> None:
    out = tmp_path
    base = config_from_dict({
        "output_dir": str(out), "data": {"synthetic": {"num_rows": 1024}, "holdout_fraction": 0.25},
        "negatives": {"shard_size": 256}, "model": {"pretrained": "tiny:sd15", "cache_dir": str(out / "models")},
        "tracking": {"enabled": False},
        # 256 held-out triplets: the accuracy estimate's noise (about +-0.03) stays below the margin
        "train": {"loss": {"name": "tdpo", "beta": 1000.0}, "lr": 3e-4, "max_steps": 250, "batch_size": 4,
                  "log_every_steps": 50, "checkpoint_every_steps": 250, "eval_max_pairs": 256,
                  "scaling": {"num_workers": 2}},
        "eval": {"timesteps": [200, 400, 600, 800], "noise_draws": 2},
    })
    write_parquet_atomic(synthetic_table(1024, 64), out / "data" / "captions.parquet")
    run_negatives(base)
    sft = variant(base, {"train.loss": {"name": "sft"}, "train.max_steps": 40, "export.output": str(out / "sft")})
    run_cache(sft)
    run_train(sft)
    run_export(sft)
    tdpo = variant(base, {"train.init_from": str(out / "sft" / "unet")})
    run_cache(tdpo)
    metrics = run_train(tdpo).metrics
    val = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/")}
    print("held-out:", val)
    # ref_acc is the SFT model (the frozen reference); a flipped loss sign drives model_acc below it
    assert metrics["val/model_acc"] >= metrics["val/ref_acc"] + 0.04, val
    assert metrics["val/implicit_acc"] >= 0.54, val


@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_bf16_mixed_precision(workspace: TPOConfig, backend: str) -> None:
    cfg = variant(workspace, {"train.run_name": f"bf16-{backend}", "train.mixed_precision": "bf16",
                              "train.backend": backend, "train.max_steps": 2})
    result = run_train(cfg)
    assert result.metrics["step"] == 2 and result.metrics["train/loss"] == result.metrics["train/loss"]
    w = weights(result.checkpoint)
    assert all(torch.isfinite(v).all() for v in w.values())


def test_ray_data_streaming_loader_trains_and_resumes(workspace: TPOConfig) -> None:
    # Ray Data's read tasks need CPUs beside the training workers' (2 in this test cluster)
    cfg = variant(workspace, {"train.run_name": "stream", "train.data_loader": "ray_data",
                              "train.scaling.num_workers": 2, "train.scaling.cpus_per_worker": 0.5,
                              "train.batch_size": 1, "train.max_steps": 2})
    first = run_train(cfg)
    assert state(first.checkpoint)["step"] == 2
    second = run_train(variant(cfg, {"train.max_steps": 4}))
    assert state(second.checkpoint)["step"] == 4 and second.metrics["train/loss"] == second.metrics["train/loss"]


def test_triplet_cache_carries_principle_and_edit_count_for_read_time_filters(workspace: TPOConfig) -> None:
    from tpo_ray.cache.job import expected_cache
    from tpo_ray.cache.store import CacheReader, RowFilter

    directory = expected_cache(workspace)[0]
    rows = CacheReader(directory, "train", seed=0).rows(0, 10_000)[: len(CacheReader(directory, "train", seed=0))]
    assert {r["principle"] for r in rows} <= {"content", "attribute", "spatial", "contextual"}
    assert all(r["num_edits"] >= 1 for r in rows)
    spatial = RowFilter.from_data_config(variant(workspace, {"data.principles": ["spatial"]}).data)
    kept = CacheReader(directory, "train", seed=0, keep=spatial)
    assert len(kept) == sum(r["principle"] == "spatial" for r in rows) > 0
    assert {r["principle"] for r in kept.rows(0, len(kept))} == {"spatial"}


def test_precomputed_reference_errors_train_like_the_frozen_copy_and_every_trial_shares_them(
        workspace: TPOConfig) -> None:
    from tpo_ray.cache.reference_job import run_reference_stage

    short = {"train.max_steps": 3, "train.checkpoint_every_steps": 3}
    online = run_train(variant(workspace, {"train.run_name": "ref-online", **short}))
    pre_cfg = variant(workspace, {"train.run_name": "ref-pre", "model.reference": "precomputed", **short})
    pre = run_train(pre_cfg)  # computes the store (the run reads 1 epoch of 36 rows)
    assert relative_gap(weights(pre.checkpoint), weights(online.checkpoint), initial(workspace)) < 0.05
    for key in ("val/model_acc", "val/ref_acc", "val/implicit_acc"):
        assert pre.metrics[key] == pytest.approx(online.metrics[key], abs=0.02), key
    # a Tune trial with another beta (and another run) reads the same store: nothing is computed again
    trial = run_reference_stage(variant(pre_cfg, {"train.loss.beta": 1000.0, "train.run_name": "t2"}))
    assert trial.computed == [] and trial.plan.epochs == 1
    names = sorted(p.name for p in Path(trial.plan.directory).iterdir())
    assert names[:2] == ["epoch=00000.parquet", "manifest.json"] and names[2].startswith("val-") and len(names) == 3
    # a longer run adds the epochs it lacks, and keeps the stored one
    longer = run_reference_stage(variant(pre_cfg, {"train.max_steps": 40}))
    assert longer.plan.directory == trial.plan.directory and longer.computed == [1, 2]


def test_a_sweep_precomputes_once_for_the_trial_that_reads_the_most_epochs(workspace: TPOConfig) -> None:
    from tpo_ray.cache.reference import stored_epochs
    from tpo_ray.cache.reference_job import plan_reference
    from tpo_ray.cache.selection import training_rows
    from tpo_ray.tune.space import parse_space, validate_space
    from tpo_ray.tune.sweep import _precompute_reference

    base = variant(workspace, {"model.reference": "precomputed", "train.max_steps": 12, "train.seed": 5})
    space = parse_space({"train.loss.beta": {"loguniform": [1000, 10000]},
                         "data.principles": {"choice": [None, ["attribute"]]}}, "random")
    trials = validate_space(base.model_dump(mode="json"), space)
    cache = run_cache(base)
    _precompute_reference(base, cache, trials)
    filtered = next(t for t in trials if t.data.principles)
    rows = training_rows(filtered, cache.directory, cache.manifest)
    plan = plan_reference(filtered, cache.directory, cache.manifest, rows, 2, 1)
    unfiltered = plan_reference(base, cache.directory, cache.manifest, cache.manifest["rows"]["train"], 2, 1)
    assert plan.directory == unfiltered.directory  # one store for beta and the principle filter
    assert plan.epochs > unfiltered.epochs  # the filtered trial reads more epochs of fewer rows...
    assert stored_epochs(plan.directory) == set(range(plan.epochs))  # ...and finds them all before it starts
