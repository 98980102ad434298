"""A seeded synthetic industrial plant with planted anomalies and exact ground truth.

`generate_plant` builds a plant from a `PlantConfig`: its devices, its static
topology, a link stream of timestamped communications, correlated process
measurements and a ground-truth table of the anomalies planted into them. The same
configuration always gives the same frames, value for value. The traffic, the process
and the anomalies draw from separate random streams, so a plant with
``anomalies=()`` is the same plant with nothing planted.

Devices and zones
-----------------

==============  ============  ===========  ==========================================
device          kind          zone         role
==============  ============  ===========  ==========================================
``gateway``     gateway       dmz          link to the corporate network
``historian``   historian     dmz          archives process data from SCADA
``ews-1``, -2   workstation   control      engineering workstations
``scada-1``, -2 scada         control      poll and write every PLC
``hmi-1``, -2   hmi           control      operator panels
``plc-01`` ...  plc           cell-01 ...  one PLC per process cell
``ft-01-01``    field         cell-01      field device 01 of cell 01
==============  ============  ===========  ==========================================

There is one PLC per eight field devices (at least one); the field devices are shared
out over the cells as evenly as possible. A field device's name starts with its
sensor kind: ``ft`` flow (m3/h), ``lt`` level (%), ``pt`` pressure (bar), ``tt``
temperature (degC). It carries one to three sensors named like ``FT-0302-1``, unique
across the plant. Criticality: PLC 0.8 (one safety PLC 1.0), SCADA 0.9, gateway 0.7,
HMI and workstation 0.6, historian and field devices 0.5.

Communication
-------------

Every link is periodic, with its own period and phase, a jitter of a few percent of
the period, and byte sizes varying a little around the link's own mean. A request
with a response gives one event each way, the response a few milliseconds later.

- each PLC polls each of its field devices every 20-30 s (``modbus-read``, both ways);
- both SCADA servers poll each PLC every 10-20 s (``modbus-read``, both ways) and
  write to it every 60-120 s (``modbus-write``, one event);
- ``hmi-1`` writes set points to the odd cells' PLCs and ``hmi-2`` to the even cells'
  every 2-5 min (``modbus-write``); HMI *i* polls ``scada-i`` every 10 s (``opc-ua``);
- the historian pulls from each SCADA server every 30 s (``historian``, both ways);
- the gateway and the historian exchange every 60 s (``http``, both ways);
- each workstation talks to both SCADA servers (``opc-ua``) and to the historian
  (``http``) every 2-5 min, both ways;
- neighbouring PLCs send each other interlocks every 15 s (``modbus-write``).

A write is one event; its acknowledgement is not modelled. The links table lists each
directed pair of the normal traffic with its expected bytes per minute.

Process
-------

Each cell has a process signal on a 10 s grid. Cell 1 is a smooth production cycle of
1.5-3 hours plus a mean-reverting (Ornstein-Uhlenbeck) component. Cell *k* is 0.8 times cell *k-1*
delayed by 1-5 min, plus its own mean-reverting component. A sensor reads
``offset + gain * signal(t - lag) + noise`` with a lag under a minute, a gain of
either sign, and noise of 5-10 % of the sensor's signal spread, every 30 s with a
second of jitter, so the sensors of a cell predict each other.

Anomalies
---------

Anomalies are placed in ``[anomaly_start_share * span, span)``; the earlier part is
the reference period. They do not overlap in time and are separated by a guard gap.
Their durations are drawn from the ranges below; when the anomaly part of a short
plant cannot hold them, all durations shrink by one common factor. Each interval is
``[start, end)`` and the planted change lies exactly inside it. "Reference standard
deviation" is the sensor's standard deviation over the reference period.

- ``port_scan``: a workstation sends 1-3 ``tcp-syn`` events (40-60 bytes) to each of
  20-40 PLCs and field devices (all there are, if fewer) within 2-5 min.
  devices = [workstation]; targets = the scanned hosts; pairs = (workstation, host)
  for each host; sensors = [].
- ``new_link``: an HMI or workstation polls a PLC it never talks to every 10-20 s for
  30-60 min and the PLC answers (``modbus-read``). devices = [source, PLC];
  pairs = (source, PLC) and (PLC, source); targets = sensors = [].
- ``silence``: a field device sends nothing for 20-60 min, neither events nor
  measurements, while its PLC's requests go on. devices = [field device];
  pairs = (device, PLC) and (PLC, device); targets = sensors = [].
- ``link_loss``: a SCADA server or HMI stops polling one PLC it normally reads for
  20-60 min, and the PLC's answers stop with it, while both go on talking to their
  other peers. devices = [source, PLC]; pairs = (source, PLC) and (PLC, source);
  targets = sensors = []. Not in the default plant (`DEFAULT_ANOMALIES`).
- ``flood``: a SCADA server or HMI writes to one PLC it normally writes to at 20-50
  times its normal write rate for 5-15 min. devices = [source, PLC];
  pairs = [(source, PLC)]; targets = sensors = [].
- ``drift``: one sensor gets a linear ramp from 0 to 4-6 reference standard
  deviations over 60-120 min, then returns to normal. devices = [its device];
  sensors = [sensor]; pairs = targets = [].
- ``stuck``: one sensor repeats its last value before the interval for 30-60 min.
  devices = [its device]; sensors = [sensor]; pairs = targets = [].
- ``spike``: one or two consecutive samples of one sensor move 8 reference standard
  deviations up or down. The interval is the 60 s bin or bins, counted from the
  plant's start, that hold them. devices = [its device]; sensors = [sensor];
  pairs = targets = [].
- ``process_fault``: all sensors of one field device shift by about 4 reference
  standard deviations; the shift reaches 2-3 other field devices of the same cell
  5-10 min later, one after another, and lasts until the end (30-60 min in all).
  devices = the 3-4 devices, origin first; sensors = all their sensors;
  pairs = targets = [].
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from core.errors import ConfigError
from core.store import STORE_SCHEMA, Workspace, connect, insert_frame

log = logging.getLogger(__name__)

ANOMALY_TYPES = (
    "port_scan", "new_link", "silence", "flood", "drift", "stuck", "spike",
    "process_fault", "link_loss",
)
# The sample plant's anomalies: every type but link_loss, which came later and
# would move every anomaly of the default plant.
DEFAULT_ANOMALIES = ANOMALY_TYPES[:8]

FIELD_PER_PLC = 8
MIN_FIELD_DEVICES = 4
MAX_FIELD_DEVICES = 20000
MIN_HOURS = 0.5
MAX_HOURS = 24.0 * 92
MIN_MINUTES_PER_ANOMALY = 3.0
MICROS = 1_000_000
EPOCH = pd.Timestamp(0, tz="UTC")
SAMPLE_SECONDS = 30.0
SAMPLE_JITTER_SECONDS = 1.0
GRID_SECONDS = 10.0
# A production cycle of a few hours repeats several times inside the reference period,
# so the reference covers the whole operating range.
CYCLE_SECONDS = (1.5 * 3600.0, 3 * 3600.0)
OU_SECONDS = (600.0, 1200.0)
JITTER_SHARE = 0.03
SPIKE_BIN_SECONDS = 60
GUARD_SECONDS = 600.0
END_MARGIN_SECONDS = 600.0
END_MARGIN_SHARE = 0.1
FIT_SHARE = 0.75
SIGNAL_PAD_SECONDS = 600.0
SPIKE_SLOT_SECONDS = 180.0

# Sensor kinds: name prefix, unit, offset range, signal spread as a share of offset.
SENSOR_KINDS = {
    "flow": ("ft", "m3/h", (40.0, 120.0), (0.08, 0.15)),
    "level": ("lt", "%", (35.0, 65.0), (0.10, 0.20)),
    "pressure": ("pt", "bar", (3.0, 9.0), (0.05, 0.10)),
    "temperature": ("tt", "degC", (45.0, 85.0), (0.03, 0.06)),
}
SENSOR_KIND_SHARES = (0.35, 0.2, 0.25, 0.2)

CRITICALITY = {
    "gateway": 0.7, "historian": 0.5, "workstation": 0.6, "scada": 0.9, "hmi": 0.6,
    "plc": 0.8, "field": 0.5,
}
SAFETY_CRITICALITY = 1.0

# Nominal durations in seconds (low, high).
DURATIONS = {
    "port_scan": (120.0, 300.0),
    "new_link": (1800.0, 3600.0),
    "silence": (1200.0, 3600.0),
    "flood": (300.0, 900.0),
    "drift": (3600.0, 7200.0),
    "stuck": (1800.0, 3600.0),
    "spike": (SPIKE_SLOT_SECONDS, SPIKE_SLOT_SECONDS),
    "process_fault": (1800.0, 3600.0),
    "link_loss": (1200.0, 3600.0),
}

TRUTH_COLUMNS = (
    "anomaly_id", "kind", "start", "end", "devices", "pairs", "targets", "sensors",
    "description",
)
PROTOCOLS = ("modbus-read", "modbus-write", "opc-ua", "historian", "http", "tcp-syn")


def _end_margin(part: float) -> float:
    return min(END_MARGIN_SECONDS, END_MARGIN_SHARE * part)


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and bool(np.isfinite(value)))


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ConfigError(
        f"invalid plant setting {name}={value!r}",
        f"{name} must be {allowed}; got {value!r}.",
    )


@dataclass(frozen=True)
class PlantConfig:
    """Settings of a synthetic plant.

    Attributes:
        seed: seed of every random draw; the same config gives the same plant.
        field_devices: number of field devices. The plant adds one PLC per eight of
            them and eight control and DMZ devices, so the default has about 100.
        hours: length of the plant's history in hours.
        start: first instant, ISO-8601 with a time zone.
        anomalies: anomaly types to plant, one anomaly per entry; an empty tuple
            gives a plant with nothing planted.
        anomaly_start_share: anomalies start after this share of the span; the
            earlier part is the reference period.
    """

    seed: int = 0
    field_devices: int = 80
    hours: float = 24.0
    start: str = "2024-03-04T00:00:00Z"
    anomalies: tuple[str, ...] = DEFAULT_ANOMALIES
    anomaly_start_share: float = 0.62

    def __post_init__(self) -> None:
        if not _is_whole(self.seed) or self.seed < 0:
            _fail("seed", self.seed, "a whole number >= 0")

        if not _is_whole(self.field_devices) \
                or not MIN_FIELD_DEVICES <= self.field_devices <= MAX_FIELD_DEVICES:
            _fail("field_devices", self.field_devices,
                  f"a whole number from {MIN_FIELD_DEVICES} to {MAX_FIELD_DEVICES}")
        if not _is_number(self.hours) or not MIN_HOURS <= self.hours <= MAX_HOURS:
            _fail("hours", self.hours,
                  f"a number of hours from {MIN_HOURS:g} to {MAX_HOURS:g}")

        if not isinstance(self.start, str):
            _fail("start", self.start, "an ISO-8601 time with a zone, as a string")
        try:
            stamp = pd.Timestamp(self.start)
        except (ValueError, TypeError):
            _fail("start", self.start, "an ISO-8601 time with a zone")
        if stamp.tzinfo is None:
            _fail("start", self.start,
                  "an ISO-8601 time with a zone, such as 2024-03-04T00:00:00Z")

        allowed = f"a tuple of anomaly types from {', '.join(ANOMALY_TYPES)}"
        if isinstance(self.anomalies, str) or not hasattr(self.anomalies, "__iter__"):
            _fail("anomalies", self.anomalies, allowed)
        anomalies = tuple(self.anomalies)
        object.__setattr__(self, "anomalies", anomalies)
        if any(a not in ANOMALY_TYPES for a in anomalies):
            _fail("anomalies", anomalies, allowed)

        share = self.anomaly_start_share
        if not _is_number(share) or not 0.1 <= share <= 0.95:
            _fail("anomaly_start_share", share, "a share from 0.1 to 0.95")

        if anomalies:
            part = self.hours * 3600.0 * (1.0 - share)
            minutes = (part - _end_margin(part)) / 60.0
            needed = MIN_MINUTES_PER_ANOMALY * len(anomalies)
            if minutes < needed:
                raise ConfigError(
                    "the anomaly part of the plant is too short for its anomalies",
                    f"hours * (1 - anomaly_start_share), less an end margin, must "
                    f"leave at least {needed:g} minutes for {len(anomalies)} "
                    f"anomalies; hours={self.hours!r} and "
                    f"anomaly_start_share={share!r} leave {minutes:.1f}. Raise hours, "
                    f"lower anomaly_start_share or plant fewer anomalies.",
                )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-serialisable values."""
        data = dataclasses.asdict(self)
        data["anomalies"] = list(self.anomalies)
        return data


