"""Tests for core.scoring: tail p-values, coarse periods and aggregation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core import scoring, store, train
from core.ingest import IngestOptions, ingest_frame
from core.scoring import (P_FLOOR, Family, aggregate, coarse_periods, families,
                          null_mapping, recalibrate, tail_pvalues)
from core.snapshots import COMM_FEATURES, SENSOR_FEATURES, build_snapshots


def test_tail_pvalues_uniform_on_null():
    rng = np.random.default_rng(12)
    reference = np.sort(rng.standard_normal(20_000))
    scores = rng.standard_normal(2_000)

    p = tail_pvalues(reference, scores, rng.random(len(scores)))

    assert p.shape == (2_000,)
    assert (p > 0).all()
    assert (p <= 1).all()
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_tail_pvalues_far_beyond_reference():
    rng = np.random.default_rng(5)
    reference = np.sort(rng.standard_normal(1_000))
    n = len(reference)

    p = tail_pvalues(reference, np.array([reference[-1] + 50.0]), rng.random(1))

    assert p[0] < 1 / (n + 1)
    assert p[0] > 0
    assert p[0] >= P_FLOOR


def test_tail_pvalues_ordered_beyond_reference():
    rng = np.random.default_rng(6)
    reference = np.sort(rng.exponential(size=2_000))
    top = reference[-1]

    p = tail_pvalues(reference, np.array([top + 0.5, top + 2.0, top + 5.0]), rng.random(3))

    assert p[0] > p[1]
    assert p[1] > p[2]
    assert p[0] < 1 / (len(reference) + 1)


def test_tail_pvalues_ties_spread():
    rng = np.random.default_rng(9)
    reference = np.full(100, 0.5)

    p = tail_pvalues(reference, np.full(5_000, 0.5), rng.random(5_000))

    assert (p > 0).all()
    assert (p <= 1).all()
    assert p.min() < 0.01
    assert p.max() > 0.99
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_tail_pvalues_zero_score_one():
    rng = np.random.default_rng(9)
    reference = np.concatenate([np.zeros(90), rng.exponential(size=10)])

    p = tail_pvalues(np.sort(reference), np.array([0.0, 0.0, 1e-9]),
                     np.array([0.0, 0.5, 0.0]))

    assert p[:2].tolist() == [1.0, 1.0]
    assert p[2] < 1.0


def test_tail_pvalues_empty_reference():
    rng = np.random.default_rng(0)

    p = tail_pvalues(np.zeros(0), np.array([0.0, 3.0]), rng.random(2))

    assert p.tolist() == [1.0, 1.0]


def test_tail_pvalues_empirical_body():
    # 3 of the 10 reference values lie above 6.5 and none equals it, so the
    # randomized p-value (3 + U) / 11 falls in [3/11, 4/11).
    rng = np.random.default_rng(0)
    reference = np.arange(10, dtype=np.float64)

    p = tail_pvalues(reference, np.full(200, 6.5), rng.random(200))

    assert p.min() >= 3 / 11
    assert p.max() < 4 / 11
    assert p.max() - p.min() > 0.5 / 11


def test_coarse_periods_marks_mixed():
    periods = np.array(["train"] * 5 + ["calibration"] * 3 + ["score"] * 2)

    coarse = coarse_periods(periods, 4)

    assert coarse.tolist() == ["train", "mixed", "score"]


def test_coarse_periods_scale_one_unchanged():
    periods = np.array(["train", "calibration", "score"])

    assert coarse_periods(periods, 1).tolist() == ["train", "calibration", "score"]


def test_coarse_periods_pads_last_block():
    periods = np.array(["train"] * 4 + ["score"] * 2)

    assert coarse_periods(periods, 4).tolist() == ["train", "score"]


def _family() -> Family:
    """One sensor over 8 base bins with two features. Unobserved entries hold 99, so a
    mask that leaks shows up in the means."""
    residual = np.zeros((8, 1, 2), dtype=np.float32)
    weight = np.zeros((8, 1, 2), dtype=np.float32)
    residual[:4, 0, 0] = [1.0, 2.0, 3.0, 4.0]
    weight[:4, 0, 0] = 1.0
    residual[:4, 0, 1] = [-6.0, 99.0, -2.0, 99.0]
    weight[:4, 0, 1] = [1.0, 0.0, 1.0, 0.0]
    residual[4:, 0, 0] = [0.5, 99.0, 99.0, 99.0]
    weight[4:, 0, 0] = [1.0, 0.0, 0.0, 0.0]
    residual[4:, 0, 1] = 99.0
    exists = np.array([[True]] * 5 + [[False]] * 3)
    observed = np.arange(8, dtype=np.float64)[:, None]
    expected = np.full((8, 1), 10.0)
    ids = pd.DataFrame({"device": ["P1"], "peer": [None], "sensor": ["FIT101"],
                        "device_idx": [0], "peer_idx": [-1], "group": ["plc"]})
    return Family("sensor", ids, residual, weight, exists, observed, expected)


def test_aggregate_scale_four_mean_residuals():
    family = _family()
    # Bin 0: feature 0 mean (1+2+3+4)/4 = 2.5, feature 1 mean (-6-2)/2 = -4.
    # Bin 1: feature 0 mean 0.5 from its one observed bin, feature 1 unobserved.
    expected_score = [4.0, 0.5]

    scaled = aggregate(family, 4)

    assert scaled.kind == "sensor"
    assert scaled.scale == 4
    assert scaled.score.shape == (2, 1)
    np.testing.assert_allclose(scaled.score[:, 0], expected_score, rtol=1e-12)
    assert scaled.exists[:, 0].tolist() == [True, True]
    np.testing.assert_allclose(scaled.observed[:, 0], [1.5, 4.0], rtol=1e-12)
    np.testing.assert_allclose(scaled.expected[:, 0], [10.0, 10.0], rtol=1e-12)


def test_aggregate_scale_one_scores():
    family = _family()

    scaled = aggregate(family, 1)

    # Bins where the element does not exist score NaN, never 0.
    expected = [6.0, 2.0, 3.0, 4.0, 0.5, np.nan, np.nan, np.nan]
    np.testing.assert_allclose(scaled.score[:, 0], expected, rtol=1e-12)
    assert scaled.exists[:, 0].tolist() == [True] * 5 + [False] * 3


def test_aggregate_pads_partial_bin():
    family = _family()

    scaled = aggregate(family, 3)

    # Bins [0,3), [3,6), [6,8): feature 0 means 2, (4+0.5)/2, none observed.
    assert scaled.score.shape == (3, 1)
    np.testing.assert_allclose(scaled.score[:, 0], [max(2.0, 4.0), 2.25, np.nan],
                               rtol=1e-12)
    assert scaled.exists[:, 0].tolist() == [True, True, False]


def test_balance_divides_each_feature_by_its_training_tail():
    from core.scoring import balance

    rng = np.random.default_rng(0)
    residual = np.stack([rng.normal(0, 1, (200, 5)), rng.normal(0, 10, (200, 5))], axis=-1)
    in_train = np.arange(200) < 150
    observed = np.ones(residual.shape, dtype=bool)

    balanced = balance(residual, observed, in_train)

    tails = [np.quantile(np.abs(residual[in_train, :, f]), 0.99) for f in range(2)]
    np.testing.assert_allclose(balanced[..., 0], residual[..., 0] / tails[0], rtol=1e-5)
    np.testing.assert_allclose(balanced[..., 1], residual[..., 1] / tails[1], rtol=1e-5)
    assert np.quantile(np.abs(balanced[in_train, :, 1]), 0.99) == pytest.approx(1.0, rel=1e-5)


def test_tail_pvalues_cluster_at_top_not_impossible():
    """A reference whose top tenth is a tight cluster, as a recurring pattern gives.
    A score just beyond the cluster is rare but possible; one far beyond is not."""
    rng = np.random.default_rng(3)
    reference = np.sort(np.concatenate([rng.uniform(0.0, 0.5, 300),
                                        rng.uniform(0.88, 0.92, 40)]))

    near, far = tail_pvalues(reference, np.array([1.1, 6.0]), rng.random(2))

    assert near > 1e-3
    assert far < 1e-6


def test_count_pvalues_jitter_plain_flood_and_silence_rare():
    from core.scoring import count_pvalues

    p = count_pvalues(np.array([1.0, 3.0, 60.0, 0.0]), np.array([2.0, 2.0, 2.0, 20.0]))

    assert p[0] > 0.5
    assert p[1] > 0.5
    assert p[2] < 1e-12 * 10
    assert p[3] < 1e-6


def test_aggregate_observed_mean_skips_bins_without_reading():
    family = _family()
    family.observed[1, 0] = np.nan
    family.observed[4, 0] = np.nan

    scaled = aggregate(family, 4)

    # Bin 0 averages 0, 2 and 3; bin 1 has no reading at all.
    assert scaled.observed[0, 0] == pytest.approx(5 / 3)
    assert np.isnan(scaled.observed[1, 0])


def _inflated_null(rng: np.random.Generator) -> np.ndarray:
    """Null p-values of 2,000 elements over 30 bins: most uniform, 5% of the
    elements drawn as u ** 2 (a process that left its reference range)."""
    null = rng.random((30, 2000))
    null[:, :100] = null[:, :100] ** 2
    return null


def test_recalibrate_null_stays_uniform():
    null = _inflated_null(np.random.default_rng(3))
    _, mapped = recalibrate(np.full((1, 2000), 0.5), null)
    for level in (0.001, 0.01, 0.1):
        assert abs((mapped <= level).mean() - level) < 0.3 * level + 2e-4


def _exchangeable_null(rng: np.random.Generator) -> np.ndarray:
    """Null p-values as the pipeline makes them for a family whose elements are
    exchangeable with their reference: 160 elements of 350 chi-square scores, each
    fifth of the bins scored against the other four fifths with `tail_pvalues`."""
    null = []
    for _ in range(160):
        scores = rng.standard_normal(350) ** 2
        for fold in np.array_split(np.arange(350), 5):
            null.append(tail_pvalues(np.sort(np.delete(scores, fold)), scores[fold],
                                      rng.random(len(fold))))
    return np.concatenate(null)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_null_mapping_calibrated_family_extreme(seed):
    # Such a family's deepest null p-values are near 1e-5, and an 8-sigma spike
    # gets far smaller ones. A tail that bends towards them would map 1e-9 to
    # about 1e-6, beyond the reach of one element of one bin.
    mapped = null_mapping(_exchangeable_null(np.random.default_rng(seed)))
    extreme = mapped(np.array([1e-9, 1e-12]))
    assert extreme[0] <= 1e-8
    assert extreme[1] <= 1e-11


def test_null_mapping_overconfident_null():
    # Null p-values drawn as u ** 2 are the square of what they should be, so a
    # p-value beyond the deepest of them is worth about its square root.
    null = np.random.default_rng(5).random(50_000) ** 2
    mapped = null_mapping(null)(np.array([1e-12]))[0]
    assert 1e-8 <= mapped <= 1e-4


def test_null_mapping_conservative_null_floor():
    # A conservative null (u ** 0.5) would extrapolate below the p-value itself.
    null = np.random.default_rng(6).random(50_000) ** 0.5
    values = np.array([1e-8, 1e-10, 1e-12])
    np.testing.assert_array_equal(null_mapping(null)(values), values)


def _pair_family(counts: np.ndarray, train: int) -> scoring.ScaledFamily:
    """A pair family of one sender's links at one scale, scored as the pipeline
    scores reference pairs: |log1p(count) - log1p(median training count)|."""
    median = np.median(counts[:train], axis=0)
    links = counts.shape[1]
    ids = pd.DataFrame({"device": ["scada"] * links,
                        "peer": [f"plc-{i}" for i in range(links)], "sensor": None,
                        "device_idx": 0, "peer_idx": np.arange(1, links + 1),
                        "group": "scada", "novel": False})
    score = np.abs(np.log1p(counts) - np.log1p(median))
    return scoring.ScaledFamily("pair", 1, ids, score, np.ones(counts.shape, bool),
                                counts, np.broadcast_to(median, counts.shape).copy())


def test_calibrate_polling_pair_count_law():
    # One polling link reads 3 to 5 events a bin; five bursty links of the same
    # sender vary far more. A flood of 28 events on the polling link is extreme
    # for it, however common such scores are among the bursty links.
    rng = np.random.default_rng(0)
    polling = rng.choice([3.0, 4.0, 5.0], size=400, p=[0.1, 0.8, 0.1])
    bursty = rng.negative_binomial(1, 0.2, size=(400, 5)).astype(np.float64)
    counts = np.column_stack([polling, bursty])
    counts[350, 0] = 28.0
    counts[360, 0] = 6.0
    family = _pair_family(counts, 300)
    p, level, _ = scoring.calibrate(family, np.arange(300), np.arange(300, 400), 50, seed=0)
    assert level[0] == "element"
    assert p[350, 0] < 1e-9
    # One event beyond the reference's largest count is polling jitter.
    assert p[360, 0] > 1e-4


def test_count_law_reference_dispersion():
    rng = np.random.default_rng(1)
    regular = scoring.CountLaw.fit(rng.poisson(20.0, 300).astype(np.float64))
    bursty = scoring.CountLaw.fit(rng.negative_binomial(1, 0.05, 300).astype(np.float64))
    # Twice the largest reference count is far rarer for a Poisson count.
    assert regular.ratio(np.array([2 * regular.high]))[0] < 1e-6
    assert bursty.ratio(np.array([2 * bursty.high]))[0] > 1e-3
    # A silent bin is far below a regular count's smallest one.
    assert regular.ratio(np.array([0.0]))[0] < 1e-3
    np.testing.assert_array_equal(regular.ratio(np.array([regular.low, regular.high])), 1.0)


def _one_reading_per_bin(tmp_path, step: float = 2.0):
    """Build a store of 3 sensors read once a minute for 40 minutes.

    The first 30 minutes are the training bins. Sensor `flat` is 0 except `step`
    at minute 35."""
    minutes = np.arange(40)
    flat = np.zeros(40)
    flat[35] = step
    frame = pd.DataFrame({
        "time": pd.Timestamp("2024-01-01T00:00:00Z") + pd.to_timedelta(minutes, unit="min"),
        "a": np.sin(minutes / 3.0), "b": np.cos(minutes / 4.0), "flat": flat,
    })
    return _trained_on_first_30(tmp_path, frame)


def _trained_on_first_30(tmp_path, frame: pd.DataFrame):
    """Store wide readings in a new workspace, bin them by minute and standardize
    them on the first 30 bins."""
    workspace = store.Workspace.create(tmp_path / "ws")
    ingest_frame(workspace, frame, IngestOptions(target="measurements", layout="wide"),
                 "wide readings")
    snapshots = build_snapshots(workspace.store_path, 60)
    train_bins = np.arange(30)
    prepared = train.prepare(snapshots, train_bins, [(0, snapshots.num_bins)])
    return snapshots, prepared, train_bins


def test_families_constant_sensor_expects_its_constant(tmp_path):
    snapshots, prepared, train_bins = _one_reading_per_bin(tmp_path)
    assert ("flat", "flat") in prepared.constant
    # A model output that echoes neighbours: 3 standard units off everywhere.
    x_hat = prepared.x.numpy() + 3.0
    sensor = next(f for f in families(snapshots, prepared, x_hat, np.zeros((40, 0, 2)),
                                      pd.DataFrame({"column": []}), train_bins)
                  if f.kind == "sensor")
    column = list(sensor.ids["sensor"]).index("flat")
    mean = SENSOR_FEATURES.index("mean")
    stale = SENSOR_FEATURES.index("stale")
    unchanged = np.delete(np.arange(40), 35)
    assert np.abs(sensor.residual[unchanged, column, mean]).max() == 0.0
    assert sensor.residual[35, column, mean] > 0
    assert sensor.weight[:, column, stale].max() == 0.0
    assert np.allclose(sensor.expected[:, column], 0.0)
    other = list(sensor.ids["sensor"]).index("a")
    assert np.abs(sensor.residual[:, other, mean]).min() > 0


def test_families_constant_sensor_any_step(tmp_path):
    mean = SENSOR_FEATURES.index("mean")
    scored = {}
    for step in (2.0, 0.02):
        snapshots, prepared, train_bins = _one_reading_per_bin(tmp_path / str(step), step)
        # A model that misses every value by noise of 0.3 standard units.
        noise = np.random.default_rng(0).normal(0.0, 0.3, prepared.x.shape)
        x_hat = prepared.x.numpy() + noise.astype(np.float32)
        sensor = next(f for f in families(snapshots, prepared, x_hat,
                                          np.zeros((40, 0, 2)),
                                          pd.DataFrame({"column": []}), train_bins)
                      if f.kind == "sensor")
        column = list(sensor.ids["sensor"]).index("flat")
        scored[step] = sensor.residual[:, column, mean]

    # Training never saw `flat` move, so a step of any size scores alike, and far
    # above the balanced training residuals, whose 99th percentile is 1.
    assert scored[2.0][35] == scored[0.02][35]
    assert scored[0.02][35] > 3.0
    assert np.abs(np.delete(scored[0.02], 35)).max() == 0.0


def test_families_range_needs_two_readings(tmp_path):
    snapshots, prepared, train_bins = _one_reading_per_bin(tmp_path)
    x_hat = prepared.x.numpy().copy()
    # The model expects a range of 2 standard units where one reading has none.
    x_hat[..., len(COMM_FEATURES) + SENSOR_FEATURES.index("max")] += 1.0
    x_hat[..., len(COMM_FEATURES) + SENSOR_FEATURES.index("min")] -= 1.0
    sensor = next(f for f in families(snapshots, prepared, x_hat, np.zeros((40, 0, 2)),
                                      pd.DataFrame({"column": []}), train_bins)
                  if f.kind == "sensor")
    spread = sensor.residual.shape[-1] - 1
    assert sensor.weight[..., spread].max() == 0.0
    assert np.abs(sensor.residual[..., spread]).max() == 0.0


def test_stretch_pvalues_absorb_level_shift():
    """A level shift that fills its stretch stops being rare; a burst shorter than
    the guard stays the rarest of its stretch."""
    rng = np.random.default_rng(4)
    score = rng.normal(0.0, 1.0, (900, 3))
    score[500:900, 0] += 10.0
    score[600:615, 1] += 50.0
    p_value = np.full((900, 3), 0.5)
    p_value[500:900, 0] = 1e-6
    p_value[600:615, 1] = 1e-9
    p_value[:, 2] = np.nan
    target = np.r_[np.arange(0, 400), np.arange(500, 900)]

    result = scoring.stretch_pvalues(score, p_value, target, guard=20, min_outside=30)

    shifted = result[500:900, 0]
    assert np.median(shifted) > 0.3
    assert shifted.min() >= 1 / 360 - 1e-12
    # Each bin of the burst is compared with the 359 or more bins beyond the guard.
    burst = result[600:615, 1]
    assert burst.max() == pytest.approx(1 / 360)
    assert np.isnan(result[:, 2]).all()
    np.testing.assert_array_equal(result[400:500, :2], p_value[400:500, :2])
    assert (result[:, :2] >= p_value[:, :2]).all()


def test_stretch_pvalues_split_at_gaps():
    """Each stretch ranks its own bins: a high stretch does not mask a low one."""
    score = np.r_[np.full(100, 1.0), np.full(100, 5.0)][:, None] + np.arange(200)[:, None] * 1e-6
    p_value = np.full((200, 1), 1e-6)
    joined = scoring.stretch_pvalues(score, p_value, np.arange(200), guard=5,
                                     min_outside=20)
    split = scoring.stretch_pvalues(score, p_value, np.r_[np.arange(100), np.arange(101, 200)],
                                    guard=5, min_outside=20)

    assert joined[50, 0] > 0.5
    assert split[99, 0] == pytest.approx(1 / 95)
    assert split[100, 0] == pytest.approx(1e-6)


def test_stretch_pvalues_keep_short_stretch():
    """A stretch with too few bins beyond the guard keeps the reference p-values."""
    score = np.arange(30, dtype=float)[:, None]
    p_value = np.full((30, 1), 1e-6)

    result = scoring.stretch_pvalues(score, p_value, np.arange(30), guard=10,
                                     min_outside=20)

    np.testing.assert_array_equal(result, p_value)


def _frozen_and_lost(tmp_path):
    """Build a store of 3 sensors read every 30 s for 60 minutes; the first 30
    minutes are the training bins. From minute 40 `frozen` repeats its last value,
    and from minute 45 `lost` reports nothing."""
    seconds = np.arange(0, 3600, 30)
    minutes = seconds / 60.0
    frozen = np.sin(minutes / 2.0) + 0.1 * np.cos(seconds)
    frozen[seconds >= 2400] = frozen[seconds < 2400][-1]
    lost = np.cos(minutes / 3.0)
    lost[seconds >= 2700] = np.nan
    frame = pd.DataFrame({
        "time": pd.Timestamp("2024-01-01T00:00:00Z") + pd.to_timedelta(seconds, unit="s"),
        "a": np.sin(minutes / 5.0), "frozen": frozen, "lost": lost,
    })
    snapshots, prepared, train_bins = _trained_on_first_30(tmp_path, frame)
    # A model that expects every feature at its training centre.
    x_hat = np.zeros(prepared.x.shape, np.float32)
    found, stats = scoring.families_with_stats(snapshots, prepared, x_hat,
                                               np.zeros((60, 0, 2)),
                                               pd.DataFrame({"column": []}), train_bins)
    sensor = next(f for f in found if f.kind == "sensor")
    return snapshots, prepared, sensor, stats


def _standardized(snapshots, prepared, name: str, feature: str) -> np.ndarray:
    """The sensor's feature over every bin, standardized without the input clip."""
    row = list(snapshots.sensors["sensor"]).index(name)
    device = int(snapshots.sensors["device_idx"].iloc[row])
    column = (len(COMM_FEATURES) + len(SENSOR_FEATURES) * int(snapshots.sensors["slot"].iloc[row])
              + SENSOR_FEATURES.index(feature))
    raw = snapshots.sensor_values[:, row, SENSOR_FEATURES.index(feature)]
    return (raw - prepared.center[device, column]) / prepared.scale[device, column]


