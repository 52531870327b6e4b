"""The line a user sees for a failure is its cause: from inside Ray Data, an actor or a Train worker the
error raised there (not Ray's retry hint or wrapper), and an output folder that cannot be written is one
line naming the field, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tpo_ray.cli import app, failure_lines

# What Ray 2.60 printed for a Ray Data UDF that raised OSError (captured from a real run; the colour
# codes of the worker prefix included).
RAY_DATA_TEXT = """\x1b[36mray::ReadRange->MapBatches(f)()\x1b[39m (pid=21145, ip=192.0.2.2)
  File "/tmp/raydata_err2.py", line 4, in f
    raise OSError(28, "No space left on device")
OSError: [Errno 28] No space left on device

The above exception was the direct cause of the following exception:

\x1b[36mray::ReadRange->MapBatches(f)()\x1b[39m (pid=21145, ip=192.0.2.2)
ray.exceptions.UserCodeException: UDF failed to process a data block.
Failed to apply UDF transform after 1/1 attempts (total backoff 0.0s).
To change retry attempts, backoff, or which errors are retried, configure `ray.data.DataContext.get_current()` \
(`retried_io_errors` for I/O; `retried_map_errors` and `max_map_retries` for any task) if you believe this to be transient."""

# An actor whose constructor raised (Ray Data's actor pool, or `eval implicit`'s actors).
ACTOR_TEXT = """The actor died because of an error raised in its creation task, \x1b[36mray::MapWorker(MapBatches(SamplerActor)).__init__()\x1b[39m (pid=20509, ip=192.0.2.2, actor_id=cfa7, repr=MapWorker)
  File "/work/main/.venv/lib/python3.11/site-packages/ray/data/_internal/execution/operators/actor_pool_map_operator.py", line 765, in _init_udf_with_retries
    raise last_exception
  File "/work/main/tpo_ray/eval/sample_job.py", line 110, in __init__
    raise ModelLoadError(f"{source}: a folder without model_index.json")
tpo_ray.models.loading.ModelLoadError: /models/sd15-typo: a folder without model_index.json"""


def _wrapped(name: str, text: str) -> Exception:
    return type(name, (Exception,), {})(text)


def test_a_ray_data_failure_shows_the_error_raised_in_the_udf_not_rays_retry_hint() -> None:
    name, lines = failure_lines(_wrapped("RayTaskError(UserCodeException)", RAY_DATA_TEXT))
    assert (name, lines) == ("OSError", ["[Errno 28] No space left on device"])


def test_an_actor_that_died_in_its_constructor_shows_the_constructors_error() -> None:
    name, lines = failure_lines(_wrapped("ActorDiedError", ACTOR_TEXT))
    assert (name, lines) == ("ModelLoadError", ["/models/sd15-typo: a folder without model_index.json"])


def test_an_error_of_our_own_is_shown_as_it_is() -> None:
    assert failure_lines(ValueError("eval.baseline='x' is not one of eval.models ['a']")) == (
        "ValueError", ["eval.baseline='x' is not one of eval.models ['a']"])


@pytest.mark.parametrize("make_bad", ["under_a_file", "in_proc"])
def test_an_output_folder_that_cannot_be_written_is_one_line_naming_the_field(make_bad: str, tmp_path: Path) -> None:
    if make_bad == "under_a_file":
        (tmp_path / "afile").write_text("")
        out = tmp_path / "afile" / "out"
    else:
        out = Path("/proc/tpo_ray_out")
    result = CliRunner().invoke(app, ["eval", "sample", f"output_dir={out}", "eval.max_prompts=1"])
    assert result.exit_code == 2, result.output
    assert f"error: ConfigError: output_dir={out} cannot be written" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
