"""What a person at the terminal sees: one line (or a live bar) per stage; everything else to a log file.

A stage pulls in Ray, Ray Data, Ray Train, DeepSpeed, transformers and MLflow, each printing its own
lines from the driver, from C++ (`core_worker.cc`), from raylets and from every worker process that
Ray forwards to the driver. Filtering them one by one breaks with every release, so a quiet session
redirects the process's stdout and stderr file descriptors (inherited by the Ray processes it
starts) into `<output_dir>/logs/<stage>.log` and keeps a private handle on the terminal. Log
records marked with `extra=CONSOLE` (stage lines, progress) and warnings of tpo_ray itself reach
the terminal; every record reaches the log file. `--verbose` skips all of this.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

CONSOLE = {"console": True}  # `log.info(..., extra=CONSOLE)`: meant for the person at the terminal

_terminal: IO[str] | None = None  # set while a quiet session runs
_terminal_err: IO[str] | None = None  # the saved stderr, for errors, while a quiet session runs


def terminal() -> IO[str]:
    """The stream the person reads: the saved terminal during a quiet session, else stdout."""
    return _terminal or sys.stdout


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_lines(text: str) -> list[str]:
    """The non-empty lines of a message without terminal colour codes (Ray colours its worker prefixes)."""
    return [line.rstrip() for line in _ANSI.sub("", text).splitlines() if line.strip()]


def echo(message: str = "", err: bool = False) -> None:
    """Print to the person (stage results, the summary, one-line errors), bypassing the log redirect;
    errors to the terminal's stderr, so `2>` and scripts that read stderr see them."""
    stream = (_terminal_err or sys.stderr) if err else (_terminal or sys.stdout)
    stream.write(message + "\n")
    stream.flush()


class _ForConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.startswith("tpo_ray")
        return bool(getattr(record, "console", False)) or (ours and record.levelno >= logging.WARNING)


_FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
_QUIET_NOISY = ("httpx", "urllib3", "filelock", "alembic", "botocore", "s3fs", "aiobotocore")


def setup_logging(debug: bool, verbose: bool, console_stream: IO[str] | None = None) -> None:
    """Root handlers: everything to stderr (the log file when quiet); console-marked records to the terminal."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tpo_ray", False):
            root.removeHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    full = logging.StreamHandler(sys.stderr)
    full.setFormatter(_FILE_FORMAT if not verbose else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    full._tpo_ray = True  # type: ignore[attr-defined]
    root.addHandler(full)
    if console_stream is not None:
        short = logging.StreamHandler(console_stream)
        short.setFormatter(logging.Formatter("%(message)s"))
        short.addFilter(_ForConsole())
        short._tpo_ray = True  # type: ignore[attr-defined]
        root.addHandler(short)
    for noisy in _QUIET_NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_file_for(output_dir: str, stage: str) -> Path | None:
    """`<output_dir>/logs/<stage>.log` for a local output folder; None for a URI (jobs log to Ray)."""
    if "://" in output_dir:
        return None
    return Path(output_dir) / "logs" / f"{stage}.log"


@contextmanager
def quiet_session(log_file: Path) -> Iterator[IO[str]]:
    """Redirect fds 1 and 2 (this process and the Ray processes it starts) to `log_file`; yield the terminal."""
    global _terminal, _terminal_err
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    term = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    term_err = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    sink = open(log_file, "a", buffering=1)  # noqa: SIM115 - closed in finally
    previous_env = {k: os.environ.get(k) for k in ("RAY_DATA_DISABLE_PROGRESS_BARS",)}
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"  # bars in a log file are noise
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    _terminal, _terminal_err = term, term_err
    try:
        yield term
    finally:
        _terminal = _terminal_err = None
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        term.close()
        term_err.close()
        sink.close()
