"""The quiet console: only stage lines reach the terminal; everything else, down to raw fd writes, the log file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys
    from pathlib import Path
    from tpo_ray.console import CONSOLE, echo, quiet_session, setup_logging

    log = logging.getLogger("tpo_ray.somestage")
    with quiet_session(Path(sys.argv[1])) as term:
        setup_logging(False, verbose=False, console_stream=term)
        print("python print from a library")
        os.write(2, b"raw C-level stderr write (core_worker.cc)\\n")
        subprocess.run([sys.executable, "-c", "print('child process output (a raylet)')"])
        logging.getLogger("ray.data").info("streaming_executor chatter")
        log.info("internal detail")
        log.info("stage line for the person", extra=CONSOLE)
        log.warning("a tpo_ray warning")
        echo("summary table")
    print("after the session")
""")


def test_quiet_session_routes_output(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "stage.log"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(log_file)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    terminal = out.stdout.splitlines()
    assert terminal == ["stage line for the person", "a tpo_ray warning", "summary table", "after the session"]
    assert out.stderr == ""
    logged = log_file.read_text()
    for text in ("python print from a library", "raw C-level stderr write", "child process output",
                 "streaming_executor chatter", "internal detail", "stage line for the person", "a tpo_ray warning"):
        assert text in logged, text
    assert "summary table" not in logged and "after the session" not in logged
