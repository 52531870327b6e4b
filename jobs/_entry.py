"""Shared body of the `ray job submit` entrypoints: run one `tpo-ray` stage with the job's arguments.

The scripts are thin on purpose: a submitted job and a local `tpo-ray` call take the same path
(config file + dotted overrides), and `ray.init()` inside joins the cluster through RAY_ADDRESS.
"""

from __future__ import annotations

import sys


def main(stage: str) -> None:
    from tpo_ray.cli import app

    app([stage, *sys.argv[1:]], prog_name=f"jobs/{stage}.py")
