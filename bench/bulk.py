"""A fast, vectorized event generator for throughput benchmarks.

`core.synth` builds a realistic plant with a process, planted anomalies and exact
ground truth; it draws events link by link and is too slow for tens of millions of
events. This generator only has to load the pipeline: periodic polling with jitter
over a device graph, no process measurements and no planted anomalies. Each device
is an IPv4 address; devices form cells of one PLC and its field devices, and a few
SCADA servers poll every PLC, so the graph has hubs like a plant.

Events are written in time order, in row groups, so memory stays near one chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ORIGIN_US = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z
MICROS = 1_000_000
CELL_SIZE = 9
SCADA_SERVERS = 2
PERIOD_RANGE_S = (10.0, 30.0)
JITTER_SHARE = 0.03
CHUNK_EVENTS = 2_000_000
PROTOCOLS = ("modbus-read", "modbus-write", "opc-ua")


@dataclass(frozen=True)
class BulkLinks:
    """The periodic links of a generated plant.

    Attributes:
        names: shape [num_devices], str: each device's IPv4 address.
        src, dst: shape [num_links], int64: device indices of each link.
        period_s: shape [num_links], float64: polling period in seconds.
        phase_s: shape [num_links], float64: time of the first poll in seconds.
        bytes_mean: shape [num_links], float64: mean bytes per event.
        protocol: shape [num_links], int64: index into `PROTOCOLS`.
    """

    names: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    period_s: np.ndarray
    phase_s: np.ndarray
    bytes_mean: np.ndarray
    protocol: np.ndarray

    @property
    def events_per_second(self) -> float:
        return float((1.0 / self.period_s).sum())


def build_links(num_devices: int, seed: int = 0) -> BulkLinks:
    """Draw a plant graph of `num_devices` devices and its periodic links.

    Device 0 and 1 are SCADA servers; the rest form cells of one PLC followed by
    its field devices. Each PLC polls its field devices and each field device
    answers; each SCADA server polls each PLC and the PLC answers.
    """
    if num_devices < 4:
        raise ValueError(f"invalid num_devices={num_devices}: need at least 4")
    rng = np.random.default_rng(seed)
    index = np.arange(num_devices)
    names = np.array([f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
                      for i in index + 1], dtype=object)
    rest = index[SCADA_SERVERS:]
    plc = rest[(rest - SCADA_SERVERS) % CELL_SIZE == 0]
    field = rest[(rest - SCADA_SERVERS) % CELL_SIZE != 0]
    owner = plc[np.searchsorted(plc, field, side="right") - 1]

    scada = np.repeat(np.arange(SCADA_SERVERS), len(plc))
    polled = np.tile(plc, SCADA_SERVERS)
    src = np.concatenate([owner, field, scada, polled])
    dst = np.concatenate([field, owner, polled, scada])
    num_links = len(src)
    period = rng.uniform(*PERIOD_RANGE_S, size=num_links)
    return BulkLinks(
        names=names,
        src=src.astype(np.int64),
        dst=dst.astype(np.int64),
        period_s=period,
        phase_s=rng.uniform(0.0, 1.0, size=num_links) * period,
        bytes_mean=rng.uniform(60.0, 600.0, size=num_links),
        protocol=rng.integers(0, len(PROTOCOLS), size=num_links),
    )


def span_for(links: BulkLinks, num_events: int) -> float:
    """Return the seconds of history that yield about `num_events` events."""
    return num_events / links.events_per_second


def generate_chunks(links: BulkLinks, num_events: int, seed: int = 0,
                    start_s: float = 0.0):
    """Yield pyarrow tables of events in time order, `num_events` rows in all.

    The events start `start_s` seconds after `ORIGIN_US`.

    Columns: time (timestamp[us, UTC]), src, dst (string), bytes (float64),
    protocol (string). Each chunk covers one stretch of time; inside it every
    link's polls fall at phase + k * period plus a jitter of a few percent of the
    period, so consecutive chunks join without a seam.
    """
    rng = np.random.default_rng(seed + 1)
    # A little more time than the average rate needs, so the count is always
    # reached; the events past `num_events` are cut off.
    span = span_for(links, num_events) * 1.02
    chunks = max(1, math.ceil(num_events / CHUNK_EVENTS))
    step = span / chunks
    written = 0
    for chunk in range(chunks):
        lo, hi = start_s + chunk * step, start_s + (chunk + 1) * step
        first = np.ceil((lo - links.phase_s) / links.period_s).clip(min=0)
        last = np.ceil((hi - links.phase_s) / links.period_s).clip(min=0)
        counts = (last - first).astype(np.int64)
        total = int(counts.sum())
        link = np.repeat(np.arange(len(counts)), counts)
        starts = np.cumsum(counts) - counts
        k = np.arange(total) - np.repeat(starts, counts) + np.repeat(first, counts)
        period = links.period_s[link]
        jitter = rng.uniform(-JITTER_SHARE, JITTER_SHARE, size=total) * period
        seconds = np.clip(links.phase_s[link] + k * period + jitter, lo, hi - 1e-6)
        order = np.argsort(seconds, kind="stable")
        take = min(total, num_events - written)
        order = order[:take]
        link = link[order]
        micros = ORIGIN_US + np.round(seconds[order] * MICROS).astype(np.int64)
        weight = np.round(links.bytes_mean[link]
                          * rng.uniform(0.8, 1.2, size=take))
        yield _table(links, link, micros, weight)
        written += take
        if written >= num_events:
            break


def _table(links: BulkLinks, link: np.ndarray, micros: np.ndarray,
           weight: np.ndarray) -> pa.Table:
    names = pa.array(links.names, type=pa.string())
    protocols = pa.array(PROTOCOLS, type=pa.string())
    src = pa.DictionaryArray.from_arrays(pa.array(links.src[link]), names)
    dst = pa.DictionaryArray.from_arrays(pa.array(links.dst[link]), names)
    protocol = pa.DictionaryArray.from_arrays(
        pa.array(links.protocol[link]), protocols)
    return pa.table({
        "time": pa.array(micros, type=pa.timestamp("us", tz="UTC")),
        "src": src.cast(pa.string()),
        "dst": dst.cast(pa.string()),
        "bytes": pa.array(weight, type=pa.float64()),
        "protocol": protocol.cast(pa.string()),
    })


def write_parquet(links: BulkLinks, num_events: int, path: str | Path,
                  seed: int = 0, start_s: float = 0.0) -> int:
    """Write `num_events` events to one Parquet file; return the rows written."""
    writer = None
    rows = 0
    try:
        for table in generate_chunks(links, num_events, seed, start_s):
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table, row_group_size=1_000_000)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def write_csv(links: BulkLinks, num_events: int, path: str | Path,
              seed: int = 0, start_s: float = 0.0) -> int:
    """Write `num_events` events to one CSV file with ISO-8601 UTC times."""
    rows = 0
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(path, "wb") as sink:
        sink.write(b"time,src,dst,bytes,protocol\n")
        for table in generate_chunks(links, num_events, seed, start_s):
            times = table["time"].cast(pa.int64()).to_numpy()
            text = np.datetime_as_string(times.astype("datetime64[us]"), unit="us")
            table = table.set_column(0, "time", pa.array(np.char.add(text, "Z")))
            pacsv.write_csv(table, sink, write_options=options)
            rows += table.num_rows
    return rows