def test_stuck_sensor_beyond_input_clip(tmp_path):
    snapshots, prepared, sensor, stats = _frozen_and_lost(tmp_path)
    stale = SENSOR_FEATURES.index("stale")
    column = list(sensor.ids["sensor"]).index("frozen")
    unclipped = _standardized(snapshots, prepared, "frozen", "stale")
    # The freeze runs far past the clip, and the model input stays clipped.
    assert unclipped[59] > 2 * train.INPUT_CLIP
    assert prepared.x.numpy().max() <= train.INPUT_CLIP
    residual = sensor.residual[:, column, stale]
    np.testing.assert_allclose(residual[40:], unclipped[40:] / stats.sensor_scales[stale],
                               rtol=1e-5)
    # A longer freeze scores higher all the way through.
    assert (np.diff(residual[41:]) > 0).all()


def test_lost_sensor_beyond_input_clip(tmp_path):
    snapshots, prepared, sensor, stats = _frozen_and_lost(tmp_path)
    count = SENSOR_FEATURES.index("count")
    column = list(sensor.ids["sensor"]).index("lost")
    unclipped = _standardized(snapshots, prepared, "lost", "count")
    assert unclipped[50] < -train.INPUT_CLIP
    residual = sensor.residual[:, column, count]
    np.testing.assert_allclose(residual[45:], unclipped[45:] / stats.sensor_scales[count],
                               rtol=1e-5)
    # Bins with readings never score their count.
    assert np.abs(residual[:45]).max() == 0.0


