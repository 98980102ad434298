"""Binning in SQL, then dense tensors for the model.

A bin is `floor((epoch microseconds - origin) / width)` in UTC, with the origin stored
in the run, so another SQL engine given the same origin and width produces the same
snapshots. Every snapshot of a run shares one device index, ordered by first
appearance; a device that appears later is present but inactive before. Empty bins are
real snapshots with no edges.

Per (device, bin) the communication features are the log1p of out and in event
counts, out and in bytes, and out and in degree. Per (device, sensor, bin) the sensor
features are mean, standard deviation, minimum, maximum, sample count and the time
since the value last changed, with a mask where the bin has no reading: a mean alone
would hide a one-sample spike and a stuck sensor.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import store
from core.config import GAP_FILL_POLICIES
from core.errors import DataError

log = logging.getLogger(__name__)

COMM_FEATURES = ("out_count", "in_count", "out_bytes", "in_bytes", "out_degree", "in_degree")
SENSOR_FEATURES = ("mean", "std", "min", "max", "count", "stale")
MICROS = 1_000_000

EVENT_BINS_SQL = """
SELECT CAST(floor((epoch_us(t) - $origin) / $width) AS BIGINT) AS bin,
       src, dst, count(*) AS events, sum(weight) AS weight
FROM events
WHERE epoch_us(t) >= $start AND epoch_us(t) < $stop
GROUP BY ALL
"""

# `filled` applies the gap-fill policy. With $fill, a NULL reading takes the last
# earlier non-NULL reading of its sensor (`last_seen`), provided it is at most the
# $limit-th NULL since that reading (no limit when $limit is NULL). `run` counts the
# non-NULL readings so far, so the rows of one run share it and row_number() - 1
# is the number of NULL readings up to this one. `imputed` counts filled readings.
MEASUREMENT_BINS_SQL = """
WITH runs AS (
    SELECT device, sensor, t, value,
           count(value) OVER (PARTITION BY device, sensor ORDER BY t
                              ROWS UNBOUNDED PRECEDING) AS run,
           last_value(value IGNORE NULLS) OVER (PARTITION BY device, sensor ORDER BY t
                                                ROWS UNBOUNDED PRECEDING) AS last_seen
    FROM measurements
    WHERE epoch_us(t) >= $start AND epoch_us(t) < $stop
),
filled AS (
    SELECT device, sensor, t, value IS NULL AS missing,
           CASE WHEN value IS NOT NULL THEN value
                WHEN $fill AND ($limit IS NULL OR
                     row_number() OVER (PARTITION BY device, sensor, run ORDER BY t) - 1
                     <= $limit)
                THEN last_seen END AS value
    FROM runs
),
ordered AS (
    SELECT device, sensor, t, value, missing,
           value IS DISTINCT FROM lag(value) OVER w AS changed
    FROM filled
    WHERE value IS NOT NULL
    WINDOW w AS (PARTITION BY device, sensor ORDER BY t)
)
SELECT CAST(floor((epoch_us(t) - $origin) / $width) AS BIGINT) AS bin,
       device, sensor,
       avg(value) AS mean, stddev_pop(value) AS std, min(value) AS min,
       max(value) AS max, count(value) AS count,
       max(epoch_us(t)) FILTER (WHERE changed) AS last_change_us,
       count(*) FILTER (WHERE missing) AS imputed
FROM ordered
GROUP BY ALL
"""

SPAN_SQL = """
SELECT min(lo), max(hi) FROM (
    SELECT min(epoch_us(t)) AS lo, max(epoch_us(t)) AS hi FROM events
    UNION ALL
    SELECT min(epoch_us(t)), max(epoch_us(t)) FROM measurements)
