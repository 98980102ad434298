"""The localization search: from element p-values to incidents.

For every scale, the scan scores every dyadic and half-shifted interval of the scored
bins with the best device subset found by linear-time subset scanning (`core.scan`).
A device contributes the p-values of its sensors, of its (device, bin) element and of
the pairs it takes part in. A pair's p-value counts for both of its ends. Counts per
device, alpha and bin are kept as prefix sums, so any interval's counts are one
subtraction.

Thresholds come from the same scan over held-out reference windows (circularly
shifted per device to make more of them). The tests of a run fall into families.
One family is the intervals of one length at one scale. Another is the single
elements of one kind at one scale: one element with a small enough p-value is a
hit on its own. The run's false-alarm level is split evenly over the families. A
family's threshold is the score that one of its tests in the scored period passes
with probability (its share of the level) / (its tests). It is read off a
generalized Pareto tail fitted to the family's null scores, so a scored period
longer than the null windows gets a higher threshold.

A hit's device set must be connected: through a
link between two of its devices (a training pair, a static link, or a pair with an
event in the interval), or through one hop across a hub device (by kind, such as a
PLC or SCADA server).

`detect` takes incidents out strongest first: it records the best hit of any scale,
refines its interval with the prefix sums, and removes every element of its devices
and of the hosts it touched in that interval before the next round. A hit that
overlaps an earlier incident and is linked to it joins that incident.

Known weaknesses: devices are the unit of the statistic, so a pair anomaly between
two devices that are otherwise busy and normal is diluted by their other elements;
a process anomaly also moves its neighbours' reconstruction a little, and a strong
one can pull them into its incident; an anomaly that spans the boundary of the
scored period is cut there.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from core.config import SearchConfig
from core.scan import STATISTICS, dyadic_intervals, prefix_scan

log = logging.getLogger(__name__)

# Interval counts are read in batches of at most this many (interval, device, alpha)
# cells, so memory stays flat as plants grow.
INTERVAL_CELLS = 2048 * 1000 * 7


@dataclass
class ScaleElements:
    """P-values of one scale, in long form.

    Attributes:
        scale: bin width in base bins.
        num_bins: bins at this scale.
        elements: columns kind, device_idx, peer_idx (-1 unless a pair), bin, p_value.
        runs: (start, stop) ranges of bins that are scanned.
    """

    scale: int
    num_bins: int
    elements: pd.DataFrame
    runs: list[tuple[int, int]]


@dataclass
class Evidence:
    """Prefix sums per device: counts [T+1, N, A] and totals [T+1, N]."""

    counts: np.ndarray
    totals: np.ndarray

    def interval(self, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.counts[stop] - self.counts[start], self.totals[stop] - self.totals[start]


@dataclass
class Hit:
    scale: int
    start: int
    stop: int
    alpha: float
    score: float
    threshold: float
    devices: list[int]
    # The family of tests the hit passed: "length K" (intervals of K bins) or
    # "single KIND" (one element of that kind).
    family: str = ""


@dataclass
class Incident:
    """A localized anomaly, in base bins [start, stop)."""

    start: int
    stop: int
    scale: int
    alpha: float
    score: float
    threshold: float
    devices: list[int]
    hits: list[Hit] = field(default_factory=list)
    process: bool = False
    targets: list[int] = field(default_factory=list)
    # Family-wise p-value of the score, and the false alarms a day expected at it.
    # Both are NaN where the run kept no null tails.
    p_value: float = float("nan")
    false_alarms_per_day: float = float("nan")


def build_evidence(
    elements: pd.DataFrame, num_devices: int, num_bins: int, alphas: tuple[float, ...],
    weights: np.ndarray | None = None,
) -> Evidence:
    """Count elements and elements with p <= alpha per device and bin, as prefix sums.

    A pair element counts for both of its ends. With `weights` ([N], see
    `device_weights`) an element counts `weights[device]` at each end instead of 1,
    unless its `novel` column is true, and the sums are float32 (the null
    replicates keep several of them at once).

    NOTE: the prefix sums are dense over devices and bins; plants beyond a few
    thousand devices and bins need them over active bins only.
    """
    counts, totals = bin_counts(elements, num_devices, num_bins, alphas, weights, offset=1)
    dtype = np.int32 if weights is None else np.float32
    return Evidence(np.cumsum(counts, axis=0, dtype=dtype), np.cumsum(totals, axis=0, dtype=dtype))


def bin_counts(
    elements: pd.DataFrame, num_devices: int, num_bins: int, alphas: tuple[float, ...],
    weights: np.ndarray | None = None, offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-bin counts [T + offset, N, A] and totals [T + offset, N] that
    `build_evidence` sums, with bin b in row b + offset. They are float64 with
    weights, so that taking an element out again (`ScaleState.remove`) returns a
    bin to zero up to rounding far below the smallest weight."""
    dtype = np.int32 if weights is None else np.float64
    counts = np.zeros((num_bins + offset, num_devices, len(alphas)), dtype=dtype)
    totals = np.zeros((num_bins + offset, num_devices), dtype=dtype)
    if len(elements):
        bins = elements["bin"].to_numpy() + offset
        p = elements["p_value"].to_numpy()
        for column in ("device_idx", "peer_idx"):
            device = elements[column].to_numpy()
            keep = device >= 0
            amount = end_weights(elements, device, weights)
            np.add.at(totals, (bins[keep], device[keep]), amount[keep])
            for a, alpha in enumerate(alphas):
                chosen = keep & (p <= alpha)
                np.add.at(counts[..., a], (bins[chosen], device[chosen]), amount[chosen])
    return counts, totals


def end_weights(elements: pd.DataFrame, device: np.ndarray,
                weights: np.ndarray | None) -> np.ndarray:
    """Return what each element counts at its end `device` (-1 where it has none):
    the device's weight, or 1 without weights or for a novel element."""
    if weights is None:
        return np.ones(len(device), dtype=np.int32)
    amount = weights[np.clip(device, 0, None)].astype(np.float64)
    if "novel" in elements:
        amount[elements["novel"].to_numpy(dtype=bool)] = 1.0
    return amount


# Overdispersion is measured on the count of p-values at most this level, in
# windows of at most this many bins (and at least four windows per null run).
OVERDISPERSION_ALPHA = 0.05
OVERDISPERSION_WINDOW = 16
# The smallest weight: a device's elements count at least this much.
MIN_WEIGHT = 1e-3