@dataclass
class Plant:
    """A generated plant: frames in the layout of the store's tables.

    Attributes:
        events: t (UTC), src, dst, weight (bytes, > 0), protocol; sorted by time.
        measurements: t (UTC), device, sensor, value; sorted by time.
        devices: device, kind, zone, criticality (0..1), label.
        links: src, dst, weight (expected bytes per minute) of the normal traffic.
        truth: anomaly_id, kind, start, end (UTC, end exclusive), devices, pairs
            (list of dicts with src and dst), targets, sensors, description.
        config: the settings that made the plant.
    """

    events: pd.DataFrame
    measurements: pd.DataFrame
    devices: pd.DataFrame
    links: pd.DataFrame
    truth: pd.DataFrame
    config: PlantConfig = dataclasses.field(default_factory=PlantConfig)


@dataclass
class _Topology:
    """Devices by index, their cells, and the sensors of the field devices."""

    names: list[str]
    kinds: list[str]
    zones: list[str]
    criticality: list[float]
    labels: list[str]
    plcs: list[int]
    cell_fields: list[list[int]]
    field_cell: dict[int, int]
    sensor_names: list[str]
    sensor_device: np.ndarray
    sensor_cell: np.ndarray
    sensor_kind: list[str]
    hmi_cells: dict[int, list[int]]

    def index(self, name: str) -> int:
        return self.names.index(name)


