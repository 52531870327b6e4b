"""`eval implicit`'s summary from per-pair errors: accuracies, margins, the reference-relative figures and
the breakdowns, checked against values computed by hand."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tpo_ray.eval.implicit_job import ERROR_SCHEMA, example_interval, held_out_pairs, summarise, unet_source_kind


def table(rows: list[tuple]) -> pa.Table:
    names = ERROR_SCHEMA.names
    return pa.Table.from_pylist([dict(zip(names, r)) for r in rows], schema=ERROR_SCHEMA)


# model, example, principle, num_edits, timestep, draw, m_w, m_l
ROWS = [
    ("ref", "a", "content", 1, 100, 0, 1.0, 2.0),   # prefers c_w by 1
    ("ref", "b", "spatial", 2, 100, 0, 3.0, 1.0),   # prefers c_l by 2
    ("ref", "a", "content", 1, 500, 0, 2.0, 2.0),   # tie
    ("m", "b", "spatial", 2, 100, 0, 1.0, 2.0),     # order differs from the reference's: matched on keys
    ("m", "a", "content", 1, 100, 0, 1.0, 3.0),
    ("m", "a", "content", 1, 500, 0, 2.5, 2.0),
]


def test_figures_by_hand() -> None:
    out = summarise(table(ROWS), "ref")
    ref, m = out["ref"]["overall"], out["m"]["overall"]
    assert {k: ref[k] for k in ("n", "pairs", "acc", "margin")} == {
        "n": 3, "pairs": 2, "acc": pytest.approx((1 + 0 + 0.5) / 3), "margin": pytest.approx((1 - 2 + 0) / 3)}
    assert 0 <= ref["acc_interval"][0] <= ref["acc"] <= ref["acc_interval"][1] <= 1
    assert m["acc"] == pytest.approx(2 / 3) and m["margin"] == pytest.approx((1 + 2 - 0.5) / 3)
    # (m_l - r_l) - (m_w - r_w) per slot: a@100: (3-2)-(1-1)=1; b@100: (2-1)-(1-3)=3; a@500: (2-2)-(2.5-2)=-0.5
    assert m["implicit_acc"] == pytest.approx(2 / 3) and m["implicit_margin"] == pytest.approx((1 + 3 - 0.5) / 3)
    assert "implicit_acc" not in ref and "implicit_acc_interval" not in ref and "implicit_acc_interval" in m
    assert out["m"]["by_principle"]["spatial"] == {"n": 1, "pairs": 1, "acc": 1.0, "margin": 1.0,
                                                   "acc_interval": [1.0, 1.0], "implicit_acc": 1.0,
                                                   "implicit_margin": 3.0, "implicit_acc_interval": [1.0, 1.0]}
    assert out["m"]["by_timestep"]["500"]["acc"] == 0.0 and out["ref"]["by_timestep"]["500"]["acc"] == 0.5
    assert set(out["m"]["by_edits"]) == {"1", "2"} and out["m"]["by_edits"]["1"]["n"] == 2


def test_a_model_on_other_pairs_or_a_missing_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="other pairs"):
        summarise(table(ROWS[:-1]), "ref")
    with pytest.raises(ValueError, match="eval.baseline='base'"):
        summarise(table(ROWS), "base")


def test_model_sources(tmp_path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "unet_trainable.safetensors").write_bytes(b"")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    assert unet_source_kind(str(tmp_path / "ckpt")) == "checkpoint"
    assert unet_source_kind(str(tmp_path / "unet")) == "unet"
    assert unet_source_kind("tiny:sd15") == "pipeline" and unet_source_kind("s3://b/export") == "pipeline"
    assert unet_source_kind("org/model") == "pipeline"


def test_rows_without_a_principle_or_edit_count_form_the_none_group() -> None:
    rows = [("ref", "a", None, None, 100, 0, 1.0, 2.0), ("ref", "b", "content", 1, 100, 0, 2.0, 1.0)]
    out = summarise(table(rows), "ref")["ref"]
    assert out["by_principle"]["none"]["n"] == 1 and out["by_principle"]["content"]["n"] == 1
    assert list(out["by_edits"]) == ["1", "none"]  # "none" last
    assert sum(g["n"] for g in out["by_edits"].values()) == out["overall"]["n"]


def test_report_file_names_are_safe_and_distinct() -> None:
    from tpo_ray.eval.report import file_name

    assert file_name("tdpo") == "tdpo" and file_name("parti-00001") == "parti-00001"
    odd = [file_name(n) for n in ("a b", "a_b", "a#b", "../x", "50%")]
    assert len(set(odd)) == 5 and all("/" not in n and "#" not in n and "%" not in n and " " not in n for n in odd)


def test_intervals_resample_pairs_not_their_correlated_comparisons() -> None:
    """8 pairs x 20 comparisons (timesteps x draws), each pair won or lost on all of them: 8 pieces of
    evidence, not 160. The interval over pairs is as wide as a binomial of 8; treating comparisons as
    independent would make it about sqrt(20) times narrower."""
    import numpy as np

    outcome = np.array([1, 1, 1, 1, 1, -1, -1, -1], dtype=float)  # 5 of 8 pairs preferred
    margins = np.repeat(outcome, 20)
    examples = np.repeat([f"e{i}" for i in range(8)], 20)
    low, high = example_interval(margins, examples)
    assert low <= 5 / 8 <= high and high - low >= 0.45  # a bootstrap of 8 pairs: [3/8, 7/8]
    independent = example_interval(margins, np.arange(len(margins)).astype(str))
    assert independent[1] - independent[0] < (high - low) / 3
    assert example_interval(margins, examples) == [low, high]  # seeded: a rerun prints the same interval


def test_the_eval_reads_as_many_pairs_as_trainings_final_eval_whatever_the_worker_count() -> None:
    """Training's held-out eval reads positions [0, min(train.eval_max_pairs, rows)) split across its
    workers (`eval_share`); `eval implicit` with the pipeline's eval.max_pairs reads the same count."""
    from tpo_ray.config import config_from_dict
    from tpo_ray.pipeline import stage_configs
    from tpo_ray.train.worker import eval_share

    cfg = config_from_dict({"train": {"eval_max_pairs": 128}, "eval": {"scorers": []},
                            "pipeline": {"stages": ["sft", "preference", "eval"]}}, "test")
    evaluated = stage_configs(cfg)["eval"]
    assert evaluated.eval.max_pairs == evaluated.train.eval_max_pairs == 128
    for rows in (100, 128, 132):
        trained = min(evaluated.train.eval_max_pairs, rows)
        for world in (1, 2, 3, 4):
            read = sorted(i for rank in range(world) for batch in eval_share(trained, world, rank, 8) for i in batch)
            assert read == list(range(trained))
        assert held_out_pairs(evaluated.eval.max_pairs, rows) == trained
    assert held_out_pairs(None, 132) == 132  # uncapped reads every held-out pair (and run_implicit warns)
