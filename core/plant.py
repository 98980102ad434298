"""Planting faults into a copy of a workspace, with ground truth.

`plant_faults` copies a workspace's store (not its runs, online results or analyst
notes) and changes the copy's events and measurements the way `core.synth` plants
its anomalies, with the same sizes:

- port_scan: a device sends 1 to 3 TCP SYN probes to each of 20 to 40 hosts it
  never talked to (fewer where the plant has fewer).
- new_link: a device starts polling a device it never talked to, every 10 to 20 s.
- silence: a device stops sending and its sensors stop reporting.
- flood: a pair's events come 20 to 50 times as often.
- link_loss: a pair's events stop in both directions, while both devices go on
  talking to their other peers.
- drift: a sensor drifts linearly by 4 to 6 standard deviations.
- stuck: a sensor repeats its last value.
- spike: one or two samples of a sensor jump by 8 standard deviations.
- process_fault: a device's sensors shift by 3.5 to 4.5 standard deviations, and
  the same happens to two or three of its neighbours 5 to 10 minutes later.

Each fault goes on the devices named for it or on a device drawn with the seed, in a
window after the latest run's reference period (or in the last 40% of the data
without a run). Standard deviations are those of the reference part of the data.
The ground truth goes to the copy's `ground_truth` table, as `synth.store_plant`
writes it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import store
from core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FAULT_TYPES = ("port_scan", "new_link", "silence", "flood", "drift", "stuck", "spike",
               "process_fault", "link_loss")
ALIASES = {"scan": "port_scan", "spreading": "process_fault", "process": "process_fault"}
DEFAULT_MINUTES = 30.0


@dataclass(frozen=True)
class FaultRequest:
    """One fault to plant: its type and the devices it goes on (None: drawn)."""

    kind: str
    devices: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> "FaultRequest":
        """Parse TYPE or TYPE:DEV1,DEV2 (a scan's second device onwards are its
        targets; a new link or flood names source and destination)."""
        kind, _, devices = text.partition(":")
        kind = ALIASES.get(kind.strip(), kind.strip())
        if kind not in FAULT_TYPES:
            raise ConfigError(f"invalid fault type {kind!r} in --fault {text!r}",
                              f"Use one of {', '.join(FAULT_TYPES)} (scan and spreading "
                              "are accepted for port_scan and process_fault).")
        names = tuple(d.strip() for d in devices.split(",") if d.strip()) or None
        return cls(kind, names)


class _Planter:
    def __init__(self, events: pd.DataFrame, readings: pd.DataFrame, reference_end,
                 rng: np.random.Generator) -> None:
        self.events = events
        self.readings = readings
        self.rng = rng
        self.reference = readings[readings["t"] < reference_end]
        self.spread = self.reference.groupby(["device", "sensor"])["value"].std().fillna(0.0)
        self.devices = sorted(set(events["src"]) | set(events["dst"]) | set(readings["device"]))
        self.sensor_devices = sorted(set(readings["device"]))
        pairs = events[["src", "dst"]].drop_duplicates()
        self.talks = set(zip(pairs["src"], pairs["dst"]))

    def _choose(self, names: tuple[str, ...] | None, pool: list[str], count: int = 1) -> list[str]:
        if names:
            unknown = [n for n in names if n not in self.devices]
            if unknown:
                raise DataError(f"device {unknown[0]!r} not found in the workspace",
                                "Name devices that have events or measurements.")
            return list(names)
        if len(pool) < count:
            raise DataError("the workspace has too few devices for this fault",
                            "Name the devices of the fault or plant another type.")
        return [str(d) for d in self.rng.choice(pool, count, replace=False)]

    def _sd(self, device: str, sensor: str) -> float:
        value = float(self.spread.get((device, sensor), 0.0))
        return value if value > 0 else 1.0

    def _poll(self, src: str, dst: str, period: float, start, end, protocol: str) -> int:
        seconds = (end - start).total_seconds()
        offsets = np.arange(self.rng.uniform(0, period), seconds, period)
        rows = pd.DataFrame({"t": start + pd.to_timedelta(offsets, unit="s"), "src": src,
                             "dst": dst, "weight": 64.0, "protocol": protocol})
        self.events = pd.concat([self.events, rows], ignore_index=True)
        return len(rows)

    def port_scan(self, names, start, end) -> dict:
        source = self._choose(names[:1] if names else None, self.devices)[0]
        hosts = list(names[1:]) if names and len(names) > 1 else [
            d for d in self.devices if d != source and (source, d) not in self.talks]
        count = min(len(hosts), int(self.rng.integers(20, 41)))
        if count == 0:
            raise DataError(f"{source} already talks to every device; no host to scan",
                            "Name the scan's source and targets.")
        chosen = sorted(str(h) for h in self.rng.choice(hosts, count, replace=False))
        probes = self.rng.integers(1, 4, count)
        targets = np.repeat(chosen, probes)
        seconds = (end - start).total_seconds()
        offsets = np.sort(self.rng.uniform(0, seconds - 1.0, len(targets)))
        rows = pd.DataFrame({"t": start + pd.to_timedelta(offsets, unit="s"), "src": source,
                             "dst": self.rng.permutation(targets), "weight": 60.0,
                             "protocol": "tcp-syn"})
        self.events = pd.concat([self.events, rows], ignore_index=True)
        return {"devices": [source], "pairs": [{"src": source, "dst": h} for h in chosen],
                "targets": chosen, "sensors": [],
                "description": f"{source} probes {count} hosts with {len(rows)} TCP SYN packets"}

    def new_link(self, names, start, end) -> dict:
        if names and len(names) >= 2:
            src, dst = names[0], names[1]
            self._choose((src, dst), self.devices)
        else:
            options = [(a, b) for a in self.devices for b in self.devices
                       if a != b and (a, b) not in self.talks and (b, a) not in self.talks]
            if not options:
                raise DataError("every pair of devices already talks; no new link to plant",
                                "Name the new link's two devices.")
            src, dst = options[int(self.rng.integers(len(options)))]
        period = float(self.rng.uniform(10.0, 20.0))
        self._poll(src, dst, period, start, end, "modbus-read")
        return {"devices": [src, dst], "pairs": [{"src": src, "dst": dst}], "targets": [],
                "sensors": [], "description": f"{src} starts polling {dst} every {period:.0f} s"}

    def silence(self, names, start, end) -> dict:
        device = self._choose(names, self.devices)[0]
        inside = (self.events["t"] >= start) & (self.events["t"] < end)
        peers = self.events[inside & (self.events["src"] == device)]["dst"].unique()
        self.events = self.events[~(inside & (self.events["src"] == device))]
        quiet = ((self.readings["t"] >= start) & (self.readings["t"] < end)
                 & (self.readings["device"] == device))
        self.readings = self.readings[~quiet]
        return {"devices": [device], "pairs": [{"src": device, "dst": str(p)} for p in peers],
                "targets": [], "sensors": [],
                "description": f"{device} goes silent: no events sent and no measurements"}

    def flood(self, names, start, end) -> dict:
        if names and len(names) >= 2:
            src, dst = names[0], names[1]
        else:
            pairs = sorted(self.talks)
            if not pairs:
                raise DataError("the workspace has no events to flood",
                                "Plant a measurement fault instead.")
            src, dst = pairs[int(self.rng.integers(len(pairs)))]
        between = self.events[(self.events["src"] == src) & (self.events["dst"] == dst)]
        span = max((self.events["t"].max() - self.events["t"].min()).total_seconds(), 1.0)
        period = span / max(len(between), 1)
        factor = float(self.rng.uniform(20.0, 50.0))
        sent = self._poll(src, dst, period / (factor - 1.0), start, end, "modbus-write")
        return {"devices": [src, dst], "pairs": [{"src": src, "dst": dst}], "targets": [],
                "sensors": [],
                "description": f"{src} sends {sent} extra events to {dst}, "
                               f"{factor:.0f} times its normal rate"}

    def link_loss(self, names, start, end) -> dict:
        inside = (self.events["t"] >= start) & (self.events["t"] < end)
        active = self.events[inside]
        if names and len(names) >= 2:
            src, dst = names[0], names[1]
            self._choose((src, dst), self.devices)
        else:
            # Pairs with events in the window whose two ends also talk to others,
            # so the loss is of the link and not of a device.
            counts = active.groupby(["src", "dst"]).size()
            peers = pd.concat([self.events[["src", "dst"]],
                               self.events[["dst", "src"]].set_axis(["src", "dst"], axis=1)])
            degree = peers.drop_duplicates().groupby("src").size()
            options = [(str(a), str(b)) for a, b in counts.index
                       if a != b and degree.get(a, 0) > 1 and degree.get(b, 0) > 1]
            if not options:
                raise DataError("no pair of devices talks in the fault's window",
                                "Name the link's two devices or plant another type.")
            src, dst = options[int(self.rng.integers(len(options)))]
        between = (((self.events["src"] == src) & (self.events["dst"] == dst))
                   | ((self.events["src"] == dst) & (self.events["dst"] == src)))
        lost = int((between & inside).sum())
        if lost == 0:
            raise DataError(f"{src} and {dst} exchange no events in the fault's window",
                            "Name two devices that talk then, or plant another type.")
        self.events = self.events[~(between & inside)]
        return {"devices": [src, dst],
                "pairs": [{"src": src, "dst": dst}, {"src": dst, "dst": src}],
                "targets": [], "sensors": [],
                "description": f"the link between {src} and {dst} goes quiet: "
                               f"{lost} events in both directions are lost"}

    def _sensor(self, names) -> tuple[str, str]:
        device = self._choose(names, self.sensor_devices)[0]
        sensors = sorted(self.readings.loc[self.readings["device"] == device, "sensor"].unique())
        if not sensors:
            raise DataError(f"device {device!r} has no measurements",
                            "Name a device with sensors for this fault.")
        return device, str(sensors[int(self.rng.integers(len(sensors)))])

    def _rows(self, device: str, sensor: str, start, end) -> pd.Index:
        readings = self.readings
        chosen = ((readings["device"] == device) & (readings["sensor"] == sensor)
                  & (readings["t"] >= start) & (readings["t"] < end))
        return readings.index[chosen]

    def drift(self, names, start, end) -> dict:
        device, sensor = self._sensor(names)
        rows = self._rows(device, sensor, start, end)
        size = float(self.rng.uniform(4.0, 6.0)) * self._sd(device, sensor)
        sign = 1.0 if self.rng.uniform() < 0.5 else -1.0
        share = (self.readings.loc[rows, "t"] - start) / (end - start)
        self.readings.loc[rows, "value"] += sign * size * share.to_numpy()
        return {"devices": [device], "pairs": [], "targets": [], "sensors": [sensor],
                "description": f"{sensor} of {device} drifts {'up' if sign > 0 else 'down'} "
                               f"by {size:.3g}"}

    def stuck(self, names, start, end) -> dict:
        device, sensor = self._sensor(names)
        rows = self._rows(device, sensor, start, end)
        earlier = self._rows(device, sensor, self.readings["t"].min(), start)
        frozen = float(self.readings.loc[earlier[-1] if len(earlier) else rows[0], "value"])
        self.readings.loc[rows, "value"] = frozen
        return {"devices": [device], "pairs": [], "targets": [], "sensors": [sensor],
                "description": f"{sensor} of {device} is stuck at {frozen:.4g}"}

    def spike(self, names, start, end) -> dict:
        device, sensor = self._sensor(names)
        rows = self._rows(device, sensor, start, end)
        if len(rows) == 0:
            raise DataError(f"{sensor} of {device} has no reading in the fault window",
                            "Name another device or widen --minutes.")
        width = min(int(self.rng.integers(1, 3)), len(rows))
        at = int(self.rng.integers(len(rows) - width + 1))
        hit = rows[at:at + width]
        sign = 1.0 if self.rng.uniform() < 0.5 else -1.0
        self.readings.loc[hit, "value"] += sign * 8.0 * self._sd(device, sensor)
        return {"devices": [device], "pairs": [], "targets": [], "sensors": [sensor],
                "description": f"{sensor} of {device} has {width} sample"
                               f"{'s' if width > 1 else ''} 8 standard deviations "
                               f"{'above' if sign > 0 else 'below'} normal",
                "start": self.readings.loc[hit, "t"].min().floor("min"),
                "end": self.readings.loc[hit, "t"].max().floor("min") + pd.Timedelta(minutes=1)}

    def process_fault(self, names, start, end) -> dict:
        origin = self._choose(names[:1] if names else None, self.sensor_devices)[0]
        if names and len(names) > 1:
            reached = list(names[1:])
        else:
            peers = {b for a, b in self.talks if a == origin} | {a for a, b in self.talks
                                                                 if b == origin}
            # Neighbours: devices with sensors that share a peer with the origin.
            near = [d for d in self.sensor_devices if d != origin
                    and ({b for a, b in self.talks if a == d}
                         | {a for a, b in self.talks if b == d}) & peers]
            count = min(len(near), int(self.rng.integers(2, 4)))
            reached = [str(d) for d in self.rng.choice(near, count, replace=False)] if count else []
        duration = (end - start).total_seconds()
        delays = np.minimum(np.sort(self.rng.uniform(300.0, 600.0, len(reached))),
                            0.5 * duration)
        sign = 1.0 if self.rng.uniform() < 0.5 else -1.0
        sensors = []
        for device, delay in zip([origin] + reached, [0.0, *delays]):
            begin = start + pd.Timedelta(seconds=float(delay))
            for sensor in sorted(self.readings.loc[self.readings["device"] == device,
                                                   "sensor"].unique()):
                rows = self._rows(device, str(sensor), begin, end)
                shift = float(self.rng.uniform(3.5, 4.5)) * self._sd(device, str(sensor))
                self.readings.loc[rows, "value"] += sign * shift
                sensors.append(str(sensor))
        return {"devices": [origin] + reached, "pairs": [], "targets": [], "sensors": sensors,
                "description": f"process fault starting at {origin}"
                               + (f" and spreading to {', '.join(reached)}" if reached else "")}


def plant_faults(source: Path, target: Path, requests: list[FaultRequest], seed: int = 0,
                 minutes: float = DEFAULT_MINUTES) -> pd.DataFrame:
    """Copy the workspace `source` to `target` and plant `requests` into the copy.

    Returns:
        The ground truth written: anomaly_id, kind, start, end, devices, pairs,
        targets, sensors, description.

    Raises:
        DataError: `source` has no store, `target` exists, or a named device is
            not found. Nothing is left at `target` then.
    """
    source_ws = store.Workspace(Path(source).resolve())
    if not source_ws.store_path.is_file():
        raise DataError(f"no store found in {source}", "Give a workspace folder that "
                        "holds store.duckdb.")
    target = Path(target)
    if target.exists():
        raise DataError(f"{target} already exists", "Give a new folder for the copy.")
    if not requests:
        raise ConfigError("no fault to plant", "Give one or more --fault TYPE[:DEVICES].")
    if minutes <= 0:
        raise ConfigError(f"invalid --minutes {minutes}", "Give a duration > 0.")
    events = store.query(source_ws.store_path, "SELECT t, src, dst, weight, protocol FROM events")
    readings = store.query(source_ws.store_path,
                           "SELECT t, device, sensor, value FROM measurements")
    for frame in (events, readings):
        frame["t"] = pd.to_datetime(frame["t"], utc=True)
    first = min(events["t"].min(), readings["t"].min())
    last = max(events["t"].max(), readings["t"].max())
    reference_end = first + 0.6 * (last - first)
    if source_ws.latest_run() is not None:
        info = store.read_run_info(source_ws, source_ws.latest_run())
        spans = info.get("periods", {})
        if "calibration" in spans:
            reference_end = pd.Timestamp(spans["calibration"]["end"])
    rng = np.random.default_rng(seed)
    window = pd.Timedelta(minutes=minutes)
    room = last - reference_end - window
    if room <= pd.Timedelta(0):
        raise DataError("the data after the reference period is shorter than one fault "
                        f"window of {minutes:g} minutes", "Give a smaller --minutes.")
    planter = _Planter(events, readings.reset_index(drop=True), reference_end, rng)
    slots = np.linspace(0, 1, len(requests) + 2)[1:-1]
    rows = []
    for position, (request, share) in enumerate(zip(requests, slots)):
        start = (reference_end + room * share).floor("min")
        end = start + window
        row = getattr(planter, request.kind)(request.devices, start, end)
        row.setdefault("start", start)
        row.setdefault("end", end)
        row.update(anomaly_id=f"planted-{seed}-{position + 1:02d}-{request.kind}",
                   kind=request.kind)
        rows.append(row)
    truth = pd.DataFrame(rows)[["anomaly_id", "kind", "start", "end", "devices", "pairs",
                                "targets", "sensors", "description"]]
    _write_copy(source_ws, target, planter.events, planter.readings, truth)
    log.info("planted %d faults into %s", len(truth), target)
    return truth


def _write_copy(source: store.Workspace, target: Path, events: pd.DataFrame,
                readings: pd.DataFrame, truth: pd.DataFrame) -> None:
    target.mkdir(parents=True)
    try:
        shutil.copy2(source.store_path, target / "store.duckdb")
        events = events.sort_values("t", kind="stable").reset_index(drop=True)
        readings = readings.sort_values("t", kind="stable").reset_index(drop=True)
        with store.connect(target / "store.duckdb") as con:
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM events")
            con.execute("DELETE FROM measurements")
            store.insert_frame(con, "events", events)
            store.insert_frame(con, "measurements", readings)
            existing = {c[0] for c in con.execute("DESCRIBE ground_truth").fetchall()}
            stored = truth.copy()
            stored["pairs"] = [[{"src": p["src"], "dst": p["dst"]} for p in pairs]
                               for pairs in stored["pairs"]]
            store.insert_frame(con, "ground_truth", stored[[c for c in stored.columns
                                                              if c in existing]])
            con.execute("COMMIT")
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
