"""Win rates, ties, bootstrap intervals over prompts, the paper's table and the reward-vs-preference fit:
hand-computed values."""

from __future__ import annotations

import math

import pytest

from tpo_ray.eval.winrate import linear_fit, summarize, win_rate, win_rate_table


def test_wins_losses_and_ties_counted_by_hand() -> None:
    a, b = [3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0]  # A wins, B wins, tie, A wins
    half = win_rate(a, b)
    assert (half.wins, half.losses, half.ties) == (2, 1, 1)
    assert half.rate == pytest.approx(2.5 / 4) and half.mean_a == 2.0 and half.mean_b == 1.25
    assert win_rate(a, b, ties="drop").rate == pytest.approx(2 / 3)
    assert half.low <= half.rate <= half.high


def test_a_clean_sweep_has_a_degenerate_interval_and_the_reverse_is_its_complement() -> None:
    sweep = win_rate([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    assert (sweep.rate, sweep.low, sweep.high) == (1.0, 1.0, 1.0)
    forward, reverse = win_rate([1, 5, 2, 2], [2, 3, 2, 0]), win_rate([2, 3, 2, 0], [1, 5, 2, 2])
    assert forward.rate + reverse.rate == pytest.approx(1.0)


def test_the_bootstrap_resamples_prompts_not_images() -> None:
    a, b = [1.0] * 4 + [0.0] * 4, [0.0] * 4 + [1.0] * 4  # prompt p: 4 wins (4 seeds), prompt q: 4 losses
    grouped = win_rate(a, b, groups=["p"] * 4 + ["q"] * 4, resamples=4000, seed=1)
    assert grouped.rate == 0.5
    # two prompts: a resample is pp, pq, qp or qq -> rates 1, 0.5, 0.5, 0: the 95% interval spans [0, 1]
    assert (grouped.low, grouped.high) == (0.0, 1.0)
    # eight independent images give a narrower interval (all 8 drawn from one side: p = 2/256 < 5%)
    independent = win_rate(a, b, resamples=4000, seed=1)
    assert independent.low > 0.0 and independent.high < 1.0


def test_bad_inputs_fail_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="ties must be"):
        win_rate([1.0], [0.0], ties="ignore")
    with pytest.raises(ValueError, match="3 groups for 2 samples"):
        win_rate([1.0, 2.0], [0.0, 0.0], groups=["a", "b", "c"])


def test_the_table_has_a_row_per_model_and_a_cell_per_scorer_against_the_baseline() -> None:
    scores = {"base": {"clip": [1.0, 1.0], "pick": [1.0, 1.0]},
              "sft": {"clip": [2.0, 0.0], "pick": [1.0, 1.0]},
              "tdpo": {"clip": [2.0, 2.0], "pick": [0.0, 2.0]}}
    table = win_rate_table(scores, "base", resamples=200)
    assert list(table) == ["sft", "tdpo"] and list(table["tdpo"]) == ["clip", "pick"]
    assert table["sft"]["clip"].rate == 0.5 and table["sft"]["pick"].rate == 0.5  # a win and a loss; two ties
    assert table["tdpo"]["clip"].rate == 1.0 and table["tdpo"]["pick"].mean_a == 1.0
    with pytest.raises(ValueError, match="baseline 'sd' is not among"):
        win_rate_table(scores, "sd")
    with pytest.raises(ValueError, match="has no scores for \\['pick'\\]"):
        win_rate_table({**scores, "kto": {"clip": [1.0, 1.0]}}, "base")


def test_linear_fit_of_a_reward_against_implicit_preference() -> None:
    up = linear_fit([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    assert (up.slope, up.intercept, up.r, up.n) == (pytest.approx(2.0), pytest.approx(1.0), pytest.approx(1.0), 3)
    assert linear_fit([0.0, 1.0, 2.0], [5.0, 3.0, 1.0]).r == pytest.approx(-1.0)
    noisy = linear_fit([0.50, 0.55, 0.60, 0.65], [0.20, 0.22, 0.21, 0.25])
    assert 0 < noisy.r < 1 and noisy.slope > 0
    with pytest.raises(ValueError, match="every x is the same"):
        linear_fit([1.0, 1.0], [0.0, 1.0])
    flat = linear_fit([0.5, 0.6, 0.7], [0.3, 0.3, 0.3])  # a constant reward: r is undefined, not 0
    assert flat.slope == pytest.approx(0.0) and math.isnan(flat.r)


def test_scores_equal_up_to_float_noise_tie() -> None:
    """One image scored in batches of other sizes differs in the last bits: a tie, not a preference."""
    a = [-3.6137100, 10.0, 0.5]
    b = [-3.6137101, 10.0 + 2e-5, 0.5 - 1e-3]  # 1e-7 apart (tie), 2e-6 relative (a loss), a clear loss for b
    result = win_rate(a, b)
    assert (result.wins, result.losses, result.ties) == (1, 1, 1)


def test_an_all_tie_comparison_is_not_certainty() -> None:
    same = win_rate([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], groups=["p", "p", "q", "q"], resamples=4000)
    assert (same.rate, same.ties, same.n, same.prompts) == (0.5, 4, 4, 2)
    # ties drawn as coin flips: four flips over two prompts, all heads (or tails) 1/16 of the time > 2.5%
    assert (same.low, same.high) == (0.0, 1.0)
    many = win_rate([1.0] * 200, [1.0] * 200, resamples=4000)  # many ties: a fair coin's interval, narrower
    assert 0.4 < many.low < 0.5 < many.high < 0.6
    dropped = win_rate([1.0, 2.0], [1.0, 2.0], ties="drop")
    assert math.isnan(dropped.rate) and math.isnan(dropped.low) and math.isnan(dropped.high) and dropped.ties == 2


def test_summary_means_are_over_the_same_pairs_as_the_win_rates_and_split_by_category() -> None:
    rows = [{"model": m, "prompt_id": p, "k": k, "scorer": s, "score": v}
            for m, p, k, s, v in [("base", "a", 0, "clip", 1.0), ("base", "b", 0, "clip", 1.0),
                                  ("base", "c", 0, "clip", 100.0),  # tdpo has no image of prompt c: left out
                                  ("tdpo", "a", 0, "clip", 2.0), ("tdpo", "b", 0, "clip", 0.0)]]
    summary = summarize(rows, "base", {"a": "color", "b": "shape", "c": "color"}, resamples=200)
    assert summary["means"] == {"base": {"clip": 1.0}, "tdpo": {"clip": 1.0}}
    cell = summary["models"]["tdpo"]["clip"]
    assert (cell["mean_a"], cell["mean_b"], cell["wins"], cell["losses"], cell["n"]) == (1.0, 1.0, 1, 1, 2)
    assert (summary["pairs"], summary["prompts"]) == (2, 2)
    assert summary["by_category"]["color"]["tdpo"]["clip"]["rate"] == 1.0
    assert summary["by_category"]["shape"]["tdpo"]["clip"]["rate"] == 0.0
    assert summary["by_category"]["color"]["tdpo"]["clip"]["n"] == 1
    dropped = summarize(rows[:2] + rows[3:], "base", None, ties="drop", resamples=50)
    assert dropped["by_category"] == {} and dropped["models"]["tdpo"]["clip"]["rate"] == 0.5
    with pytest.raises(ValueError, match="eval.baseline='sd' has no scores"):
        summarize(rows, "sd")
