"""A small published run with planted incidents, built without the pipeline.

The run is consistent by construction: `device_evidence` is -log10 of the smallest
p-value among a device's elements in a bin, every incident member has element rows,
and the incident intervals are whole bins. Some device names carry Markdown and HTML
on purpose, so the dashboard tests can check that names are shown literally.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from core.config import RunConfig, StreamConfig
from core.store import Workspace, publish_run

RUN_ID = "fixture-run"
BIN_SECONDS = 60
SCALES = (1, 4)
NUM_BINS = 120
ORIGIN = pd.Timestamp("2026-03-01T00:00:00", tz="UTC")
TRAIN_END = 48
CALIBRATION_END = 72
SEED = 7
# Maximum scan scores of the null scan at scale 1, 49 shifts. Every planted incident
# scores above 60, so each has significance (1 + 0) / (1 + 49) = 0.02.
NULL_MAX_SCORES = [20.0 + 0.5 * shift for shift in range(48)] + [55.0]

DEVICES = [
    ("plc-01", "plc", "cell-a", 0.9),
    ("plc-02", "plc", "cell-a", 0.9),
    ("hmi-03", "hmi", "cell-a", 0.5),
    ("pump-04", "sensor", "cell-a", 0.6),
    ("valve-05", "sensor", "cell-b", 0.6),
    ("gateway-06", "gateway", "dmz", 0.8),
    ("<b>plc-07</b>", "plc", "cell-b", 0.9),
    ("hmi_*08*", "hmi", "cell-b", 0.5),
    ("flow:red[09]", "sensor", "cell-b", 0.4),
    ("historian-10", "historian", "dmz", 0.7),
    ("ws-11", "workstation", "office", 0.3),
    ("ws-12", "workstation", "office", 0.3),
]
SENSORS = ("temperature", "pressure")
PAIRS = [
    ("hmi-03", "plc-01"),
    ("hmi-03", "plc-02"),
    ("plc-01", "pump-04"),
    ("plc-02", "valve-05"),
    ("gateway-06", "historian-10"),
    ("historian-10", "plc-01"),
    ("hmi_*08*", "<b>plc-07</b>"),
    ("<b>plc-07</b>", "flow:red[09]"),
    ("ws-11", "gateway-06"),
    ("ws-12", "gateway-06"),
]

# Each planted incident: id, type, first bin, last bin (inclusive), devices, pairs,
# targets and sensors. Members get p-values far below the background.
INCIDENTS = [
    {
        "incident_id": "inc-7f3a2c",
        "type": "process",
        "first": 80,
        "last": 91,
        "devices": ["plc-01", "pump-04"],
        "pairs": [],
        "targets": [],
        "sensors": [("pump-04", "temperature"), ("plc-01", "pressure")],
    },
    {
        "incident_id": "inc-1b9d04",
        "type": "communication",
        "first": 96,
        "last": 103,
        "devices": ["hmi_*08*", "<b>plc-07</b>"],
        "pairs": [("hmi_*08*", "<b>plc-07</b>")],
        "targets": ["flow:red[09]"],
        "sensors": [],
    },
    {
        "incident_id": "inc-c55e81",
        "type": "both",
        "first": 108,
        "last": 115,
        "devices": ["ws-11", "gateway-06", "historian-10"],
        "pairs": [("ws-11", "gateway-06"), ("gateway-06", "historian-10")],
        "targets": ["plc-01"],
        "sensors": [("historian-10", "temperature")],
    },
]

# Member pairs that carry no event during their incident: a lost link.
LOST_PAIRS = [("gateway-06", "historian-10")]

# Flagged sensor bins: device, sensor, flag, first and last base bin (inclusive).
# Only the first two rows lie inside an incident that has the sensor as a member.
SENSOR_FLAGS = [
    ("pump-04", "temperature", "constant in training", 78, 95),
    ("pump-04", "temperature", "outside training range", 82, 83),
    ("historian-10", "temperature", "outside training range", 100, 107),
    ("ws-11", "pressure", "constant in training", 108, 115),
]


def build_fixture_workspace(path: str | os.PathLike) -> Workspace:
    """Create a workspace at `path` and publish the fixture run into it.

    Returns:
        The workspace, whose latest run is `RUN_ID`.
    """
    workspace = Workspace.create(path)
    rng = np.random.default_rng(SEED)
    config = RunConfig(stream=StreamConfig(bin_seconds=BIN_SECONDS, scales=SCALES))

    bins = _bins()
    elements = _elements(rng)
    tables = {
        "devices": _devices(),
        "sensors": _sensors(),
        "bins": bins,
        "elements": elements,
        "device_evidence": _device_evidence(elements),
        "incidents": _incidents(rng),
        "incident_members": _members(elements),
        "training_loss": _training_loss(),
        "null_scan": _null_scan(),
        "sensor_flags": _sensor_flags(),
    }
    info = {
        "config": config.to_dict(),
        "origin": ORIGIN.isoformat(),
        "created": pd.Timestamp.now(tz="UTC").isoformat(),
        "versions": {"tgloc": "0.1.0"},
        "model_checksum": "0" * 64,
        "workspace": str(workspace.root),
        "rounded_readings": [{"device": "pump-04", "sensor": "pressure", "places": 2,
                              "sources": 3, "finer_sources": 1}],
        "periods": {
            "train": [0, TRAIN_END],
            "calibration": [TRAIN_END, CALIBRATION_END],
            "score": [CALIBRATION_END, NUM_BINS],
        },
    }
    publish_run(workspace, RUN_ID, tables, info)
    return workspace


def _bin_start(scale: int, index: int) -> pd.Timestamp:
    return ORIGIN + pd.Timedelta(seconds=BIN_SECONDS * scale * index)


def _period(first_base_bin: int) -> str:
    if first_base_bin < TRAIN_END:
        return "train"
    if first_base_bin < CALIBRATION_END:
        return "calibration"
    return "score"


def _bins() -> pd.DataFrame:
    rows = []
    for scale in SCALES:
        for index in range(NUM_BINS // scale):
            rows.append({
                "scale": scale,
                "bin": index,
                "start": _bin_start(scale, index),
                "end": _bin_start(scale, index + 1),
                "period": _period(index * scale),
            })
    return pd.DataFrame(rows)


def _devices() -> pd.DataFrame:
    return pd.DataFrame([
        {"idx": i, "device": name, "kind": kind, "zone": zone,
         "criticality": criticality, "first_bin": 0}
        for i, (name, kind, zone, criticality) in enumerate(DEVICES)
    ])


def _sensors() -> pd.DataFrame:
    return pd.DataFrame([
        {"device": name, "sensor": sensor, "slot": slot}
        for name, *_ in DEVICES
        for slot, sensor in enumerate(SENSORS)
    ])


def _planted(kind: str, device: str, peer: str | None, sensor: str | None,
             base_bin: int) -> bool:
    for incident in INCIDENTS:
        if not incident["first"] <= base_bin <= incident["last"]:
            continue
        if kind == "device" and device in incident["devices"]:
            return True
        if kind == "pair" and (device, peer) in incident["pairs"]:
            return True
        if kind == "sensor" and (device, sensor) in incident["sensors"]:
            return True
    return False


def _element_row(rng: np.random.Generator, kind: str, device: str,
                 peer: str | None, sensor: str | None, scale: int,
                 index: int) -> dict:
    base_bins = range(index * scale, (index + 1) * scale)
    planted = any(_planted(kind, device, peer, sensor, b) for b in base_bins)
    expected = 50.0 + 10.0 * np.sin(index * scale / 15.0)
    residual = rng.normal(0.0, 1.0) + (8.0 if planted else 0.0)
    p_value = 10 ** rng.uniform(-5.5, -4.0) if planted else rng.uniform(0.01, 1.0)
    if planted and kind == "pair" and (device, peer) in LOST_PAIRS:
        residual = -expected
    return {
        "kind": kind, "device": device, "peer": peer, "sensor": sensor,
        "scale": scale, "bin": index, "observed": expected + residual,
        "expected": expected, "residual": residual, "score": abs(residual),
        "p_value": p_value, "calibration": "element",
    }


def _elements(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for scale in SCALES:
        for index in range(NUM_BINS // scale):
            for name, *_ in DEVICES:
                rows.append(_element_row(rng, "device", name, None, None, scale, index))
                for sensor in SENSORS:
                    rows.append(
                        _element_row(rng, "sensor", name, None, sensor, scale, index)
                    )
            for src, dst in PAIRS:
                rows.append(_element_row(rng, "pair", src, dst, None, scale, index))
    return pd.DataFrame(rows)


def _device_evidence(elements: pd.DataFrame) -> pd.DataFrame:
    grouped = elements.groupby(["device", "scale", "bin"], as_index=False).agg(
        min_p=("p_value", "min"), elements=("p_value", "size")
    )
    grouped["evidence"] = -np.log10(grouped["min_p"])
    return grouped[["device", "scale", "bin", "evidence", "min_p", "elements"]]


def _incidents(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for incident in INCIDENTS:
        members = len(incident["devices"])
        rows.append({
            "incident_id": incident["incident_id"],
            "start": _bin_start(1, incident["first"]),
            "end": _bin_start(1, incident["last"] + 1),
            "type": incident["type"],
            "score": 40.0 + 10.0 * members + rng.uniform(0, 5),
            "threshold": 25.0,
            "alpha": 1e-4,
            "scale": 1,
            "severity": 0.5 + 0.1 * members,
            "summary": (
                f"{members} devices behaved abnormally for "
                f"{incident['last'] - incident['first'] + 1} minutes."
            ),
        })
    frame = pd.DataFrame(rows).sort_values("severity", ascending=False)
    frame["rank"] = range(1, len(frame) + 1)
    return frame


def _member_p(elements: pd.DataFrame, incident: dict, mask: pd.Series) -> float:
    window = elements["bin"].between(incident["first"], incident["last"])
    base = elements["scale"] == 1
    return float(elements.loc[mask & window & base, "p_value"].min())


def _members(elements: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for incident in INCIDENTS:
        incident_id = incident["incident_id"]
        for device in incident["devices"]:
            mask = elements["device"] == device
            p_value = _member_p(elements, incident, mask)
            rows.append({"incident_id": incident_id, "role": "device",
                         "device": device, "peer": None, "sensor": None,
                         "evidence": -np.log10(p_value), "p_value": p_value})
        for src, dst in incident["pairs"]:
            mask = (elements["device"] == src) & (elements["peer"] == dst)
            p_value = _member_p(elements, incident, mask)
            rows.append({"incident_id": incident_id, "role": "pair",
                         "device": src, "peer": dst, "sensor": None,
                         "evidence": -np.log10(p_value), "p_value": p_value})
        for target in incident["targets"]:
            rows.append({"incident_id": incident_id, "role": "target",
                         "device": target, "peer": None, "sensor": None,
                         "evidence": None, "p_value": None})
        for device, sensor in incident["sensors"]:
            mask = (elements["device"] == device) & (elements["sensor"] == sensor)
            p_value = _member_p(elements, incident, mask)
            rows.append({"incident_id": incident_id, "role": "sensor",
                         "device": device, "peer": None, "sensor": sensor,
                         "evidence": -np.log10(p_value), "p_value": p_value})
    return pd.DataFrame(rows)


def _training_loss() -> pd.DataFrame:
    epochs = np.arange(1, 21)
    return pd.DataFrame({
        "epoch": epochs,
        "loss": 1.0 / epochs,
        "validation_loss": 1.1 / epochs + 0.01,
        "seconds": np.full(len(epochs), 0.5),
    })


def _null_scan() -> pd.DataFrame:
    return pd.DataFrame({
        "scale": 1,
        "shift": range(len(NULL_MAX_SCORES)),
        "max_score": NULL_MAX_SCORES,
    })


def _sensor_flags() -> pd.DataFrame:
    rows = []
    for device, sensor, flag, first, last in SENSOR_FLAGS:
        for index in range(first, last + 1):
            rows.append({"bin": index, "start": _bin_start(1, index), "device": device,
                         "sensor": sensor, "value": 1.0, "scaled": 0.0, "flag": flag})
    return pd.DataFrame(rows)
