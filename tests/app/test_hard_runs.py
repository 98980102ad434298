"""Real pipeline runs on hard inputs, checked in the run file, the views and the pages.

A port sweep (one source, 254 new hosts in one minute), a device that appears late
and a pump status that never changes in training each get a small, fast
configuration: one scale, a tiny model, two null shifts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPOSITORY, incident_page

from core import store, views
from core.cli import main
from core.config import ModelConfig, RunConfig, SearchConfig, StreamConfig
from core.ingest import IngestOptions, ingest_file
from core.pipeline import run_pipeline
from core.store import Workspace

TIMEOUT = 60
FAST = dict(
    stream=StreamConfig(bin_seconds=60, scales=(1,)),
    model=ModelConfig(hidden=8, dilations=(1, 2), own_lag=2, epochs=5, patience=3),
    search=SearchConfig(null_shifts=2),
)
SWEEP = "10.9.9.9"
SWEEP_START = pd.Timestamp("2024-03-01T08:30:00Z")
PUMP = "P102"
PUMP_ON = pd.Timestamp("2024-05-01T01:30:00Z")
PUMP_OFF = pd.Timestamp("2024-05-01T01:40:00Z")


def _write_scan(path: Path) -> None:
    rows = ["ts,src,dst,dst_port"]
    for s in range(0, 3600, 5):  # one hour of polling
        for a, b in [("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.3"),
                     ("10.0.0.4", "10.0.0.5")]:
            rows.append(f"2024-03-01T08:{s // 60:02d}:{s % 60:02d}Z,{a},{b},502")
    for i in range(1, 255):  # the sweep: one source, 254 new hosts, one minute
        rows.append(f"2024-03-01T08:30:{i % 60:02d}Z,{SWEEP},10.0.1.{i},502")
    path.write_text("\n".join(rows) + "\n")


def _write_late_device(path: Path) -> None:
    """A, B and C poll each other for 40 minutes; D starts talking to A at 08:30."""
    rows = ["ts,src,dst"]
    for s in range(0, 2400, 10):
        stamp = f"2024-03-01T08:{s // 60:02d}:{s % 60:02d}Z"
        rows += [f"{stamp},A,B", f"{stamp},B,C"]
        if s >= 1800:
            rows.append(f"{stamp},D,A")
    path.write_text("\n".join(rows) + "\n")


def _write_pump_plant(path: Path) -> None:
    """Two hours of readings every 10 s, one column per sensor as in WADI.

    Pump status P102 reads 1 through the reference period (the first hour) and 2
    from 01:30 to 01:40. The flow and the level follow slow waves with noise.
    """
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2024-05-01T00:00:00Z")
    rows = [f"timestamp,FIT101,{PUMP},LIT101"]
    for step in range(720):
        stamp = start + pd.Timedelta(seconds=10 * step)
        flow = 2.4 + 0.1 * np.sin(step / 30) + 0.01 * rng.standard_normal()
        level = 520 + 5 * np.cos(step / 45) + 0.1 * rng.standard_normal()
        status = 2 if PUMP_ON <= stamp < PUMP_OFF else 1
        rows.append(f"{stamp:%Y-%m-%d %H:%M:%S},{flow:.3f},{status},{level:.2f}")
    path.write_text("\n".join(rows) + "\n")


def _run(root: Path, source: Path, reference_end: str,
         options: IngestOptions | None = None) -> Workspace:
    workspace = Workspace.create(root)
    ingest_file(workspace, source, options or IngestOptions("events"))
    run_pipeline(workspace, RunConfig(**FAST, reference_end=reference_end),
                 run_id="run")
    return workspace


@pytest.fixture(scope="module")
def scan_workspace(tmp_path_factory) -> Workspace:
    folder = tmp_path_factory.mktemp("scan")
    _write_scan(folder / "scan.csv")
    return _run(folder / "ws", folder / "scan.csv", "2024-03-01T08:24:00Z")


@pytest.fixture(scope="module")
def late_workspace(tmp_path_factory) -> Workspace:
    folder = tmp_path_factory.mktemp("late")
    _write_late_device(folder / "late.csv")
    return _run(folder / "ws", folder / "late.csv", "2024-03-01T08:20:00Z")


@pytest.fixture(scope="module")
def pump_workspace(tmp_path_factory) -> Workspace:
    folder = tmp_path_factory.mktemp("pump")
    _write_pump_plant(folder / "plant.csv")
    return _run(folder / "ws", folder / "plant.csv", "2024-05-01T01:00:00Z",
                IngestOptions("measurements", layout="wide"))


def _pump_incident(workspace: Workspace) -> str:
    """Return the id of the first incident with the pump among its sensors."""
    for incident_id in views.incidents(workspace, "run")["incident_id"]:
        members = views.incident_members(workspace, "run", incident_id)
        sensors = members.loc[members["role"] == "sensor", "sensor"].tolist()
        if PUMP in sensors:
            return incident_id
    raise AssertionError(f"no incident names {PUMP}")


def test_sweep_source_ranked_first(scan_workspace):
    incidents = views.incidents(scan_workspace, "run")
    top = incidents.iloc[0]
    members = views.incident_members(scan_workspace, "run", top["incident_id"])
    devices = members.loc[members["role"] == "device", "device"].tolist()

    assert top["rank"] == 1
    assert pd.Timestamp(top["start"]) == SWEEP_START
    assert devices[0] == SWEEP
    assert int((members["role"] == "target").sum()) == 254


def test_sweep_window_scores_finite(scan_workspace):
    bins = store.query(scan_workspace.run_path("run"),
                       "SELECT bin, score, events, note FROM bins ORDER BY bin")
    elements = store.query(scan_workspace.run_path("run"),
                           "SELECT score, observed, expected FROM elements")

    assert np.isfinite(bins["score"]).all()
    assert bins.loc[30, "events"] == 36 + 254
    assert np.isfinite(elements.to_numpy(dtype=float)).all()


def test_sweep_drilldown_lists_top_targets(scan_workspace, monkeypatch):
    incident_id = views.incidents(scan_workspace, "run")["incident_id"].iloc[0]
    app = incident_page(scan_workspace, "run", incident_id, monkeypatch, TIMEOUT)
    table = app.dataframe[0].value
    targets = table[table["role"] == "target"]

    assert not app.exception
    assert len(targets) == views.MAX_TARGETS_SHOWN == 20
    assert list(targets["evidence"]) == sorted(targets["evidence"], reverse=True)
    assert table.loc[table["role"] == "device", "device"].tolist() == [SWEEP]
    assert any("+234 more targets" in caption.value for caption in app.caption)
    assert any(text.value.endswith("+234 more") for text in app.text)


def test_late_device_blank_before_first_bin(late_workspace):
    path = late_workspace.run_path("run")
    elements = store.query(path, "SELECT bin FROM elements WHERE kind = 'device' "
                           "AND device = 'D'")
    evidence = store.query(path, "SELECT bin FROM device_evidence WHERE device = 'D'")
    matrix = views.heatmap_matrix(late_workspace, "run", 1)
    row = matrix.evidence[matrix.devices.index("D")]
    first_bin = store.query(path, "SELECT first_bin FROM devices WHERE device = 'D'")

    assert int(first_bin["first_bin"][0]) == 30
    assert len(elements) > 0
    assert elements["bin"].min() >= 30
    assert evidence["bin"].min() >= 30
    assert np.isnan(row[:30]).all()
    assert not np.isnan(row[30:]).all()


def test_constant_pump_named_and_flagged(pump_workspace):
    path = pump_workspace.run_path("run")
    loss = store.query(path, "SELECT epoch, loss FROM training_loss ORDER BY epoch")
    incident_id = _pump_incident(pump_workspace)
    row = views.incident(pump_workspace, "run", incident_id)
    start, end = pd.Timestamp(row["start"]), pd.Timestamp(row["end"])
    flags = views.member_sensor_flags(pump_workspace, "run", incident_id)
    bins = dict(zip(flags["flag"], flags["bins"]))
    # Base bins of the incident in which the pump reads 2.
    pump_on = (min(end, PUMP_OFF) - max(start, PUMP_ON)) // pd.Timedelta(minutes=1)

    assert loss["epoch"].iloc[0] == 1
    assert np.isfinite(loss["loss"]).all()
    assert start < PUMP_OFF
    assert end > PUMP_ON
    assert set(flags["sensor"]) == {PUMP}
    assert bins["outside training range"] == pump_on
    assert bins["constant in training"] >= pump_on


def test_constant_pump_flags_in_json(pump_workspace, capsys):
    incident_id = _pump_incident(pump_workspace)

    code = main(["incidents", "--workspace", str(pump_workspace.root), "--run", "run"])
    listed = json.loads(capsys.readouterr().out)["incidents"]
    incident = next(item for item in listed if item["id"] == incident_id)
    flagged = {(item["device"], item["sensor"]): item["flags"]
               for item in incident["sensor_flags"]}

    assert code == 0
    assert [PUMP, PUMP] in incident["sensors"]
    assert flagged[(PUMP, PUMP)] == ["constant in training", "outside training range"]


def test_constant_pump_drilldown_shows_flags(pump_workspace, monkeypatch):
    incident_id = _pump_incident(pump_workspace)
    app = incident_page(pump_workspace, "run", incident_id, monkeypatch, TIMEOUT)
    lines = [text.value for text in app.text
             if text.value.startswith(f"{PUMP} · {PUMP}: ")]

    assert not app.exception
    assert not app.error
    assert len(lines) == 1
    assert "constant in training (" in lines[0]
    assert "outside training range (" in lines[0]
