"""`tpo-ray ... --help` reads cleanly: every option of every command says what it is, each command's line
in its group's help is one sentence on one line, and every config option is documented once."""

from __future__ import annotations

import re

import click
import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from tpo_ray.cli import app, options_help
from tpo_ray.config import LOSS_CONFIGS, TPOConfig, TrainConfig

runner = CliRunner()
ROOT = typer.main.get_command(app)


def commands(group: click.Command = ROOT, path: tuple[str, ...] = ()):
    """(path, command, its group) for every command and subgroup under `group`."""
    for name, cmd in getattr(group, "commands", {}).items():
        yield (*path, name), cmd, group
        yield from commands(cmd, (*path, name))


COMMANDS = list(commands())
IDS = [" ".join(path) for path, _, _ in COMMANDS]


def shown(text: str) -> str:
    """Help text as the terminal shows it (rich markup escapes and bold tags removed)."""
    return re.sub(r"\[/?bold\]", "", text).replace("\\[", "[")


@pytest.mark.parametrize(("path", "cmd", "group"), COMMANDS, ids=IDS)
def test_every_option_of_every_command_has_help(path, cmd, group) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for param in cmd.params:
        assert (getattr(param, "help", None) or "").strip(), f"{' '.join(path)}: {param.name} has no help"


@pytest.mark.parametrize(("path", "cmd", "group"), COMMANDS, ids=IDS)
def test_a_command_is_one_clean_sentence_in_its_group_help(path, cmd, group) -> None:
    short = cmd.short_help or (cmd.help or "").split("\n\n")[0]
    assert short and "\n" not in short, f"{path}: hard-wrapped first paragraph {short!r}"
    assert short.endswith(".") and ". " not in short.rstrip("."), f"{path}: not one sentence: {short!r}"
    listing = runner.invoke(app, [*path[:-1], "--help"], env={"COLUMNS": "200"}).output
    row = next(line for line in listing.splitlines() if re.match(rf"\W*{re.escape(path[-1])}\s", line))
    assert shown(short) in row, f"{path}: the short help is not on the command's own line:\n{listing}"


def test_the_top_level_help_has_no_hard_wrapped_paragraph() -> None:
    """Paragraphs are single lines that the terminal wraps: on a wide terminal none breaks early."""
    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "400"}).output
    for paragraph in (ROOT.help or "").split("\n\n"):
        assert "\n" not in paragraph and any(shown(paragraph) in line for line in listing.splitlines()), paragraph


def leaf_options(model_cls: type[BaseModel], prefix: str = ""):
    """(dotted key, field) of every config option, the per-loss ones as train.loss.<field>."""
    for name, field in model_cls.model_fields.items():
        if model_cls is TrainConfig and name == "loss":  # its `name` is described by train.loss itself
            yield f"{prefix}loss.name", field
            for cls in LOSS_CONFIGS.values():
                yield from ((k, f) for k, f in leaf_options(cls, f"{prefix}loss.") if k != f"{prefix}loss.name")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from leaf_options(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_every_config_option_has_a_one_line_description() -> None:
    missing = [key for key, field in leaf_options(TPOConfig)
               if not (field.description or "").strip() or "\n" in field.description]
    assert not missing, f"config options without a one-line description: {missing}"


def test_every_config_option_is_in_some_command_help_once_per_page() -> None:
    pages = [cmd.epilog for _, cmd, _ in COMMANDS if cmd.epilog]
    for page in pages:
        keys = re.findall(r"^\[bold\](\S+)\[/bold\] = ", page, flags=re.M)
        assert len(keys) == len(set(keys)) or all(k.startswith("train.loss.") for k in keys if keys.count(k) > 1)
    documented = set(re.findall(r"^\[bold\](\S+)\[/bold\] = ", "\n".join(pages), flags=re.M))
    assert {key for key, _ in leaf_options(TPOConfig)} <= documented


def test_config_option_lines_show_yaml_defaults_and_text_rich_would_swallow() -> None:
    text = options_help("data", "train")
    assert "[bold]train.compile[/bold] = false: " in text and "[bold]train.fused_optimizer[/bold] = null: " in text
    assert "(e.g. \\[content, attribute, contextual])" in text  # escaped: rich would read [content, ...] as a tag
    assert "[bold]train.loss.beta[/bold] = 5000.0 (dpo, tdpo, kto, tkto, rpo): " in text
    help_page = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    assert "(e.g. [content, attribute, contextual])" in help_page