@dataclass
class _Links:
    """Periodic links of one kind of traffic, one entry per directed link."""

    src: list[int] = dataclasses.field(default_factory=list)
    dst: list[int] = dataclasses.field(default_factory=list)
    period: list[float] = dataclasses.field(default_factory=list)
    request: list[float] = dataclasses.field(default_factory=list)
    response: list[float] = dataclasses.field(default_factory=list)
    protocol: list[int] = dataclasses.field(default_factory=list)

    def add(self, rng: np.random.Generator, src: int, dst: int,
            period: tuple[float, float], protocol: str, answered: bool) -> None:
        self.src.append(src)
        self.dst.append(dst)
        self.period.append(float(rng.uniform(*period)))
        self.request.append(float(rng.uniform(60.0, 90.0)))
        self.response.append(float(rng.uniform(80.0, 260.0)) if answered else 0.0)
        self.protocol.append(PROTOCOLS.index(protocol))


@dataclass
class _Events:
    """Events as parallel arrays: seconds from the start and device indices."""

    t: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    protocol: np.ndarray

    @classmethod
    def concat(cls, parts: list["_Events"]) -> "_Events":
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("t", "src", "dst", "weight", "protocol")))

    def keep(self, mask: np.ndarray) -> "_Events":
        return _Events(self.t[mask], self.src[mask], self.dst[mask],
                       self.weight[mask], self.protocol[mask])


