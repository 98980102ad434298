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

A sensor whose sources report it at different decimal resolutions (one historian
export rounds to two places, another keeps every digit) is read at the coarsest of
them everywhere in the run. Otherwise the rounding itself becomes a residual, and a
sensor that varies by less than the rounding step looks abnormal in every bin of
the coarse source.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from core import allocation, binning, store
from core.binning import MICROS, align_origin
from core.config import GAP_FILL_POLICIES
from core.errors import DataError

log = logging.getLogger(__name__)

COMM_FEATURES = ("out_count", "in_count", "out_bytes", "in_bytes", "out_degree", "in_degree")
SENSOR_FEATURES = ("mean", "std", "min", "max", "count", "stale")

EVENT_BINS_SQL = binning.event_bins_sql(binning.DUCKDB)
MEASUREMENT_BINS_SQL = binning.measurement_bins_sql(binning.DUCKDB)
SPAN_SQL = binning.span_sql(binning.DUCKDB)

# Resolutions tried for a source's readings: 10^0 down to 10^-MAX_PLACES.
MAX_PLACES = 6
# A source whose readings are all whole numbers shows a resolution of 0 places
# only with this many distinct values: a status signal reads 0 and 1 by nature.
MIN_DISTINCT_VALUES = 20
PLACES_COLUMNS = ("device", "sensor", "places", "sources", "finer_sources")


def _resolution_sql() -> str:
    """Per (device, sensor, source): distinct values, and for each k the readings
    that are not a multiple of 10^-k (within the rounding error of a double)."""
    checks = ",\n       ".join(
        f"count(*) FILTER (WHERE abs(value * 1e{k} - round(value * 1e{k})) "
        f"> 1e-6 + 1e-9 * abs(value * 1e{k})) AS off_{k}"
        for k in range(MAX_PLACES + 1))
    return f"""
SELECT device, sensor, report_id, count(DISTINCT value) AS distinct_values,
       {checks}
FROM measurements
WHERE value IS NOT NULL AND isfinite(value) AND {binning.in_window(binning.DUCKDB)}
GROUP BY device, sensor, report_id
"""


RESOLUTION_SQL = _resolution_sql()
# The measurements with each listed sensor rounded to its places (`reading_places`,
# registered on the connection for the query).
ROUNDED_MEASUREMENTS = """(
    SELECT m.t, m.device, m.sensor,
           CASE WHEN r.places IS NULL THEN m.value
                ELSE round(m.value, CAST(r.places AS INTEGER)) END AS value
    FROM measurements AS m
    LEFT JOIN reading_places AS r ON m.device = r.device AND m.sensor = r.sensor
) AS measurements"""
ROUNDED_MEASUREMENT_BINS_SQL = binning.measurement_bins_sql(binning.DUCKDB,
                                                            ROUNDED_MEASUREMENTS)


def no_rounding() -> pd.DataFrame:
    """Return an empty table in the layout of `reading_places`."""
    return pd.DataFrame({"device": pd.Series(dtype=str), "sensor": pd.Series(dtype=str),
                         "places": pd.Series(dtype=np.int64),
                         "sources": pd.Series(dtype=np.int64),
                         "finer_sources": pd.Series(dtype=np.int64)})


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
        rounded: the sensors read at the coarsest resolution of their sources
            (`reading_places`); empty when every sensor's sources agree.

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
    rounded: pd.DataFrame = field(default_factory=no_rounding)

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
        return _data_span(con)