"""


@dataclass
class Snapshots:
    """The binned run, with one device index for every bin.

    Attributes:
        origin_us: epoch microseconds of the start of bin 0 (UTC).
        bin_seconds: bin width.
        num_bins: number of bins, empty ones included.
        devices: idx, device, kind, zone, criticality, first_bin.
        sensors: device, sensor, device_idx, slot (position among the device's
            sensors, sorted by name).
        comm: shape [num_bins, num_devices, 6], log1p communication features.
        sensor_values: shape [num_bins, num_sensors, 6], raw sensor features, NaN
            where the bin has no reading (count is 0 there, never NaN).
        pairs: shape [num_pairs, 2], device indices (src, dst) of every pair that
            carries an event in any bin.
        pair_events: shape [num_bins, num_pairs], events per pair and bin.
        pair_bytes: shape [num_bins, num_pairs], summed weight per pair and bin.
        links: shape [num_links, 2], static topology pairs (device indices).
        active: shape [num_bins, num_devices], bool, the device has an event or a
            reading in the bin.
        imputed_cells: NULL readings that the gap-fill policy filled.

    NOTE: the arrays are dense over devices and bins, which suits plants of up to a
    few thousand devices and about ten thousand bins; streams with tens of thousands
    of mostly idle hosts need a sparse layout.
    """

    origin_us: int
    bin_seconds: int
    num_bins: int
    devices: pd.DataFrame
    sensors: pd.DataFrame
    comm: np.ndarray
    sensor_values: np.ndarray
    pairs: np.ndarray
    pair_events: np.ndarray
    pair_bytes: np.ndarray
    links: np.ndarray
    active: np.ndarray
    imputed_cells: int = 0

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def snapshot_edges(self, bin_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the directed edges of one bin over the run's device index.

        Returns:
            edge_index: shape [2, num_edges], int64, every index below
                `num_devices`; shape (2, 0) for a bin without events.
            edge_weight: shape [num_edges], float32, summed weight per pair.
        """
        carried = self.pair_events[bin_index] > 0
        edge_index = np.ascontiguousarray(self.pairs[carried].T, dtype=np.int64)
        edge_weight = self.pair_bytes[bin_index, carried].astype(np.float32)
        return edge_index.reshape(2, -1), edge_weight

    def bin_start(self, bins: np.ndarray | int) -> pd.DatetimeIndex:
        """Return the UTC start time of each bin."""
        micros = self.origin_us + np.asarray(bins, dtype=np.int64) * self.bin_seconds * MICROS
        return pd.to_datetime(np.atleast_1d(micros), unit="us", utc=True)


def data_span(store_path: str | os.PathLike) -> tuple[int, int]:
    """Return the first and last timestamp in the store, in epoch microseconds."""
    with store.connect(store_path, read_only=True) as con:
        lo, hi = con.execute(SPAN_SQL).fetchone()
    if lo is None:
        raise DataError(
            "the store contains no events and no measurements",
            "Load data with `tgloc ingest` or build the sample plant with `tgloc demo`.",
        )
    return int(lo), int(hi)