def test_tail_pvalues_rounding_error_ties():
    # A polling pair's usual score, summed in another order, differs in its last
    # float32 digits; it must tie with the reference's copies of that score.
    usual = np.float32(0.14384103)
    reference = np.sort(np.concatenate([np.full(60, usual), np.linspace(0.2, 0.5, 20),
                                        np.linspace(0.01, 0.1, 20)]).astype(np.float64))
    rounded = np.array([float(usual) * (1 + 2e-7)])
    assert rounded[0] > reference[79]
    tied = tail_pvalues(reference, rounded, np.random.default_rng(3).random(len(rounded)))
    exact = tail_pvalues(reference, np.array([float(usual)]), np.random.default_rng(3).random(1))
    assert tied[0] == exact[0]
    # Above all 60 copies, a score would get (20 + U) / 101, below 21 / 101.
    assert tied[0] > 21 / 101


def test_null_mapping_rounding_error_ties():
    # A count law gives one p-value to many null bins. The same p-value computed
    # from an expected count a rounding error away must count that whole atom.
    rng = np.random.default_rng(5)
    atom = 0.56675148
    null = np.concatenate([np.full(600, atom), rng.uniform(0.6, 1.0, 3000),
                           rng.uniform(0.0, 0.5, 400)])
    mapped = null_mapping(null)
    nearby = mapped(np.array([atom * (1 - 1e-12)]))[0]
    assert nearby == mapped(np.array([atom]))[0]
    # 400 null p-values lie below the atom and 600 in it.
    assert nearby > 1000 / 4001


