"""The report's numbers: no negative zero, intervals, the fit of a reward against caption accuracy (r
undefined, too few models, Fisher's z interval) and the trial labels of the training curves, by hand."""

from __future__ import annotations

import math

import pytest

from tpo_ray.eval.report_curves import group_runs, trial_labels
from tpo_ray.eval.report_format import MIN_FIT_MODELS, fisher_interval, fit_summary, interval, number, signed


def test_no_negative_zero_and_margins_keep_their_digits() -> None:
    assert number(-1e-7) == "0.000" and number(-0.0004, 3) == "0.000" and number(-0.0006) == "-0.001"
    assert signed(-1e-7) == "-1e-07" and signed(0.0) == "0" and signed(-0.0) == "0" and signed(0.01234) == "+0.0123"
    assert number(float("nan")) == "-" and number(None) == "-" and signed(float("nan")) == "-"
    assert interval([0.1, 0.25]) == "[0.100, 0.250]" and interval(None) == "[no interval]"


def test_a_constant_reward_leaves_r_undefined_not_zero() -> None:
    fit = fit_summary([0.5, 0.6, 0.7, 0.8], [2.0, 2.0, 2.0, 2.0])
    assert fit.r is None and "r undefined" in fit.text and "r = 0.000" not in fit.text
    assert fit.slope == pytest.approx(0.0, abs=1e-12)


def test_too_few_models_for_a_fit() -> None:
    for n in range(MIN_FIT_MODELS):
        fit = fit_summary([0.1 * i for i in range(n)], [float(i) for i in range(n)])
        assert fit.r is None and fit.slope is None and "too few models for a fit" in fit.text
    same_x = fit_summary([0.5] * 5, [1, 2, 3, 4, 5])
    assert same_x.r is None and "r undefined" in same_x.text


def test_r_with_its_fisher_interval() -> None:
    xs, ys = [0.50, 0.55, 0.60, 0.65, 0.70, 0.75], [1.0, 1.3, 1.1, 1.6, 1.5, 1.9]
    fit = fit_summary(xs, ys)
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    r = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(
        sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    assert fit.r == pytest.approx(r)
    z, half = math.atanh(r), 1.96 / math.sqrt(n - 3)
    assert fit.r_interval == pytest.approx((math.tanh(z - half), math.tanh(z + half)))
    assert fit.r_interval[0] < fit.r < fit.r_interval[1] and "Fisher z" in fit.text
    with pytest.raises(ValueError, match="more than 3"):
        fisher_interval(0.5, 3)


def test_curves_one_group_per_stage_and_trials_named_by_their_values() -> None:
    runs = [
        {"name": "sft-1", "tags": {"tpo_ray.stage": "sft"}, "params": {}, "metrics": {"train/loss": [(1, 0.5)]}},
        {"name": "tdpo-1", "tags": {"tpo_ray.stage": "tdpo"}, "params": {}, "metrics": {"train/loss": [(1, 0.7)]}},
        *({"name": f"trial-{i}", "tags": {"tpo_ray.stage": "tdpo", "tpo_ray.sweep": "sw"},
           "params": {"train.loss.beta": beta, "train.loss.tau": "None", "train.lr": "1e-05"},
           "metrics": {"train/loss": [(1, 0.6)]}} for i, beta in enumerate(["1000.0", "2500.5"])),
    ]
    groups = group_runs(runs, ["train.loss.beta", "train.loss.tau"])
    assert list(groups) == ["SFT", "TDPO", "Tune sw (TDPO)"]
    assert [label for label, _ in groups["Tune sw (TDPO)"]] == ["trial-0: beta=1000", "trial-1: beta=2500"]
    # nothing varies: every search-space key is shown
    assert trial_labels([("t", {"train.loss.beta": "5.0"})], ["train.loss.beta"]) == {"t": "t: beta=5"}
