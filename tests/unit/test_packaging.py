"""Packaging on a fresh machine: metadata setuptools accepts without deprecations, one version source, a
license file, the typing marker, the CPU torch from PyTorch's CPU index, and a browser for the tests."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

APPLY = """
import json, warnings
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dist = apply_configuration(Distribution(), "pyproject.toml")
print(json.dumps({"version": dist.get_version(),
                  "warnings": [f"{w.category.__name__}: {str(w.message)[:300]}" for w in caught]}))
"""


def test_setuptools_reads_the_metadata_without_a_warning_and_the_version_has_one_source() -> None:
    import json

    import tpo_ray

    out = subprocess.run([sys.executable, "-c", APPLY], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["warnings"] == [], result["warnings"]
    assert result["version"] == tpo_ray.__version__
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]


def test_the_license_is_an_spdx_string_with_its_file_and_the_build_backend_is_bounded() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    setuptools_req = next(r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    assert ">=77" in setuptools_req and "<" in setuptools_req  # 77: SPDX strings; a bound: no surprise major


def test_the_typing_marker_ships_with_the_package() -> None:
    assert (ROOT / "tpo_ray" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["tpo_ray"]


def _make_dry_run(target: str, tmp: Path) -> str:
    """What `make <target>` would run on a machine with no venv yet (`make -n`: nothing is executed)."""
    return subprocess.run(["make", "-n", target, f"VENV={tmp}/venv"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_install_takes_the_cpu_torch_from_pytorchs_cpu_index_at_the_images_version(tmp_path: Path) -> None:
    from tests.unit.test_image_lock import lock

    script = _make_dry_run("install", tmp_path)
    torch_version = lock.dockerfile_args()["TORCH_VERSION"]
    assert f"torch=={torch_version} --index-url https://download.pytorch.org/whl/cpu" in script
    assert "nvidia-smi" in script  # only where there is no CUDA


def test_make_test_installs_the_browser_and_kustomize_its_tests_need_where_missing(tmp_path: Path) -> None:
    script = _make_dry_run("test", tmp_path)
    assert "apt-get install -y -qq chromium" in script
    assert "apt-get install -y -qq kubectl" in script and "https://pkgs.k8s.io/core:/stable:/" in script
    assert script.index("chromium") < script.index("-m pytest") and script.index("kubectl") < script.index("-m pytest")
