"""Tests for core.scan: the scan statistics, the prefix search and the intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from core.scan import (
    berk_jones,
    MAX_EXACT_DEVICES,
    dyadic_intervals,
    exact_connected_scan,
    exhaustive_scan,
    higher_criticism,
    prefix_scan,
)

ALPHAS = (1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5)


def _kl(share: float, alpha: float) -> float:
    """Bernoulli Kullback-Leibler divergence KL(share || alpha), in nats."""
    first = share * math.log(share / alpha) if share > 0 else 0.0
    second = (1 - share) * math.log((1 - share) / (1 - alpha)) if share < 1 else 0.0
    return first + second


def test_berk_jones_hand_computed():
    expected = 4 * (0.75 * math.log(0.75 / 0.01) + 0.25 * math.log(0.25 / 0.99))

    value = float(berk_jones(3, 4, 0.01))

    assert value == pytest.approx(expected, rel=1e-12)
    assert value == pytest.approx(4 * _kl(0.75, 0.01), rel=1e-12)


def test_berk_jones_all_significant():
    # N = n leaves only the first term: n * log(1 / alpha).
    value = float(berk_jones(5, 5, 1e-3))

    assert value == pytest.approx(5 * math.log(1e3), rel=1e-12)


def test_berk_jones_broadcasts_over_arrays():
    counts = np.array([[3, 1], [0, 10]])
    totals = np.array([[4, 2], [7, 10]])

    values = berk_jones(counts, totals, 0.05)

    assert values.shape == (2, 2)
    assert values[0, 0] == pytest.approx(4 * _kl(0.75, 0.05), rel=1e-12)
    assert values[0, 1] == pytest.approx(2 * _kl(0.5, 0.05), rel=1e-12)
    assert values[1, 0] == 0.0
    assert values[1, 1] == pytest.approx(10 * math.log(1 / 0.05), rel=1e-12)


def test_higher_criticism_hand_computed():
    expected = (3 - 4 * 0.01) / math.sqrt(4 * 0.01 * 0.99)

    value = float(higher_criticism(3, 4, 0.01))

    assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("statistic", [berk_jones, higher_criticism])
@pytest.mark.parametrize(
    ("count", "total", "alpha"),
    [(1, 10, 0.1), (0, 10, 0.1), (1, 100, 0.05), (2, 4, 0.5), (0, 0, 0.01)],
)
def test_statistic_zero_at_or_below_alpha(statistic, count, total, alpha):
    assert float(statistic(count, total, alpha)) == 0.0


@pytest.mark.parametrize("statistic", [berk_jones, higher_criticism])
def test_statistic_positive_above_alpha(statistic):
    assert float(statistic(2, 10, 0.1)) > 0.0


def _random_counts(
    rng: np.random.Generator, num_intervals: int, num_devices: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts [I, N, A] and totals [I, N] from drawn p-values, so counts grow with
    alpha and never exceed the totals."""
    counts = np.zeros((num_intervals, num_devices, len(ALPHAS)))
    totals = np.zeros((num_intervals, num_devices))
    for interval in range(num_intervals):
        for device in range(num_devices):
            total = int(rng.integers(0, 15))
            # The exponent 1 / power pulls p-values towards 0: strongly at 0.05,
            # mildly at 0.3, and not at all at 1 (uniform).
            power = rng.choice([0.05, 0.3, 1.0])
            p_values = rng.random(total) ** (1 / power)
            totals[interval, device] = total
            counts[interval, device] = [(p_values <= alpha).sum() for alpha in ALPHAS]
    return counts, totals


@pytest.mark.parametrize("statistic", ["bj", "hc"])
def test_prefix_scan_equals_exhaustive_scan(statistic):
    rng = np.random.default_rng(20240611)
    for graph in range(50):
        num_devices = int(rng.integers(1, 17))
        counts, totals = _random_counts(rng, 3, num_devices)

        best, size, order = prefix_scan(counts, totals, ALPHAS, statistic)

        assert best.shape == (3, len(ALPHAS))
        assert order.shape[:2] == (3, len(ALPHAS))
        assert order.shape[2] <= num_devices
        for interval in range(3):
            expected, _ = exhaustive_scan(counts[interval], totals[interval], ALPHAS,
                                          statistic)
            np.testing.assert_allclose(
                best[interval], expected, rtol=1e-12, atol=0,
                err_msg=f"graph {graph}, {num_devices} devices, interval {interval}",
            )


@pytest.mark.parametrize("statistic", ["bj", "hc"])
def test_prefix_scan_size_reproduces_best(statistic):
    rng = np.random.default_rng(7)
    function = {"bj": berk_jones, "hc": higher_criticism}[statistic]
    counts, totals = _random_counts(rng, 20, 8)

    best, size, order = prefix_scan(counts, totals, ALPHAS, statistic)

    for interval in range(20):
        for a, alpha in enumerate(ALPHAS):
            chosen = order[interval, a, : size[interval, a]]
            value = float(function(counts[interval, chosen, a].sum(),
                                   totals[interval, chosen].sum(), alpha))
            assert value == pytest.approx(best[interval, a], rel=1e-12, abs=0)
            assert (size[interval, a] == 0) == (best[interval, a] == 0)