def device_weights(
    null_elements: pd.DataFrame, null_runs: list[tuple[int, int]], num_devices: int,
) -> np.ndarray:
    """Return 1 / overdispersion of each device's small p-values, shape [N].

    The scan's statistic treats a device's elements as independent. Residuals of a
    device that the model reconstructs poorly for an hour at a time are not: its
    count of small p-values in a window varies much more than a binomial count
    would. Its statistic then grows with the interval length, and the largest null
    scores, which set the thresholds, come from such devices. The Pearson ratio of
    the observed variance of the counts in null windows to the binomial variance
    (at least 1) measures this. Dividing the device's counts and totals by it
    scales its statistic down as a quasi-binomial model does, and leaves devices
    whose elements behave independently as they are. Elements that the null never
    saw (a pair that never carried traffic before) have no history to be
    overdispersed in, and count in full (`novel`).
    """
    weights = np.ones(num_devices)
    if null_elements.empty or not null_runs:
        return weights
    longest = max(b - a for a, b in null_runs)
    window = max(1, min(OVERDISPERSION_WINDOW, longest // 4))
    last = max(b for _, b in null_runs)
    bins = null_elements["bin"].to_numpy()
    small = (null_elements["p_value"].to_numpy() <= OVERDISPERSION_ALPHA).astype(float)
    count = np.zeros((num_devices, last + 1))
    total = np.zeros((num_devices, last + 1))
    for column in ("device_idx", "peer_idx"):
        device = null_elements[column].to_numpy()
        keep = (device >= 0) & (bins < last)
        np.add.at(total, (device[keep], bins[keep] + 1), 1.0)
        np.add.at(count, (device[keep], bins[keep] + 1), small[keep])
    count, total = np.cumsum(count, axis=1), np.cumsum(total, axis=1)
    # Every window of `window` bins inside a null run, overlapping: the estimate
    # is steadier than from disjoint windows when the runs are short.
    starts = np.concatenate([np.arange(a, b - window + 1) for a, b in null_runs
                             if b - a >= window] or [np.zeros(0, dtype=int)])
    if len(starts) == 0:
        return weights
    counts = count[:, starts + window] - count[:, starts]
    expected = (total[:, starts + window] - total[:, starts]) * OVERDISPERSION_ALPHA
    spread = (expected * (1 - OVERDISPERSION_ALPHA)).sum(axis=1)
    # Fewer than 5 small p-values expected per window on average: too few to
    # measure the spread.
    measured = expected.mean(axis=1) >= 5 / max(len(starts) / window, 1)
    measured &= spread > 0
    ratio = ((counts - expected) ** 2).sum(axis=1)[measured] / spread[measured]
    weights[measured] = np.clip(1.0 / np.maximum(ratio, 1.0), MIN_WEIGHT, 1.0)
    return weights


def scan_intervals(
    evidence: Evidence, runs: list[tuple[int, int]], config: SearchConfig,
    min_stop: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scan every dyadic interval inside `runs` without the connectivity constraint.

    With `min_stop`, only the intervals that end at bin `min_stop` or later are
    scanned (the online path scans the intervals that end in a newly closed bin).

    Returns:
        intervals: shape [I, 2]; best: shape [I] (max over alpha);
        alpha_index: shape [I]; members: list of device index arrays, one per interval
        (as an object array).
    """
    pieces = [dyadic_intervals(a, b, config.max_interval_bins) for a, b in runs]
    intervals = np.concatenate(pieces) if pieces else np.zeros((0, 2), dtype=np.int64)
    if min_stop is not None:
        intervals = intervals[intervals[:, 1] >= min_stop]
    best = np.zeros(len(intervals))
    alpha_index = np.zeros(len(intervals), dtype=np.int64)
    members = np.empty(len(intervals), dtype=object)
    batch = max(1, INTERVAL_CELLS // max(evidence.totals.shape[1] * len(config.alphas), 1))
    for begin in range(0, len(intervals), batch):
        chunk = intervals[begin : begin + batch]
        counts, totals = evidence.interval(chunk[:, 0], chunk[:, 1])
        scores, size, order = prefix_scan(counts, totals, config.alphas, config.statistic)
        a = scores.argmax(axis=1)
        rows = np.arange(len(chunk))
        best[begin : begin + len(chunk)] = scores[rows, a]
        alpha_index[begin : begin + len(chunk)] = a
        for row in range(len(chunk)):
            k = size[row, a[row]]
            members[begin + row] = order[row, a[row], :k]
    return intervals, best, alpha_index, members


def null_scores(
    evidence_by_shift: list[Evidence], runs: list[tuple[int, int]], config: SearchConfig,
) -> tuple[dict[int, np.ndarray], list[float]]:
    """Scan scores of every null interval, per interval length, and each replicate's
    maximum.

    A long interval sums many elements, so a slight miscalibration that is harmless
    for one element grows with its length. Each length is therefore a family of
    tests of its own, and a one-bin spike competes only with one-bin null intervals.
    """
    by_length: dict[int, list[np.ndarray]] = {}
    maxima = []
    for evidence in evidence_by_shift:
        intervals, best, _, _ = scan_intervals(evidence, runs, config)
        maxima.append(float(best.max()) if len(best) else 0.0)
        lengths = intervals[:, 1] - intervals[:, 0]
        for length in np.unique(lengths):
            by_length.setdefault(int(length), []).append(best[lengths == length])
    return {k: np.concatenate(v) for k, v in by_length.items()}, maxima


@dataclass
class Tail:
    """The upper tail of one family's null scores, for extrapolating past them.

    Above `base` a generalized Pareto distribution (shape >= 0, fitted to the
    largest scores by probability-weighted moments) takes over from the sample, so a
    scored period with more tests than the null has, or a level smaller than one
    over the sample size, still gets a threshold that follows the tail's shape.

    Attributes:
        base: the score where the fit starts.
        sigma, shape: the fitted distribution of the excess over `base`.
        share: the share of null scores above `base`.
        largest: the largest null score.
        count: how many null scores were fitted (0 in tails stored before it was
            kept).
    """

    base: float
    sigma: float
    shape: float
    share: float
    largest: float
    count: float = 0.0

    @classmethod
    def fit(cls, values: np.ndarray) -> "Tail":
        values = np.sort(np.asarray(values, dtype=float))[::-1]
        if len(values) == 0:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0)
        count = float(len(values))
        top = min(len(values) - 1, max(TAIL_MIN, min(TAIL_MAX, len(values) // 20)))
        if top < TAIL_MIN // 2:
            # Too few scores to fit: the largest stands for the whole tail.
            return cls(float(values[0]), 0.0, 0.0, 1.0 / len(values), float(values[0]),
                       count)
        base = float(values[top])
        # Probability-weighted moments (Hosking and Wallis, 1987), steadier than
        # plain moments for heavy tails: a0 = E[X], a1 = E[X (1 - F(X))].
        excess = np.sort(values[:top] - base)
        n = len(excess)
        a0 = float(excess.mean())
        a1 = float(np.sum((n - 1 - np.arange(n)) / (n - 1) * excess) / n)
        if not (a0 > 0 and a0 > 2 * a1 > 0):
            return cls(base, 0.0, 0.0, top / len(values),
                       float(values[0]), count)
        shape = float(np.clip(2 - a0 / (a0 - 2 * a1), 0.0, 0.9))
        # With the shape clipped, the scale that keeps the fitted mean.
        sigma = a0 * (1 - shape)
        return cls(base, float(sigma), shape, top / len(values), float(values[0]), count)

    def quantile(self, probability: float) -> float:
        """Return the score that one null test exceeds with `probability`."""
        if probability >= self.share or self.sigma <= 0:
            # Inside the sample (only the fitted tail is kept), or no spread to
            # extrapolate with: the largest score is the safe choice.
            return self.largest
        within = probability / self.share
        if self.shape < 1e-6:
            return self.base - self.sigma * float(np.log(within))
        return self.base + self.sigma / self.shape * (within ** -self.shape - 1)

    def survival(self, score: float) -> float:
        """Return the probability that one null test exceeds `score`. Below `base`,
        where only the fitted tail is kept, it is 1.

        It is never 0: beyond the largest null score without a spread to extrapolate
        with, it is 1 / (count + 1), what a sample of `count` scores can show, and an
        extrapolated tail stops at `SURVIVAL_FLOOR`."""
        if score <= self.base:
            return 1.0
        if self.sigma <= 0:
            if score <= self.largest:
                return self.share
            return 1.0 / (self.count + 1) if self.count > 0 else self.share
        excess = (score - self.base) / self.sigma
        if self.shape < 1e-6:
            return max(SURVIVAL_FLOOR, self.share * float(np.exp(-excess)))
        return max(SURVIVAL_FLOOR,
                   self.share * float((1 + self.shape * excess) ** (-1 / self.shape)))

    def to_dict(self) -> dict[str, float]:
        return {"base": self.base, "sigma": self.sigma, "shape": self.shape,
                "share": self.share, "largest": self.largest, "count": self.count}


# Scores fitted in a tail: a twentieth of the sample, within these bounds.
TAIL_MIN, TAIL_MAX = 20, 500
# The smallest survival `Tail` returns. Smaller values are not distinguished.
SURVIVAL_FLOOR = 1e-300


@dataclass
class Family:
    """One family of tests of the run: the intervals of one length at one scale, or
    the single elements of one kind at one scale.

    The run's false-alarm budget (`level`, the chance of any incident in a normal
    scored period) is split evenly over its families. Within a family the tests are
    the `tests` intervals or elements of the scored period. Its threshold is the
    score that one of them exceeds with probability budget / tests. This union bound
    is close to exact, because most tests of one family cover different bins.
    """

    tail: Tail
    tests: int

    def threshold(self, budget: float) -> float:
        return self.tail.quantile(budget / max(self.tests, 1))

    def expected(self, score: float, families: int) -> float:
        """Return the number of tests of the run's `families` families expected to
        pass their thresholds by chance, with each family's threshold set where
        this one has `score`.

        Capped at 1, this is the family-wise p-value of `score`: the chance of any
        false alarm in a normal scored period at its level (a union bound).
        """
        return float(families * self.tests * self.tail.survival(score))

    def to_dict(self) -> dict:
        return {**self.tail.to_dict(), "tests": self.tests}

    @classmethod
    def from_dict(cls, data: dict) -> "Family":
        data = dict(data)
        tests = int(data.pop("tests"))
        return cls(Tail(**{k: float(v) for k, v in data.items()}), tests)


def interval_tests(runs: list[tuple[int, int]], max_length: int) -> dict[int, int]:
    """Number of scanned intervals of each length inside `runs`."""
    pieces = [dyadic_intervals(a, b, max_length) for a, b in runs]
    if not pieces:
        return {}
    intervals = np.concatenate(pieces)
    lengths, counts = np.unique(intervals[:, 1] - intervals[:, 0], return_counts=True)
    return {int(k): int(v) for k, v in zip(lengths, counts)}


@dataclass
class ScaleInput:
    """The inputs of the search at one scale.

    The p-values are in the long form of `ScaleElements`: `elements` for the scored
    bins, `null_elements` (out of sample) for the calibration bins. `runs` and
    `null_runs` are their (start, stop) ranges of bins.
    """

    scale: int
    num_bins: int
    elements: pd.DataFrame
    null_elements: pd.DataFrame
    null_runs: list[tuple[int, int]]
    runs: list[tuple[int, int]]


def build_states(
    inputs: list[ScaleInput], num_devices: int, config: SearchConfig,
    rng: np.random.Generator, report=lambda share: None,
) -> tuple[list["ScaleState"], dict[int, dict], list[dict]]:
    """Set every family's threshold and return each scale's search state.

    The false-alarm budget is split over the families of all scales, so every
    scale's null scores and tests are gathered before any threshold is set.

    Returns:
        states; thresholds per scale (by_length, singleton_p, families, tails),
        as kept in the run; and rows (scale, shift, max_score) of the null scan.
    """
    gathered = []
    for position, item in enumerate(inputs):
        weights = device_weights(item.null_elements, item.null_runs, num_devices)
        item.elements = mark_novel(item.elements, item.null_elements)
        replicates = []
        for shift in range(config.null_shifts):
            shifted = item.null_elements
            if shift:
                for start, stop in item.null_runs:
                    inside = (shifted["bin"] >= start) & (shifted["bin"] < stop)
                    part = shift_per_device(shifted[inside], start, stop, rng)
                    shifted = pd.concat([shifted[~inside], part])
            replicates.append(build_evidence(shifted, num_devices, item.num_bins,
                                             config.alphas, weights))
        samples, maxima = null_scores(replicates, item.null_runs, config)
        # Only lengths the null windows can hold get a threshold. Longer intervals
        # are not scanned at this scale, because a coarser scale covers them.
        longest = max((b - a for a, b in item.null_runs), default=0)
        tests = interval_tests(item.runs, config.max_interval_bins)
        intervals = {length: Family(Tail.fit(values), tests[length])
                     for length, values in samples.items()
                     if 2 * length <= max(longest, 2) and length in tests}
        singles = singleton_families(item.null_elements, item.elements)
        gathered.append((intervals, singles, maxima, weights))
        report(0.5 * (position + 1) / len(inputs))
    family_count = sum(len(intervals) + len(singles) for intervals, singles, _, _ in gathered)
    budget = config.level / max(family_count, 1)

    states, thresholds, null_rows = [], {}, []
    for position, (item, (intervals, singles, maxima, weights)) in enumerate(
            zip(inputs, gathered)):
        by_length = {k: f.threshold(budget) for k, f in intervals.items()}
        limits = {k: singleton_limit(f, budget) for k, f in singles.items()}
        thresholds[item.scale] = {
            "by_length": by_length, "singleton_p": limits, "families": family_count,
            "tails": {**{f"length {k}": f.to_dict() for k, f in intervals.items()},
                      **{f"single {k}": f.to_dict() for k, f in singles.items()}},
            "weights": [round(float(w), 6) for w in weights]}
        null_rows += [{"scale": item.scale, "shift": i, "max_score": m}
                      for i, m in enumerate(maxima)]
        states.append(ScaleState.build(
            ScaleElements(item.scale, item.num_bins, item.elements, item.runs),
            num_devices, config.alphas, by_length, limits, weights))
        log.info("scale %d: null thresholds %s, singleton limits %s", item.scale,
                 {k: round(v, 1) for k, v in by_length.items()}, limits)
        report(0.5 + 0.5 * (position + 1) / len(inputs))
    return states, thresholds, null_rows


def mark_novel(elements: pd.DataFrame, null_elements: pd.DataFrame) -> pd.DataFrame:
    """Return `elements` with a column `novel`: true for elements (kind and column)
    that have no p-value among the null elements."""
    seen = pd.MultiIndex.from_frame(null_elements[["kind", "column"]].drop_duplicates())
    keys = pd.MultiIndex.from_frame(elements[["kind", "column"]])
    return elements.assign(novel=~keys.isin(seen))


def set_significance(incidents: list["Incident"], thresholds: dict[int, dict],
                     scored_days: float) -> None:
    """Set each incident's family-wise p-value and false alarms a day from the
    null tail of the family its first hit passed."""
    for incident in incidents:
        info = thresholds.get(incident.hits[0].scale, {}) if incident.hits else {}
        family = info.get("tails", {}).get(incident.hits[0].family) if info else None
        if family is None:
            continue
        expected = Family.from_dict(family).expected(incident.score, info["families"])
        incident.p_value = min(1.0, expected)
        incident.false_alarms_per_day = expected / max(scored_days, 1e-9)


def threshold_for(thresholds: dict[int, float], length: int) -> float:
    """Return the null threshold of `length`, or of the longest null length below it."""
    if not thresholds:
        return float("inf")
    if length in thresholds:
        return thresholds[length]
    shorter = [k for k in thresholds if k <= length]
    key = max(shorter) if shorter else min(thresholds)
    return max(v for k, v in thresholds.items() if k <= key) if shorter else thresholds[key]


def shift_per_device(
    elements: pd.DataFrame, start: int, stop: int, rng: np.random.Generator,
) -> pd.DataFrame:
    """Circularly shift each device's elements inside [start, stop) by a random offset.

    Elements of one device keep their alignment, so within-device correlation in
    time survives while coincidences across devices are broken. A pair moves with its
    source device.
    """
    length = stop - start
    if length <= 1 or elements.empty:
        return elements
    devices = elements["device_idx"].to_numpy()
    offsets = rng.integers(0, length, size=int(devices.max()) + 1)
    shifted = elements.copy()
    shifted["bin"] = start + (elements["bin"].to_numpy() - start + offsets[devices]) % length
    return shifted


def adjacency(
    num_devices: int, links: np.ndarray, kinds: np.ndarray, hub_kinds: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Undirected adjacency (bool [N, N]) of `links`, and the hub flags (bool [N])."""
    matrix = np.zeros((num_devices, num_devices), dtype=bool)
    if len(links):
        matrix[links[:, 0], links[:, 1]] = True
        matrix[links[:, 1], links[:, 0]] = True
    np.fill_diagonal(matrix, False)
    hubs = np.isin(kinds, hub_kinds)
    return matrix, hubs


def components(members: np.ndarray, matrix: np.ndarray, hubs: np.ndarray) -> list[np.ndarray]:
    """Connected components of `members`: linked directly, or both linked to a hub.

    Components come in the order of their first member, each in the order of
    `members`.
    """
    members = np.asarray(members)
    if len(members) == 0:
        return []
    direct = matrix[np.ix_(members, members)]
    to_hubs = matrix[members][:, hubs].astype(np.float32)
    linked = direct | ((to_hubs @ to_hubs.T) > 0) if hubs.any() else direct
    _, labels = connected_components(csr_matrix(linked), directed=False)
    # Labels are numbered in the order of each component's first member.
    return [members[labels == label] for label in range(int(labels.max()) + 1)]


def _linked_components(members: np.ndarray, linked: np.ndarray) -> list[np.ndarray]:
    """Return `components(members, matrix, hubs)` from `linked_devices(matrix, hubs)`.

    Both relations join the same pairs of distinct devices, so the components and
    their order are the same. This reads only the members' block of `linked`.
    Each member takes the smallest label among itself and its neighbours until no
    label changes, so a component's label is the position of its first member.
    That takes one pass per link of the longest shortest path in a component,
    without the sparse matrix that costs more than the search for a hit's members.
    """
    members = np.asarray(members)
    if len(members) == 0:
        return []
    block = linked[np.ix_(members, members)]
    block = block | block.T
    labels = np.arange(len(members))
    while True:
        reached = np.where(block, labels[None, :], len(members)).min(axis=1)
        updated = np.minimum(labels, reached)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return [members[labels == label] for label in np.unique(labels)]


def connected_best(
    counts: np.ndarray, totals: np.ndarray, alpha: float, members: np.ndarray,
    matrix: np.ndarray, hubs: np.ndarray, statistic: str, linked: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Best connected subset near the unconstrained optimum `members`.

    Each component of `members` is rescanned on its own devices (prefix search); a
    result that is still disconnected is split again. The best `GROW_STARTS`
    connected sets found this way then grow (`grow_connected`), and the best grown set is
    returned.

    Args:
        counts: shape [N], elements with p <= alpha per device in the interval.
        totals: shape [N], elements per device in the interval.
        linked: `linked_devices(matrix, hubs)`, computed here when not given.
    """
    function = STATISTICS[statistic]
    if linked is None:
        linked = linked_devices(matrix, hubs)

    def score(subset: np.ndarray) -> float:
        return float(function(counts[subset].sum(), totals[subset].sum(), alpha))

    def prefix_best(candidates: np.ndarray) -> np.ndarray:
        priority = counts[candidates] / np.maximum(totals[candidates], 1)
        ranked = candidates[np.argsort(-priority, kind="stable")]
        values = function(np.cumsum(counts[ranked]), np.cumsum(totals[ranked]), alpha)
        return ranked[: int(values.argmax()) + 1]

    starts: dict[tuple[int, ...], float] = {}
    queue = _linked_components(members, linked)
    for _ in range(4):
        next_queue = []
        for component in queue:
            chosen = prefix_best(component)
            parts = _linked_components(chosen, linked)
            if len(parts) == 1:
                starts[tuple(np.sort(chosen).tolist())] = score(chosen)
            else:
                next_queue.extend(parts)
                for part in parts:
                    starts[tuple(np.sort(part).tolist())] = score(part)
        if not next_queue:
            break
        queue = next_queue

    best_value, best_set = 0.0, np.zeros(0, dtype=np.int64)
    ranked_starts = sorted(starts.items(), key=lambda item: -item[1])[:GROW_STARTS]
    moves: dict[bytes, tuple[float, list[int]] | None] = {}
    for subset, value in ranked_starts:
        if value <= 0:
            continue
        value, grown = grow_connected(np.array(subset, dtype=np.int64), value, counts,
                                      totals, alpha, linked, statistic, moves)
        if value > best_value:
            best_value, best_set = value, grown
    return best_value, best_set


GROW_STARTS = 4


def grow_connected(
    chosen: np.ndarray, value: float, counts: np.ndarray, totals: np.ndarray,
    alpha: float, linked: np.ndarray, statistic: str,
    moves: dict[bytes, tuple[float, list[int]] | None] | None = None,
) -> tuple[float, np.ndarray]:
    """Grow the connected set `chosen` (score `value`) while its score rises.

    A step adds the linked device that raises the score most, or a linked device
    together with the best prefix (by share of p-values <= alpha) of its own
    evidence neighbours outside the set. The second move crosses a device without
    evidence, such as the quiet centre of a star whose leaves are abnormal, which a
    one-device step never takes because it lowers the score on its own. Only
    devices whose share of p-values <= alpha exceeds alpha are evidence: for
    Berk-Jones, adding any other device never raises the score (n KL(N/n, alpha) is
    subadditive and 0 for such a device).

    `moves` stores the best step from each set grown so far, keyed by the set's
    mask. The step depends only on the set, so calls on the same counts, totals,
    alpha and links can share it. Growths from different starts often reach the
    same set, and only the first computes the steps from there.
    """
    function = STATISTICS[statistic]
    evidence = (totals > 0) & (counts > alpha * totals)
    priority = counts / np.maximum(totals, 1)
    inside = np.zeros(len(counts), dtype=bool)
    inside[chosen] = True
    while True:
        key = inside.tobytes()
        if moves is not None and key in moves:
            move = moves[key]
        else:
            move = _best_step(inside, counts, totals, alpha, linked, function, evidence,
                              priority)
            if moves is not None:
                moves[key] = move
        if move is None:
            break
        step_value, step = move
        if step_value <= value + 1e-9 * max(1.0, abs(value)):
            break
        value = step_value
        inside[step] = True
    return value, np.flatnonzero(inside)


def _best_step(
    inside: np.ndarray, counts: np.ndarray, totals: np.ndarray, alpha: float,
    linked: np.ndarray, function, evidence: np.ndarray, priority: np.ndarray,
) -> tuple[float, list[int]] | None:
    """Return the best step of `grow_connected` from the set `inside`, as (score of
    the grown set, devices to add), or None when no device is linked to the set."""
    frontier = np.flatnonzero(linked[inside].any(axis=0) & ~inside)
    if len(frontier) == 0:
        return None
    base_count, base_total = counts[inside].sum(), totals[inside].sum()
    single = function(base_count + counts[frontier], base_total + totals[frontier], alpha)
    pick = int(single.argmax())
    step_value, step = float(single[pick]), [int(frontier[pick])]
    outside = np.flatnonzero(evidence & ~inside)
    if len(outside):
        bridge_value, bridge_step = _best_bridge(
            frontier, outside, base_count, base_total, counts, totals, priority, alpha,
            linked, function)
        if bridge_value > step_value:
            step_value, step = bridge_value, bridge_step
    paths = _paths_to(inside, outside, linked, BRIDGE_HOPS)
    if paths:
        path_counts = np.array([base_count + counts[path].sum() for path in paths])
        path_totals = np.array([base_total + totals[path].sum() for path in paths])
        path_values = function(path_counts, path_totals, alpha)
        best_path = int(path_values.argmax())
        if path_values[best_path] > step_value:
            step_value, step = float(path_values[best_path]), paths[best_path]
    return step_value, step


BRIDGE_HOPS = 6
# Bridge moves are scored in blocks of at most this many (bridge, neighbour) cells.
BRIDGE_CELLS = 1 << 20


def _best_bridge(
    frontier: np.ndarray, outside: np.ndarray, base_count, base_total,
    counts: np.ndarray, totals: np.ndarray, priority: np.ndarray, alpha: float,
    linked: np.ndarray, function,
) -> tuple[float, list[int]]:
    """Score every bridge move of `grow_connected` at once and return the best, as
    (score, devices to add), or (-inf, []) when no move exists.

    A move adds a frontier device and the best prefix, by decreasing priority, of
    its linked evidence devices in `outside`. The devices of `outside` are sorted
    once, stably, so ties keep index order as in a stable sort of one bridge's own
    neighbours. Each bridge's cumulative sums run over that order, with zeros for
    the devices it does not reach. Adding zero leaves a sum unchanged, so the
    scores and picks equal those of scoring one bridge at a time. Among equal
    scores the first bridge in `frontier` and the shortest prefix win.
    """
    ordered = outside[np.argsort(-priority[outside], kind="stable")]
    reach = linked[np.ix_(frontier, ordered)]
    reach &= frontier[:, None] != ordered[None, :]
    rows = np.flatnonzero(reach.any(axis=1))
    best_value, best_step = -np.inf, []
    if len(rows) == 0:
        return best_value, best_step
    # Devices that no bridge reaches add only zeros, so they are left out.
    reached = reach[rows].any(axis=0)
    ordered, reach = ordered[reached], reach[:, reached]
    block = max(1, BRIDGE_CELLS // len(ordered))
    for begin in range(0, len(rows), block):
        part = rows[begin : begin + block]
        mask = reach[part]
        bridges = frontier[part]
        count_sums = np.cumsum(np.where(mask, counts[ordered], 0), axis=1)
        total_sums = np.cumsum(np.where(mask, totals[ordered], 0), axis=1)
        # The statistic is evaluated only where a bridge reaches a device.
        row_index, column = np.nonzero(mask)
        values = np.full(mask.shape, -np.inf)
        values[row_index, column] = function(
            base_count + counts[bridges[row_index]] + count_sums[row_index, column],
            base_total + totals[bridges[row_index]] + total_sums[row_index, column], alpha)
        ends = values.argmax(axis=1)
        row_best = values[np.arange(len(part)), ends]
        row = int(row_best.argmax())
        if row_best[row] > best_value:
            end = int(ends[row])
            best_value = float(row_best[row])
            best_step = [int(bridges[row])] + ordered[: end + 1][mask[row, : end + 1]].tolist()
    return best_value, best_step


def _paths_to(
    inside: np.ndarray, targets: np.ndarray, linked: np.ndarray, hops: int,
) -> list[list[int]]:
    """Return a shortest path from the set `inside` to each of `targets` that lies 2
    to `hops` links away, as the devices it adds (the target last)."""
    parent = np.full(len(inside), -1)
    reached = inside.copy()
    layer = np.flatnonzero(inside)
    wanted = np.zeros(len(inside), dtype=bool)
    wanted[targets] = True
    paths = []
    for depth in range(1, hops + 1):
        step = linked[layer]
        fresh = step.any(axis=0) & ~reached
        if not fresh.any():
            break
        nodes = np.flatnonzero(fresh)
        parent[nodes] = layer[step[:, nodes].argmax(axis=0)]
        reached |= fresh
        if depth >= 2:
            for target in nodes[wanted[nodes]]:
                path, node = [], int(target)
                while not inside[node]:
                    path.append(node)
                    node = int(parent[node])
                paths.append(path[::-1])
        layer = nodes
    return paths


def refine_interval(
    evidence: Evidence, devices: list[int], alpha_index: int, alpha: float,
    lower: int, upper: int, statistic: str,
) -> tuple[int, int, float]:
    """Best [start, stop) inside [lower, upper) for a fixed device set and alpha.

    Bins in which the devices have no element leave the statistic unchanged, so
    among intervals with the best value the shortest (then the earliest) is taken.
    A device that exists in one bin only is thus placed in that bin.
    """
    function = STATISTICS[statistic]
    chosen = np.asarray(devices)
    counts = evidence.counts[lower : upper + 1, chosen, alpha_index].sum(axis=1).astype(np.float64)
    totals = evidence.totals[lower : upper + 1, chosen].sum(axis=1).astype(np.float64)
    starts, stops = np.triu_indices(len(counts), k=1)
    values = function(counts[stops] - counts[starts], totals[stops] - totals[starts], alpha)
    if len(values) == 0:
        return lower, upper, 0.0
    best = values.max()
    tied = np.flatnonzero(values >= best - 1e-9 * max(1.0, abs(best)))
    pick = int(tied[np.argmin(stops[tied] - starts[tied])])
    return lower + int(starts[pick]), lower + int(stops[pick]), float(values[pick])


def incident_id(devices: list[str], start: pd.Timestamp) -> str:
    """Stable id from the sorted device names and the start time."""
    text = "\x1f".join(sorted(devices)) + "\x1e" + start.isoformat()
    return "inc-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


@dataclass
class ScaleState:
    """The scan's view of one scale while incidents are taken out one by one.

    Attributes:
        counts: shape [T, N, A], per bin (not cumulative).
        totals: shape [T, N], per bin.
        thresholds: null threshold per interval length.
        singleton_limits: p-value limit of a single element, per element kind.
    """

    scale: int
    elements: pd.DataFrame
    active: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    runs: list[tuple[int, int]]
    thresholds: dict[int, float]
    singleton_limits: dict[str, float]
    weights: np.ndarray | None = None

    @classmethod
    def build(
        cls, scale_elements: ScaleElements, num_devices: int, alphas: tuple[float, ...],
        thresholds: dict[int, float], singleton_limits: dict[str, float],
        weights: np.ndarray | None = None,
    ) -> "ScaleState":
        counts, totals = bin_counts(scale_elements.elements, num_devices,
                                    scale_elements.num_bins, alphas, weights)
        return cls(
            scale=scale_elements.scale,
            elements=scale_elements.elements.reset_index(drop=True),
            active=np.ones(len(scale_elements.elements), dtype=bool),
            counts=counts,
            totals=totals,
            runs=scale_elements.runs,
            thresholds=thresholds,
            singleton_limits=singleton_limits,
            weights=weights,
        )

    def evidence(self) -> Evidence:
        dtype = np.int64 if self.weights is None else np.float64
        zero_counts = np.zeros((1,) + self.counts.shape[1:], dtype=dtype)
        zero_totals = np.zeros((1,) + self.totals.shape[1:], dtype=dtype)
        return Evidence(
            np.concatenate([zero_counts, np.cumsum(self.counts, axis=0, dtype=dtype)]),
            np.concatenate([zero_totals, np.cumsum(self.totals, axis=0, dtype=dtype)]),
        )

    def dominant(self, devices: list[int], start: int, stop: int, alpha: float,
                 share: float) -> list[int]:
        """Members whose largest element score reaches `share` of the largest score
        of the same element kind among the members, in bins [start, stop).

        A sensor that drifts by four standard deviations moves the reconstruction
        of its neighbours by a fraction of that. Their residuals are significant
        but small, so they are not reported as members.
        """
        frame = self.elements[self.active]
        frame = frame[(frame["bin"] >= start) & (frame["bin"] < stop)
                      & (frame["p_value"] <= alpha) & (frame["kind"] != "pair")
                      & frame["device_idx"].isin(devices)]
        if frame.empty or len(devices) <= 1:
            return list(devices)
        strongest = frame.groupby(["kind", "device_idx"])["score"].max()
        ratio = strongest / strongest.groupby(level="kind").transform("max")
        best = ratio.groupby(level="device_idx").max()
        # The same floor on significance: -log10 of the device's smallest p-value
        # against the strongest member's, so a coincidental reading on a device
        # that a scan touched does not join the scanner.
        depth = -np.log10(frame.groupby("device_idx")["p_value"].min().clip(lower=1e-300))
        depth = depth / depth.max()
        kept = [d for d in devices
                if d not in best.index or (best[d] >= share and depth[d] >= share)]
        return kept or [int(best.idxmax())]

    def is_process(self, devices: list[int], start: int, stop: int, alpha: float) -> bool:
        """Return whether most significant elements of `devices` in [start, stop) are
        sensor elements."""
        frame = self.elements[self.active]
        frame = frame[(frame["bin"] >= start) & (frame["bin"] < stop)
                      & (frame["p_value"] <= alpha) & frame["device_idx"].isin(devices)]
        return bool(len(frame)) and bool(frame["kind"].str.startswith("sensor").mean() >= 0.5)

    def targets(self, devices: list[int], start: int, stop: int, alpha: float) -> list[int]:
        """Devices outside `devices` that share a pair with p <= alpha with them in
        bins [start, stop) of this scale: the hosts a scan touched."""
        frame = self.elements[self.active]
        frame = frame[(frame["kind"] == "pair") & (frame["bin"] >= start)
                      & (frame["bin"] < stop) & (frame["p_value"] <= alpha)]
        src_in = frame["device_idx"].isin(devices)
        dst_in = frame["peer_idx"].isin(devices)
        others = pd.concat([frame.loc[src_in & ~dst_in, "peer_idx"],
                            frame.loc[dst_in & ~src_in, "device_idx"]])
        return sorted(int(d) for d in others.unique())

    def remove(self, devices: list[int], start: int, stop: int, alphas) -> None:
        """Take out every element touching `devices` in base bins [start, stop)."""
        lower = start // self.scale
        upper = -(-stop // self.scale)
        frame = self.elements
        bins = frame["bin"].to_numpy()
        touching = (frame["device_idx"].isin(devices) | frame["peer_idx"].isin(devices)).to_numpy()
        chosen = self.active & touching & (bins >= lower) & (bins < upper)
        if not chosen.any():
            return
        rows = frame[chosen]
        p = rows["p_value"].to_numpy()
        row_bins = rows["bin"].to_numpy()
        for column in ("device_idx", "peer_idx"):
            device = rows[column].to_numpy()
            keep = device >= 0
            amount = end_weights(rows, device, self.weights)
            np.subtract.at(self.totals, (row_bins[keep], device[keep]), amount[keep])
            for a, alpha in enumerate(alphas):
                hit = keep & (p <= alpha)
                np.subtract.at(self.counts[..., a], (row_bins[hit], device[hit]), amount[hit])
        if self.weights is not None:
            # Rounding can leave about 1e-16 where a bin was emptied; weights are
            # at least MIN_WEIGHT, so anything below 1e-9 is an empty bin.
            self.counts[self.counts < 1e-9] = 0.0
            self.totals[self.totals < 1e-9] = 0.0
        self.active &= ~chosen


def singleton_families(
    null_elements: pd.DataFrame, scored_elements: pd.DataFrame,
) -> dict[str, Family]:
    """Return one family per element kind, whose test is one element alone: an
    incident when its -log10(p) passes the family's threshold.

    The tail of the null elements' -log10(p) is fitted (`Tail`), so a calibration
    that is overconfident in its extreme tail raises the limit accordingly. With
    fewer than 100 null elements of a kind, p-values are taken at their word.
    """
    families = {}
    for kind, scored in scored_elements.groupby("kind"):
        null = null_elements.loc[null_elements["kind"] == kind, "p_value"].to_numpy()
        if len(null) >= 100:
            tail = Tail.fit(-np.log10(np.clip(null, 1e-300, 1.0)))
        else:
            tail = UNIFORM_TAIL
        families[str(kind)] = Family(tail, len(scored))
    return families


# The tail of -log10(p) for exactly uniform p-values: exponential with scale
# 1 / ln(10), from 0.
UNIFORM_TAIL = Tail(base=0.0, sigma=1 / np.log(10), shape=0.0, share=1.0, largest=0.0)


def singleton_limit(family: Family, budget: float) -> float:
    """Return the p-value below which one element of `family` is an incident.

    It is never above budget / tests, the limit for exactly uniform p-values.
    """
    uniform = budget / max(family.tests, 1)
    return float(min(uniform, 10 ** -family.threshold(budget)))


def prune_members(
    members: np.ndarray, counts: np.ndarray, totals: np.ndarray, alpha: float,
    config: SearchConfig, all_counts: np.ndarray | None = None,
) -> np.ndarray:
    """Keep the members whose own statistic reaches `config.member_min_score` and
    `config.member_min_share` of the strongest member's, and whose share of p-values
    at most alpha is at least twice alpha.

    With `all_counts` ([N, A], the counts at every level of `config.alphas`), a
    member's own statistic is its largest over the levels. A drifting sensor has a
    few very small p-values, and the neighbours it misleads have many moderately
    small ones. At a moderate level the neighbours look stronger than the sensor
    itself, which would be dropped.

    The optimal set of a long interval also takes devices whose share of small
    p-values is only a little above alpha by chance. They raise the score a little
    (a lot, for a busy hub with hundreds of elements) and would otherwise be
    reported as members. Neighbours of a strongly abnormal device also pick up a fraction of its
    deviation through their reconstruction, and the relative floor drops them. The
    strongest member is always kept.
    """
    members = np.asarray(members)
    if len(members) <= 1:
        return members
    function = STATISTICS[config.statistic]
    if all_counts is None:
        own = function(counts[members], totals[members], alpha)
    else:
        own = np.max([function(all_counts[members, k], totals[members], level)
                      for k, level in enumerate(config.alphas)], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(totals[members] > 0, counts[members] / totals[members], 0.0)
    strong = own >= max(config.member_min_score, config.member_min_share * own.max())
    kept = members[strong & (share >= 2 * alpha)]
    return kept if len(kept) else members[[int(own.argmax())]]


def pruned_bounds(counts: np.ndarray, totals: np.ndarray, config: SearchConfig) -> np.ndarray:
    """Return, per level of `config.alphas`, an upper bound on the score of any set
    that `prune_members` returns for an interval (with `all_counts`).

    `prune_members` returns either one device or devices that each reach
    `config.member_min_score` on their own and whose share of p-values at most
    alpha is at least twice alpha. So the bound at a level is the larger of the best
    single device and the best subset of those qualified devices, found as in
    `prefix_scan` (linear-time subset scanning). A connected set is not needed for
    the bound, so it is valid for whatever set `connected_best` finds. Devices within a
    relative `BOUND_MARGIN` of either floor count as qualified, so per-device
    rounding cannot leave out a device that `prune_members` keeps.

    Args:
        counts: shape [N, A], the interval's counts at every level.
        totals: shape [N], the interval's elements per device.
    """
    function = STATISTICS[config.statistic]
    own = np.max([function(counts[:, k], totals, level)
                  for k, level in enumerate(config.alphas)], axis=0)
    strong = own * (1 + BOUND_MARGIN) >= config.member_min_score
    bounds = np.zeros(len(config.alphas))
    for a, alpha in enumerate(config.alphas):
        single = function(counts[:, a], totals, alpha)
        bounds[a] = single.max() if len(single) else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(totals > 0, counts[:, a] / totals, 0.0)
        qualified = np.flatnonzero(strong & (share * (1 + BOUND_MARGIN) >= 2 * alpha)
                                   & (totals > 0))
        if len(qualified):
            priority = counts[qualified, a] / totals[qualified]
            ranked = qualified[np.argsort(-priority, kind="stable")]
            values = function(np.cumsum(counts[ranked, a]), np.cumsum(totals[ranked]), alpha)
            bounds[a] = max(bounds[a], float(values.max()))
    return bounds


def best_hit(
    state: ScaleState, matrix: np.ndarray, hubs: np.ndarray, config: SearchConfig,
    candidates: int = 64, min_stop: int | None = None, linked: np.ndarray | None = None,
    floor: float = -np.inf,
) -> tuple[float, Hit] | None:
    """Return the strongest remaining hit of one scale, as (score / threshold, hit).

    With `min_stop`, only the intervals and single elements that end at bin
    `min_stop` of this scale or later are considered. `linked` is
    `linked_devices(matrix, hubs)`, which `connected_best` computes when it is not
    given.

    `floor` is the best ratio the caller already has from another scale. The
    connected search is skipped for every interval whose bound stays below it
    (`_below`) or below the strongest single-element hit, which is found first.
    At each level, it is also skipped where `pruned_bounds` stays below 1, the
    floor or the best hit so far.
    The result is therefore exact whenever its ratio is at least `floor`. Below
    `floor`, a weaker hit or None may be returned instead.

    The connected search of an interval runs at each level alpha whose
    unconstrained score could still beat the best hit so far, strongest first. The
    level that is best without the constraint can be the wrong one with it. One
    device with a few very small p-values (a stuck sensor) loses at a moderate
    level to a scattered set of devices with many moderately small ones. That set
    is not connected, and the device alone passes at a small level.
    """
    evidence = state.evidence()
    longest = max(state.thresholds, default=0)
    intervals, best, alpha_index, members = scan_intervals(
        evidence, state.runs,
        replace(config, max_interval_bins=max(1, min(config.max_interval_bins, longest))),
        min_stop)
    # An interval's hit is kept over the single-element hit unless that one scores
    # higher, so an interval whose bound stays below it needs no connected search.
    single = _single_hit(state, min_stop)
    if single is not None:
        floor = max(floor, single[0])
    result: tuple[float, Hit] | None = None
    if len(intervals) and longest:
        limit = np.array([threshold_for(state.thresholds, int(b - a)) for a, b in intervals])
        ratio = best / limit
        for row in np.argsort(-ratio)[:candidates]:
            if ratio[row] <= 1:
                break
            if _below(ratio[row], max(floor, result[0] if result else -np.inf)):
                # Rows come by decreasing ratio, so no later row can beat it either.
                break
            start, stop = intervals[row]
            counts, totals = evidence.interval(np.array([start]), np.array([stop]))
            level_scores, sizes, orders = prefix_scan(counts, totals, config.alphas,
                                                      config.statistic)
            pruned = None
            for a in np.argsort(-level_scores[0], kind="stable"):
                bound = level_scores[0, a] / limit[row]
                if bound <= 1 or _below(bound, max(
                        floor, result[0] if result else -np.inf)):
                    break
                if pruned is None:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        pruned = pruned_bounds(counts[0], totals[0], config) / limit[row]
                # A hit needs a ratio above 1 (`_connected_hit`).
                if _below(pruned[a], max(1.0, floor, result[0] if result else -np.inf)):
                    continue
                chosen = members[row] if a == alpha_index[row] else orders[0, a, :sizes[0, a]]
                hit = _connected_hit(state, int(start), int(stop), int(a), chosen,
                                     counts[0], totals[0], float(limit[row]), matrix,
                                     hubs, config, linked)
                if hit is not None and (result is None or hit[0] > result[0]):
                    result = hit
    if single is not None and (result is None or single[0] > result[0]):
        result = single
    return result


def _single_hit(state: ScaleState, min_stop: int | None) -> tuple[float, Hit] | None:
    """Return the strongest remaining single-element hit of one scale, as (score /
    threshold, hit), or None. Among equal ratios the first kind of
    `state.singleton_limits` wins."""
    live_rows = state.active
    if min_stop is not None:
        live_rows = live_rows & (state.elements["bin"].to_numpy() >= min_stop - 1)
    live = state.elements[live_rows]
    result: tuple[float, Hit] | None = None
    for kind, limit_p in state.singleton_limits.items():
        rows = live[(live["kind"] == kind) & (live["p_value"] < limit_p)]
        if rows.empty:
            continue
        row = rows.loc[rows["p_value"].idxmin()]
        threshold = -np.log10(limit_p)
        score = -np.log10(max(float(row["p_value"]), 1e-300))
        ratio = score / threshold
        if result is None or ratio > result[0]:
            devices = [int(row["device_idx"])]
            if int(row["peer_idx"]) >= 0:
                devices.append(int(row["peer_idx"]))
            result = (ratio, Hit(state.scale, int(row["bin"]), int(row["bin"]) + 1,
                                 float(limit_p), score, threshold, devices,
                                 f"single {kind}"))
    return result


def _connected_hit(
    state: ScaleState, start: int, stop: int, level: int, chosen: np.ndarray,
    counts: np.ndarray, totals: np.ndarray, limit: float, matrix: np.ndarray,
    hubs: np.ndarray, config: SearchConfig, linked: np.ndarray | None,
) -> tuple[float, Hit] | None:
    """Return (score / limit, hit) for the connected, pruned subset near `chosen` at
    alpha `config.alphas[level]`, or None when it does not pass `limit`.

    Args:
        counts: shape [N, A], the interval's counts at every level.
        totals: shape [N], the interval's elements per device.
    """
    alpha = config.alphas[level]
    if config.connectivity:
        _, chosen = connected_best(counts[:, level], totals, alpha, chosen, matrix, hubs,
                                   config.statistic, linked)
    chosen = prune_members(chosen, counts[:, level], totals, alpha, config, counts)
    value = float(STATISTICS[config.statistic](counts[chosen, level].sum(),
                                               totals[chosen].sum(), alpha))
    if not (value > limit and len(chosen)):
        return None
    # A threshold of 0 (a family whose null scores are all 0) gives an infinite
    # ratio, as in `best_hit`.
    with np.errstate(divide="ignore"):
        ratio = float(np.float64(value) / np.float64(limit))
    return ratio, Hit(state.scale, start, stop, alpha, value, limit,
                      [int(d) for d in chosen], f"length {stop - start}")


# Relative margin on the bound of `_below`. It is far above the rounding error of
# a float64 sum of n counts, at most about n * 1.1e-16 relative.
BOUND_MARGIN = 1e-6


def _below(bound: float, floor: float) -> bool:
    """Return whether a hit whose unconstrained ratio is `bound` stays below `floor`.

    The prefix scan's score of an interval is the maximum over all device subsets
    at its level (linear-time subset scanning), so the connected, pruned subset
    that `best_hit` scores there cannot exceed it. Its sums are taken in another
    order, so the bound gets a relative margin for rounding.
    """
    return bound * (1 + BOUND_MARGIN) < floor


def detect(
    states: list[ScaleState], num_devices: int, num_bins: int, links: np.ndarray,
    kinds: np.ndarray, config: SearchConfig, aftermath: int = 0,
    min_stop: int | None = None,
) -> list[Incident]:
    """Take incidents out strongest first, across every scale.

    Each round finds the strongest hit of any scale (relative to its threshold),
    refines its interval, records it, and removes every element of its devices in
    that interval from every scale before the next round. Two anomalies that share
    a time window therefore become two incidents, and the many weaker intervals
    that contain a strong anomaly do not become incidents of their own.

    The model reads up to `aftermath` base bins of past input, so for that long after
    an incident its devices' residuals still carry it (a device back from silence is
    reconstructed from a window that contains the silence). A later hit on devices of an
    incident within that many bins of its end joins the incident.

    With `min_stop` (base bins), each scale only considers the intervals and single
    elements that end at `min_stop` or later, so a scale whose last bin ends before
    it finds nothing. The online path passes the end of the bin that just closed.
    """
    matrix, hubs = adjacency(num_devices, links, kinds, config.hub_kinds)
    linked = linked_devices(matrix, hubs) if config.connectivity else None
    incidents: list[Incident] = []
    while len(incidents) < config.max_incidents:
        # Each scale searches only for hits that can beat the earlier scales' best.
        # A hit that only ties is not needed, because `max` keeps the first.
        found = []
        for state in states:
            floor = max((item[0] for item in found), default=-np.inf)
            result = best_hit(state, matrix, hubs, config,
                              min_stop=_coarse_stop(min_stop, state.scale), linked=linked,
                              floor=floor)
            if result is not None:
                found.append((result[0], state, result[1]))
        if not found:
            break
        ratio, state, hit = max(found, key=lambda item: item[0])
        hit.devices = _split_in_time(state, hit, config)
        start, stop, alpha = _refine(state, hit, config)
        start, stop = _split_quiet(state, hit.devices, start, stop, alpha, config,
                                   -(-aftermath // state.scale),
                                   _coarse_stop(min_stop, state.scale))
        base_start = start * state.scale
        base_stop = min(stop * state.scale, num_bins)
        fine = min(states, key=lambda item: item.scale)
        if fine.scale == 1 < state.scale:
            # A quiet stretch shorter than a few coarse bins shows only at the
            # finest scale.
            base_start, base_stop = _split_quiet(fine, hit.devices, base_start, base_stop,
                                                 alpha, config, aftermath, min_stop)
            start, stop = base_start // state.scale, -(-base_stop // state.scale)
            removed = (base_start, base_stop)
            base_start, base_stop = _place_ends(fine, hit.devices, base_start, base_stop,
                                                state.scale, alpha, config)
        else:
            removed = (base_start, base_stop)
        base_start, base_stop = _widen(states, hit, base_start, base_stop, num_bins, config,
                                       aftermath)
        incidents.append(Incident(base_start, base_stop, state.scale, alpha, hit.score,
                                  hit.threshold, hit.devices, [hit]))
        devices = state.dominant(hit.devices, start, stop, alpha, config.member_min_magnitude)
        process = state.is_process(devices, start, stop, alpha)
        incidents[-1].process = process
        absorbed = _absorb(incidents[:-1], devices, base_start, base_stop, matrix,
                           hubs if process else np.zeros_like(hubs), process, aftermath)
        if absorbed is not None:
            incidents.pop()
            absorbed.devices = sorted(set(absorbed.devices) | set(devices))
            absorbed.hits.append(hit)
            if base_start <= absorbed.stop and absorbed.start <= base_stop:
                # An overlapping hit widens the incident to cover both.
                absorbed.start = min(absorbed.start, base_start)
                absorbed.stop = max(absorbed.stop, base_stop)
        else:
            incidents[-1].devices = devices
        reached = devices + state.targets(devices, start, stop, alpha)
        for other in states:
            other.remove(reached, min(base_start, removed[0]), max(base_stop, removed[1]),
                         config.alphas)
    return incidents


def _coarse_stop(base_stop: int | None, scale: int) -> int | None:
    """Return the smallest interval stop, in bins of `scale`, at or after base bin
    `base_stop`."""
    return None if base_stop is None else -(-base_stop // scale)


def merge_fragments(incidents: list[Incident], gap: int) -> list[Incident]:
    """Join an incident to another of the same kind (process or communication) that
    contains all its devices, scores at least as high and lies within `gap` base
    bins of it. The joined interval is their union.

    Removing a strong hit's elements can leave a few bins at its edges that the scan
    finds again on their own. Such a fragment is weaker than the hit it comes from.
    An incident that outscores the one around it is an event of its own (a second
    attack on the same controller a day later, say) and stays apart.
    """
    merged: set[int] = set()
    for position, incident in enumerate(incidents):
        if position in merged:
            continue
        for other_position, other in enumerate(incidents):
            if (other_position == position or other_position in merged
                    or other.process != incident.process
                    or not set(other.devices) <= set(incident.devices)
                    or other.score > incident.score
                    or len(other.devices) == len(incident.devices)
                    and other.score == incident.score and other_position < position
                    or other.start > incident.stop + gap or incident.start > other.stop + gap):
                continue
            merged.add(other_position)
            incident.hits += other.hits
            incident.start = min(incident.start, other.start)
            incident.stop = max(incident.stop, other.stop)
    return [incident for position, incident in enumerate(incidents) if position not in merged]


def gather_scans(
    incidents: list[Incident], novel_pairs: np.ndarray, active: np.ndarray, fanout: int,
) -> list[Incident]:
    """Give each scan one incident, with its source as the device.

    A host that a scan reaches receives traffic from a source it never saw, so its
    own elements can be the strongest evidence of the run. Found first, it would
    become an incident of its own, with the source as a member of it or of another.
    A device that opens at least `fanout` pairs the reference never saw within one
    bin of a communication incident is a scan source. The incident then has the
    sources as its devices, and the hosts they reached stop being devices. A later
    communication incident over the same time whose devices are all such hosts
    joins it.

    Args:
        novel_pairs: shape [Q, 2], (src, dst) of the pairs absent from the reference.
        active: shape [T, Q], bool, the pair carries events in the base bin.
    """
    merged: set[int] = set()
    for position, incident in enumerate(incidents):
        if position in merged or incident.process or len(novel_pairs) == 0:
            continue
        lower, upper = max(incident.start - 1, 0), incident.stop + 1
        live = active[lower:upper].any(axis=0)
        src, dst = novel_pairs[live, 0], novel_pairs[live, 1]

        def peers(device: int) -> set[int]:
            return set(dst[src == device].tolist()) | set(src[dst == device].tolist())

        sources = set()
        for device in incident.devices:
            for candidate in {device} | peers(device):
                if len(peers(candidate)) >= fanout:
                    sources.add(candidate)
        if not sources:
            continue
        reached = set().union(*(peers(source) for source in sources)) - sources
        for other_position, other in enumerate(incidents):
            if (other_position == position or other_position in merged or other.process
                    or not (other.start < upper and lower < other.stop)
                    or not set(other.devices) <= reached | sources):
                continue
            merged.add(other_position)
            incident.hits += other.hits
            incident.start, incident.stop = min(incident.start, other.start), max(incident.stop, other.stop)
        incident.devices = sorted(sources | (set(incident.devices) - reached))
        incident.targets = sorted(reached)
    return [incident for position, incident in enumerate(incidents) if position not in merged]


def _absorb(
    incidents: list[Incident], devices: list[int], start: int, stop: int,
    matrix: np.ndarray, hubs: np.ndarray, process: bool, aftermath: int = 0,
) -> Incident | None:
    """The incident a new hit belongs to: one that overlaps it in time and whose
    devices are linked to the hit's. Process hits also join across one hub, because
    the field devices of one PLC share a process. Communication hits join only
    through a direct link, so two workstations that both talk to a SCADA server
    stay apart. Touching intervals count as overlapping. A hit on an incident's own
    devices that starts within `aftermath` bins after its end joins it too."""
    for incident in incidents:
        if (set(devices) <= set(incident.devices)
                and incident.start < stop and start < incident.stop + aftermath):
            return incident
    for incident in incidents:
        # Touching intervals (one stops where the other starts) count as one event.
        if not (start <= incident.stop and incident.start <= stop):
            continue
        if incident.process != process:
            continue
        together = np.array(sorted(set(incident.devices) | set(devices)))
        if len(components(together, matrix, hubs)) == 1:
            return incident
    return None


def _place_ends(
    fine: ScaleState, devices: list[int], start: int, stop: int, scale: int,
    alpha: float, config: SearchConfig,
) -> tuple[int, int]:
    """Move the ends of a coarse interval, base bins [start, stop), to the base bins
    where the devices' evidence begins and ends.

    A coarse bin of `scale` base bins shows only that an anomaly began or ended
    somewhere inside it. Within the first and the last of them, the interval is
    narrowed to the base bins of `fine` (scale 1) in which the devices have more
    p-values at most `alpha` than `alpha` times their elements. An end coarse bin
    without such a base bin is kept whole, since a weak anomaly may show at the
    coarse scale only.
    """
    if alpha not in config.alphas or stop - start < 1:
        return start, stop
    a = config.alphas.index(alpha)
    chosen = np.asarray(devices)
    counts = fine.counts[start:stop, chosen, a].sum(axis=1).astype(np.float64)
    totals = fine.totals[start:stop, chosen].sum(axis=1).astype(np.float64)
    excess = np.flatnonzero(counts - alpha * totals > 1e-9)
    if len(excess) == 0:
        return start, stop
    first, last = start + int(excess[0]), start + int(excess[-1]) + 1
    if first < start + scale:
        start = first
    if last > stop - scale:
        stop = last
    return start, stop


def _widen(
    states: list[ScaleState], hit: Hit, start: int, stop: int, num_bins: int,
    config: SearchConfig, gap: int = 0,
) -> tuple[int, int]:
    """Widen base bins [start, stop) to the best interval of the hit's devices at the
    finest scale, searched within one hit length on either side.

    A coarse hit, one bin of sixteen base bins, shows only roughly when an anomaly
    began and ended, and the finest scale gives it to the bin. The interval only grows:
    a slow drift is clearer at the coarse scale than in any run of base bins. It grows
    over no quiet stretch of `gap` base bins (`quiet_pieces`), so it does not reach
    another anomaly of the same devices.
    """
    fine = min(states, key=lambda item: item.scale)
    if fine.scale >= hit.scale or fine.scale != 1:
        return start, stop
    length = stop - start
    run = next(((a, b) for a, b in fine.runs if a <= start < b), None)
    if run is None:
        return start, stop
    lower, upper = max(run[0], start - length), min(run[1], stop + length, num_bins)
    evidence = fine.evidence()
    single = hit.alpha not in config.alphas
    best, best_alpha = (start, stop, 0.0), None
    for a, alpha in enumerate(config.alphas):
        if single and alpha > 1e-3:
            continue
        found = refine_interval(evidence, hit.devices, a, alpha, lower, upper, config.statistic)
        if found[2] > best[2]:
            best, best_alpha = found, alpha
    if best[2] <= 0 or not (best[0] < stop and start < best[1]):
        return start, stop
    near = [(a, b) for a, b in quiet_pieces(fine, hit.devices, best[0], best[1],
                                            best_alpha, config, gap)
            if a < stop and start < b]
    if not near:
        return start, stop
    return min(start, near[0][0]), max(stop, near[-1][1])


def _split_in_time(state: ScaleState, hit: Hit, config: SearchConfig) -> list[int]:
    """The hit's devices whose evidence shares a time span with the strongest group.

    A long interval can hold two anomalies that touch one device (a scan and, later,
    a flood on one of the scanned PLCs), and their sum outscores either alone. Each
    device's core is the shortest span of the hit that contains `CORE_SHARE` of its
    small p-values. Devices are grouped by overlapping cores, and the group with the
    highest statistic is kept. The others stay in the scan and are found in a later
    round. Cores, not best intervals, because a device's residuals linger for a while
    after an anomaly ends and would stretch its best interval into the next one.
    """
    if len(hit.devices) <= 1 or hit.alpha not in config.alphas:
        return hit.devices
    a = config.alphas.index(hit.alpha)
    function = STATISTICS[config.statistic]
    evidence = state.evidence()
    devices = np.asarray(hit.devices)
    per_bin = np.diff(evidence.counts[hit.start : hit.stop + 1, devices, a], axis=0)
    spans = np.array([_core(per_bin[:, i]) for i in range(len(devices))]) + hit.start
    overlap = (spans[:, None, 0] < spans[None, :, 1]) & (spans[None, :, 0] < spans[:, None, 1])
    groups = components(np.arange(len(devices)), overlap, np.zeros(len(devices), dtype=bool))
    if len(groups) == 1:
        return hit.devices

    def value(group: np.ndarray) -> float:
        lower, upper = spans[group, 0].min(), spans[group, 1].max()
        chosen = devices[group]
        inside_counts = evidence.counts[upper, chosen, a] - evidence.counts[lower, chosen, a]
        inside_totals = evidence.totals[upper, chosen] - evidence.totals[lower, chosen]
        return float(function(inside_counts.sum(), inside_totals.sum(), hit.alpha))

    best = max(groups, key=value)
    hit.score = value(best)
    return [int(d) for d in devices[best]]


CORE_SHARE = 0.8


def _core(counts: np.ndarray) -> tuple[int, int]:
    """Shortest [start, stop) of `counts` (per bin) holding `CORE_SHARE` of the sum."""
    total = counts.sum()
    if total <= 0:
        return 0, len(counts)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    need = CORE_SHARE * total - 1e-9
    best = (0, len(counts))
    for start in range(len(counts)):
        stop = int(np.searchsorted(cumulative, cumulative[start] + need, side="left"))
        if stop <= len(counts) and stop - start < best[1] - best[0]:
            best = (start, max(stop, start + 1))
    return best


def _split_quiet(
    state: ScaleState, devices: list[int], start: int, stop: int, alpha: float,
    config: SearchConfig, gap: int, min_stop: int | None = None,
) -> tuple[int, int]:
    """Cut [start, stop) at its quiet stretches and return the strongest piece.

    The statistic grows with the evidence it sums, so one interval over two
    anomalies of the same devices, days apart, can outscore either alone. The
    piece with the highest statistic is kept (`quiet_pieces`), and the others stay
    in the scan for later rounds. With `min_stop`, only pieces that end at or after
    it count.
    """
    pieces = quiet_pieces(state, devices, start, stop, alpha, config, gap)
    if len(pieces) <= 1:
        return start, stop
    a = config.alphas.index(alpha)
    evidence = state.evidence()
    chosen = np.asarray(devices)
    function = STATISTICS[config.statistic]
    best, best_value = (start, stop), -np.inf
    for lower, upper in pieces:
        if min_stop is not None and upper < min_stop:
            continue
        counts = evidence.counts[upper, chosen, a] - evidence.counts[lower, chosen, a]
        totals = evidence.totals[upper, chosen] - evidence.totals[lower, chosen]
        value = float(function(float(counts.sum()), float(totals.sum()), alpha))
        if value > best_value:
            best, best_value = (lower, upper), value
    return best


def quiet_pieces(
    state: ScaleState, devices: list[int], start: int, stop: int, alpha: float,
    config: SearchConfig, gap: int,
) -> list[tuple[int, int]]:
    """Return the pieces of [start, stop) between its quiet stretches.

    A quiet stretch is at least `gap` bins in which the devices have no more
    p-values at most `alpha` than `alpha` times their elements: no excess at all.
    Without one, the whole interval is the only piece.
    """
    if gap < 1 or alpha not in config.alphas or stop - start < 2 * gap + 1:
        return [(start, stop)]
    a = config.alphas.index(alpha)
    evidence = state.evidence()
    chosen = np.asarray(devices)
    counts = np.diff(evidence.counts[start:stop + 1, chosen, a].sum(axis=1).astype(np.float64))
    totals = np.diff(evidence.totals[start:stop + 1, chosen].sum(axis=1).astype(np.float64))
    running = np.concatenate([[0.0], np.cumsum(counts - alpha * totals)])
    quiet_from = np.flatnonzero(running[gap:] - running[:-gap] <= 1e-9)
    if len(quiet_from) == 0:
        return [(start, stop)]
    # Mark every bin of every quiet window of `gap` bins.
    marks = np.zeros(len(counts) + 1)
    np.add.at(marks, quiet_from, 1.0)
    np.add.at(marks, quiet_from + gap, -1.0)
    quiet = np.cumsum(marks)[:-1] > 0
    edges = np.flatnonzero(np.diff(np.concatenate([[1], quiet.astype(np.int8), [1]])))
    return [(start + int(lower), start + int(upper))
            for lower, upper in zip(edges[::2], edges[1::2])] or [(start, stop)]


def _refine(state: ScaleState, hit: Hit, config: SearchConfig) -> tuple[int, int, float]:
    """Best interval of the hit's devices within one hit length on either side."""
    length = hit.stop - hit.start
    run = next(((a, b) for a, b in state.runs if a <= hit.start < b), (hit.start, hit.stop))
    lower = max(run[0], hit.start - length)
    upper = min(run[1], hit.stop + length)
    evidence = state.evidence()
    best = (hit.start, hit.stop, 0.0, hit.alpha)
    single = hit.alpha not in config.alphas
    for a, alpha in enumerate(config.alphas):
        if (not single and alpha != hit.alpha) or (single and alpha > 1e-3):
            continue
        start, stop, value = refine_interval(evidence, hit.devices, a, alpha, lower, upper,
                                             config.statistic)
        if value > best[2]:
            best = (start, stop, value, alpha)
    return best[0], best[1], best[3]


def linked_devices(matrix: np.ndarray, hubs: np.ndarray) -> np.ndarray:
    """Return bool [N, N], the relation `components` joins devices by: linked
    directly or both linked to one hub."""
    to_hubs = matrix[:, hubs].astype(np.float32)
    linked = matrix | ((to_hubs @ to_hubs.T) > 0)
    np.fill_diagonal(linked, False)
    return linked