def _bytes(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    return np.maximum(np.round(mean * rng.lognormal(0.0, 0.08, mean.shape)), 1.0)


def _periodic(rng: np.random.Generator, period: np.ndarray, begin: np.ndarray,
              end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (link index, time in seconds) of jittered periodic events per link."""
    phase = begin + rng.uniform(0.0, 1.0, period.shape) * period
    counts = np.maximum(np.floor((end - phase) / period).astype(np.int64) + 1, 0)
    idx = np.repeat(np.arange(period.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    step = np.arange(idx.size) - first
    t = phase[idx] + step * period[idx]
    t = t + rng.normal(0.0, JITTER_SHARE, idx.size) * period[idx]
    inside = (t >= begin[idx]) & (t < end[idx])
    return idx[inside], t[inside]


def _link_events(rng: np.random.Generator, links: _Links, begin: np.ndarray,
                 end: np.ndarray) -> _Events:
    period = np.asarray(links.period)
    src = np.asarray(links.src, dtype=np.int32)
    dst = np.asarray(links.dst, dtype=np.int32)
    request = np.asarray(links.request)
    response = np.asarray(links.response)
    protocol = np.asarray(links.protocol, dtype=np.int8)
    idx, t = _periodic(rng, period, begin, end)
    requests = _Events(t, src[idx], dst[idx], _bytes(rng, request[idx]), protocol[idx])
    answered = response[idx] > 0
    ridx = idx[answered]
    rt = t[answered] + rng.uniform(0.002, 0.05, ridx.size)
    responses = _Events(rt, dst[ridx], src[ridx], _bytes(rng, response[ridx]),
                        protocol[ridx]).keep(rt < end[ridx])
    return _Events.concat([requests, responses])


def _topology(rng: np.random.Generator, field_devices: int) -> _Topology:
    n_plc = max(1, int(round(field_devices / FIELD_PER_PLC)))
    per_cell = np.full(n_plc, field_devices // n_plc)
    per_cell[: field_devices % n_plc] += 1
    cw = max(2, len(str(n_plc)))
    fw = max(2, len(str(int(per_cell.max()))))
    names: list[str] = []
    kinds: list[str] = []
    zones: list[str] = []
    labels: list[str] = []

    def add(name: str, kind: str, zone: str, label: str) -> int:
        names.append(name)
        kinds.append(kind)
        zones.append(zone)
        labels.append(label)
        return len(names) - 1

    add("gateway", "gateway", "dmz", "gateway to the corporate network")
    add("historian", "historian", "dmz", "process historian")
    for i in (1, 2):
        add(f"ews-{i}", "workstation", "control", f"engineering workstation {i}")
    for i in (1, 2):
        add(f"scada-{i}", "scada", "control", f"SCADA server {i}")
    for i in (1, 2):
        add(f"hmi-{i}", "hmi", "control", f"operator HMI {i}")
    safety = int(rng.integers(n_plc))
    plcs: list[int] = []
    cell_fields: list[list[int]] = []
    field_cell: dict[int, int] = {}
    sensor_names: list[str] = []
    sensor_device: list[int] = []
    sensor_cell: list[int] = []
    sensor_kind: list[str] = []
    kind_names = list(SENSOR_KINDS)
    for c in range(n_plc):
        cell = f"{c + 1:0{cw}d}"
        zone = f"cell-{cell}"
        role = "safety PLC" if c == safety else "PLC"
        plcs.append(add(f"plc-{cell}", "plc", zone, f"{role} of cell {cell}"))
        fields = []
        for j in range(int(per_cell[c])):
            number = f"{j + 1:0{fw}d}"
            kind = kind_names[int(rng.choice(len(kind_names), p=SENSOR_KIND_SHARES))]
            prefix, unit = SENSOR_KINDS[kind][:2]
            device = add(f"{prefix}-{cell}-{number}", "field", zone,
                         f"{kind} transmitter {number} in cell {cell} ({unit})")
            fields.append(device)
            field_cell[device] = c
            for s in range(int(rng.integers(1, 4))):
                sensor_names.append(f"{prefix.upper()}-{cell}{number}-{s + 1}")
                sensor_device.append(device)
                sensor_cell.append(c)
                sensor_kind.append(kind)
        cell_fields.append(fields)
    criticality = [CRITICALITY[k] for k in kinds]
    criticality[plcs[safety]] = SAFETY_CRITICALITY
    hmi_cells = {names.index("hmi-1"): list(range(0, n_plc, 2)),
                 names.index("hmi-2"): list(range(1, n_plc, 2))}
    return _Topology(names, kinds, zones, criticality, labels, plcs, cell_fields,
                     field_cell, sensor_names, np.asarray(sensor_device),
                     np.asarray(sensor_cell), sensor_kind, hmi_cells)


def _normal_links(rng: np.random.Generator, topo: _Topology) -> _Links:
    links = _Links()
    ix = topo.index
    scadas = [ix("scada-1"), ix("scada-2")]
    for c, plc in enumerate(topo.plcs):
        for field in topo.cell_fields[c]:
            links.add(rng, plc, field, (20.0, 30.0), "modbus-read", True)
        for scada in scadas:
            links.add(rng, scada, plc, (10.0, 20.0), "modbus-read", True)
            links.add(rng, scada, plc, (60.0, 120.0), "modbus-write", False)
    for hmi, cells in topo.hmi_cells.items():
        for c in cells:
            links.add(rng, hmi, topo.plcs[c], (120.0, 300.0), "modbus-write", False)
    for i, hmi in enumerate((ix("hmi-1"), ix("hmi-2"))):
        links.add(rng, hmi, scadas[i], (10.0, 10.0), "opc-ua", True)
    historian = ix("historian")
    for scada in scadas:
        links.add(rng, historian, scada, (30.0, 30.0), "historian", True)
    links.add(rng, ix("gateway"), historian, (60.0, 60.0), "http", True)
    for ws in (ix("ews-1"), ix("ews-2")):
        for scada in scadas:
            links.add(rng, ws, scada, (120.0, 300.0), "opc-ua", True)
        links.add(rng, ws, historian, (120.0, 300.0), "http", True)
    for a, b in zip(topo.plcs[:-1], topo.plcs[1:]):
        links.add(rng, a, b, (15.0, 15.0), "modbus-write", False)
        links.add(rng, b, a, (15.0, 15.0), "modbus-write", False)
    return links


def _links_frame(topo: _Topology, links: _Links) -> pd.DataFrame:
    period = np.asarray(links.period)
    src = np.asarray(links.src)
    dst = np.asarray(links.dst)
    rate = 60.0 / period
    response = np.asarray(links.response)
    answered = response > 0
    rows = pd.DataFrame({
        "src": np.concatenate([src, dst[answered]]),
        "dst": np.concatenate([dst, src[answered]]),
        "weight": np.concatenate([rate * np.asarray(links.request),
                                  (rate * response)[answered]]),
    })
    rows = rows.groupby(["src", "dst"], as_index=False, sort=True)["weight"].sum()
    names = np.asarray(topo.names, dtype=object)
    return pd.DataFrame({
        "src": pd.Series(names[rows["src"].to_numpy()], dtype=str),
        "dst": pd.Series(names[rows["dst"].to_numpy()], dtype=str),
        "weight": rows["weight"].to_numpy(dtype=np.float64),
    })


def _ou(rng: np.random.Generator, n: int, tau: float) -> np.ndarray:
    """Return a unit-variance Ornstein-Uhlenbeck path on the grid."""
    phi = float(np.exp(-GRID_SECONDS / tau))
    noise = rng.normal(0.0, 1.0, n) * np.sqrt(1.0 - phi * phi)
    noise[0] = rng.normal()
    return lfilter([1.0], [1.0, -phi], noise, zi=[0.0])[0]


def _cell_signals(rng: np.random.Generator, cells: int, span: float,
                  origin_seconds: float) -> tuple[np.ndarray, float]:
    """Return the cells' signals on the grid and the grid's start in seconds."""
    first = -SIGNAL_PAD_SECONDS
    n = int(np.ceil((span - first) / GRID_SECONDS)) + 2
    grid = first + GRID_SECONDS * np.arange(n)
    period = float(rng.uniform(*CYCLE_SECONDS))
    phase = float(rng.uniform(0.0, period))
    cycle = np.sin(2.0 * np.pi * (grid + origin_seconds + phase) / period)
    signals = np.empty((cells, n))
    signals[0] = 0.7 * cycle + 0.6 * _ou(rng, n, float(rng.uniform(*OU_SECONDS)))
    for c in range(1, cells):
        lag = int(rng.integers(6, 31))
        previous = np.concatenate([np.full(lag, signals[c - 1][0]),
                                   signals[c - 1][:-lag]])
        own = _ou(rng, n, float(rng.uniform(*OU_SECONDS)))
        signals[c] = 0.8 * previous + 0.6 * own
    return signals, first


def _measurements(rng: np.random.Generator, topo: _Topology, span: float,
                  origin_seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cells = len(topo.plcs)
    signals, first = _cell_signals(rng, cells, span, origin_seconds)
    n_sensors = len(topo.sensor_names)
    spread = signals.std(axis=1)
    offset = np.empty(n_sensors)
    rel = np.empty(n_sensors)
    for s, kind in enumerate(topo.sensor_kind):
        low, high = SENSOR_KINDS[kind][2]
        offset[s] = rng.uniform(low, high)
        rel[s] = rng.uniform(*SENSOR_KINDS[kind][3])
    sign = np.where(rng.uniform(size=n_sensors) < 0.2, -1.0, 1.0)
    gain = sign * offset * rel / spread[topo.sensor_cell]
    noise_sd = rng.uniform(0.05, 0.10, n_sensors) * offset * rel
    lag = rng.uniform(0.0, 60.0, n_sensors)
    per = int(np.floor(span / SAMPLE_SECONDS))
    phase = rng.uniform(0.0, SAMPLE_SECONDS, n_sensors)
    sensor = np.repeat(np.arange(n_sensors), per)
    step = np.tile(np.arange(per), n_sensors)
    t = phase[sensor] + step * SAMPLE_SECONDS
    t = t + rng.normal(0.0, SAMPLE_JITTER_SECONDS, t.size)
    inside = (t >= 0.0) & (t < span)
    sensor, t = sensor[inside], t[inside]
    t = np.round(t * MICROS) / MICROS
    position = (t - lag[sensor] - first) / GRID_SECONDS
    low = np.floor(position).astype(np.int64)
    frac = position - low
    cell = topo.sensor_cell[sensor]
    level = signals[cell, low] * (1.0 - frac) + signals[cell, low + 1] * frac
    value = offset[sensor] + gain[sensor] * level
    value = value + rng.normal(0.0, 1.0, t.size) * noise_sd[sensor]
    return sensor, t, value


def _place(rng: np.random.Generator, config: PlantConfig, span: float
           ) -> list[tuple[str, float, float]]:
    """Return (kind, start, end) in seconds for each anomaly, in config order."""
    kinds = config.anomalies
    if not kinds:
        return []
    begin = config.anomaly_start_share * span
    stop = span - _end_margin(span - begin)
    avail = stop - begin
    nominal = np.array([rng.uniform(*DURATIONS[k]) for k in kinds])
    guard = min(GUARD_SECONDS, 0.1 * avail / (len(kinds) + 1))
    room = avail - guard * (len(kinds) + 1)
    spike = np.array([k == "spike" for k in kinds])
    scalable = nominal[~spike].sum()
    fixed = nominal[spike].sum()
    factor = min(1.0, FIT_SHARE * (room - fixed) / scalable) if scalable else 1.0
    duration = np.where(spike, np.minimum(nominal, np.floor(room)),
                        np.maximum(np.floor(nominal * factor), 60.0))
    slack = max(avail - duration.sum() - guard * (len(kinds) + 1), 0.0)
    gaps = guard + rng.dirichlet(np.ones(len(kinds) + 1)) * slack
    order = rng.permutation(len(kinds))
    placed: dict[int, tuple[float, float]] = {}
    at = begin
    for pos, i in enumerate(order):
        at += gaps[pos]
        start = float(np.ceil(at))
        placed[int(i)] = (start, start + float(duration[i]))
        at = start + float(duration[i])
    return [(kinds[i], *placed[i]) for i in range(len(kinds))]


class _Planter:
    """Plants anomalies into the clean traffic and measurements."""

    def __init__(self, rng: np.random.Generator, topo: _Topology, links: _Links,
                 events: _Events, sensor: np.ndarray, t: np.ndarray,
                 value: np.ndarray, reference_end: float,
                 origin: pd.Timestamp) -> None:
        self.rng = rng
        self.topo = topo
        self.links = links
        self.events = events
        self.extra: list[_Events] = []
        self.sensor = sensor
        self.t = t
        self.value = value
        self.drop_samples = np.zeros(t.size, dtype=bool)
        self.origin = origin
        reference = t < reference_end
        n = len(topo.sensor_names)
        count = np.bincount(sensor[reference], minlength=n).astype(float)
        total = np.bincount(sensor[reference], value[reference], minlength=n)
        square = np.bincount(sensor[reference], value[reference] ** 2, minlength=n)
        mean = total / np.maximum(count, 1.0)
        self.ref_sd = np.sqrt(np.maximum(square / np.maximum(count, 1.0) - mean ** 2,
                                         1e-12))
        self.by_sensor = np.argsort(sensor, kind="stable")
        self.sensor_first = np.searchsorted(sensor[self.by_sensor],
                                            np.arange(n + 1))
        self.used: set[int] = set()
        self.contacted: set[tuple[int, int]] = set()

    def _pick(self, candidates: list[int]) -> int:
        fresh = [c for c in candidates if c not in self.used]
        pool = fresh or candidates
        choice = pool[int(self.rng.integers(len(pool)))]
        self.used.add(choice)
        return choice

    def _name(self, device: int) -> str:
        return self.topo.names[device]

    def _pair(self, src: int, dst: int) -> dict[str, str]:
        return {"src": self._name(src), "dst": self._name(dst)}

    def _fields(self) -> list[int]:
        return [f for fields in self.topo.cell_fields for f in fields]

    def _samples(self, s: int) -> np.ndarray:
        return self.by_sensor[self.sensor_first[s]:self.sensor_first[s + 1]]

    def _window(self, s: int, start: float, end: float) -> np.ndarray:
        rows = self._samples(s)
        times = self.t[rows]
        return rows[(times >= start) & (times < end)]

    def _sensors_of(self, device: int) -> list[int]:
        return [int(s) for s in np.flatnonzero(self.topo.sensor_device == device)]

    def _random_sensor(self) -> int:
        device = self._pick(self._fields())
        sensors = self._sensors_of(device)
        return sensors[int(self.rng.integers(len(sensors)))]

    def _poll(self, src: int, dst: int, period: float, start: float, end: float,
                  protocol: str, answered: bool) -> int:
        links = _Links()
        links.add(self.rng, src, dst, (period, period), protocol, answered)
        before = len(self.extra)
        self.extra.append(_link_events(self.rng, links, np.array([start]),
                                       np.array([end])))
        return self.extra[before].t.size

    def port_scan(self, start: float, end: float) -> dict[str, Any]:
        ws = self._pick([self.topo.index("ews-1"), self.topo.index("ews-2")])
        every = list(self.topo.plcs) + self._fields()
        hosts = [h for h in every if (ws, h) not in self.contacted] or every
        count = min(len(hosts), int(self.rng.integers(20, 41)))
        chosen = sorted(int(h) for h in self.rng.choice(hosts, count, replace=False))
        self.contacted.update((ws, h) for h in chosen)
        probes = self.rng.integers(1, 4, count)
        dst = np.repeat(np.asarray(chosen, dtype=np.int32), probes)
        times = np.sort(self.rng.uniform(start, end - 1.0, dst.size))
        times[0] = start
        order = self.rng.permutation(dst.size)
        dst = dst[order]
        self.extra.append(_Events(
            times, np.full(dst.size, ws, dtype=np.int32), dst,
            np.round(self.rng.uniform(40.0, 60.0, dst.size)),
            np.full(dst.size, PROTOCOLS.index("tcp-syn"), dtype=np.int8)))
        return {
            "devices": [self._name(ws)],
            "pairs": [self._pair(ws, h) for h in chosen],
            "targets": [self._name(h) for h in chosen],
            "sensors": [],
            "description": f"{self._name(ws)} probes {count} PLCs and field devices "
                           f"with {dst.size} TCP SYN packets",
        }

    def new_link(self, start: float, end: float) -> dict[str, Any]:
        ix = self.topo.index
        options = []
        for src in (ix("hmi-1"), ix("hmi-2"), ix("ews-1"), ix("ews-2")):
            known = set(self.topo.hmi_cells.get(src, []))
            options += [(src, plc) for c, plc in enumerate(self.topo.plcs)
                        if c not in known and (src, plc) not in self.contacted]
        if not options:
            options = [(src, plc) for src in (ix("ews-1"), ix("ews-2"))
                       for plc in self.topo.plcs]
        src, plc = options[int(self.rng.integers(len(options)))]
        self.used.update((src, plc))
        self.contacted.add((src, plc))
        period = float(self.rng.uniform(10.0, 20.0))
        self._poll(src, plc, period, start, end, "modbus-read", True)
        return {
            "devices": [self._name(src), self._name(plc)],
            "pairs": [self._pair(src, plc), self._pair(plc, src)],
            "targets": [],
            "sensors": [],
            "description": f"{self._name(src)} starts polling {self._name(plc)}, "
                           f"which it never talks to, every {period:.0f} s",
        }

    def silence(self, start: float, end: float) -> dict[str, Any]:
        device = self._pick(self._fields())
        plc = self.topo.plcs[self.topo.field_cell[device]]
        ev = self.events
        self.events = ev.keep(~((ev.src == device) & (ev.t >= start) & (ev.t < end)))
        for s in self._sensors_of(device):
            self.drop_samples[self._window(s, start, end)] = True
        return {
            "devices": [self._name(device)],
            "pairs": [self._pair(device, plc), self._pair(plc, device)],
            "targets": [],
            "sensors": [],
            "description": f"{self._name(device)} goes silent: no answers to "
                           f"{self._name(plc)} and no measurements",
        }

    def link_loss(self, start: float, end: float) -> dict[str, Any]:
        read = PROTOCOLS.index("modbus-read")
        kinds = self.topo.kinds
        options = [i for i in range(len(self.links.src))
                   if self.links.protocol[i] == read
                   and kinds[self.links.src[i]] in ("scada", "hmi")
                   and kinds[self.links.dst[i]] == "plc"]
        link = options[int(self.rng.integers(len(options)))]
        src, plc = int(self.links.src[link]), int(self.links.dst[link])
        self.used.update((src, plc))
        ev = self.events
        between = ((ev.src == src) & (ev.dst == plc)) | ((ev.src == plc) & (ev.dst == src))
        self.events = ev.keep(~(between & (ev.t >= start) & (ev.t < end)))
        return {
            "devices": [self._name(src), self._name(plc)],
            "pairs": [self._pair(src, plc), self._pair(plc, src)],
            "targets": [],
            "sensors": [],
            "description": f"{self._name(src)} stops polling {self._name(plc)}, "
                           f"while both keep talking to their other peers",
        }

    def flood(self, start: float, end: float) -> dict[str, Any]:
        write = PROTOCOLS.index("modbus-write")
        kinds = self.topo.kinds
        options = [i for i in range(len(self.links.src))
                   if self.links.protocol[i] == write
                   and kinds[self.links.src[i]] in ("scada", "hmi")]
        link = options[int(self.rng.integers(len(options)))]
        src, plc = self.links.src[link], self.links.dst[link]
        self.used.update((src, plc))
        factor = float(self.rng.uniform(20.0, 50.0))
        period = self.links.period[link] / (factor - 1.0)
        sent = self._poll(src, plc, period, start, end, "modbus-write", False)
        return {
            "devices": [self._name(src), self._name(plc)],
            "pairs": [self._pair(src, plc)],
            "targets": [],
            "sensors": [],
            "description": f"{self._name(src)} sends {sent} writes to "
                           f"{self._name(plc)}, {factor:.0f} times its normal rate",
        }

    def drift(self, start: float, end: float) -> dict[str, Any]:
        s = self._random_sensor()
        rows = self._window(s, start, end)
        size = float(self.rng.uniform(4.0, 6.0)) * self.ref_sd[s]
        sign = 1.0 if self.rng.uniform() < 0.5 else -1.0
        self.value[rows] += sign * size * (self.t[rows] - start) / (end - start)
        device = int(self.topo.sensor_device[s])
        return {
            "devices": [self._name(device)],
            "pairs": [],
            "targets": [],
            "sensors": [self.topo.sensor_names[s]],
            "description": f"{self.topo.sensor_names[s]} drifts "
                           f"{'up' if sign > 0 else 'down'} by {size:.3g} "
                           f"({size / self.ref_sd[s]:.1f} standard deviations)",
        }

    def stuck(self, start: float, end: float) -> dict[str, Any]:
        s = self._random_sensor()
        rows = self._window(s, start, end)
        samples = self._samples(s)
        before = samples[self.t[samples] < start]
        frozen = self.value[before[-1]] if before.size else self.value[rows[0]]
        self.value[rows] = frozen
        device = int(self.topo.sensor_device[s])
        return {
            "devices": [self._name(device)],
            "pairs": [],
            "targets": [],
            "sensors": [self.topo.sensor_names[s]],
            "description": f"{self.topo.sensor_names[s]} is stuck at {frozen:.4g}",
        }

    def spike(self, start: float, end: float) -> tuple[dict[str, Any], float, float]:
        s = self._random_sensor()
        rows = self._window(s, start + SPIKE_BIN_SECONDS, end - SPIKE_BIN_SECONDS)
        if rows.size == 0:
            rows = self._window(s, start, end)
        width = min(int(self.rng.integers(1, 3)), rows.size)
        at = int(self.rng.integers(rows.size - width + 1))
        hit = rows[at:at + width]
        sign = 1.0 if self.rng.uniform() < 0.5 else -1.0
        self.value[hit] += sign * 8.0 * self.ref_sd[s]
        first = np.floor(self.t[hit].min() / SPIKE_BIN_SECONDS) * SPIKE_BIN_SECONDS
        last = np.floor(self.t[hit].max() / SPIKE_BIN_SECONDS) * SPIKE_BIN_SECONDS
        device = int(self.topo.sensor_device[s])
        return {
            "devices": [self._name(device)],
            "pairs": [],
            "targets": [],
            "sensors": [self.topo.sensor_names[s]],
            "description": f"{self.topo.sensor_names[s]} has {width} sample"
                           f"{'s' if width > 1 else ''} 8 standard deviations "
                           f"{'above' if sign > 0 else 'below'} normal",
        }, float(first), float(last + SPIKE_BIN_SECONDS)

    def process_fault(self, start: float, end: float) -> dict[str, Any]:
        cells = [c for c, f in enumerate(self.topo.cell_fields) if len(f) >= 3]
        cell = cells[int(self.rng.integers(len(cells)))]
        fields = self.topo.cell_fields[cell]
        origin = self._pick(fields)
        others = [f for f in fields if f != origin]
        count = min(len(others), int(self.rng.integers(2, 4)))
        fresh = [f for f in others if f not in self.used]
        stale = [f for f in others if f in self.used]
        reached = [int(d) for d in self.rng.permutation(fresh)[:count]]
        reached += [int(d) for d in self.rng.permutation(stale)[:count - len(reached)]]
        self.used.update(reached)

        duration = end - start
        delays = np.sort(self.rng.uniform(300.0, 600.0, count))
        delays = np.minimum(delays, 0.5 * duration)
        sign = 1.0 if self.rng.uniform() < 0.5 else -1.0
        sensors: list[str] = []

        for device, delay in zip([origin] + reached, [0.0, *delays]):
            for s in self._sensors_of(device):
                rows = self._window(s, start + float(delay), end)
                shift = float(self.rng.uniform(3.5, 4.5)) * self.ref_sd[s]
                self.value[rows] += sign * shift
                sensors.append(self.topo.sensor_names[s])
        devices = [self._name(d) for d in [origin] + reached]
        return {
            "devices": devices,
            "pairs": [],
            "targets": [],
            "sensors": sensors,
            "description": f"process fault in {self.topo.zones[origin]} starting at "
                           f"{devices[0]} and spreading to {', '.join(devices[1:])}",
        }

    def plant(self, kind: str, start: float, end: float) -> dict[str, Any]:
        if kind == "spike":
            row, start, end = self.spike(start, end)
        else:
            row = getattr(self, kind)(start, end)
        stamp = self.origin
        row.update(kind=kind,
                   start=stamp + pd.Timedelta(microseconds=round(start * MICROS)),
                   end=stamp + pd.Timedelta(microseconds=round(end * MICROS)))
        return row


def _utc(origin_us: int, seconds: np.ndarray) -> pd.Series:
    micros = origin_us + np.round(seconds * MICROS).astype(np.int64)
    return pd.Series(pd.to_datetime(micros, unit="us", utc=True)).astype(
        "datetime64[us, UTC]")


def _truth_frame(rows: list[dict[str, Any]], seed: int) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))
    frame["anomaly_id"] = [f"synth-{seed}-{i + 1:02d}-{r['kind']}"
                           for i, r in enumerate(rows)]
    for column in ("start", "end"):
        frame[column] = pd.Series(pd.to_datetime(frame[column], utc=True),
                                  dtype="datetime64[us, UTC]")
    for column in ("anomaly_id", "kind", "description"):
        frame[column] = frame[column].astype(str)
    return frame.reset_index(drop=True)


def generate_plant(config: PlantConfig = PlantConfig()) -> Plant:
    """Generate a plant with the anomalies of `config` planted and recorded.

    Args:
        config: size, span, seed and anomalies of the plant.

    Returns:
        The plant's frames; events and measurements sorted by time.
    """
    streams = np.random.SeedSequence(int(config.seed)).spawn(4)
    topo_rng, traffic_rng, process_rng, anomaly_rng = (
        np.random.default_rng(s) for s in streams)
    origin = pd.Timestamp(config.start).tz_convert("UTC").as_unit("us")
    origin_us = int((origin - EPOCH) // pd.Timedelta(microseconds=1))
    span = float(config.hours) * 3600.0
    topo = _topology(topo_rng, int(config.field_devices))
    links = _normal_links(topo_rng, topo)
    n_links = len(links.src)
    events = _link_events(traffic_rng, links, np.zeros(n_links),
                          np.full(n_links, span))
    sensor, t, value = _measurements(process_rng, topo, span,
                                     origin_us / MICROS)
    planter = _Planter(anomaly_rng, topo, links, events, sensor, t, value,
                       config.anomaly_start_share * span, origin)
    rows = [planter.plant(kind, start, end)
            for kind, start, end in _place(anomaly_rng, config, span)]
    events = _Events.concat([planter.events, *planter.extra])
    events = events.keep(events.t < span)
    micros = np.round(events.t * MICROS).astype(np.int64)
    order = np.lexsort((events.protocol, events.dst, events.src, micros))
    events = events.keep(order)
    names = np.asarray(topo.names, dtype=object)
    protocols = np.asarray(PROTOCOLS, dtype=object)
    event_frame = pd.DataFrame({
        "t": _utc(origin_us, events.t),
        "src": pd.Series(names[events.src], dtype=str),
        "dst": pd.Series(names[events.dst], dtype=str),
        "weight": events.weight.astype(np.float64),
        "protocol": pd.Series(protocols[events.protocol], dtype=str),
    })
    keep = ~planter.drop_samples
    sensor, t, value = sensor[keep], t[keep], np.round(planter.value[keep], 4)
    order = np.lexsort((sensor, np.round(t * MICROS).astype(np.int64)))
    sensor_names = np.asarray(topo.sensor_names, dtype=object)
    measurement_frame = pd.DataFrame({
        "t": _utc(origin_us, t[order]),
        "device": pd.Series(names[topo.sensor_device[sensor[order]]], dtype=str),
        "sensor": pd.Series(sensor_names[sensor[order]], dtype=str),
        "value": value[order].astype(np.float64),
    })
    devices = pd.DataFrame({
        "device": pd.Series(topo.names, dtype=str),
        "kind": pd.Series(topo.kinds, dtype=str),
        "zone": pd.Series(topo.zones, dtype=str),
        "criticality": np.asarray(topo.criticality, dtype=np.float64),
        "label": pd.Series(topo.labels, dtype=str),
    })
    truth = _truth_frame(rows, int(config.seed))
    log.info("generated plant seed=%s: %d devices, %d events, %d measurements, "
             "%d anomalies", config.seed, len(devices), len(event_frame),
             len(measurement_frame), len(truth))
    return Plant(event_frame, measurement_frame, devices,
                 _links_frame(topo, links), truth, config)


def _truth_records(truth: pd.DataFrame) -> list[dict[str, Any]]:
    records = []
    for row in truth.itertuples(index=False):
        records.append({
            "anomaly_id": row.anomaly_id,
            "kind": row.kind,
            "start": row.start.isoformat().replace("+00:00", "Z"),
            "end": row.end.isoformat().replace("+00:00", "Z"),
            "devices": list(row.devices),
            "pairs": [dict(p) for p in row.pairs],
            "targets": list(row.targets),
            "sensors": list(row.sensors),
            "description": row.description,
        })
    return records


def write_plant(plant: Plant, folder: str | os.PathLike) -> dict[str, Path]:
    """Write a plant's files into `folder`, creating it if needed.

    Args:
        plant: a generated plant.
        folder: destination folder.

    Returns:
        Paths by role: events, measurements (Parquet), devices, links (CSV),
        truth (JSON list of anomalies) and config (JSON of the settings).
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "events": root / "events.parquet",
        "measurements": root / "measurements.parquet",
        "devices": root / "devices.csv",
        "links": root / "links.csv",
        "truth": root / "truth.json",
        "config": root / "plant.json",
    }
    plant.events.to_parquet(paths["events"], index=False)
    plant.measurements.to_parquet(paths["measurements"], index=False)
    plant.devices.to_csv(paths["devices"], index=False)
    plant.links.to_csv(paths["links"], index=False)
    paths["truth"].write_text(json.dumps(_truth_records(plant.truth), indent=2) + "\n",
                              encoding="utf-8")
    paths["config"].write_text(json.dumps(plant.config.to_dict(), indent=2) + "\n",
                               encoding="utf-8")
    log.info("wrote plant to %s", root)
    return paths


def store_plant(workspace: Workspace | str | os.PathLike, plant: Plant) -> None:
    """Write the plant's devices, links and ground truth into the workspace store.

    Rows with the same keys (device, pair, anomaly id) are replaced; everything is
    written in one transaction. Events and measurements are left to ingest.

    Args:
        workspace: a `Workspace` or its folder (created if missing).
        plant: a generated plant.
    """
    if not isinstance(workspace, Workspace):
        workspace = Workspace.create(workspace)
    truth = plant.truth.copy()
    truth["pairs"] = [[{"src": p["src"], "dst": p["dst"]} for p in pairs]
                      for pairs in truth["pairs"]]
    with connect(workspace.store_path) as con:
        con.execute(STORE_SCHEMA)
        con.execute("BEGIN TRANSACTION")
        try:
            for table, keys, frame in (
                ("devices", ["device"], plant.devices),
                ("links", ["src", "dst"], plant.links),
                ("ground_truth", ["anomaly_id"], truth),
            ):
                if frame.empty:
                    continue
                con.register("_keys", frame[keys])
                try:
                    match = " AND ".join(f'{table}."{k}" = _keys."{k}"' for k in keys)
                    con.execute(f"DELETE FROM {table} WHERE EXISTS "
                                f"(SELECT 1 FROM _keys WHERE {match})")
                finally:
                    con.unregister("_keys")
                insert_frame(con, table, frame)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    log.info("stored %d devices, %d links and %d anomalies in %s", len(plant.devices),
             len(plant.links), len(plant.truth), workspace.store_path)