def test_exhaustive_scan_finds_planted_subset():
    counts = np.array([[0.0], [9.0], [0.0], [8.0]])
    totals = np.array([10.0, 10.0, 10.0, 10.0])

    best, subsets = exhaustive_scan(counts, totals, (0.01,), "bj")

    assert subsets == [(1, 3)]
    assert best[0] == pytest.approx(20 * _kl(17 / 20, 0.01), rel=1e-12)


def test_dyadic_intervals_lists_half_shifts():
    expected = (
        [[s, s + 1] for s in range(8)]
        + [[s, s + 2] for s in range(7)]
        + [[0, 4], [2, 6], [4, 8]]
    )

    intervals = dyadic_intervals(0, 8, 4)

    assert intervals.dtype == np.int64
    assert intervals.shape == (18, 2)
    assert intervals.tolist() == expected


def test_dyadic_intervals_offset_range():
    intervals = dyadic_intervals(10, 14, 2)

    assert intervals.tolist() == [
        [10, 11], [11, 12], [12, 13], [13, 14], [10, 12], [11, 13], [12, 14],
    ]


def test_dyadic_intervals_stay_inside_range():
    intervals = dyadic_intervals(3, 40, 64)
    lengths = intervals[:, 1] - intervals[:, 0]

    assert intervals[:, 0].min() == 3
    assert intervals[:, 1].max() <= 40
    assert sorted(set(lengths.tolist())) == [1, 2, 4, 8, 16, 32]


def _brute_connected(counts, totals, alpha, linked):
    """Best connected subset by trying every subset and a breadth-first search."""
    num_devices = len(counts)
    best, chosen = 0.0, ()
    for size in range(1, num_devices + 1):
        for subset in itertools.combinations(range(num_devices), size):
            seen, stack = {subset[0]}, [subset[0]]
            while stack:
                node = stack.pop()
                for other in subset:
                    if other not in seen and linked[node, other]:
                        seen.add(other)
                        stack.append(other)
            if len(seen) != size:
                continue
            value = float(berk_jones(counts[list(subset)].sum(),
                                     totals[list(subset)].sum(), alpha))
            if value > best:
                best, chosen = value, subset
    return best, chosen


def test_exact_connected_scan_equals_brute_force():
    rng = np.random.default_rng(5)
    for graph in range(30):
        num_devices = int(rng.integers(1, 10))
        upper = np.triu(rng.random((num_devices, num_devices)) < 0.3, 1)
        linked = upper | upper.T
        counts, totals = _random_counts(rng, 1, num_devices)
        for a, alpha in enumerate(ALPHAS):
            expected, _ = _brute_connected(counts[0, :, a], totals[0], alpha, linked)

            value, subset = exact_connected_scan(counts[0, :, a], totals[0], alpha, linked)

            assert value == pytest.approx(expected, rel=1e-12, abs=1e-12), (graph, a)
            chosen = list(subset)
            if chosen:
                assert value == pytest.approx(float(berk_jones(
                    counts[0, chosen, a].sum(), totals[0, chosen].sum(), alpha)), rel=1e-12)


def test_exact_connected_scan_bridges_quiet_centre():
    # A star whose centre 0 has no small p-values and whose leaves 1-3 do; device 4
    # is as abnormal as a leaf but linked to nothing.
    linked = np.zeros((5, 5), dtype=bool)
    for leaf in (1, 2, 3):
        linked[0, leaf] = linked[leaf, 0] = True
    counts = np.array([0.0, 9.0, 9.0, 9.0, 9.0])
    totals = np.full(5, 10.0)

    value, subset = exact_connected_scan(counts, totals, 0.01, linked)

    assert subset == (0, 1, 2, 3)
    assert value == pytest.approx(float(berk_jones(27, 40, 0.01)), rel=1e-12)


def test_exact_connected_scan_rejects_large_graph():
    size = MAX_EXACT_DEVICES + 1
    with pytest.raises(ValueError, match=f"got {size} devices"):
        exact_connected_scan(np.zeros(size), np.ones(size), 0.01,
                             np.zeros((size, size), dtype=bool))


def test_berk_jones_rounded_weighted_counts():
    # Sums of weights can leave a count 1e-16 above its total, or below 0.
    total = np.array([0.3, 0.3, 0.0])
    count = np.array([0.3 + 1e-16, -1e-17, 1e-17])

    values = berk_jones(count, total, 0.01)

    assert np.isfinite(values).all()
    assert values[0] == pytest.approx(berk_jones(np.array([0.3]), np.array([0.3]), 0.01)[0])
    assert values[1] == 0.0
    assert values[2] == 0.0
