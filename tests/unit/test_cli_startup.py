"""`tpo-ray` starts at once: importing the CLI (and the config it validates) loads no torch, Ray,
diffusers, transformers, DeepSpeed or MLflow; those load when a command runs its stage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import tpo_ray

HEAVY = ("torch", "ray", "diffusers", "transformers", "deepspeed", "mlflow")


def tpo_ray_command() -> list[str]:
    """The installed console script next to this interpreter (else the module, as `python -m`)."""
    script = Path(sys.executable).with_name("tpo-ray")
    if script.exists():
        return [str(script)]
    found = shutil.which("tpo-ray")
    return [found] if found else [sys.executable, "-m", "tpo_ray.cli"]


# One fresh interpreter: what `import tpo_ray.cli` loads, then what rendering every command's --help adds.
PROBE = f"""
import json, sys
heavy = {HEAVY!r}
import tpo_ray.config, tpo_ray.cli
after_import = sorted(m for m in heavy if m in sys.modules)
import typer
from typer.testing import CliRunner
from tpo_ray.cli import app

def paths(cmd, prefix):
    yield prefix
    for name, sub in getattr(cmd, "commands", {{}}).items():
        yield from paths(sub, [*prefix, name])

codes = {{" ".join(p) or "tpo-ray": CliRunner().invoke(app, [*p, "--help"]).exit_code
          for p in paths(typer.main.get_command(app), [])}}
print(json.dumps({{"after_import": after_import, "after_help": sorted(m for m in heavy if m in sys.modules),
                  "codes": codes}}))
"""


def test_importing_the_cli_and_every_help_page_load_no_heavy_library() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["after_import"] == [], f"import tpo_ray.cli loaded {seen['after_import']}"
    assert seen["after_help"] == [], f"--help loaded {seen['after_help']}"
    assert len(seen["codes"]) > 10 and set(seen["codes"].values()) == {0}, seen["codes"]


def test_help_in_a_fresh_process_exits_0() -> None:
    done = subprocess.run([*tpo_ray_command(), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and "negatives" in done.stdout


def test_version_prints_the_package_version_and_exits_0() -> None:
    done = subprocess.run([*tpo_ray_command(), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"tpo-ray {tpo_ray.__version__}\n"


def test_version_is_read_from_the_package(monkeypatch) -> None:
    """Not a copy of the number: `tpo_ray.__version__` is the one source."""
    from typer.testing import CliRunner

    from tpo_ray.cli import app

    monkeypatch.setattr(tpo_ray, "__version__", "9.8.7")
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == "tpo-ray 9.8.7\n"
