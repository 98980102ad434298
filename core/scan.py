"""Scan statistics and the subset search over devices, for one set of intervals.

For a fixed significance level alpha and interval, a device d contributes n_d (the
number of its elements in the interval) and N_d (how many of them have a p-value at
most alpha). A set S of devices scores F(N_S, n_S, alpha) with N_S and n_S the sums
over S. For Berk-Jones and higher criticism the best S is one of the prefixes of the
devices sorted by N_d / n_d (linear-time subset scanning: McFowland, Speakman and
Neill, "Fast generalized subset scan for anomalous pattern detection", JMLR 2013), so
the search costs N log N instead of 2^N. `exhaustive_scan` is the reference that
tries every subset, for tests on small graphs.
"""

from __future__ import annotations

import itertools

import numpy as np


def berk_jones(count: np.ndarray, total: np.ndarray, alpha: float) -> np.ndarray:
    """Berk-Jones statistic n * KL(N/n, alpha) when N/n > alpha, else 0.

    Higher is more anomalous. Shapes broadcast; n = 0 scores 0.
    """
    count = np.asarray(count, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, count / np.maximum(total, 1e-300), 0.0)
        first = np.where(share > 0, share * np.log(np.maximum(share, 1e-300) / alpha), 0.0)
        rest = 1.0 - share
        second = np.where(rest > 0, rest * np.log(np.maximum(rest, 1e-300) / (1 - alpha)), 0.0)
        value = total * (first + second)
    return np.where(share > alpha, value, 0.0)


def higher_criticism(count: np.ndarray, total: np.ndarray, alpha: float) -> np.ndarray:
    """Higher criticism (N - n alpha) / sqrt(n alpha (1 - alpha)), 0 when not positive.

    Higher is more anomalous. Shapes broadcast; n = 0 scores 0.
    """
    count = np.asarray(count, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (count - total * alpha) / np.sqrt(np.maximum(total, 1e-300) * alpha * (1 - alpha))
    return np.where((total > 0) & (value > 0), value, 0.0)


STATISTICS = {"bj": berk_jones, "hc": higher_criticism}


def prefix_scan(
    counts: np.ndarray, totals: np.ndarray, alphas: tuple[float, ...], statistic: str = "bj",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best device subset per interval and alpha, by linear-time subset scanning.

    Args:
        counts: shape [I, N, A], elements with p-value <= alphas[a] per device.
        totals: shape [I, N], elements per device.
        alphas: the A levels.
        statistic: "bj" or "hc".

    Returns:
        best: shape [I, A], the best score per interval and alpha.
        size: shape [I, A], how many devices the best prefix holds.
        order: shape [I, A, N], devices by decreasing priority N_d / n_d.
    """
    function = STATISTICS[statistic]
    num_intervals, num_devices, num_alphas = counts.shape
    best = np.zeros((num_intervals, num_alphas))
    size = np.zeros((num_intervals, num_alphas), dtype=np.int64)
    order = np.zeros((num_intervals, num_alphas, num_devices), dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for a, alpha in enumerate(alphas):
            priority = np.where(totals > 0, counts[..., a] / np.maximum(totals, 1), -1.0)
            ranked = np.argsort(-priority, axis=1, kind="stable")
            cumulative_count = np.cumsum(np.take_along_axis(counts[..., a], ranked, 1), 1)
            cumulative_total = np.cumsum(np.take_along_axis(totals, ranked, 1), 1)
            scores = function(cumulative_count, cumulative_total, alpha)
            k = scores.argmax(axis=1)
            best[:, a] = scores[np.arange(num_intervals), k]
            size[:, a] = np.where(best[:, a] > 0, k + 1, 0)
            order[:, a, :] = ranked
    return best, size, order


def exhaustive_scan(
    counts: np.ndarray, totals: np.ndarray, alphas: tuple[float, ...], statistic: str = "bj",
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Best score per alpha over every non-empty subset (2^N; for N up to about 20).

    Args:
        counts: shape [N, A]; totals: shape [N].

    Returns:
        best: shape [A]; subsets: the best subset per alpha.
    """
    function = STATISTICS[statistic]
    num_devices = counts.shape[0]
    masks = np.array(list(itertools.product((0, 1), repeat=num_devices)), dtype=np.float64)[1:]
    sums = masks @ counts
    sizes = masks @ totals
    best = np.zeros(len(alphas))
    subsets: list[tuple[int, ...]] = []
    for a, alpha in enumerate(alphas):
        scores = function(sums[:, a], sizes, alpha)
        pick = int(scores.argmax())
        best[a] = scores[pick]
        subsets.append(tuple(np.flatnonzero(masks[pick]).tolist()))
    return best, subsets


def dyadic_intervals(start: int, stop: int, max_length: int) -> np.ndarray:
    """Intervals [s, e) of length 1, 2, 4, ... up to `max_length` inside [start, stop),
    starting at multiples of their length and shifted by half their length.

    Returns:
        shape [I, 2], int64.
    """
    result = []
    length = 1
    span = stop - start
    while length <= min(max_length, max(span, 1)):
        step = max(length // 2, 1)
        starts = np.arange(start, stop - length + 1, step)
        result.append(np.stack([starts, starts + length], axis=1))
        length *= 2
    if not result:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(result).astype(np.int64)
