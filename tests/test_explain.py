"""Tests for telling a faulty device from the neighbours whose reconstruction it
moves (core.pipeline.explain_away) on a small trained model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from core import store
from core.config import ModelConfig
from core.pipeline import explain_away
from core.snapshots import COMM_FEATURES, SENSOR_FEATURES, build_snapshots
from core.store import Workspace
from core.train import encode_segments, fit, prepare

START = pd.Timestamp("2024-03-01 00:00:00", tz="UTC")
NUM_BINS = 160
SHIFT_FROM = 130


def _stamps(seconds) -> pd.Series:
    return pd.Series(START + pd.to_timedelta(np.asarray(seconds), unit="s")).astype(
        "datetime64[us, UTC]")


def _plant(tmp_path, switch: bool = False):
    """Field devices A, B and C poll each other every 30 s. Their sensors follow one
    fast-moving process, which their own past does not predict; from bin 130 on, A's
    reads 6 standard deviations high. With `switch`, C also has a status sensor C-2
    that reads 1 until bin 130 and 2 from then on."""
    rng = np.random.default_rng(2)
    seconds = np.arange(2 * NUM_BINS) * 30 + 5
    events = pd.concat([
        pd.DataFrame({"t": _stamps(seconds + offset), "src": src, "dst": dst,
                      "weight": 60.0})
        for offset, (src, dst) in enumerate([("A", "B"), ("B", "A"), ("B", "C"),
                                             ("C", "B"), ("C", "A"), ("A", "C")])
    ])
    process = np.repeat(rng.standard_normal(NUM_BINS), 2)
    readings = []
    for device, gain in (("A", 1.0), ("B", 0.8), ("C", -1.2)):
        values = gain * process + 0.03 * rng.standard_normal(len(process))
        if device == "A":
            values[2 * SHIFT_FROM:] += 6 * np.std(values[: 2 * SHIFT_FROM])
        readings.append(pd.DataFrame({"t": _stamps(seconds + 10), "device": device,
                                      "sensor": f"{device}-1", "value": values}))
    if switch:
        status = np.where(np.arange(len(seconds)) < 2 * SHIFT_FROM, 1.0, 2.0)
        readings.append(pd.DataFrame({"t": _stamps(seconds + 10), "device": "C",
                                      "sensor": "C-2", "value": status}))
    workspace = Workspace.create(tmp_path / "ws")
    with store.connect(workspace.store_path) as con:
        store.insert_frame(con, "events", events)
        store.insert_frame(con, "measurements", pd.concat(readings))
    return build_snapshots(workspace.store_path, 60)


def test_faulty_device_kept_neighbours_dropped(tmp_path):
    snapshots = _plant(tmp_path)
    segments = [(0, snapshots.num_bins)]
    train_bins = np.arange(100)
    prepared = prepare(snapshots, train_bins, segments)
    config = ModelConfig(hidden=16, dilations=(1, 2), own_lag=8, epochs=150, patience=150,
                         hide_share=0.3, seed=0)
    model = fit(prepared, snapshots, train_bins, config).model
    index = dict(zip(snapshots.devices["device"], snapshots.devices["idx"]))
    a, b, c = index["A"], index["B"], index["C"]
    column = len(COMM_FEATURES) + SENSOR_FEATURES.index("mean")

    with torch.no_grad():
        x_hat = model.decode_nodes(encode_segments(model, prepared)).numpy()
    error = np.abs(prepared.x.numpy()[..., column] - x_hat[..., column])
    before = error[100:SHIFT_FROM].mean(axis=0)
    during = error[SHIFT_FROM:].mean(axis=0)
    kept = explain_away(model, prepared, snapshots, [a, b, c], SHIFT_FROM, NUM_BINS, 0.5)

    # Without hiding, A's shift moves its neighbours' reconstruction well above
    # their usual error; with the suspects hidden, only A deviates.
    assert during[b] > 1.3 * before[b]
    assert during[c] > 1.3 * before[c]
    assert kept == [a]


def test_constant_sensor_switch_kept(tmp_path):
    snapshots = _plant(tmp_path, switch=True)
    train_bins = np.arange(100)
    prepared = prepare(snapshots, train_bins, [(0, snapshots.num_bins)])
    config = ModelConfig(hidden=16, dilations=(1, 2), own_lag=8, epochs=5, patience=5,
                         hide_share=0.3, seed=0)
    model = fit(prepared, snapshots, train_bins, config).model
    index = dict(zip(snapshots.devices["device"], snapshots.devices["idx"]))
    a, b, c = index["A"], index["B"], index["C"]
    x_before = prepared.x.clone()

    kept = explain_away(model, prepared, snapshots, [a, b, c], SHIFT_FROM, NUM_BINS, 0.5)

    # C-2 never moved in training, so its step of one unit counts as a departure at
    # the input clip, as large as A's shift of 6 standard deviations.
    assert prepared.constant == [("C", "C-2")]
    assert a in kept
    assert c in kept
    assert torch.equal(prepared.x, x_before)
