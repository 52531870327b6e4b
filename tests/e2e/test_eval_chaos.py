"""Chaos for eval: `tpo-ray eval sample`, `eval score` and `report` as a user runs them, when the model is
retrained into the same folder, the settings change, a run is killed, a second run shares the folder, a
model path has a typo, an image goes missing or is corrupt, and the output folder cannot be written.
For each case: what the user sees (exit code, the one line), and what is on disk (the index, the
images' content, the scores, the report), counted by the test from the files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

pytestmark = pytest.mark.slow


def tpo(workdir: Path, config: Path, *args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "tpo_ray.cli", *args, "--config", str(config)]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
                                start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=workdir)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def index_rows(eval_dir: Path) -> list[dict]:
    return [r for f in sorted((eval_dir / "samples" / "index").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def holder(eval_dir: Path) -> int | None:
    """The pid writing the eval folder now, from its lock file's record (empty when released)."""
    from tpo_ray.eval.lock import LOCK_FILE

    try:
        return json.loads((eval_dir / LOCK_FILE).read_text())["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def retrain(model: Path, seed: int) -> None:
    """What retraining into the same export folder does to it: new U-Net weights, same paths."""
    from safetensors.torch import load_file, save_file

    file = next((model / "unet").glob("*.safetensors"))
    weights = load_file(file)
    generator = torch.Generator().manual_seed(seed)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
               for k, v in weights.items()}, file)


@pytest.fixture
def workspace(tmp_path: Path, tiny_model_dirs) -> tuple[Path, Path]:
    from tests.helpers.clip import tiny_clip_folder

    tuned = tmp_path / "tdpo-export"
    shutil.copytree(tiny_model_dirs["sd15"], tuned)
    retrain(tuned, seed=1)
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "tracking": {"enabled": False},
        "data": {"resolution": 32},
        "model": {"pretrained": str(tiny_model_dirs["sd15"])},
        "eval": {"models": {"base": str(tiny_model_dirs["sd15"]), "tdpo": str(tuned)}, "baseline": "base",
                 "prompts": "t2i_compbench", "max_prompts": 6, "num_inference_steps": 2, "sample_batch_size": 6,
                 "scorers": ["clip"], "scorer_weights": {"clip": str(tiny_clip_folder(tmp_path / "clip"))}},
    }))
    return tmp_path, config


def test_eval_on_hostile_ground(workspace: tuple[Path, Path]) -> None:
    tmp, config = workspace
    eval_dir = tmp / "out" / "eval"

    # ---- a first eval: 2 models x 6 prompts, balanced across the set's categories
    ok(tpo(tmp, config, "eval", "sample"))
    ok(tpo(tmp, config, "eval", "score"))
    rows = index_rows(eval_dir)
    assert len(rows) == 12 and len({r["category"] for r in rows}) == 6
    first = {(r["model"], r["prompt_id"]): r["image_sha256"] for r in rows}
    wins = json.loads((eval_dir / "winrates.json").read_text())
    assert set(wins["by_category"]) == {r["category"] for r in rows}

    # ---- tdpo retrained into the same folder: its images and scores are new, base's are kept
    retrain(tmp / "tdpo-export", seed=2)
    said = ok(tpo(tmp, config, "eval", "sample", "--verbose"))
    assert "tdpo: 6 images resampled: model changed" in said, said[-2000:]
    rows = index_rows(eval_dir)
    assert len(rows) == 12  # one row per image: the stale ones are gone, not duplicated
    now = {(r["model"], r["prompt_id"]): r["image_sha256"] for r in rows}
    assert all(now[k] != v for k, v in first.items() if k[0] == "tdpo")
    assert all(now[k] == v for k, v in first.items() if k[0] == "base")
    ok(tpo(tmp, config, "eval", "score"))
    scores = pq.read_table(eval_dir / "scores.parquet").to_pylist()
    assert {(s["model"], s["prompt_id"]): s["image_sha256"] for s in scores if s["scorer"] == "clip"} == now

    # ---- changed settings (steps) resample every image
    said = ok(tpo(tmp, config, "eval", "sample", "eval.num_inference_steps=3", "--verbose"))
    assert "settings changed: num_inference_steps 2 -> 3" in said, said[-2000:]
    assert len(index_rows(eval_dir)) == 12

    # ---- a second run on the same folder is refused while the first holds it; nothing duplicated
    first_run = tpo(tmp, config, "eval", "sample", "eval.num_inference_steps=4", wait=False)
    try:
        deadline = time.time() + 120
        while holder(eval_dir) != first_run.pid and time.time() < deadline:  # it has begun to write
            time.sleep(0.5)
        assert holder(eval_dir) == first_run.pid
        second = tpo(tmp, config, "eval", "sample", "eval.num_inference_steps=4")
        assert second.returncode != 0 and "eval" in second.stderr and "pid" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) <= 3, second.stderr
        # ---- ... and killed mid-run (SIGKILL: no cleanup at all)
        os.killpg(first_run.pid, signal.SIGKILL)
    finally:
        first_run.wait(timeout=60)
    ok(tpo(tmp, config, "eval", "sample", "eval.num_inference_steps=4"))  # the kill's lock is taken over
    rows = index_rows(eval_dir)
    assert len(rows) == 12 and len({(r["model"], r["prompt_id"], r["k"]) for r in rows}) == 12
    assert {json.loads(r["settings"])["num_inference_steps"] for r in rows} == {4}

    # ---- a typo in a model path: one line naming it, before Ray starts; no image is lost
    started = time.perf_counter()
    typo = tpo(tmp, config, "eval", "sample", f"eval.models.tdpo={tmp / 'tdpo-exprot'}")
    assert typo.returncode == 2 and "tdpo-exprot" in typo.stderr, typo.stderr
    assert len(typo.stderr.strip().splitlines()) <= 3 and time.perf_counter() - started < 30
    assert len(index_rows(eval_dir)) == 12

    # ---- a corrupt image is named by its path when scored
    ok(tpo(tmp, config, "eval", "score", "eval.num_inference_steps=4"))
    victim = Path(rows[0]["path"])
    victim.write_bytes(b"\x89PNG truncated")
    (eval_dir / "scores.parquet").unlink()  # scored again from scratch: every image is read
    corrupt = tpo(tmp, config, "eval", "score", "eval.num_inference_steps=4")
    assert corrupt.returncode != 0 and victim.name in corrupt.stderr and "0x" not in corrupt.stderr, corrupt.stderr

    # ---- the report lists the corrupt image and one deleted since, and still builds; an older report
    #      stays whole until the new one replaces it
    ok(tpo(tmp, config, "report", "eval.num_inference_steps=4"))
    gone = Path(rows[1]["path"])
    gone.unlink()
    said = ok(tpo(tmp, config, "report", "eval.num_inference_steps=4", "--verbose"))
    assert "2 images missing or unreadable" in said, said[-2000:]
    page = (eval_dir / "report" / "index.html").read_text()
    assert victim.name in page and gone.name in page
    assert not [p.name for p in eval_dir.iterdir() if "staging" in p.name or p.name.startswith(".report")]

    # ---- an output folder that cannot be written: one line naming the field
    (tmp / "afile").write_text("")
    bad = tpo(tmp, config, "eval", "sample", f"output_dir={tmp / 'afile' / 'out'}")
    assert bad.returncode == 2 and "output_dir=" in bad.stderr and "Traceback" not in bad.stderr
