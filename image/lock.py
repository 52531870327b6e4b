"""Compile the cluster image's hashed lock files from `pyproject.toml` and the Dockerfile's pins.

Why a lock: without one, two builds of the same commit resolve different releases (transformers 5.25
one day, 5.24 the next), and a package swapped on the registry goes unnoticed. `pip install
--require-hashes` from these files installs exactly what was resolved here, or fails.

Inputs, each kept in one place:
  - the dependencies and the `llm` extra: `pyproject.toml`;
  - Ray, torch, Python and the CUDA major the image is built for: the Dockerfile's `ARG`s (Ray must be
    the base image's own Ray; torch's wheel must be built for the base image's CUDA major).
The header of `requirements.lock` records a digest of those inputs; `tests/unit/test_image_lock.py`
fails when they change and the lock was not compiled again (`make lock`).

Outputs (next to this file):
  - `requirements.lock`: everything but DeepSpeed, installed in one hashed `pip install` layer;
  - `deepspeed.lock`: DeepSpeed alone. It is sdist-only on the registry and is built in its own step
    with its CUDA/C++ ops compiled ahead of time (`DS_BUILD_*`), which needs torch already installed
    (`--no-build-isolation`), so it cannot share the first layer.

Run: `make lock` (installs `uv`, the resolver, into the venv on first use), or
`python image/lock.py [--check | --upgrade]`. A new dependency is added with what it needs while the
other pins stay where they still fit; `--upgrade` resolves every package afresh. Needs the package
registry, not a GPU or Docker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYPROJECT = ROOT / "pyproject.toml"
DOCKERFILE = ROOT / "Dockerfile"
MAIN_LOCK = HERE / "requirements.lock"
DEEPSPEED_LOCK = HERE / "deepspeed.lock"
PLATFORM = "x86_64-manylinux_2_28"  # the base images are x86_64 Ubuntu (glibc >= 2.28)
SEPARATE = "deepspeed"  # built in its own Dockerfile step, see the module docstring
DIGEST_PREFIX = "# inputs-sha256: "


def dockerfile_args(text: str | None = None) -> dict[str, str]:
    """The `ARG NAME=default` values of the Dockerfile (first default wins, as in Docker)."""
    text = DOCKERFILE.read_text() if text is None else text
    args: dict[str, str] = {}
    for name, value in re.findall(r"^ARG\s+([A-Z_]+)=(\S+)\s*$", text, flags=re.MULTILINE):
        args.setdefault(name, value)
    return args


def requirements() -> list[str]:
    """What the image installs: the project's dependencies plus the `llm` extra."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["llm"])


def constraints(args: dict[str, str]) -> list[str]:
    return [f"ray=={args['RAY_VERSION']}", f"torch=={args['TORCH_VERSION']}"]


def python_version(args: dict[str, str]) -> str:
    """`py311` (the base image's Python tag) -> `3.11`."""
    tag = args["PYTHON_TAG"]
    return f"{tag[2]}.{tag[3:]}"


def inputs_digest(args: dict[str, str] | None = None) -> str:
    """A digest of everything the lock is resolved from; stale when it differs from the lock's header."""
    args = dockerfile_args() if args is None else args
    payload = {"requirements": requirements(), "constraints": constraints(args),
               "python": python_version(args), "platform": PLATFORM, "separate": SEPARATE}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock: Path = MAIN_LOCK) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line[len(DIGEST_PREFIX):].strip()
    return None


def split_blocks(text: str) -> list[str]:
    """uv's output as one block per package: the `name==version \\` line and its hash/comment lines."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            blocks.append(line)
        elif blocks and line.startswith(" "):
            blocks[-1] += "\n" + line
    return blocks


def pins(lock: Path) -> dict[str, str]:
    """{normalised name: version} of a lock file."""
    found = {}
    for block in split_blocks(lock.read_text()):
        name, version = block.split("\n")[0].split(" ")[0].split("==")
        found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def compile_lock(upgrade: bool = False) -> None:
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    args = dockerfile_args()
    with tempfile.TemporaryDirectory() as tmp:
        req, con, out = Path(tmp, "requirements.in"), Path(tmp, "constraints.txt"), Path(tmp, "out.txt")
        req.write_text("\n".join(requirements()) + "\n")
        con.write_text("\n".join(constraints(args)) + "\n")
        if not upgrade:
            # uv keeps the versions of an existing output file where the inputs still allow them: adding a
            # dependency adds it (and what it needs) without moving every other pin to today's release
            out.write_text("".join(p.read_text() for p in (MAIN_LOCK, DEEPSPEED_LOCK) if p.exists()))
        subprocess.run([uv, "pip", "compile", str(req), "-c", str(con), "--generate-hashes",
                        "--python-version", python_version(args), "--python-platform", PLATFORM,
                        "--no-header", "--no-annotate", "--quiet", "-o", str(out)], check=True)
        blocks = split_blocks(out.read_text())
    header = ("# The cluster image's hashed lock: compiled by `make lock` (image/lock.py) from pyproject.toml\n"
              "# (dependencies + the llm extra) and the Dockerfile's ARGs "
              f"({', '.join(constraints(args))}, Python {python_version(args)}, {PLATFORM}).\n"
              "# Do not edit by hand.\n")
    main = [b for b in blocks if not b.startswith(f"{SEPARATE}==")]
    separate = [b for b in blocks if b.startswith(f"{SEPARATE}==")]
    MAIN_LOCK.write_text(header + f"{DIGEST_PREFIX}{inputs_digest(args)}\n" + "\n".join(main) + "\n")
    DEEPSPEED_LOCK.write_text(header + "\n".join(separate) + "\n")
    print(f"wrote {MAIN_LOCK.relative_to(ROOT)} ({len(main)} packages) and "
          f"{DEEPSPEED_LOCK.relative_to(ROOT)} ({len(separate)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the lock is stale, compile nothing")
    parser.add_argument("--upgrade", action="store_true",
                        help="resolve every package afresh (default: keep the locked versions that still fit)")
    options = parser.parse_args()
    if options.check:
        stale = recorded_digest() != inputs_digest()
        print("image/requirements.lock is " + ("stale: run `make lock`" if stale else "up to date"))
        return int(stale)
    compile_lock(upgrade=options.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
