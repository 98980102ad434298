"""Tests for core.snapshots on small stores built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import binning, online, store
from core.snapshots import (
    MICROS,
    SENSOR_FEATURES,
    align_origin,
    bin_events,
    build_snapshots,
    load_snapshots,
    measurement_bins,
    save_snapshots,
)
from core.store import Workspace

DAY = "2024-03-01"
MEAN = SENSOR_FEATURES.index("mean")
COUNT = SENSOR_FEATURES.index("count")
STALE = SENSOR_FEATURES.index("stale")


def _times(clock: list[str]) -> pd.Series:
    return pd.Series(pd.to_datetime([f"{DAY} {c}" for c in clock], utc=True)).astype(
        "datetime64[us, UTC]")


def _events(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    clock, src, dst, weight = zip(*rows)
    return pd.DataFrame({"t": _times(list(clock)), "src": list(src), "dst": list(dst),
                         "weight": list(weight)})


def _measurements(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    clock, device, sensor, value = zip(*rows)
    return pd.DataFrame({"t": _times(list(clock)), "device": list(device),
                         "sensor": list(sensor), "value": list(value)})


def _workspace(tmp_path: Path, events=None, measurements=None) -> Workspace:
    workspace = Workspace.create(tmp_path / "ws")
    with store.connect(workspace.store_path) as con:
        if events is not None:
            store.insert_frame(con, "events", events)
        if measurements is not None:
            store.insert_frame(con, "measurements", measurements)
    return workspace


def _names(snapshots, mask: np.ndarray) -> set[str]:
    return set(snapshots.devices["device"].to_numpy()[mask])


def test_device_index_by_first_appearance(tmp_path):
    events = _events([
        ("08:00:10", "A", "B", 100.0),
        ("08:01:10", "B", "C", 50.0),
        ("08:02:10", "A", "B", 10.0),
        ("08:02:20", "D", "A", 5.0),
    ])
    workspace = _workspace(tmp_path, events=events)

    snapshots = build_snapshots(workspace.store_path, 60)

    assert snapshots.devices["device"].tolist() == ["A", "B", "C", "D"]
    assert snapshots.devices["idx"].tolist() == [0, 1, 2, 3]
    assert snapshots.devices["first_bin"].tolist() == [0, 0, 1, 2]
    assert snapshots.num_bins == 3
    assert snapshots.origin_us == pd.Timestamp(f"{DAY} 08:00:00", tz="UTC").value // 1000
    assert snapshots.active.shape == (3, 4)
    assert _names(snapshots, snapshots.active[0]) == {"A", "B"}
    assert _names(snapshots, snapshots.active[1]) == {"B", "C"}
    assert _names(snapshots, snapshots.active[2]) == {"A", "B", "D"}
    assert snapshots.pairs.max() < 4
    assert snapshots.pairs.min() >= 0


def test_pairs_carry_events_and_bytes(tmp_path):
    events = _events([
        ("08:00:10", "A", "B", 100.0),
        ("08:00:40", "A", "B", 20.0),
        ("08:01:10", "B", "C", 50.0),
    ])
    workspace = _workspace(tmp_path, events=events)

    snapshots = build_snapshots(workspace.store_path, 60)
    pairs = [tuple(p) for p in snapshots.pairs.tolist()]
    a_to_b = pairs.index((0, 1))
    b_to_c = pairs.index((1, 2))

    assert len(pairs) == 2
    assert snapshots.pair_events[:, a_to_b].tolist() == [2.0, 0.0]
    assert snapshots.pair_bytes[:, a_to_b].tolist() == [120.0, 0.0]
    assert snapshots.pair_events[:, b_to_c].tolist() == [0.0, 1.0]
    # Communication features are log1p values, such as the out count of A in bin 0
    # and the in bytes of C in bin 1.
    assert snapshots.comm[0, 0, 0] == pytest.approx(np.log1p(2.0))
    assert snapshots.comm[1, 2, 3] == pytest.approx(np.log1p(50.0))
    assert snapshots.comm[1, 0].tolist() == [0.0] * 6


def test_empty_bins_kept(tmp_path):
    events = _events([("08:00:05", "A", "B", 1.0), ("08:03:05", "B", "A", 1.0)])
    workspace = _workspace(tmp_path, events=events)

    snapshots = build_snapshots(workspace.store_path, 60)

    assert snapshots.num_bins == 4
    assert snapshots.pair_events.shape == (4, 2)
    assert snapshots.pair_events[1].sum() == 0
    assert snapshots.pair_events[2].sum() == 0
    assert snapshots.pair_events[0].sum() == 1
    assert snapshots.pair_events[3].sum() == 1
    assert not snapshots.active[1].any()
    assert not snapshots.active[2].any()
    assert (snapshots.comm[1:3] == 0).all()


def test_sensor_features_per_bin(tmp_path):
    measurements = _measurements([
        ("00:00:00", "P1", "FIT101", 2.40),
        ("00:00:03", "P1", "FIT101", 2.43),
        ("00:00:06", "P1", "FIT101", 2.46),
        ("00:00:09", "P1", "FIT101", 2.49),
        ("00:00:12", "P1", "FIT101", 2.52),
        ("00:00:04", "P1", "LIT101", 500.0),
    ])
    workspace = _workspace(tmp_path, measurements=measurements)

    snapshots = build_snapshots(workspace.store_path, 10)
    sensors = snapshots.sensors["sensor"].tolist()
    flow = sensors.index("FIT101")
    level = sensors.index("LIT101")
    values = snapshots.sensor_values

    assert snapshots.num_bins == 2
    assert values.shape == (2, 2, len(SENSOR_FEATURES))
    assert values[0, flow, MEAN] == pytest.approx(2.445, abs=1e-6)
    assert values[1, flow, MEAN] == pytest.approx(2.52, abs=1e-6)
    assert values[0, flow, SENSOR_FEATURES.index("min")] == pytest.approx(2.40, abs=1e-6)
    assert values[0, flow, SENSOR_FEATURES.index("max")] == pytest.approx(2.49, abs=1e-6)
    assert values[0, flow, COUNT] == 4
    assert values[1, flow, COUNT] == 1
    assert np.isnan(values[1, level, MEAN])
    assert np.isnan(values[1, level, STALE])
    assert values[1, level, COUNT] == 0
    assert snapshots.sensors["slot"].tolist() == [0, 1]


def test_bin_events_coarse_sums_base_bins(tmp_path):
    rng = np.random.default_rng(3)
    names = ["A", "B", "C"]
    seconds = np.sort(rng.integers(0, 16 * 60, size=200))
    rows = []
    for second in seconds:
        src, dst = rng.choice(names, size=2, replace=False)
        clock = f"08:{second // 60:02d}:{second % 60:02d}"
        rows.append((clock, str(src), str(dst), float(rng.integers(1, 100))))
    workspace = _workspace(tmp_path, events=_events(rows))
    first = pd.Timestamp(f"{DAY} 08:00:00", tz="UTC").value // 1000
    origin = align_origin(first, 240)
    stop = origin + 16 * 60 * MICROS

    base = bin_events(workspace.store_path, origin, 60, origin, stop)
    coarse = bin_events(workspace.store_path, origin, 240, origin, stop)
    base["bin"] = base["bin"] // 4
    summed = base.groupby(["bin", "src", "dst"], as_index=False)[["events", "weight"]].sum()
    coarse = coarse.sort_values(["bin", "src", "dst"]).reset_index(drop=True)
    summed = summed.sort_values(["bin", "src", "dst"]).reset_index(drop=True)

    assert origin == first
    assert coarse["bin"].max() == 3
    assert int(coarse["events"].sum()) == 200
    assert coarse["events"].tolist() == summed["events"].tolist()
    assert coarse[["bin", "src", "dst"]].values.tolist() == \
        summed[["bin", "src", "dst"]].values.tolist()
    np.testing.assert_allclose(coarse["weight"], summed["weight"], rtol=1e-12)


def test_stale_feature_grows_for_constant_sensor(tmp_path):
    clock = [f"00:{s // 60:02d}:{s % 60:02d}" for s in range(0, 60, 5)]
    measurements = _measurements([(c, "P1", "LIT101", 500.0) for c in clock])
    workspace = _workspace(tmp_path, measurements=measurements)

    snapshots = build_snapshots(workspace.store_path, 10)
    stale = snapshots.sensor_values[:, 0, STALE]

    assert snapshots.num_bins == 6
    assert np.isfinite(stale).all()
    assert (np.diff(stale) > 0).all()
    # The value changed only at 00:00:00, so at the end of bin k it is k + 1 bins old.
    np.testing.assert_allclose(stale, np.log1p(np.arange(1, 7)), rtol=1e-6)


def test_stale_feature_resets_on_change(tmp_path):
    measurements = _measurements([
        ("00:00:00", "P1", "LIT101", 500.0),
        ("00:00:10", "P1", "LIT101", 500.0),
        ("00:00:20", "P1", "LIT101", 501.0),
        ("00:00:30", "P1", "LIT101", 501.0),
    ])
    workspace = _workspace(tmp_path, measurements=measurements)

    snapshots = build_snapshots(workspace.store_path, 10)
    stale = snapshots.sensor_values[:, 0, STALE]

    np.testing.assert_allclose(stale, np.log1p([1.0, 2.0, 1.0, 2.0]), rtol=1e-6)


def _sources(tmp_path: Path, rng: np.random.Generator) -> Workspace:
    """Two sources of one plant: the first reads at full precision, the second (a
    later export) rounds every reading to two decimal places."""
    hours = 400
    times = pd.date_range(f"{DAY} 00:00", periods=hours, freq="h", tz="UTC")
    pressure = 2.976 + rng.normal(0, 0.006, hours)
    level = rng.uniform(0, 5, hours)
    status = rng.integers(0, 2, hours).astype(float)
    tenths = np.round(rng.uniform(0, 50, hours), 1)
    rows = []
    for sensor, values in (("P_J280", pressure), ("L_T1", level), ("S_PU1", status),
                           ("F_V2", tenths)):
        rows.append(pd.DataFrame({"t": times, "device": "PLC1", "sensor": sensor,
                                  "value": values}))
    frame = pd.concat(rows, ignore_index=True)
    frame["t"] = frame["t"].astype("datetime64[us, UTC]")
    later = frame["t"] >= times[hours // 2]
    frame["report_id"] = np.where(later, 2, 1)
    # The later export keeps two decimal places of the full-precision signals.
    coarse = later & frame["sensor"].isin(["P_J280", "L_T1"])
    frame.loc[coarse, "value"] = frame.loc[coarse, "value"].round(2)
    return _workspace(tmp_path, measurements=frame)


def test_mixed_resolutions_read_at_coarsest(tmp_path):
    rng = np.random.default_rng(11)
    workspace = _sources(tmp_path, rng)
    with store.connect(workspace.store_path, read_only=True) as con:
        raw = con.execute("SELECT sensor, t, value FROM measurements "
                          "WHERE report_id = 1 ORDER BY sensor, t").df()

    snapshots = build_snapshots(workspace.store_path, 3600)

    rounded = snapshots.rounded
    assert rounded[["device", "sensor"]].values.tolist() == [["PLC1", "L_T1"],
                                                              ["PLC1", "P_J280"]]
    assert rounded["places"].tolist() == [2, 2]
    assert rounded["sources"].tolist() == [2, 2]
    assert rounded["finer_sources"].tolist() == [1, 1]
    sensors = snapshots.sensors["sensor"].tolist()
    first = raw[raw["t"] < raw["t"].min() + pd.Timedelta(hours=200)]
    for sensor, digits in (("P_J280", 2), ("L_T1", 2), ("S_PU1", None), ("F_V2", None)):
        expected = first[first["sensor"] == sensor]["value"].to_numpy()
        if digits is not None:
            expected = np.round(expected, digits)
        column = snapshots.sensor_values[:200, sensors.index(sensor), MEAN]
        np.testing.assert_allclose(column, expected, atol=1e-5)
    # The full-precision source did differ from its rounding, so the test reads it.
    pressure = first[first["sensor"] == "P_J280"]["value"].to_numpy()
    assert np.abs(pressure - np.round(pressure, 2)).max() > 1e-3


def test_one_resolution_not_rounded(tmp_path):
    measurements = _measurements([(f"00:{m:02d}:00", "P1", "FIT101", 2.40 + 0.01 * m)
                                  for m in range(30)])
    measurements["report_id"] = np.where(np.arange(30) < 15, 1, 2)
    workspace = _workspace(tmp_path, measurements=measurements)

    snapshots = build_snapshots(workspace.store_path, 60)

    assert snapshots.rounded.empty
    np.testing.assert_allclose(snapshots.sensor_values[:, 0, MEAN],
                               2.40 + 0.01 * np.arange(30), atol=1e-5)


def test_rounding_survives_save_and_load(tmp_path):
    workspace = _sources(tmp_path, np.random.default_rng(5))
    snapshots = build_snapshots(workspace.store_path, 3600)

    loaded = load_snapshots(save_snapshots(snapshots, tmp_path / "snapshots.npz"))

    pd.testing.assert_frame_equal(loaded.rounded, snapshots.rounded, check_dtype=False)
    np.testing.assert_array_equal(loaded.sensor_values, snapshots.sensor_values)


def test_live_bin_rounded_like_run(tmp_path):
    """The online path rounds a new bin's readings as the run it follows did."""
    workspace = _sources(tmp_path, np.random.default_rng(7))
    snapshots = build_snapshots(workspace.store_path, 3600)
    info = {"rounded_readings": snapshots.rounded.to_dict(orient="records")}
    places = online.recorded_places(info)
    start = snapshots.origin_us + 10 * 3600 * MICROS
    params = binning.measurement_parameters(snapshots.origin_us, 3600, start,
                                            start + 3600 * MICROS)

    with store.connect(workspace.store_path, read_only=True) as con:
        live = measurement_bins(con, params, places).set_index("sensor")["mean"]
        plain = measurement_bins(con, params, None).set_index("sensor")["mean"]

    assert live["P_J280"] == pytest.approx(round(plain["P_J280"], 2), abs=1e-9)
    assert live["P_J280"] != pytest.approx(plain["P_J280"], abs=1e-6)
    sensors = snapshots.sensors["sensor"].tolist()
    for sensor in ("P_J280", "L_T1", "S_PU1", "F_V2"):
        assert live[sensor] == pytest.approx(
            snapshots.sensor_values[10, sensors.index(sensor), MEAN], abs=1e-5)
