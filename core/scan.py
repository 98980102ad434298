"""Scan statistics and the subset search over devices, for one set of intervals.

For a fixed significance level alpha and interval, a device d contributes n_d (the
number of its elements in the interval) and N_d (how many of them have a p-value at
most alpha). A set S of devices scores F(N_S, n_S, alpha) with N_S and n_S the sums
over S. For Berk-Jones and higher criticism the best S is one of the prefixes of the
devices sorted by N_d / n_d (linear-time subset scanning: McFowland, Speakman and
Neill, "Fast generalized subset scan for anomalous pattern detection", JMLR 2013), so
the search costs N log N instead of 2^N. `exhaustive_scan` is the reference that
tries every subset, and `exact_connected_scan` the one that tries every connected
subset, for tests and benchmarks on small graphs.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import xlogy


def berk_jones(count: np.ndarray, total: np.ndarray, alpha: float) -> np.ndarray:
    """Berk-Jones statistic n * KL(N/n, alpha) when N/n > alpha, else 0.

    Higher is more anomalous. Shapes broadcast; n = 0 scores 0.
    """
    # Weighted counts (`core.localize.device_weights`) are sums of floats, so a
    # count can exceed its total, or fall below 0, by a rounding error.
    total = np.maximum(np.asarray(total, dtype=np.float64), 0.0)
    count = np.clip(np.asarray(count, dtype=np.float64), 0.0, total)
    rest = total - count
    # n KL(N/n, alpha) = N log(N / (n alpha)) + (n - N) log((n - N) / (n (1 - alpha))),
    # with 0 log 0 = 0 (xlogy).
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.maximum(total, 1e-300)
        value = xlogy(count, count / (safe * alpha)) + xlogy(rest, rest / (safe * (1 - alpha)))
    return np.where(count > alpha * total, value, 0.0)


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

    Only devices whose share of p-values at most alpha exceeds alpha can be in the
    best subset: adding any other device never raises Berk-Jones (n KL(N/n, alpha)
    is subadditive and 0 for such a device) or higher criticism (its numerator does
    not grow and its denominator does). Those candidates are selected in linear time
    and only they are sorted, so a quiet plant costs little more than its devices.

    Args:
        counts: shape [I, N, A], elements with p-value <= alphas[a] per device.
        totals: shape [I, N], elements per device.
        alphas: the A levels.
        statistic: "bj" or "hc".

    Returns:
        best: shape [I, A], the best score per interval and alpha.
        size: shape [I, A], how many devices the best prefix holds.
        order: shape [I, A, K] with K <= N, the candidates by decreasing priority
            N_d / n_d (ties in no fixed order), padded with other devices, which never
            fall inside the best prefix. ``order[i, a, :size[i, a]]`` is the subset.
    """
    function = STATISTICS[statistic]
    num_intervals, num_devices, num_alphas = counts.shape
    best = np.zeros((num_intervals, num_alphas))
    size = np.zeros((num_intervals, num_alphas), dtype=np.int64)
    ranked_by_alpha = []
    by_alpha = np.ascontiguousarray(np.moveaxis(counts, -1, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        for a, alpha in enumerate(alphas):
            count = by_alpha[a]
            candidate = count > alpha * totals
            width = int(candidate.sum(axis=1).max()) if num_intervals else 0
            if width == 0:
                ranked_by_alpha.append(np.zeros((num_intervals, 0), dtype=np.int64))
                continue
            priority = np.where(candidate, count / np.maximum(totals, 1), -1.0)
            if 2 * width < num_devices:
                top = np.argpartition(-priority, width - 1, axis=1)[:, :width]
            else:
                top = np.broadcast_to(np.arange(num_devices), (num_intervals, num_devices))
            within = np.argsort(-np.take_along_axis(priority, top, 1), axis=1, kind="stable")
            ranked = np.take_along_axis(top, within, 1)
            cumulative_count = np.cumsum(np.take_along_axis(count, ranked, 1), 1)
            cumulative_total = np.cumsum(np.take_along_axis(totals, ranked, 1), 1)
            scores = function(cumulative_count, cumulative_total, alpha)
            k = scores.argmax(axis=1)
            best[:, a] = scores[np.arange(num_intervals), k]
            size[:, a] = np.where(best[:, a] > 0, k + 1, 0)
            ranked_by_alpha.append(ranked)
    width = max((r.shape[1] for r in ranked_by_alpha), default=0)
    order = np.zeros((num_intervals, num_alphas, width), dtype=np.int64)
    for a, ranked in enumerate(ranked_by_alpha):
        order[:, a, : ranked.shape[1]] = ranked
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


MAX_EXACT_DEVICES = 22
EXACT_CHUNK = 4096


def exact_connected_scan(
    counts: np.ndarray, totals: np.ndarray, alpha: float, linked: np.ndarray,
    statistic: str = "bj",
) -> tuple[float, tuple[int, ...]]:
    """Best score over every connected non-empty subset, for one alpha (2^N).

    The reference for the fast connected search on small graphs. Every subset's
    sums come from one pass over the subsets in bit order. Subsets are then visited
    from the highest score down, and the first connected one is the result, so
    connectivity is checked only for subsets that beat the connected optimum.

    Args:
        counts: shape [N], elements with p-value <= alpha per device.
        totals: shape [N], elements per device.
        alpha: the significance level.
        linked: shape [N, N], bool, symmetric; two devices in one subset are
            adjacent when linked (through a hub, too, if the caller's relation
            says so).
        statistic: "bj" or "hc".

    Returns:
        The best score and its subset (device indices, ascending); (0.0, ()) when
        no subset scores above 0.

    Raises:
        ValueError: more than `MAX_EXACT_DEVICES` devices.
    """
    counts = np.asarray(counts, dtype=np.float64)
    totals = np.asarray(totals, dtype=np.float64)
    num_devices = len(counts)
    if num_devices > MAX_EXACT_DEVICES:
        raise ValueError(
            f"exact_connected_scan got {num_devices} devices; it enumerates 2^N "
            f"subsets and accepts at most {MAX_EXACT_DEVICES}")
    if num_devices == 0:
        return 0.0, ()
    size = 1 << num_devices
    count_sums = np.zeros(size)
    total_sums = np.zeros(size)
    for device in range(num_devices):
        half = 1 << device
        count_sums[half : 2 * half] = count_sums[:half] + counts[device]
        total_sums[half : 2 * half] = total_sums[:half] + totals[device]
    scores = STATISTICS[statistic](count_sums, total_sums, alpha)
    scores[0] = 0.0
    neighbours = np.zeros(num_devices, dtype=np.int64)
    linked = np.asarray(linked, dtype=bool)
    for device in range(num_devices):
        for other in np.flatnonzero(linked[device]):
            if other != device:
                neighbours[device] |= 1 << int(other)
    ranked = np.argsort(-scores, kind="stable")
    for begin in range(0, size, EXACT_CHUNK):
        masks = ranked[begin : begin + EXACT_CHUNK].astype(np.int64)
        if scores[masks[0]] <= 0:
            break
        connected = _is_connected(masks, neighbours)
        if connected.any():
            pick = int(masks[int(np.argmax(connected))])
            subset = tuple(d for d in range(num_devices) if pick >> d & 1)
            return float(scores[pick]), subset
    return 0.0, ()


def _is_connected(masks: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Whether each bit mask's devices form one connected group under `neighbours`
    (per device, the bit mask of its neighbours)."""
    reach = masks & -masks
    while True:
        grown = reach.copy()
        for device, bits in enumerate(neighbours):
            grown |= np.where((reach >> device) & 1 == 1, bits, 0)
        grown &= masks
        if np.array_equal(grown, reach):
            return reach == masks
        reach = grown
