"""Tests of the synthetic plant: determinism, size, traffic, process, ground truth."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from core.errors import ConfigError
from core.store import Workspace, query
from core.synth import (
    ANOMALY_TYPES,
    DEFAULT_ANOMALIES,
    PlantConfig,
    generate_plant,
    store_plant,
    write_plant,
)

SMALL = PlantConfig(seed=3, field_devices=24, hours=6.0, anomalies=ANOMALY_TYPES)


@pytest.fixture(scope="module")
def default_plant():
    started = time.perf_counter()
    plant = generate_plant(PlantConfig())
    return plant, time.perf_counter() - started


@pytest.fixture(scope="module")
def small():
    return generate_plant(SMALL)


@pytest.fixture(scope="module")
def small_null():
    return generate_plant(PlantConfig(seed=3, field_devices=24, hours=6.0,
                                      anomalies=()))


def _row(plant, kind):
    rows = plant.truth[plant.truth["kind"] == kind]
    assert len(rows) == 1
    return rows.iloc[0]


def _in(frame, row):
    return frame[(frame["t"] >= row["start"]) & (frame["t"] < row["end"])]


def _origin(plant):
    return pd.Timestamp(plant.config.start)


def _reference_end(plant):
    span = pd.Timedelta(hours=plant.config.hours)
    return _origin(plant) + plant.config.anomaly_start_share * span


def test_plant_seed_determinism(small):
    again = generate_plant(SMALL)
    for name in ("events", "measurements", "devices", "links", "truth"):
        pd.testing.assert_frame_equal(getattr(small, name), getattr(again, name))
    other = generate_plant(PlantConfig(seed=4, field_devices=24, hours=6.0))
    assert not small.events.equals(other.events)
    assert not small.measurements.equals(other.measurements)
    assert list(small.truth["start"]) != list(other.truth["start"])


def test_default_plant_size_and_placement(default_plant):
    plant, seconds = default_plant
    assert 90 <= len(plant.devices) <= 110
    assert plant.devices["device"].is_unique
    assert 500_000 < len(plant.events) < 1_500_000
    assert seconds < 15.0
    truth = plant.truth
    assert sorted(truth["kind"]) == sorted(DEFAULT_ANOMALIES)
    assert truth["anomaly_id"].is_unique
    reference_end = _reference_end(plant)
    plant_end = _origin(plant) + pd.Timedelta(hours=24)
    for row in truth.itertuples():
        assert len(row.devices) > 0
        assert reference_end <= row.start < row.end <= plant_end
    ordered = truth.sort_values("start")
    assert (ordered["start"].to_numpy()[1:] >= ordered["end"].to_numpy()[:-1]).all()


def test_default_plant_columns_and_order(default_plant):
    plant, _ = default_plant
    events = plant.events
    assert list(events.columns) == ["t", "src", "dst", "weight", "protocol"]
    assert str(events["t"].dtype) == "datetime64[us, UTC]"
    assert str(plant.measurements["t"].dtype) == "datetime64[us, UTC]"
    assert events["weight"].dtype == np.float64
    assert np.isfinite(events["weight"]).all()
    assert (events["weight"] > 0).all()
    assert events["t"].is_monotonic_increasing
    assert plant.measurements["t"].is_monotonic_increasing
    assert (events["src"] != events["dst"]).all()
    known = set(plant.devices["device"])
    assert set(events["src"]) | set(events["dst"]) <= known
    assert set(plant.measurements["device"]) <= known
    assert plant.measurements.groupby("sensor")["device"].nunique().max() == 1
    assert set(plant.devices["kind"]) == {
        "gateway", "historian", "workstation", "scada", "hmi", "plc", "field"}
    assert plant.devices["criticality"].max() == 1.0
    assert (plant.devices["criticality"] == 1.0).sum() == 1
    assert plant.links[["src", "dst"]].duplicated().sum() == 0
    assert (plant.links["weight"] > 0).all()


def test_cell_sensors_correlate(default_plant):
    plant, _ = default_plant
    m = plant.measurements
    m = m[m["t"] < _reference_end(plant)]
    zone = plant.devices.set_index("device")["zone"]
    m = m.assign(zone=m["device"].map(zone), minute=m["t"].dt.floor("60s"))
    checked = 0
    for _, cell in m.groupby("zone"):
        wide = cell.pivot_table(index="minute", columns="sensor", values="value")
        r = wide.corr().abs().to_numpy()
        assert r[np.triu_indices_from(r, 1)].min() > 0.8
        checked += 1
    assert checked >= 8


def test_scaling_with_field_devices():
    tiny = generate_plant(PlantConfig(field_devices=10, hours=1.0, anomalies=()))
    assert len(tiny.devices) == 10 + 1 + 8
    large = generate_plant(PlantConfig(field_devices=1000, hours=0.5, anomalies=()))
    kinds = large.devices["kind"].value_counts()
    assert kinds["field"] == 1000
    assert kinds["plc"] == 125
    assert len(large.devices) == 1133
    assert large.measurements["sensor"].is_unique is False
    assert large.measurements.groupby("sensor")["device"].nunique().max() == 1


def test_null_plant_matches_outside_anomalies(small, small_null):
    assert small_null.truth.empty
    assert list(small_null.truth.columns) == list(small.truth.columns)
    inside_e = np.zeros(len(small.events), dtype=bool)
    inside_m = np.zeros(len(small.measurements), dtype=bool)
    inside_ne = np.zeros(len(small_null.events), dtype=bool)
    inside_nm = np.zeros(len(small_null.measurements), dtype=bool)
    for row in small.truth.itertuples():
        for frame, mask in ((small.events, inside_e), (small.measurements, inside_m),
                            (small_null.events, inside_ne),
                            (small_null.measurements, inside_nm)):
            mask |= ((frame["t"] >= row.start) & (frame["t"] < row.end)).to_numpy()
    pd.testing.assert_frame_equal(small.events[~inside_e].reset_index(drop=True),
                                  small_null.events[~inside_ne].reset_index(drop=True))
    pd.testing.assert_frame_equal(
        small.measurements[~inside_m].reset_index(drop=True),
        small_null.measurements[~inside_nm].reset_index(drop=True))
    assert not small.measurements[inside_m].reset_index(drop=True).equals(
        small_null.measurements[inside_nm].reset_index(drop=True))


def test_port_scan_pairs_new_in_window(small):
    row = _row(small, "port_scan")
    ws = row["devices"][0]
    assert ws.startswith("ews-")
    assert 20 <= len(row["targets"]) <= 40
    assert {p["dst"] for p in row["pairs"]} == set(row["targets"])
    events = small.events
    from_ws = events[events["src"] == ws]
    before = from_ws[from_ws["t"] < row["start"]]
    assert not set(before["dst"]) & set(row["targets"])
    during = _in(from_ws, row)
    scanned = during[during["protocol"] == "tcp-syn"]
    assert set(scanned["dst"]) == set(row["targets"])
    assert (events["protocol"] == "tcp-syn").sum() == len(scanned)
    assert row["end"] - row["start"] <= pd.Timedelta(minutes=5)


def test_silence_drops_device_output(small, small_null):
    row = _row(small, "silence")
    device = row["devices"][0]
    plc = next(p["dst"] for p in row["pairs"] if p["src"] == device)
    during = _in(small.events, row)
    assert (during["src"] != device).all()
    assert (_in(small.measurements, row)["device"] != device).all()
    requests = during[(during["src"] == plc) & (during["dst"] == device)]
    normal = _in(small_null.events, row)
    expected = normal[(normal["src"] == plc) & (normal["dst"] == device)]
    assert len(requests) == len(expected) > 0
    assert (_in(small_null.events, row)["src"] == device).sum() > 0


def test_link_loss_drops_one_pair(small, small_null):
    row = _row(small, "link_loss")
    source, plc = row["devices"]
    assert [(p["src"], p["dst"]) for p in row["pairs"]] == [(source, plc), (plc, source)]
    during = _in(small.events, row)
    normal = _in(small_null.events, row)

    def between(events):
        return (((events["src"] == source) & (events["dst"] == plc))
                | ((events["src"] == plc) & (events["dst"] == source)))

    assert between(normal).sum() > 0
    assert between(during).sum() == 0
    # Both ends go on talking to their other peers as in the plant without it.
    for device in (source, plc):
        others = (during["src"] == device) & ~between(during)
        expected = (normal["src"] == device) & ~between(normal)
        assert others.sum() == expected.sum() > 0


def test_default_plant_has_no_link_loss():
    assert "link_loss" in ANOMALY_TYPES
    assert "link_loss" not in PlantConfig().anomalies


def test_stuck_sensor_repeats_one_value(small):
    row = _row(small, "stuck")
    sensor = row["sensors"][0]
    values = small.measurements[small.measurements["sensor"] == sensor]
    assert _in(values, row)["value"].nunique() == 1
    assert len(_in(values, row)) >= 2
    assert values[values["t"] < row["start"]]["value"].nunique() > 10


def _sensor_values(plant, sensor):
    m = plant.measurements
    return m[m["sensor"] == sensor].set_index("t")["value"]


def _reference_sd(plant, sensor):
    values = _sensor_values(plant, sensor)
    return values[values.index < _reference_end(plant)].std(ddof=0)


def test_drift_reaches_planted_size(small, small_null):
    row = _row(small, "drift")
    sensor = row["sensors"][0]
    delta = (_sensor_values(small, sensor) - _sensor_values(small_null, sensor))
    inside = delta[(delta.index >= row["start"]) & (delta.index < row["end"])]
    outside = delta.drop(inside.index)
    assert (outside == 0).all()
    reach = abs(inside.iloc[-1]) / _reference_sd(small_null, sensor)
    assert 3.5 < reach <= 6.0


def test_spike_inside_minute_bins(small, small_null):
    row = _row(small, "spike")
    sensor = row["sensors"][0]
    delta = _sensor_values(small, sensor) - _sensor_values(small_null, sensor)
    hit = delta[delta.abs() > 1e-3]
    assert 1 <= len(hit) <= 2
    assert (hit.index >= row["start"]).all()
    assert (hit.index < row["end"]).all()
    assert (hit.abs() / _reference_sd(small_null, sensor)).between(7.9, 8.1).all()
    origin = _origin(small)
    for bound in (row["start"], row["end"]):
        assert (bound - origin) % pd.Timedelta(seconds=60) == pd.Timedelta(0)
    assert row["end"] - row["start"] <= pd.Timedelta(minutes=2)


def test_flood_and_new_link_pairs(small):
    events = small.events
    flood = _row(small, "flood")
    src, plc = flood["devices"]
    writes = events[(events["src"] == src) & (events["dst"] == plc)
                    & (events["protocol"] == "modbus-write")]
    reference = writes[writes["t"] < _reference_end(small)]
    span = _reference_end(small) - _origin(small)
    normal_rate = len(reference) / span.total_seconds()
    length = (flood["end"] - flood["start"]).total_seconds()
    flood_rate = len(_in(writes, flood)) / length
    assert flood_rate > 15 * normal_rate
    link = _row(small, "new_link")
    src, plc = link["devices"]
    pair = events[(events["src"] == src) & (events["dst"] == plc)]
    assert (pair["t"] >= link["start"]).all()
    assert (pair["t"] < link["end"]).all()
    assert len(pair) > 10
    assert plc.startswith("plc-")


def test_process_fault_stays_in_cell(small, small_null):
    row = _row(small, "process_fault")
    devices = row["devices"]
    assert 3 <= len(devices) <= 4
    zone = small.devices.set_index("device")["zone"]
    assert len({zone[d] for d in devices}) == 1
    for sensor in row["sensors"]:
        delta = _sensor_values(small, sensor) - _sensor_values(small_null, sensor)
        inside = delta[(delta.index >= row["start"]) & (delta.index < row["end"])]
        assert (delta.drop(inside.index) == 0).all()
        shift = inside.abs().max() / _reference_sd(small_null, sensor)
        assert 3.0 < shift < 5.0


def test_small_plant_has_every_type(small):
    assert sorted(small.truth["kind"]) == sorted(ANOMALY_TYPES)
    for row in small.truth.itertuples():
        assert row.start < row.end
        assert row.start >= _reference_end(small)


@pytest.mark.parametrize("settings", [
    {"seed": -1},
    {"field_devices": 2},
    {"field_devices": 10.5},
    {"hours": 0},
    {"hours": float("nan")},
    {"start": "2024-03-04T00:00:00"},
    {"start": "not a time"},
    {"anomalies": ("meteor",)},
    {"anomaly_start_share": 1.0},
    {"hours": 0.5},
])
def test_config_rejects_invalid_settings(settings):
    with pytest.raises(ConfigError) as caught:
        PlantConfig(**settings)
    name = next(iter(settings))
    assert name in str(caught.value)


def test_write_plant_round_trip(tmp_path, small):
    paths = write_plant(small, tmp_path / "plant")
    assert {p.name for p in paths.values()} == {
        "events.parquet", "measurements.parquet", "devices.csv", "links.csv",
        "truth.json", "plant.json"}
    events = pd.read_parquet(paths["events"])
    pd.testing.assert_frame_equal(events, small.events, check_dtype=False)
    truth = json.loads(paths["truth"].read_text())
    assert [t["kind"] for t in truth] == list(small.truth["kind"])
    assert truth[0]["start"].endswith("Z")
    assert json.loads(paths["config"].read_text())["seed"] == SMALL.seed


def test_store_plant_replaces_on_rerun(tmp_path, small):
    workspace = Workspace.create(tmp_path / "ws")
    store_plant(workspace, small)
    store_plant(workspace, small)
    path = workspace.store_path
    for table, frame in (("devices", small.devices), ("links", small.links)):
        count = query(path, f"SELECT count(*) AS n FROM {table}")["n"][0]
        assert count == len(frame)
    truth = query(path, "SELECT * FROM ground_truth ORDER BY anomaly_id")
    assert len(truth) == len(small.truth)
    scan = truth[truth["kind"] == "port_scan"].iloc[0]
    expected = _row(small, "port_scan")
    assert list(scan["targets"]) == list(expected["targets"])
    assert [dict(p) for p in scan["pairs"]] == list(expected["pairs"])
    assert pd.Timestamp(scan["start"]) == expected["start"]