def _data_span(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    # fetchall, not fetchone: a pending result blocks the next query on `con`.
    lo, hi = con.execute(SPAN_SQL).fetchall()[0]
    if lo is None:
        raise DataError(
            "the store contains no events and no measurements",
            "Load data with `tgloc ingest` or build the sample plant with `tgloc demo`.",
        )
    return int(lo), int(hi)


def bin_events(
    store_path: str | os.PathLike, origin_us: int, width_seconds: int,
    start_us: int, stop_us: int,
) -> pd.DataFrame:
    """Aggregate events per (bin, src, dst) in SQL at any bin width.

    Returns:
        Columns bin, src, dst, events, weight; bins with no event have no row.
    """
    with store.connect(store_path, read_only=True) as con:
        rows = _event_rows(con, origin_us, width_seconds, start_us, stop_us)
    return rows.to_pandas()


def _event_rows(
    con: duckdb.DuckDBPyConnection, origin_us: int, width_seconds: int, start_us: int, stop_us: int
) -> pa.Table:
    params = binning.parameters(origin_us, width_seconds, start_us, stop_us)
    return con.sql(EVENT_BINS_SQL, params=params).to_arrow_table()


def categorical_addresses(table: pa.Table) -> pd.DataFrame:
    """Return binned events as pandas with src and dst as categoricals.

    There are far fewer devices than binned rows, so a categorical builds a few
    thousand Python strings where plain text would build two per row.
    """
    return table.to_pandas(strings_to_categorical=True)


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
    with store.connect(store_path, read_only=True) as con:
        return _measurement_rows(con, origin_us, width_seconds, start_us, stop_us,
                                 gap_fill, gap_fill_limit)


def _measurement_rows(
    con: duckdb.DuckDBPyConnection, origin_us: int, width_seconds: int, start_us: int, stop_us: int,
    gap_fill: str, gap_fill_limit: int | None, places: pd.DataFrame | None = None,
) -> pd.DataFrame:
    if gap_fill not in GAP_FILL_POLICIES:
        raise ValueError(f"invalid gap_fill {gap_fill!r}; expected one of "
                         f"{', '.join(GAP_FILL_POLICIES)}")
    params = binning.measurement_parameters(origin_us, width_seconds, start_us, stop_us,
                                            gap_fill == "ffill", gap_fill_limit)
    return measurement_bins(con, params, places)


def measurement_bins(
    con: duckdb.DuckDBPyConnection, params: dict, places: pd.DataFrame | None,
) -> pd.DataFrame:
    """Run the measurement binning query, with the sensors of `places` (see
    `reading_places`) rounded to their decimal places first."""
    if places is None or places.empty:
        return con.execute(MEASUREMENT_BINS_SQL, params).df()
    con.register("reading_places", places[["device", "sensor", "places"]])
    try:
        return con.execute(ROUNDED_MEASUREMENT_BINS_SQL, params).df()
    finally:
        con.unregister("reading_places")


def reading_places(con: duckdb.DuckDBPyConnection, start_us: int, stop_us: int
                   ) -> pd.DataFrame:
    """Return the sensors whose sources report them at different resolutions.

    A source is one ingest (`report_id`). Its resolution is the fewest decimal
    places, 0 to `MAX_PLACES`, that every reading of the sensor in [start_us,
    stop_us) fits. A source that fits none reads at full precision. A source of
    whole numbers shows its resolution only with `MIN_DISTINCT_VALUES` distinct
    values or more.

    Returns:
        Columns device, sensor, places (the coarsest resolution among the sources),
        sources (that showed a resolution) and finer_sources (of those, the ones
        that read finer than `places`), one row per sensor where they disagree.
    """
    rows = con.execute(RESOLUTION_SQL, {"start": int(start_us), "stop": int(stop_us)}).df()
    fits = rows[[f"off_{k}" for k in range(MAX_PLACES + 1)]].to_numpy() == 0
    rows = rows.assign(places=np.where(fits.any(axis=1), fits.argmax(axis=1), MAX_PLACES + 1))
    rows = rows[(rows["places"] > 0) | (rows["distinct_values"] >= MIN_DISTINCT_VALUES)]
    if rows.empty:
        return no_rounding()
    grouped = rows.groupby(["device", "sensor"], sort=True)["places"]
    spread = pd.DataFrame({"places": grouped.min(), "finest": grouped.max(),
                           "sources": grouped.size()}).reset_index()
    spread = spread[spread["places"] < spread["finest"]]
    finer = rows.merge(spread[["device", "sensor", "places"]], on=["device", "sensor"],
                       suffixes=("", "_coarsest"))
    finer = finer[finer["places"] > finer["places_coarsest"]].groupby(
        ["device", "sensor"]).size().rename("finer_sources").reset_index()
    result = spread.merge(finer, on=["device", "sensor"])
    for name in ("places", "sources", "finer_sources"):
        result[name] = result[name].astype(np.int64)
    return result[list(PLACES_COLUMNS)].reset_index(drop=True)


def build_snapshots(
    store_path: str | os.PathLike,
    bin_seconds: int,
    origin_us: int | None = None,
    stop_us: int | None = None,
    gap_fill: str = "none",
    gap_fill_limit: int | None = None,
    places: pd.DataFrame | None = None,
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
        places: the sensors to round (`reading_places`); by default those whose
            sources disagree on resolution inside the window. A run's online
            path passes the run's own, so it reads as the run did.

    Raises:
        DataError: the store contains no data.
    """
    with allocation.small_pages():
        # One connection for every query, because opening and closing the store
        # took 15 to 25 ms each time, against about 300 ms of CPU for binning 1 M
        # events (bench/scale.py, 2 cores).
        with store.connect(store_path, read_only=True) as con:
            first_us, last_us = _data_span(con)
            origin_us, stop_us, num_bins = binning.window(
                first_us, last_us, bin_seconds, origin_us, stop_us)
            rows = _event_rows(con, origin_us, bin_seconds, origin_us, stop_us)
            if places is None:
                places = reading_places(con, origin_us, stop_us)
            measurements = _measurement_rows(con, origin_us, bin_seconds, origin_us,
                                             stop_us, gap_fill, gap_fill_limit, places)
            known = con.execute(
                "SELECT device, kind, zone, criticality FROM devices").df()
            links = con.execute("SELECT src, dst, weight FROM links").df()
        events = categorical_addresses(rows)
        built = assemble(events, measurements, known, links, origin_us, bin_seconds,
                         num_bins)
        built.rounded = places.reset_index(drop=True)
        return built


def assemble(
    events: pd.DataFrame,
    measurements: pd.DataFrame,
    known: pd.DataFrame,
    links: pd.DataFrame,
    origin_us: int,
    bin_seconds: int,
    num_bins: int,
) -> Snapshots:
    """Build snapshots from binned rows, whichever SQL engine binned them.

    The rows must come in the key order that the binning queries return them in,
    because a device's bytes in a bin add up in row order and floating-point sums
    depend on it.

    Args:
        events: the rows of `binning.event_bins_sql`.
        measurements: the rows of `binning.measurement_bins_sql`.
        known: the devices table (device, kind, zone, criticality, label).
        links: the static topology (src, dst, weight).
        origin_us: start of bin 0 in epoch microseconds.
        bin_seconds: base bin width.
        num_bins: number of bins, empty ones included.
    """
    devices = _device_index(events, measurements, known, links)
    index = pd.Series(np.arange(len(devices)), index=devices["device"].to_numpy())
    sensors = _sensor_index(measurements, index)

    names = pd.Index(devices["device"])
    src = _positions(names, events["src"]) if len(events) else np.zeros(0, np.int64)
    dst = _positions(names, events["dst"]) if len(events) else np.zeros(0, np.int64)
    comm, pairs, pair_events, pair_bytes = _communication(events, src, dst,
                                                          len(devices), num_bins)
    sensor_values = _sensor_values(measurements, sensors, num_bins, origin_us, bin_seconds)

    active = np.zeros((num_bins, len(devices)), dtype=bool)
    if len(events):
        bins = events["bin"].to_numpy()
        active[bins, src] = True
        active[bins, dst] = True
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
        seen += [_first_bins(events, "src"), _first_bins(events, "dst")]
    if len(measurements):
        seen.append(_first_bins(measurements, "device"))
    if seen:
        first = pd.concat(seen).groupby(level=0).min()
        order = first.rename_axis("device").reset_index(name="bin")
        order = order.sort_values(["bin", "device"], kind="stable")
        names = list(order["device"])
    else:
        names = []
    present = set(names)
    listed = pd.concat([known["device"], links["src"], links["dst"]]).unique()
    extra = [d for d in listed if d not in present]
    names += sorted(extra)
    devices = pd.DataFrame({"idx": np.arange(len(names)), "device": names})
    devices = devices.merge(known, on="device", how="left")
    devices["kind"] = devices["kind"].fillna("unknown").astype(str)
    devices["zone"] = devices["zone"].fillna("").astype(str)
    devices["criticality"] = devices["criticality"].astype(float).fillna(0.5)
    return devices[["idx", "device", "kind", "zone", "criticality"]]


def _first_bins(frame: pd.DataFrame, column: str) -> pd.Series:
    """Return the first bin of each device in `column`, indexed by plain names."""
    first = frame.groupby(column, observed=True, sort=False)["bin"].min()
    return pd.Series(first.to_numpy(), index=first.index.astype(object))


def _positions(names: pd.Index, column: pd.Series) -> np.ndarray:
    """Return each row's position in `names`, looking a categorical up per category."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return names.get_indexer(column.cat.categories)[column.cat.codes.to_numpy()]
    return names.get_indexer(column)


def _sensor_index(measurements: pd.DataFrame, index: pd.Series) -> pd.DataFrame:
    if len(measurements) == 0:
        return pd.DataFrame({"device": [], "sensor": [], "device_idx": [], "slot": []})
    sensors = measurements[["device", "sensor"]].drop_duplicates()
    sensors = sensors.sort_values(["device", "sensor"]).reset_index(drop=True)
    sensors["device_idx"] = index[sensors["device"]].to_numpy()
    sensors["slot"] = sensors.groupby("device").cumcount()
    return sensors.sort_values(["device_idx", "slot"]).reset_index(drop=True)


def _communication(
    events: pd.DataFrame, src: np.ndarray, dst: np.ndarray, num_devices: int,
    num_bins: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    comm = np.zeros((num_bins, num_devices, len(COMM_FEATURES)), dtype=np.float32)
    if len(events) == 0:
        empty = np.zeros((num_bins, 0), dtype=np.float32)
        return comm, np.zeros((0, 2), dtype=np.int64), empty, empty

    bins = events["bin"].to_numpy()
    count = events["events"].to_numpy(dtype=np.float64)
    weight = events["weight"].to_numpy(dtype=np.float64)

    # bincount adds in row order, as np.add.at does, at a fraction of its cost.
    cells = num_bins * num_devices
    out_cell = bins * num_devices + src
    in_cell = bins * num_devices + dst
    columns = [
        np.bincount(out_cell, count, cells), np.bincount(in_cell, count, cells),
        np.bincount(out_cell, weight, cells), np.bincount(in_cell, weight, cells),
        np.bincount(out_cell, None, cells), np.bincount(in_cell, None, cells),
    ]
    for position, column in enumerate(columns):
        comm[..., position] = np.log1p(column.reshape(num_bins, num_devices))

    pair_codes = src.astype(np.int64) * num_devices + dst
    unique, pair_of_row = np.unique(pair_codes, return_inverse=True)
    pairs = np.stack([unique // num_devices, unique % num_devices], axis=1)
    cells = num_bins * len(unique)
    pair_cell = bins * len(unique) + pair_of_row
    pair_events = np.bincount(pair_cell, count, cells).astype(np.float32).reshape(
        num_bins, len(unique))
    pair_bytes = np.bincount(pair_cell, weight, cells).astype(np.float32).reshape(
        num_bins, len(unique))
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


SNAPSHOT_ARRAYS = ("comm", "sensor_values", "pairs", "pair_events", "pair_bytes",
                   "links", "active")


def save_snapshots(snapshots: Snapshots, path: str | os.PathLike) -> Path:
    """Write snapshots to one `.npz` file: the arrays, the device and sensor tables."""
    path = Path(path)
    header = {"origin_us": snapshots.origin_us, "bin_seconds": snapshots.bin_seconds,
              "num_bins": snapshots.num_bins,
              "devices": snapshots.devices.to_json(orient="split"),
              "sensors": snapshots.sensors.to_json(orient="split"),
              "rounded": snapshots.rounded.to_json(orient="split")}
    arrays = {name: getattr(snapshots, name) for name in SNAPSHOT_ARRAYS}
    with open(path, "wb") as sink:
        np.savez_compressed(sink, header=np.array(json.dumps(header)), **arrays)
    return path


def load_snapshots(path: str | os.PathLike) -> Snapshots:
    """Read snapshots written by `save_snapshots`.

    Raises:
        DataError: the file is missing or is not a snapshots file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            arrays = {name: data[name] for name in SNAPSHOT_ARRAYS}
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read snapshots from {path}",
                        f"Write them with `tgloc snapshots --output FILE` ({exc}).") \
            from exc
    tables = {name: pd.read_json(io.StringIO(header[name]), orient="split")
              for name in ("devices", "sensors")}
    # Files written before rounding was recorded have no table of it.
    rounded = (pd.read_json(io.StringIO(header["rounded"]), orient="split",
                            dtype={"device": str, "sensor": str})
               if "rounded" in header else no_rounding())
    if rounded.empty:
        rounded = no_rounding()
    return Snapshots(origin_us=int(header["origin_us"]),
                     bin_seconds=int(header["bin_seconds"]),
                     num_bins=int(header["num_bins"]), rounded=rounded, **tables, **arrays)
