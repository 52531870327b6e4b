"""The pipeline's console lines for the eval: the two held-out quantities under their own names with
their intervals, and win rates that print a cell without pairs instead of failing."""

from __future__ import annotations

from types import SimpleNamespace

from tests.helpers.eval_folder import entry
from tpo_ray.pipeline import eval_figure, win_rate_lines


def test_eval_figure_names_caption_and_implicit_reward_accuracy_with_intervals() -> None:
    summary = {"reference": "sft", "figures": {"sft": entry(0.5, implicit=False), "tdpo": entry(0.7)}}
    evaluated = {"implicit": SimpleNamespace(summary=summary), "sample": SimpleNamespace(sampled=4, skipped=2)}
    line = eval_figure(evaluated)
    assert line.startswith("caption acc (held-out): sft 0.50 [0.30, 0.70], tdpo 0.70 [0.50, 0.90]; ")
    assert "implicit reward acc vs sft: tdpo 0.50 [0.30, 0.70]; 6 images" in line
    assert "held-out acc:" not in line


def test_win_rate_lines_with_and_without_pairs() -> None:
    score = SimpleNamespace(baseline="sft", table={"tdpo": {
        "clip": {"rate": 0.625, "low": 0.5, "high": 0.75},
        "hpsv2": {"rate": None, "low": None, "high": None}}})
    assert win_rate_lines(score) == ["clip win rate of tdpo over sft 0.62 [0.50, 0.75]",
                                     "hpsv2 win rate of tdpo over sft - [-, -]"]
