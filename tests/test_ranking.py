"""Tests for the sensor ranking metrics of core.evaluate: HitRate@P% and NDCG@P%."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.evaluate import hit_rate, ndcg, tie_groups, top_count


@pytest.mark.parametrize(("percent", "relevant", "expected"), [
    (100, 3, 3), (150, 3, 5), (150, 1, 2), (150, 2, 3), (150, 5, 8), (150, 4, 6),
    (100, 1, 1), (150.0, 3, 5),
])
def test_top_count_rounds_half_up(percent, relevant, expected):
    assert top_count(percent, relevant) == expected


def test_hit_rate_counts_top_places():
    priority = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    tiebreak = np.zeros(6)
    relevant = np.array([True, False, False, False, True, True])
    assert hit_rate(priority, tiebreak, relevant, 100) == pytest.approx(1 / 3)
    # k = 3 at 150% reads the top 5 (4.5 rounds up), which hold items 0 and 4.
    assert hit_rate(priority, tiebreak, relevant, 150) == pytest.approx(2 / 3)


def test_hit_rate_cut_capped_at_items():
    relevant = np.array([True, True, True])
    assert hit_rate(np.array([0.0, 1.0, 2.0]), np.zeros(3), relevant, 150) == 1.0


def test_hit_rate_tiebreak_decides_equal_priority():
    priority = np.array([1.0, 1.0, 0.0])
    tiebreak = np.array([0.2, 0.9, 0.0])
    assert hit_rate(priority, tiebreak, np.array([True, False, False]), 100) == 0.0
    assert hit_rate(priority, tiebreak, np.array([False, True, False]), 100) == 1.0


def test_hit_rate_full_tie_ignores_column_order():
    priority = np.ones(4)
    tiebreak = np.ones(4)
    for position in range(4):
        relevant = np.zeros(4, dtype=bool)
        relevant[position] = True
        # One place for one of four tied items: an expected 1/4 of a hit.
        assert hit_rate(priority, tiebreak, relevant, 100) == pytest.approx(0.25)
        assert hit_rate(priority, tiebreak, relevant, 150) == pytest.approx(0.5)


def test_hit_rate_tie_straddling_cut():
    # Item 0 leads, items 1-3 tie; k = 2 gives 3 places at 150%, 2 of them for
    # the tie, which contains one relevant item: 1 + 2/3 hits of 2.
    priority = np.array([3.0, 1.0, 1.0, 1.0, 0.0])
    tiebreak = np.zeros(5)
    relevant = np.array([True, False, True, False, False])
    assert hit_rate(priority, tiebreak, relevant, 150) == pytest.approx((1 + 2 / 3) / 2)
    assert hit_rate(priority, tiebreak, relevant, 100) == pytest.approx((1 + 1 / 3) / 2)


def test_hit_rate_needs_relevant_item():
    with pytest.raises(ValueError, match="at least one relevant"):
        hit_rate(np.ones(3), np.ones(3), np.zeros(3, dtype=bool), 100)


def test_ndcg_binary_gains():
    priority = np.array([3.0, 2.0, 1.0])
    relevant = np.array([False, True, True])
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg(priority, np.zeros(3), relevant) == pytest.approx(expected)
    assert ndcg(-priority, np.zeros(3), relevant) == pytest.approx(1.0)


def test_ndcg_full_tie_spreads_gain():
    relevant = np.array([True, False])
    # One relevant item among two tied ones, one place: half a gain at place 1.
    assert ndcg(np.ones(2), np.ones(2), relevant) == pytest.approx(0.5)


def test_tie_groups_best_first():
    groups = tie_groups(np.array([1.0, 2.0, 1.0, 1.0]), np.array([0.5, 0.0, 0.5, 0.7]))
    assert [sorted(g.tolist()) for g in groups] == [[1], [3], [0, 2]]
