"""Tests for bench.localization: plant sizes, per-anomaly metrics, the false-alarm
budget and confidence intervals, on small hand-built runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.localization import (
    PlantRun,
    Scores,
    Settings,
    evaluate_run,
    field_devices_for,
    mean_ci,
    quiet_cells,
    tgloc_scores,
    tune_threshold,
)
from core import synth
from core.snapshots import Snapshots

NUM_BINS = 40


def _run(truth_rows: list[dict], windows: list[tuple[int, int]]) -> PlantRun:
    """Four devices a-d, pairs a->b and c->d carrying events in every bin; bins 0-9
    train, 10-39 are scored."""
    devices = pd.DataFrame({"idx": range(4), "device": list("abcd"), "kind": "field"})
    pairs = np.array([[0, 1], [2, 3]])
    snapshots = Snapshots(
        origin_us=0, bin_seconds=60, num_bins=NUM_BINS, devices=devices,
        sensors=pd.DataFrame(), comm=np.zeros((NUM_BINS, 4, 6)),
        sensor_values=np.zeros((NUM_BINS, 0, 6)), pairs=pairs,
        pair_events=np.ones((NUM_BINS, 2)), pair_bytes=np.ones((NUM_BINS, 2)),
        links=np.zeros((0, 2), dtype=np.int64), active=np.ones((NUM_BINS, 4), dtype=bool))
    periods = np.array(["train"] * 10 + ["score"] * 30)
    truth = pd.DataFrame(truth_rows)
    return PlantRun(4, 0, True, snapshots, None, periods, [], pd.DataFrame(),
                    pd.DataFrame(), truth, windows, 0.0)


def test_field_devices_for_gives_exact_sizes():
    for total in (50, 200):
        field = field_devices_for(total)
        plant = synth.generate_plant(synth.PlantConfig(field_devices=field, hours=0.5,
                                                       anomalies=()))

        assert len(plant.devices) == total


def test_evaluate_run_device_and_interval():
    truth = [{"kind": "flood", "devices": ["a", "b"], "pairs": [{"src": "a", "dst": "b"}]}]
    run = _run(truth, [(20, 30)])
    device = np.zeros((NUM_BINS, 4))
    device[22:30, 0] = 5.0   # a, inside the anomaly
    device[25, 2] = 5.0      # c, a false member
    device[35, 0] = 5.0      # a again, within one anomaly length after it

    (row,) = evaluate_run(run, Scores(device), threshold=1.0)

    assert row["kind"] == "flood"
    assert row["device_precision"] == pytest.approx(0.5)
    assert row["device_recall"] == pytest.approx(0.5)
    assert row["device_f1"] == pytest.approx(0.5)
    # The flags of a span bins 22-35: IoU of [20, 30) and [22, 36).
    assert row["iou"] == pytest.approx(8 / 16)
    # Device-level scores: pairs are the carried pairs between flagged devices, and
    # a and c share none.
    assert row["pair_f1"] == 0.0


def test_tgloc_scores_flag_pair_ends():
    # An incident of device b and pair a->b flags both ends of the pair over the
    # incident's interval.
    run = _run([], [])
    origin = pd.Timestamp(0, unit="us", tz="UTC")
    run.incidents = pd.DataFrame({"incident_id": ["inc-1"],
                                  "start": [origin + pd.Timedelta(minutes=20)],
                                  "end": [origin + pd.Timedelta(minutes=30)]})
    run.members = pd.DataFrame({"incident_id": ["inc-1", "inc-1"],
                                "role": ["device", "pair"],
                                "device": ["b", "a"], "peer": [None, "b"]})

    scores = tgloc_scores(run)

    assert scores.device[20:30, 0].all()
    assert scores.device[20:30, 1].all()
    assert not scores.device[:, 2:].any()
    assert not scores.device[:20].any()
    assert not scores.device[30:].any()
    assert scores.pair_codes.tolist() == [0 * 4 + 1]
    assert scores.pair[20:30, 0].all()


def test_evaluate_run_pair_scores():
    truth = [{"kind": "new_link", "devices": ["c", "d"], "pairs": [{"src": "d", "dst": "c"}]}]
    run = _run(truth, [(12, 16)])
    device = np.zeros((NUM_BINS, 4))
    device[12:16, [2, 3]] = 1.0
    codes = np.array([0 * 4 + 1, 2 * 4 + 3])
    pair = np.zeros((NUM_BINS, 2))
    pair[13, 1] = 1.0

    (row,) = evaluate_run(run, Scores(device, codes, pair, flags_given=True), 0.5)

    assert row["device_f1"] == pytest.approx(1.0)
    assert row["pair_f1"] == pytest.approx(1.0)
    assert row["iou"] == pytest.approx(1.0)


def test_evaluate_run_nothing_flagged():
    truth = [{"kind": "drift", "devices": ["b"], "pairs": []}]
    run = _run(truth, [(15, 25)])

    (row,) = evaluate_run(run, Scores(np.zeros((NUM_BINS, 4))), threshold=1.0)

    assert row["device_f1"] == 0.0
    assert row["iou"] == 0.0
    assert math.isnan(row["pair_f1"])


def test_quiet_cells_leave_out_anomaly_and_aftermath():
    run = _run([], [(20, 22)])
    settings = Settings()

    quiet = quiet_cells(run, settings)

    assert not quiet[:10].any()
    assert quiet[10:20].all()
    assert not quiet[20:40].any()


def test_tune_threshold_meets_budget():
    run = _run([], [])
    device = np.zeros((NUM_BINS, 4))
    device[10:, :] = np.arange(120).reshape(30, 4)
    runs, scores = [run], [Scores(device)]

    strict = tune_threshold(runs, scores, 0.0, Settings())
    loose = tune_threshold(runs, scores, 0.09, Settings())

    assert strict == 119.0
    assert (device[10:] > strict).sum() == 0
    assert (device[10:] > loose).sum() == 10


def test_mean_ci_matches_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0, float("nan")])

    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert math.isnan(mean_ci([0.4])[1])
