"""A DeepSpeed precision the machine's accelerator lacks is refused before the engine is built,
naming the config field (DeepSpeed's own message names neither the field nor a way out)."""

from __future__ import annotations

import pytest
import torch

from tpo_ray.train.backend import require_supported_precision


class _Accelerator:
    def __init__(self, dtypes: list[torch.dtype]) -> None:
        self.dtypes = dtypes

    def supported_dtypes(self) -> list[torch.dtype]:
        return self.dtypes

    def device_name(self) -> str:
        return "cpu"


@pytest.fixture
def accelerator(monkeypatch: pytest.MonkeyPatch):
    def use(dtypes: list[torch.dtype]) -> None:
        monkeypatch.setattr("deepspeed.accelerator.get_accelerator", lambda: _Accelerator(dtypes))
    return use


def test_fp16_on_an_accelerator_without_it_names_the_field(accelerator) -> None:
    accelerator([torch.float32, torch.bfloat16])
    with pytest.raises(ValueError, match=r"train.mixed_precision='fp16' is not supported .* use 'bf16' or 'no'"):
        require_supported_precision("fp16")
    require_supported_precision("bf16")
    require_supported_precision("no")


def test_fp16_is_accepted_where_the_accelerator_has_it(accelerator) -> None:
    accelerator([torch.float32, torch.bfloat16, torch.float16])
    require_supported_precision("fp16")


def test_deepspeed_older_than_the_floor_is_refused_and_pyproject_pins_the_same_floor() -> None:
    """Older DeepSpeed applies NaN steps under some ZeRO stages and precisions (the weights become NaN)."""
    import tomllib
    from pathlib import Path

    from tpo_ray.train.backend import DEEPSPEED_FLOOR, require_deepspeed_version

    with pytest.raises(RuntimeError, match=r"needs deepspeed>=0.19.8, found 0.17.0"):
        require_deepspeed_version("0.17.0")
    require_deepspeed_version(DEEPSPEED_FLOOR)
    require_deepspeed_version("0.20.1")
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert f"deepspeed>={DEEPSPEED_FLOOR},<1" in project["dependencies"]