def test_tail_pvalues_given_tails_match():
    """P-values beyond the pool's max are the same with the tails fitted once
    (`PoolTail`) as with the tails that `tail_pvalues` fits itself, for a pool with
    a fitted tail and for one that borrows its kind's pooled scores."""
    from core.scoring import PoolTail
    rng = np.random.default_rng(5)
    pooled = np.sort(rng.exponential(2.0, 4000))
    smooth = np.sort(rng.exponential(1.0, 500))
    polling = np.repeat([5.0, 6.0, 7.0], 40)
    for reference in (smooth, polling):
        scores = reference[-1] + np.array([0.5, 2.0, 9.0])
        uniform = np.random.default_rng(1).random(len(scores))
        fitted_here = tail_pvalues(reference, scores, uniform, pooled)
        prefitted = tail_pvalues(reference, scores, uniform, pooled,
                                 own_tail=PoolTail.own(reference),
                                 pooled_tail=PoolTail.pooled(pooled))
        assert np.array_equal(fitted_here, prefitted)


def _zeros_and_evidence() -> tuple[scoring.ScaledFamily, np.ndarray, np.ndarray]:
    """Return a sensor family of 3 elements over 60 bins, about half of their
    scores 0. Bins 0-49 are the reference and bins 50-59 the targets."""
    rng = np.random.default_rng(3)
    shape = (60, 3)
    score = np.where(rng.random(shape) < 0.5, 0.0, rng.exponential(size=shape))
    ids = pd.DataFrame({"device": ["d0", "d1", "d2"], "peer": None, "sensor": "s",
                        "device_idx": [0, 1, 2], "peer_idx": -1, "group": "pump"})
    scaled = scoring.ScaledFamily("sensor", 1, ids, score, np.ones(shape, bool),
                                  np.zeros(shape), np.zeros(shape))
    return scaled, np.arange(50), np.arange(50, 60)


def test_zero_score_batch_and_online():
    from core import online

    scaled, reference, target = _zeros_and_evidence()
    p, _, _ = scoring.calibrate(scaled, reference, target, 10, seed=0)
    zero = scaled.score[target] == 0
    assert zero.sum() > 5
    assert (~zero).sum() > 5
    assert (p[target][zero] == 1.0).all()
    assert (p[target][~zero] < 1.0).all()

    calibrator = online.Calibrator.fit(scaled, reference, 10, np.full(scaled.score.shape, np.nan))
    for bin_index in target:
        single = scoring.ScaledFamily("sensor", 1, scaled.ids,
                                   scaled.score[bin_index:bin_index + 1],
                                   scaled.exists[bin_index:bin_index + 1],
                                   scaled.observed[bin_index:bin_index + 1],
                                   scaled.expected[bin_index:bin_index + 1])
        np.testing.assert_array_equal(calibrator.pvalues(single, bin_index, 0), p[bin_index])
