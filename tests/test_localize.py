"""Tests for core.localize on hand-built element tables and small graphs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core import localize
from core.config import SearchConfig
from core.localize import (
    BRIDGE_CELLS,
    BRIDGE_HOPS,
    Family,
    ScaleElements,
    ScaleState,
    Tail,
    adjacency,
    build_evidence,
    components,
    connected_best,
    _linked_components,
    _paths_to,
    detect,
    device_weights,
    grow_connected,
    linked_devices,
    mark_novel,
    singleton_families,
    singleton_limit,
)
from core.scan import STATISTICS, berk_jones, exact_connected_scan, prefix_scan

ALPHAS = (0.01, 0.1)


def _elements(rows: list[tuple[str, int, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["kind", "device_idx", "peer_idx", "bin", "p_value"])


def test_build_evidence_counts_pair_for_both_ends():
    elements = _elements([
        ("pair", 0, 2, 1, 0.001),
        ("sensor", 1, -1, 1, 0.05),
        ("device", 0, -1, 2, 0.5),
    ])

    evidence = build_evidence(elements, num_devices=3, num_bins=3, alphas=ALPHAS)
    counts, totals = evidence.interval(np.array([1]), np.array([2]))

    assert evidence.counts.shape == (4, 3, 2)
    assert evidence.totals.shape == (4, 3)
    assert totals[0].tolist() == [1, 1, 1]
    assert counts[0, :, 0].tolist() == [1, 0, 1]
    assert counts[0, :, 1].tolist() == [1, 1, 1]
    assert evidence.totals[-1].tolist() == [2, 1, 1]


def test_build_evidence_empty_elements():
    evidence = build_evidence(_elements([]), num_devices=2, num_bins=4, alphas=ALPHAS)

    assert evidence.counts.shape == (5, 2, 2)
    assert evidence.counts.sum() == 0
    assert evidence.totals.sum() == 0


def test_components_join_through_hub():
    # Devices 0 and 1 both link to device 3 and to nothing else.
    links = np.array([[0, 3], [1, 3]])
    members = np.array([0, 1, 2])

    matrix, hubs = adjacency(4, links, np.array(["rtu", "rtu", "rtu", "plc"]), ("plc",))
    joined = components(members, matrix, hubs)
    matrix, hubs = adjacency(4, links, np.array(["rtu", "rtu", "rtu", "rtu"]), ("plc",))
    apart = components(members, matrix, hubs)

    assert [part.tolist() for part in joined] == [[0, 1], [2]]
    assert [part.tolist() for part in apart] == [[0], [1], [2]]


def test_components_direct_link():
    matrix, hubs = adjacency(3, np.array([[2, 0]]), np.array(["a", "b", "c"]), ())

    parts = components(np.array([0, 1, 2]), matrix, hubs)

    assert [part.tolist() for part in parts] == [[0, 2], [1]]


def test_connected_best_prefers_star_over_decoy():
    # A star 0-{1,2,3}, a linked decoy pair 4-5, and a quiet neighbour 6 of 0.
    links = np.array([[0, 1], [0, 2], [0, 3], [4, 5], [0, 6]])
    matrix, hubs = adjacency(7, links, np.array(["x"] * 7), ())
    counts = np.array([8.0, 8.0, 8.0, 8.0, 9.0, 9.0, 0.0])
    totals = np.full(7, 10.0)
    members = np.array([0, 1, 2, 3, 4, 5])
    alpha = 0.05

    value, chosen = connected_best(counts, totals, alpha, members, matrix, hubs, "bj")

    assert chosen.tolist() == [0, 1, 2, 3]
    assert value == pytest.approx(float(berk_jones(32, 40, alpha)), rel=1e-12)
    assert value > float(berk_jones(18, 20, alpha))


def test_connected_best_grows_by_neighbour():
    # The unconstrained optimum misses device 2, which still raises the score.
    links = np.array([[0, 1], [1, 2]])
    matrix, hubs = adjacency(3, links, np.array(["x"] * 3), ())
    counts = np.array([10.0, 10.0, 6.0])
    totals = np.full(3, 10.0)

    value, chosen = connected_best(counts, totals, 0.01, np.array([0, 1]), matrix, hubs,
                                   "bj")

    assert chosen.tolist() == [0, 1, 2]
    assert value == pytest.approx(float(berk_jones(26, 30, 0.01)), rel=1e-12)


def test_connected_best_crosses_quiet_star_centre():
    # Leaves 1-3 are abnormal, the centre 0 is quiet: each leaf alone is its own
    # component, and only a step that adds the centre with its leaves joins them.
    links = np.array([[0, 1], [0, 2], [0, 3], [0, 4]])
    matrix, hubs = adjacency(5, links, np.array(["x"] * 5), ())
    counts = np.array([0.0, 9.0, 8.0, 7.0, 0.0])
    totals = np.full(5, 10.0)

    value, chosen = connected_best(counts, totals, 0.01, np.array([1, 2, 3]), matrix,
                                   hubs, "bj")

    assert chosen.tolist() == [0, 1, 2, 3]
    assert value == pytest.approx(float(berk_jones(24, 40, 0.01)), rel=1e-12)


def test_connected_best_crosses_quiet_path():
    # Devices 0 and 4 are abnormal, joined only through quiet devices 1-3.
    links = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]])
    matrix, hubs = adjacency(6, links, np.array(["x"] * 6), ())
    counts = np.array([6.0, 0.0, 0.0, 0.0, 5.0, 0.0])
    totals = np.array([8.0, 2.0, 1.0, 2.0, 6.0, 9.0])

    value, chosen = connected_best(counts, totals, 1e-4, np.array([0, 4]), matrix, hubs,
                                   "bj")

    assert chosen.tolist() == [0, 1, 2, 3, 4]
    assert value == pytest.approx(float(berk_jones(11, 19, 1e-4)), rel=1e-12)


SEARCH_ALPHAS = SearchConfig().alphas


def _random_graph(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """Links [L, 2] of a star, a random tree, a sparse random graph, or three trees
    with no link between them (decoy components)."""
    if shape == "star":
        return np.array([[0, v] for v in range(1, size)])
    if shape == "tree":
        return np.array([[int(rng.integers(0, v)), v] for v in range(1, size)])
    if shape == "sparse":
        upper = np.triu(rng.random((size, size)) < 2.5 / size, 1)
        return np.argwhere(upper).reshape(-1, 2)
    cuts = sorted(rng.choice(np.arange(2, size - 1), size=2, replace=False).tolist())
    links = []
    for lower, upper in ((0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], size)):
        links += [[int(rng.integers(lower, v)), v] for v in range(lower + 1, upper)]
    return np.array(links).reshape(-1, 2)


def _planted_evidence(
    rng: np.random.Generator, shape: str, matrix: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts [N, A] and totals [N] from drawn p-values: a connected planted set
    pulls its p-values towards 0, a star may have a quiet centre with abnormal
    leaves, and decoy graphs get abnormal devices in every component."""
    size = len(matrix)
    totals = rng.integers(0, 15, size).astype(float)
    power = np.ones(size)
    planted, frontier = [int(rng.integers(size))], []
    frontier.append(planted[0])
    wanted = int(rng.integers(1, max(2, size // 3)))
    while frontier and len(planted) < wanted:
        node = frontier.pop(0)
        for other in np.flatnonzero(matrix[node]).tolist():
            if other not in planted and len(planted) < wanted and rng.random() < 0.7:
                planted.append(other)
                frontier.append(other)
    power[planted] = rng.choice([0.05, 0.1, 0.3], len(planted))
    if shape == "star" and rng.random() < 0.5:
        power[0] = 1.0
        power[1:][rng.random(size - 1) < 0.4] = 0.1
    if shape == "decoy":
        others = rng.choice(size, size=max(1, size // 4), replace=False)
        power[others] = np.minimum(power[others], rng.choice([0.05, 0.2], len(others)))
    counts = np.zeros((size, len(SEARCH_ALPHAS)))
    for device in range(size):
        p_values = rng.random(int(totals[device])) ** (1 / power[device])
        counts[device] = [(p_values <= alpha).sum() for alpha in SEARCH_ALPHAS]
    return counts, totals


def test_connected_best_near_exact_search():
    """On 100 random graphs of 5 to 20 devices, the fast connected search reaches at
    least 95% of the best connected score over all subsets (max over alpha)."""
    rng = np.random.default_rng(20261204)
    ratios, per_alpha = [], []
    for graph in range(100):
        shape = ("star", "tree", "sparse", "decoy")[graph % 4]
        size = int(rng.integers(5, 21))
        links = _random_graph(rng, shape, size)
        kinds = np.array(["field"] * size)
        if shape == "sparse" and rng.random() < 0.5:
            kinds[int(rng.integers(size))] = "scada"
        matrix, hubs = adjacency(size, links, kinds, ("scada",))
        counts, totals = _planted_evidence(rng, shape, matrix)
        linked = linked_devices(matrix, hubs)
        _, prefix_size, order = prefix_scan(counts[None], totals[None], SEARCH_ALPHAS)
        fast, exact = [], []
        for a, alpha in enumerate(SEARCH_ALPHAS):
            members = order[0, a, : prefix_size[0, a]]
            value, chosen = connected_best(counts[:, a], totals, alpha, members, matrix,
                                           hubs, "bj")
            best, _ = exact_connected_scan(counts[:, a], totals, alpha, linked)
            assert value <= best + 1e-9 * max(1.0, best), (graph, a)
            if len(chosen):
                assert len(components(chosen, matrix, hubs)) == 1, (graph, a)
            fast.append(value)
            exact.append(best)
            if best > 0:
                per_alpha.append(value / best)
        ratios.append(max(fast) / max(exact) if max(exact) > 0 else 1.0)

    ratios = np.array(ratios)
    print(f"\nfast / exact connected score over 100 graphs: min {ratios.min():.3f}, "
          f"5th percentile {np.percentile(ratios, 5):.3f}, "
          f"median {np.median(ratios):.3f}; per alpha: min {min(per_alpha):.3f}, "
          f"share below 0.95 {np.mean(np.array(per_alpha) < 0.95):.3f}")
    worst = int(ratios.argmin())
    assert ratios.min() >= 0.95, f"graph {worst} reaches {ratios.min():.3f} of exact"


def test_singleton_limits_small_null():
    null = _elements([("sensor", 0, -1, b, 0.5) for b in range(50)])
    scored = _elements([("sensor", 0, -1, b, 0.5) for b in range(40)]
                       + [("pair", 0, 1, b, 0.5) for b in range(10)])

    families = singleton_families(null, scored)
    limits = {kind: singleton_limit(family, 0.05) for kind, family in families.items()}

    assert limits["sensor"] == pytest.approx(0.05 / 40)
    assert limits["pair"] == pytest.approx(0.05 / 10)
    assert set(limits) == {"sensor", "pair"}


def test_singleton_limit_overconfident_null():
    # Null p-values are ten times too small in their tail, and the limit follows them.
    rng = np.random.default_rng(3)
    p = rng.uniform(size=20000)
    p[p < 0.01] /= 10
    null = _elements([("sensor", 0, -1, b, v) for b, v in enumerate(p)])
    scored = _elements([("sensor", 0, -1, b, 0.5) for b in range(1000)])

    limit = singleton_limit(singleton_families(null, scored)["sensor"], 0.05)

    assert limit < 0.05 / 1000 / 3


def test_tail_quantile_matches_exponential():
    rng = np.random.default_rng(7)
    tail = Tail.fit(rng.exponential(scale=2.0, size=5000))

    for probability in (1e-3, 1e-5):
        exact = -2.0 * np.log(probability)
        assert tail.quantile(probability) == pytest.approx(exact, rel=0.12)
        assert tail.survival(tail.quantile(probability)) == pytest.approx(probability)


def test_tail_few_scores_uses_largest():
    tail = Tail.fit(np.array([1.0, 4.0, 2.0]))

    assert tail.quantile(1e-6) == 4.0
    assert tail.survival(0.5) == 1.0


@pytest.mark.parametrize("law, lowest", [("exponential", 0.01), ("gamma", 0.01),
                                         ("half-normal", 0.0)])
def test_family_thresholds_hold_family_wise_level(law, lowest):
    """Three families of different sizes, thresholds from a null sample of 3,000
    scores each, and 4,000 simulated normal periods: the share of periods where any
    test passes its family's threshold is at most the level, up to sampling error.
    For tails like the exponential's it is also near the level. A tail lighter than
    that (half-normal) is fitted as exponential, which only makes it safer."""
    rng = np.random.default_rng(11)

    def draw(size):
        if law == "exponential":
            return rng.exponential(size=size)
        if law == "gamma":
            return rng.gamma(3.0, size=size)
        return np.abs(rng.normal(size=size))

    tests = [1000, 200, 30]
    level = 0.05
    budget = level / len(tests)
    families = [Family(Tail.fit(draw(3000)), n) for n in tests]
    thresholds = [family.threshold(budget) for family in families]
    periods = 4000
    alarms = np.zeros(periods, dtype=bool)
    for family_tests, threshold in zip(tests, thresholds):
        alarms |= (draw((periods, family_tests)) > threshold).any(axis=1)

    print(f"\n{law}: share of normal periods with a false alarm {alarms.mean():.4f}")
    assert lowest <= alarms.mean() <= level + 3 * np.sqrt(level / periods)
    # The p-value of a score at a family's threshold is the level it was set at.
    assert families[0].expected(thresholds[0], len(tests)) == pytest.approx(level)


def _planted_state() -> ScaleState:
    """Build 4 devices with 3 elements each per bin over 32 bins and p-values in
    [0.2, 1], except p = 1e-5 on every element of device 2 in bins 10 to 14."""
    rng = np.random.default_rng(4)
    rows = []
    for t in range(32):
        for device in range(4):
            for _ in range(3):
                p = 1e-5 if device == 2 and 10 <= t < 15 else rng.uniform(0.2, 1.0)
                rows.append(("sensor", device, -1, t, p))
    return _sensor_state(rows, 4, 15.0)


def _sensor_state(rows: list, num_devices: int, threshold: float) -> ScaleState:
    """Build a one-scale state of 32 bins from sensor `rows`, with `threshold` for
    every interval length and no single element passing alone."""
    scale_elements = ScaleElements(scale=1, num_bins=32, elements=_elements(rows),
                                   runs=[(0, 32)])
    thresholds = {length: threshold for length in (1, 2, 4, 8, 16, 32)}
    return ScaleState.build(scale_elements, num_devices, SearchConfig().alphas, thresholds,
                            {"sensor": 1e-12})


def test_detect_planted_device_interval():
    state = _planted_state()
    config = SearchConfig(max_incidents=5)
    links = np.array([[0, 1], [1, 2], [2, 3]])
    kinds = np.array(["rtu", "plc", "rtu", "rtu"])

    incidents = detect([state], num_devices=4, num_bins=32, links=links, kinds=kinds,
                       config=config)

    assert len(incidents) == 1
    incident = incidents[0]
    assert incident.devices == [2]
    assert incident.start == 10
    assert incident.stop == 15
    assert incident.alpha == 1e-5
    assert incident.score > incident.threshold


def test_detect_nothing_below_threshold():
    state = _planted_state()
    state.thresholds = {length: 1e6 for length in state.thresholds}
    config = SearchConfig(max_incidents=5)

    incidents = detect([state], num_devices=4, num_bins=32, links=np.zeros((0, 2), int),
                       kinds=np.array(["rtu"] * 4), config=config)

    assert incidents == []


def test_detect_splits_two_anomalies_sharing_a_device():
    """Device 0 scans devices 1 and 3-7 in bins 2-4; devices 1 and 2 are abnormal in
    bins 14-21. The interval over both, with devices 0, 1 and 2, outscores either
    alone, but they are reported as two incidents."""
    rng = np.random.default_rng(5)
    rows = []
    for t in range(32):
        for device in range(8):
            for _ in range(3):
                abnormal = device in (1, 2) and 14 <= t < 22
                rows.append(("sensor", device, -1, t, 1e-5 if abnormal else rng.uniform(0.2, 1)))
        if 2 <= t < 5:
            rows += [("pair", 0, host, t, 1e-5) for host in (1, 3, 4, 5, 6, 7)]
    elements = _elements(rows)
    elements["score"] = -np.log10(elements["p_value"])
    scale_elements = ScaleElements(scale=1, num_bins=32, elements=elements, runs=[(0, 32)])
    # Null thresholds grow slowly with the interval length, as on real residuals.
    thresholds = {2 ** k: 20.0 * 1.1 ** k for k in range(6)}
    state = ScaleState.build(scale_elements, 8, SearchConfig().alphas, thresholds,
                             {"sensor": 1e-12, "pair": 1e-12})
    links = np.array([[0, 1], [1, 2], [1, 3], [1, 4], [1, 5], [1, 6], [1, 7]])

    incidents = detect([state], num_devices=8, num_bins=32, links=links,
                       kinds=np.array(["ews", "plc", "rtu", "rtu", "rtu", "rtu", "rtu", "rtu"]),
                       config=SearchConfig(max_incidents=5))

    spans = sorted((i.start, i.stop, i.devices) for i in incidents)
    assert [(start, stop) for start, stop, _ in spans] == [(2, 5), (14, 22)]
    assert 0 in spans[0][2]
    assert 2 not in spans[0][2]
    assert spans[1][2] == [1, 2]


def _sparse_and_scattered_state() -> ScaleState:
    """Build 21 unlinked devices with 5 elements each per bin over 32 bins. In bins
    8 to 15, one element of device 0 has p = 5e-7. In every bin, one element of
    each of devices 1 to 20 has p = 0.05. Other p-values lie in [0.2, 1]."""
    rng = np.random.default_rng(8)
    rows = []
    for t in range(32):
        for device in range(21):
            for k in range(5):
                p = rng.uniform(0.2, 1.0)
                if device == 0 and k == 0 and 8 <= t < 16:
                    p = 5e-7
                elif device > 0 and k == 0:
                    p = 0.05
                rows.append(("sensor", device, -1, t, p))
    return _sensor_state(rows, 21, 50.0)


def test_detect_tries_each_level_under_connectivity():
    """Without the constraint, alpha = 0.05 is the best level of every interval: the
    20 scattered devices together outscore device 0. No two of them are linked, and
    each alone stays below the threshold. Device 0 alone passes at alpha = 1e-6,
    so the search must go on to that level."""
    state = _sparse_and_scattered_state()
    evidence = state.evidence()
    levels = SearchConfig().alphas
    intervals = localize.dyadic_intervals(0, 32, 32)
    counts, totals = evidence.interval(intervals[:, 0], intervals[:, 1])
    scores, _, _ = prefix_scan(counts, totals, levels)
    assert {levels[a] for a in scores.argmax(axis=1)} == {0.05}

    incidents = detect([state], num_devices=21, num_bins=32, links=np.zeros((0, 2), int),
                       kinds=np.array(["rtu"] * 21), config=SearchConfig(max_incidents=5))

    assert [(i.devices, i.start, i.stop) for i in incidents] == [([0], 8, 16)]
    assert incidents[0].alpha == 1e-6


def test_detect_cuts_quiet_stretch_between_bursts():
    """Device 2 is abnormal in bins 10-19 and again in bins 40-49. One interval over
    both outscores either burst, but 20 quiet bins lie between them, longer than
    the model's aftermath of 8 bins, so they are two incidents."""
    rng = np.random.default_rng(6)
    rows = []
    for t in range(64):
        for device in range(4):
            for _ in range(3):
                burst = device == 2 and (10 <= t < 20 or 40 <= t < 50)
                rows.append(("sensor", device, -1, t, 0.005 if burst else rng.uniform(0.02, 1)))
    elements = _elements(rows)
    thresholds = {2 ** k: 15.0 for k in range(7)}

    def run(aftermath):
        scale_elements = ScaleElements(scale=1, num_bins=64, elements=elements.copy(),
                                       runs=[(0, 64)])
        state = ScaleState.build(scale_elements, 4, SearchConfig().alphas, thresholds,
                                 {"sensor": 1e-12})
        return detect([state], num_devices=4, num_bins=64, links=np.array([[0, 1], [1, 2]]),
                      kinds=np.array(["rtu", "plc", "rtu", "rtu"]),
                      config=SearchConfig(max_incidents=5), aftermath=aftermath)

    joined = run(aftermath=0)
    split = run(aftermath=8)

    assert [(i.start, i.stop) for i in joined] == [(10, 50)]
    assert sorted((i.start, i.stop) for i in split) == [(10, 20), (40, 50)]
    assert all(i.devices == [2] for i in split)


def _four_device_state(scale: int, bins: int, elements: pd.DataFrame, threshold: float,
                       lengths: int) -> ScaleState:
    """Build a state of 4 devices at `scale` with `threshold` for interval lengths 1,
    2, 4, ... (`lengths` of them) and no single element passing alone."""
    scale_elements = ScaleElements(scale=scale, num_bins=bins, elements=elements,
                                   runs=[(0, bins)])
    return ScaleState.build(scale_elements, 4, SearchConfig().alphas,
                            {2 ** k: threshold for k in range(lengths)}, {"sensor": 1e-12})


def test_detect_cuts_coarse_hit_at_fine_quiet_stretch():
    """Device 2 is abnormal in base bins 10-19 and 30-39. At 4 base bins a bin the
    quiet stretch between them is 2 bins, shorter than the aftermath of 10 base
    bins, and only the finest scale shows the 10 quiet base bins."""
    rng = np.random.default_rng(8)

    def rows(scale, bins):
        out = []
        for t in range(bins):
            base = range(t * scale, (t + 1) * scale)
            burst = any(10 <= b < 20 or 30 <= b < 40 for b in base)
            for device in range(4):
                for _ in range(3):
                    abnormal = device == 2 and burst
                    out.append(("sensor", device, -1, t,
                                0.005 if abnormal else rng.uniform(0.02, 1)))
        return _elements(out)

    def run(aftermath):
        states = [_four_device_state(1, 64, rows(1, 64), 1e6, 5),
                  _four_device_state(4, 16, rows(4, 16), 15.0, 5)]
        return detect(states, num_devices=4, num_bins=64, links=np.array([[0, 1], [1, 2]]),
                      kinds=np.array(["rtu", "plc", "rtu", "rtu"]),
                      config=SearchConfig(max_incidents=5), aftermath=aftermath)

    joined = run(aftermath=0)
    split = run(aftermath=10)

    assert [(i.start, i.stop) for i in joined] == [(10, 40)]
    first, second = sorted((i.start, i.stop) for i in split)
    # Each incident covers one burst and none of the other.
    assert first[0] <= 10
    assert 20 <= first[1] <= 30
    assert 20 <= second[0] <= 30
    assert second[1] >= 40


def _incident(start, stop, devices, process=False, score=10.0):
    from core.localize import Incident

    return Incident(start, stop, scale=1, alpha=1e-3, score=score, threshold=5.0,
                    devices=list(devices), process=process)


def test_gather_scans_source_keeps_incident_hosts_become_targets():
    from core.localize import gather_scans

    # Device 0 opens new pairs to hosts 1-5 in bins 10-12; device 6 opens one to 7.
    novel = np.array([[0, h] for h in range(1, 6)] + [[6, 7]])
    active = np.zeros((40, len(novel)), dtype=bool)
    active[10:12, :5] = True
    active[30:35, 5] = True
    incidents = [
        _incident(11, 12, [3]),             # a scanned host, found first
        _incident(10, 12, [0, 2]),          # the source with a host
        _incident(12, 13, [4]),             # another host, one bin later
        _incident(30, 35, [6, 7]),          # a new link, not a scan
        _incident(11, 12, [4], process=True),
    ]

    result = gather_scans(incidents, novel, active, fanout=3)

    assert [(i.start, i.stop, i.devices, i.targets) for i in result] == [
        (10, 13, [0], [1, 2, 3, 4, 5]),
        (30, 35, [6, 7], []),
        (11, 12, [4], []),
    ]


def test_merge_fragments_joins_edge_pieces_of_one_incident():
    from core.localize import merge_fragments

    incidents = [
        _incident(100, 140, [1, 2], process=True),
        _incident(96, 98, [2], process=True),     # just before, its devices inside
        _incident(160, 170, [1], process=True),   # within the gap after
        _incident(100, 110, [2]),                 # communication: another kind
        _incident(300, 310, [1], process=True),   # too far
        _incident(120, 125, [3], process=True),   # another device
    ]

    result = merge_fragments(incidents, gap=35)

    assert [(i.start, i.stop, i.devices) for i in result] == [
        (96, 170, [1, 2]), (100, 110, [2]), (300, 310, [1]), (120, 125, [3])]


def test_merge_keeps_stronger_incident_apart():
    """Two attacks on one controller a day apart: the stronger one, on fewer
    devices, is not a fragment of the weaker one around it."""
    from core.localize import merge_fragments

    incidents = [
        _incident(200, 240, [1], process=True, score=100.0),
        _incident(150, 190, [1, 2], process=True, score=30.0),
        _incident(192, 194, [2], process=True, score=6.0),   # a weak edge piece
        _incident(242, 245, [1], process=True, score=8.0),   # a weak edge piece
    ]

    result = merge_fragments(incidents, gap=35)

    assert [(i.start, i.stop, i.devices, i.score) for i in result] == [
        (200, 245, [1], 100.0), (150, 194, [1, 2], 30.0)]


@pytest.mark.parametrize("aftermath, expected", [(0, 2), (10, 1)])
def test_detect_hit_after_incident_within_model_reach_joins(aftermath, expected):
    """Device 2 is abnormal in bins 10-19 and again, weaker, in bins 23-24, as a
    device's residuals are after it comes back from silence."""
    rng = np.random.default_rng(6)
    rows = []
    for t in range(40):
        for device in range(4):
            for slot in range(3):
                strong = device == 2 and 10 <= t < 20
                after = device == 2 and 23 <= t < 25 and slot == 0
                rows.append(("sensor", device, -1, t,
                             1e-5 if strong or after else rng.uniform(0.2, 1.0)))
    elements = _elements(rows)
    elements["score"] = -np.log10(elements["p_value"])
    state = ScaleState.build(ScaleElements(1, 40, elements, [(0, 40)]), 4,
                             SearchConfig().alphas, {2 ** k: 12.0 for k in range(6)},
                             {"sensor": 1e-12})

    incidents = detect([state], num_devices=4, num_bins=40, links=np.array([[1, 2]]),
                       kinds=np.array(["rtu"] * 4), config=SearchConfig(max_incidents=5),
                       aftermath=aftermath)

    assert len(incidents) == expected
    assert incidents[0].devices == [2]
    assert (incidents[0].start, incidents[0].stop) == (10, 20)


def test_device_weights_deflate_bursty_device():
    """Device 0's p-values are independent. Device 1's small p-values come in
    bursts of 20 bins, as residuals of a device the model misjudges for a while."""
    rng = np.random.default_rng(5)
    bins = np.arange(400)
    steady = rng.uniform(size=(400, 6))
    bursty = rng.uniform(0.2, 1.0, size=(400, 6))
    for start in range(0, 400, 100):
        bursty[start : start + 20] = rng.uniform(0, 0.05, size=(20, 6))
    rows = [("sensor", d, -1, b, p)
            for d, values in ((0, steady), (1, bursty))
            for b in bins for p in values[b]]

    weights = device_weights(_elements(rows), [(0, 400)], num_devices=3)

    assert weights[0] > 0.6
    assert weights[1] < 0.1
    # Device 2 has no elements, so nothing to measure.
    assert weights[2] == 1.0


def test_novel_elements_count_in_full():
    null = _elements([("pair", 0, 1, b, 0.5) for b in range(10)]).assign(column=0)
    scored = pd.concat([
        _elements([("pair", 0, 1, 0, 0.001)]).assign(column=0),
        _elements([("pair", 0, 2, 0, 0.001)]).assign(column=1),
    ], ignore_index=True)
    weights = np.array([0.25, 0.5, 0.5])

    evidence = build_evidence(mark_novel(scored, null), 3, 1, ALPHAS, weights)
    counts, totals = evidence.interval(np.array([0]), np.array([1]))

    # The known pair counts 0.25 at device 0 and 0.5 at device 1; the novel pair
    # (device 0 to device 2, never seen in the null) counts 1 at both ends.
    assert totals[0].tolist() == pytest.approx([1.25, 0.5, 1.0])
    assert counts[0, :, 0].tolist() == pytest.approx([1.25, 0.5, 1.0])


def _grow_one_bridge_at_a_time(chosen, value, counts, totals, alpha, linked, statistic):
    """Grow as `grow_connected` does, but score each bridge move on its own in a
    Python loop over the frontier. This is the reference for the vectorised bridge
    moves. Also return the kind of each move taken."""
    function = STATISTICS[statistic]
    evidence = (totals > 0) & (counts > alpha * totals)
    priority = counts / np.maximum(totals, 1)
    inside = np.zeros(len(counts), dtype=bool)
    inside[chosen] = True
    moves = []
    while True:
        frontier = np.flatnonzero(linked[inside].any(axis=0) & ~inside)
        if len(frontier) == 0:
            break
        base_count, base_total = counts[inside].sum(), totals[inside].sum()
        single = function(base_count + counts[frontier], base_total + totals[frontier],
                          alpha)
        pick = int(single.argmax())
        step_value, step, move = float(single[pick]), [int(frontier[pick])], "single"
        outside = np.flatnonzero(evidence & ~inside)
        if len(outside):
            reach = linked[np.ix_(frontier, outside)]
            for row in np.flatnonzero(reach.any(axis=1)):
                bridge = int(frontier[row])
                extra = outside[reach[row]]
                extra = extra[extra != bridge]
                if len(extra) == 0:
                    continue
                extra = extra[np.argsort(-priority[extra], kind="stable")]
                values = function(base_count + counts[bridge] + np.cumsum(counts[extra]),
                                  base_total + totals[bridge] + np.cumsum(totals[extra]),
                                  alpha)
                k = int(values.argmax())
                if values[k] > step_value:
                    step_value = float(values[k])
                    step = [bridge] + extra[: k + 1].tolist()
                    move = "bridge"
        for path in _paths_to(inside, outside, linked, BRIDGE_HOPS):
            path_value = float(function(base_count + counts[path].sum(),
                                        base_total + totals[path].sum(), alpha))
            if path_value > step_value:
                step_value, step, move = path_value, path, "path"
        if step_value <= value + 1e-9 * max(1.0, abs(value)):
            break
        value = step_value
        inside[step] = True
        moves.append(move)
    return value, np.flatnonzero(inside), moves


def _plant_graph(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Links [L, 2] and kinds [N] of a plant: a random tree of field devices under
    two to four PLCs (hubs) and a few extra links."""
    hubs = int(rng.integers(2, 5))
    links = [[int(rng.integers(0, hubs)), v] for v in range(hubs, size)]
    links += [[int(rng.integers(hubs, v)), v] for v in range(hubs + 1, size)
              if rng.random() < 0.3]
    kinds = np.array(["plc"] * hubs + ["field"] * (size - hubs))
    return np.array(links), kinds


def _grow_inputs(rng: np.random.Generator, size: int, weighted: bool):
    """Counts and totals [N] with many abnormal devices spread over the graph, as
    integers (many ties in priority) or as device-weighted floats."""
    totals = rng.integers(0, 12, size).astype(float)
    share = np.where(rng.random(size) < 0.35, rng.choice([0.3, 0.6, 0.9], size), 0.0)
    counts = np.minimum(rng.binomial(totals.astype(int), share), totals).astype(float)
    if weighted:
        weights = rng.choice([1.0, 0.5, 0.137, 1e-3], size)
        counts, totals = counts * weights, totals * weights
    return counts, totals


@pytest.mark.parametrize("cells", [BRIDGE_CELLS, 5])
def test_grow_connected_matches_loop_reference(monkeypatch, cells):
    """Bridge moves scored all at once take the same steps as those scored one
    bridge at a time. The score matches to the last bit and the devices match, on
    80 random plants with hubs, with integer and weighted counts, and in blocks of
    a few cells."""
    monkeypatch.setattr(localize, "BRIDGE_CELLS", cells)
    rng = np.random.default_rng(20261205)
    moves = []
    for case in range(80):
        size = int(rng.integers(20, 120))
        links, kinds = _plant_graph(rng, size)
        matrix, hubs = adjacency(size, links, kinds, ("plc",))
        linked = linked_devices(matrix, hubs)
        counts, totals = _grow_inputs(rng, size, weighted=case % 2 == 1)
        alpha = float(rng.choice([1e-3, 0.05, 0.1]))
        abnormal = np.flatnonzero(counts > alpha * totals)
        if len(abnormal) == 0:
            continue
        start = np.array([int(rng.choice(abnormal))])
        value = float(berk_jones(counts[start].sum(), totals[start].sum(), alpha))

        expected_value, expected_set, steps = _grow_one_bridge_at_a_time(
            start, value, counts, totals, alpha, linked, "bj")
        grown_value, grown_set = grow_connected(start, value, counts, totals, alpha,
                                                linked, "bj")

        assert grown_value == expected_value, case
        assert grown_set.tolist() == expected_set.tolist(), case
        moves += steps
    # The comparison covers bridge moves, not only one-device steps.
    assert moves.count("bridge") >= 100
    assert moves.count("single") >= 20
    assert moves.count("path") >= 5


def test_linked_components_match_components():
    rng = np.random.default_rng(11)
    for case in range(50):
        size = int(rng.integers(10, 80))
        links, kinds = _plant_graph(rng, size)
        matrix, hubs = adjacency(size, links, kinds, ("plc",))
        members = np.sort(rng.choice(size, size=int(rng.integers(1, size)), replace=False))

        expected = components(members, matrix, hubs)
        found = _linked_components(members, linked_devices(matrix, hubs))

        assert [part.tolist() for part in found] == [part.tolist() for part in expected], case
        # `connected_best` passes members ranked by priority, not sorted.
        shuffled = rng.permutation(members)
        expected = components(shuffled, matrix, hubs)
        found = _linked_components(shuffled, linked_devices(matrix, hubs))

        assert [part.tolist() for part in found] == [part.tolist() for part in expected], case


def _random_scan_states(
    rng: np.random.Generator, size: int, links: np.ndarray, weighted: bool,
) -> list[ScaleState]:
    """States at scales 1, 2 and 4 over 48 base bins of `size` devices, with three
    to five planted anomalies on linked devices of random strength and span."""
    num_bins = 48
    p_values = rng.uniform(size=(num_bins, size, 3))
    for _ in range(int(rng.integers(3, 6))):
        seed_device = int(rng.integers(size))
        group = {seed_device}
        for a, b in links:
            if (a in group or b in group) and rng.random() < 0.5:
                group |= {int(a), int(b)}
        start = int(rng.integers(0, num_bins - 2))
        stop = min(num_bins, start + int(rng.integers(1, 16)))
        strength = float(rng.choice([1e-2, 1e-3, 1e-5]))
        chosen = sorted(group)[:8]
        p_values[start:stop, chosen] *= strength
    weights = rng.choice([1.0, 0.4, 0.05], size) if weighted else None
    states = []
    for scale in (1, 2, 4):
        bins, devices, _ = np.indices(p_values.shape)
        elements = pd.DataFrame({
            "kind": "sensor", "device_idx": devices.ravel(), "peer_idx": -1,
            "bin": bins.ravel() // scale, "p_value": p_values.ravel()})
        elements["score"] = -np.log10(elements["p_value"])
        thresholds = {2 ** k: 9.0 * 1.15 ** k for k in range(5)}
        states.append(ScaleState.build(
            ScaleElements(scale, num_bins // scale, elements, [(0, num_bins // scale)]),
            size, SearchConfig().alphas, thresholds, {"sensor": 1e-12}, weights))
    return states


def test_detect_bound_skips_keep_incidents(monkeypatch):
    """Skipping the connected search where the prefix scan's bound cannot beat the
    hit in hand finds the same incidents as searching every candidate. The check
    runs on 12 random plants, whole and online (`min_stop`), with and without
    device weights, and the skip must save connected searches."""
    calls = {"count": 0}
    search = localize.connected_best

    def counted(*args, **kwargs):
        calls["count"] += 1
        return search(*args, **kwargs)

    monkeypatch.setattr(localize, "connected_best", counted)
    rng = np.random.default_rng(20261206)
    saved, incidents_found = 0, 0
    for case in range(12):
        size = int(rng.integers(20, 40))
        links, kinds = _plant_graph(rng, size)
        state_seed = int(rng.integers(1 << 30))
        min_stop = None if case % 2 == 0 else int(rng.integers(24, 49))
        results, searches = {}, {}
        for margin in (np.inf, localize.BOUND_MARGIN):
            # An infinite margin turns the skip off.
            monkeypatch.setattr(localize, "BOUND_MARGIN", margin)
            states = _random_scan_states(np.random.default_rng(state_seed), size, links,
                                         weighted=case % 4 >= 2)
            calls["count"] = 0
            results[margin] = detect(states, size, 48, links, kinds,
                                     SearchConfig(max_incidents=10), min_stop=min_stop)
            searches[margin] = calls["count"]

        full, skipping = results[np.inf], results[localize.BOUND_MARGIN]
        assert skipping == full, case
        assert searches[localize.BOUND_MARGIN] <= searches[np.inf], case
        saved += searches[np.inf] - searches[localize.BOUND_MARGIN]
        incidents_found += len(full)
    assert incidents_found >= 20
    assert saved >= 100


def test_pruned_bounds_cover_pruned_sets():
    """No set that `prune_members` returns from any subset of devices scores above
    `pruned_bounds` at its level. The check tries every subset of 9 devices on 30
    random intervals, with integer and weighted counts, for both statistics."""
    rng = np.random.default_rng(20261208)
    subsets = [np.flatnonzero(mask) for mask in np.indices((2,) * 9).reshape(9, -1).T
               if mask.any()]
    skippable = 0
    for case in range(30):
        statistic = "bj" if case % 2 == 0 else "hc"
        config = SearchConfig(statistic=statistic, member_min_score=float(rng.choice([0, 3, 8])))
        totals = rng.integers(0, 40, 9).astype(np.float64)
        if case % 3 == 0:
            totals = totals * rng.choice([1.0, 0.4, 0.05], 9)
        shares = rng.choice([0.0, 1e-3, 0.02, 0.3, 0.9], (9, len(config.alphas)))
        counts = np.minimum(np.sort(shares, axis=1) * totals[:, None], totals[:, None])
        counts = np.maximum.accumulate(counts, axis=1)
        if case % 3 != 0:
            counts = np.floor(counts)
        bounds = localize.pruned_bounds(counts, totals, config)
        function = STATISTICS[statistic]
        for a, alpha in enumerate(config.alphas):
            best = 0.0
            for members in subsets:
                pruned = localize.prune_members(members, counts[:, a], totals, alpha,
                                                config, counts)
                value = function(counts[pruned, a].sum(), totals[pruned].sum(), alpha)
                best = max(best, float(value))
            assert best <= bounds[a] * (1 + 1e-12), (case, a)
            unconstrained = prefix_scan(counts[None], totals[None], config.alphas,
                                        statistic)[0][0, a]
            skippable += bounds[a] < unconstrained
    assert skippable >= 10


def test_grow_connected_shared_moves_match_reference():
    """Growths from several starts that share their stored steps (`moves`), as
    `connected_best` runs them, end where the loop reference ends from each start.
    The check runs on 40 random plants, and later growths must reuse stored steps."""
    rng = np.random.default_rng(20261207)
    shared_steps, separate_steps = 0, 0
    for case in range(40):
        size = int(rng.integers(30, 120))
        links, kinds = _plant_graph(rng, size)
        matrix, hubs = adjacency(size, links, kinds, ("plc",))
        linked = linked_devices(matrix, hubs)
        counts, totals = _grow_inputs(rng, size, weighted=case % 2 == 1)
        alpha = float(rng.choice([1e-3, 0.05, 0.1]))
        abnormal = np.flatnonzero(counts > alpha * totals)
        if len(abnormal) == 0:
            continue
        shared: dict = {}
        starts = rng.choice(abnormal, size=min(4, len(abnormal)), replace=False)
        for device in starts:
            start = np.array([int(device)])
            value = float(berk_jones(counts[start].sum(), totals[start].sum(), alpha))
            own: dict = {}

            expected_value, expected_set, _ = _grow_one_bridge_at_a_time(
                start, value, counts, totals, alpha, linked, "bj")
            grown_value, grown_set = grow_connected(start, value, counts, totals, alpha,
                                                    linked, "bj", shared)
            grow_connected(start, value, counts, totals, alpha, linked, "bj", own)

            assert grown_value == expected_value, case
            assert grown_set.tolist() == expected_set.tolist(), case
            separate_steps += len(own)
        shared_steps += len(shared)
    # Steps stored once and reused by a later growth.
    assert separate_steps - shared_steps >= 50


@pytest.mark.parametrize("first, last", [(6, 17), (4, 19), (9, 10)])
def test_coarse_hit_ends_at_base_bins(first, last):
    """Device 2 is abnormal in base bins first..last. Only the coarse scale (4 base
    bins a bin) passes its threshold, and the incident still starts and ends at the
    base bins of the anomaly, not at the edges of the coarse bins around it."""
    rng = np.random.default_rng(11)

    def rows(scale, bins):
        out = []
        for t in range(bins):
            abnormal = any(first <= b <= last for b in range(t * scale, (t + 1) * scale))
            for device in range(4):
                for base in range(scale):
                    inside = first <= t * scale + base <= last
                    p = 0.004 if device == 2 and abnormal and (scale > 1 or inside) \
                        else rng.uniform(0.02, 1)
                    out.append(("sensor", device, -1, t, p))
        return _elements(out)

    states = [_four_device_state(1, 32, rows(1, 32), 1e6, 6),
              _four_device_state(4, 8, rows(4, 8), 5.0, 6)]
    incidents = detect(states, num_devices=4, num_bins=32, links=np.array([[0, 1], [1, 2]]),
                       kinds=np.array(["rtu", "plc", "rtu", "rtu"]),
                       config=SearchConfig(max_incidents=5))

    assert [(i.start, i.stop, i.devices) for i in incidents] == [(first, last + 1, [2])]


def test_tail_survival_never_zero():
    """A score beyond every null score still gets a positive chance: 1 / (n + 1)
    without a spread to extrapolate with, and at least the floor with one."""
    flat = Tail.fit(np.full(400, 2.0))
    assert flat.survival(50.0) == pytest.approx(1 / 401)
    spread = Tail.fit(np.random.default_rng(2).exponential(size=4000))
    assert spread.survival(1e6) > 0