def align_origin(first_us: int, bin_seconds: int) -> int:
    """Return the start of the bin holding `first_us`, aligned to the epoch."""
    width = bin_seconds * MICROS
    return (first_us // width) * width


def bin_events(
    store_path: str | os.PathLike, origin_us: int, width_seconds: int,
    start_us: int, stop_us: int,
) -> pd.DataFrame:
    """Aggregate events per (bin, src, dst) in SQL at any bin width.

    Returns:
        Columns bin, src, dst, events, weight; bins with no event have no row.
    """
    params = {"origin": origin_us, "width": width_seconds * MICROS,
              "start": start_us, "stop": stop_us}
    with store.connect(store_path, read_only=True) as con:
        return con.execute(EVENT_BINS_SQL, params).df()


def bin_measurements(
    store_path: str | os.PathLike, origin_us: int, width_seconds: int,
    start_us: int, stop_us: int, gap_fill: str = "none",
    gap_fill_limit: int | None = None,
) -> pd.DataFrame:
    """Aggregate measurements per (bin, device, sensor) in SQL at any bin width.

    Args:
        gap_fill: "none" skips NULL readings; "ffill" replaces each by the
            sensor's last earlier reading (see `StreamConfig.gap_fill`).
        gap_fill_limit: the maximum number of consecutive NULL readings filled;
            None fills them all.

    Returns:
        Columns bin, device, sensor, mean, std, min, max, count (readings,
        filled ones included), last_change_us (epoch microseconds of the last
        change of value inside the bin, or NULL) and imputed (filled readings).
    """
    if gap_fill not in GAP_FILL_POLICIES:
        raise ValueError(f"invalid gap_fill {gap_fill!r}; expected one of "
                         f"{', '.join(GAP_FILL_POLICIES)}")
    params = {"origin": origin_us, "width": width_seconds * MICROS,
              "start": start_us, "stop": stop_us, "fill": gap_fill == "ffill",
              "limit": gap_fill_limit}
    with store.connect(store_path, read_only=True) as con:
        return con.execute(MEASUREMENT_BINS_SQL, params).df()


def build_snapshots(
    store_path: str | os.PathLike,
    bin_seconds: int,
    origin_us: int | None = None,
    stop_us: int | None = None,
    gap_fill: str = "none",
    gap_fill_limit: int | None = None,
) -> Snapshots:
    """Bin the whole store into snapshots with one device index.

    Args:
        store_path: the workspace's `store.duckdb`.
        bin_seconds: base bin width.
        origin_us: start of bin 0; by default the first timestamp aligned to the bin.
        stop_us: end of the last bin (exclusive); by default after the last timestamp.
        gap_fill: the policy for NULL readings, "none" or "ffill"
            (`StreamConfig.gap_fill`). It changes the features, never the store.
        gap_fill_limit: the maximum number of consecutive NULL readings filled;
            None fills them all.

    Raises:
        DataError: the store contains no data.
    """
    first_us, last_us = data_span(store_path)
    if origin_us is None:
        origin_us = align_origin(first_us, bin_seconds)
    width = bin_seconds * MICROS
    if stop_us is None:
        stop_us = origin_us + ((last_us - origin_us) // width + 1) * width
    num_bins = int((stop_us - origin_us + width - 1) // width)

    events = bin_events(store_path, origin_us, bin_seconds, origin_us, stop_us)
    measurements = bin_measurements(store_path, origin_us, bin_seconds, origin_us,
                                    stop_us, gap_fill, gap_fill_limit)
    with store.connect(store_path, read_only=True) as con:
        known = con.execute(
            "SELECT device, kind, zone, criticality FROM devices").df()
        links = con.execute("SELECT src, dst, weight FROM links").df()

    devices = _device_index(events, measurements, known, links)
    index = pd.Series(np.arange(len(devices)), index=devices["device"].to_numpy())
    sensors = _sensor_index(measurements, index)

    comm, pairs, pair_events, pair_bytes = _communication(events, index, num_bins)
    sensor_values = _sensor_values(measurements, sensors, num_bins, origin_us, bin_seconds)

    active = np.zeros((num_bins, len(devices)), dtype=bool)
    if len(events):
        bins = events["bin"].to_numpy()
        active[bins, index[events["src"]].to_numpy()] = True
        active[bins, index[events["dst"]].to_numpy()] = True
    if len(measurements):
        active[measurements["bin"].to_numpy(), index[measurements["device"]].to_numpy()] = True
    first = np.where(active.any(axis=0), active.argmax(axis=0), -1)
    devices["first_bin"] = first.astype(np.int64)

    link_pairs = np.zeros((0, 2), dtype=np.int64)
    if len(links):
        link_pairs = np.stack(
            [index[links["src"]].to_numpy(), index[links["dst"]].to_numpy()], axis=1
        ).astype(np.int64)

    log.info("binned %d devices, %d sensors, %d pairs into %d bins of %d s",
             len(devices), len(sensors), len(pairs), num_bins, bin_seconds)
    return Snapshots(
        origin_us=int(origin_us), bin_seconds=bin_seconds, num_bins=num_bins,
        devices=devices, sensors=sensors, comm=comm, sensor_values=sensor_values,
        pairs=pairs, pair_events=pair_events, pair_bytes=pair_bytes,
        links=link_pairs, active=active,
        imputed_cells=int(measurements["imputed"].sum()) if len(measurements) else 0,
    )


def _device_index(
    events: pd.DataFrame, measurements: pd.DataFrame, known: pd.DataFrame,
    links: pd.DataFrame,
) -> pd.DataFrame:
    """Order devices by first appearance (bin, then name), then known idle ones."""
    seen = []
    if len(events):
        for column in ("src", "dst"):
            seen.append(events[["bin", column]].rename(columns={column: "device"}))
    if len(measurements):
        seen.append(measurements[["bin", "device"]])
    if seen:
        first = pd.concat(seen).groupby("device", sort=False)["bin"].min()
        order = first.reset_index().sort_values(["bin", "device"], kind="stable")
        names = list(order["device"])
    else:
        names = []
    extra = [d for d in pd.concat([known["device"], links["src"], links["dst"]]).unique()
             if d not in set(names)]
    names += sorted(extra)
    devices = pd.DataFrame({"idx": np.arange(len(names)), "device": names})
    devices = devices.merge(known, on="device", how="left")
    devices["kind"] = devices["kind"].fillna("unknown").astype(str)
    devices["zone"] = devices["zone"].fillna("").astype(str)
    devices["criticality"] = devices["criticality"].astype(float).fillna(0.5)
    return devices[["idx", "device", "kind", "zone", "criticality"]]


def _sensor_index(measurements: pd.DataFrame, index: pd.Series) -> pd.DataFrame:
    if len(measurements) == 0:
        return pd.DataFrame({"device": [], "sensor": [], "device_idx": [], "slot": []})
    sensors = measurements[["device", "sensor"]].drop_duplicates()
    sensors = sensors.sort_values(["device", "sensor"]).reset_index(drop=True)
    sensors["device_idx"] = index[sensors["device"]].to_numpy()
    sensors["slot"] = sensors.groupby("device").cumcount()
    return sensors.sort_values(["device_idx", "slot"]).reset_index(drop=True)


def _communication(
    events: pd.DataFrame, index: pd.Series, num_bins: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    num_devices = len(index)
    comm = np.zeros((num_bins, num_devices, len(COMM_FEATURES)), dtype=np.float32)
    if len(events) == 0:
        empty = np.zeros((num_bins, 0), dtype=np.float32)
        return comm, np.zeros((0, 2), dtype=np.int64), empty, empty

    src = index[events["src"]].to_numpy()
    dst = index[events["dst"]].to_numpy()
    bins = events["bin"].to_numpy()
    count = events["events"].to_numpy(dtype=np.float64)
    weight = events["weight"].to_numpy(dtype=np.float64)

    raw = np.zeros((num_bins, num_devices, len(COMM_FEATURES)), dtype=np.float64)
    np.add.at(raw[..., 0], (bins, src), count)
    np.add.at(raw[..., 1], (bins, dst), count)
    np.add.at(raw[..., 2], (bins, src), weight)
    np.add.at(raw[..., 3], (bins, dst), weight)
    np.add.at(raw[..., 4], (bins, src), 1.0)
    np.add.at(raw[..., 5], (bins, dst), 1.0)
    comm[:] = np.log1p(raw)

    pair_codes = src.astype(np.int64) * num_devices + dst
    unique, pair_of_row = np.unique(pair_codes, return_inverse=True)
    pairs = np.stack([unique // num_devices, unique % num_devices], axis=1)
    pair_events = np.zeros((num_bins, len(unique)), dtype=np.float32)
    pair_bytes = np.zeros((num_bins, len(unique)), dtype=np.float32)
    np.add.at(pair_events, (bins, pair_of_row), count)
    np.add.at(pair_bytes, (bins, pair_of_row), weight)
    return comm, pairs.astype(np.int64), pair_events, pair_bytes


def _sensor_values(
    measurements: pd.DataFrame, sensors: pd.DataFrame, num_bins: int,
    origin_us: int, bin_seconds: int,
) -> np.ndarray:
    values = np.full((num_bins, len(sensors), len(SENSOR_FEATURES)), np.nan, np.float32)
    values[..., 4] = 0.0
    if len(measurements) == 0:
        return values
    key = pd.Series(np.arange(len(sensors)),
                    index=pd.MultiIndex.from_frame(sensors[["device", "sensor"]]))
    rows = key[pd.MultiIndex.from_frame(measurements[["device", "sensor"]])].to_numpy()
    bins = measurements["bin"].to_numpy()
    for position, name in enumerate(SENSOR_FEATURES[:5]):
        values[bins, rows, position] = measurements[name].to_numpy(dtype=np.float64)

    # Time since the last change, carried forward across bins without a change and
    # measured at the end of each bin, in bins (log1p).
    last_change = np.full((num_bins, len(sensors)), np.nan)
    changed = measurements["last_change_us"].to_numpy(dtype=np.float64)
    last_change[bins, rows] = changed
    last_change = pd.DataFrame(last_change).ffill().to_numpy()
    ends = origin_us + (np.arange(1, num_bins + 1, dtype=np.float64) * bin_seconds * MICROS)
    stale = (ends[:, None] - last_change) / (bin_seconds * MICROS)
    stale = np.where(np.isnan(stale), 0.0, np.clip(stale, 0.0, None))
    has_reading = values[..., 4] > 0
    values[..., 5] = np.where(has_reading, np.log1p(stale), np.nan)
    return values
