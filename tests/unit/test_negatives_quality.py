"""The negatives job's report figures (stats.json): sums over shards and rates, computed by hand."""

from __future__ import annotations

import pytest

from tpo_ray.negatives.quality import aggregate_stats, rate


def shard(rows_in: int, accepted: int, triplets: int, candidates: int, **counters) -> dict:
    return {"rows_in": rows_in, "rows_accepted": accepted, "rows_quarantined": rows_in - accepted,
            "triplets": triplets, "fallbacks": 0, "candidates": candidates, **counters}


def test_figures_are_sums_over_shards_and_rates_of_the_sums() -> None:
    per_shard = {
        0: shard(10, 9, 9, 12, rejected={"synonym": 2, "no_editable_term": 1},
                 principles={"content": 6, "attribute": 3},
                 candidates_by_principle={"content": 8, "attribute": 4},
                 valid_by_principle={"content": 6, "attribute": 3}),
        1: shard(6, 3, 3, 8, rejected={"synonym": 1, "principle_mismatch": 2, "duplicate_negative": 2},
                 principles={"spatial": 3},
                 candidates_by_principle={"spatial": 4, "attribute": 2, "contextual": 2},
                 valid_by_principle={"spatial": 3}),
        2: shard(0, 0, 0, 0),  # an empty shard: no counters at all
    }
    stats = aggregate_stats(per_shard)
    assert (stats["rows_in"], stats["rows_accepted"], stats["rows_quarantined"]) == (16, 12, 4)
    assert (stats["triplets"], stats["candidates"]) == (12, 20)
    assert stats["rejected"] == {"duplicate_negative": 2, "no_editable_term": 1, "principle_mismatch": 2, "synonym": 3}
    assert stats["editors"] == {} and stats["num_edits"] == {}
    assert stats["acceptance_rate"] == 0.75  # 12 / 16 captions, not the mean of 0.9, 0.5 and an empty shard
    # valid / candidates per principle: attribute 3 / (4 + 2); contextual, never valid, scores 0
    assert stats["acceptance_by_principle"] == {"attribute": 0.5, "contextual": 0.0, "content": 0.75, "spatial": 0.75}
    assert stats["principle_share"] == {"attribute": 0.25, "content": 0.5, "spatial": 0.25}
    # rejections per candidate: 3 synonyms of 20 candidates
    assert stats["rejection_rate"] == {"duplicate_negative": 0.1, "no_editable_term": 0.05, "principle_mismatch": 0.1,
                                       "synonym": 0.15}


def test_rejections_of_rows_no_editor_saw_are_rated_per_row() -> None:
    """Rows quarantined before the editor (a bad caption) have no candidate: the rate's denominator is the
    larger of candidates and rows, so it stays a share (at most 1)."""
    stats = aggregate_stats({0: shard(4, 0, 0, 0, rejected={"empty_caption": 4})})
    assert stats["rejection_rate"] == {"empty_caption": 1.0}
    assert stats["acceptance_rate"] == 0.0 and stats["acceptance_by_principle"] == {}


@pytest.mark.parametrize(("part", "whole", "expected"), [(1, 3, 0.3333), (2, 3, 0.6667), (0, 5, 0.0), (3, 0, 0.0)])
def test_rate_rounds_to_four_places_and_is_zero_without_a_whole(part: int, whole: int, expected: float) -> None:
    assert rate(part, whole) == expected
