"""Files into the workspace store: column mapping, timestamps, bad rows, the report.

This module decides how a file's text becomes rows of `events`, `measurements`,
`devices` or `links`: which file column is which, how a timestamp is read and turned
into a UTC instant, which rows are rejected (each with a reason and the whole row, in
`quarantine`), which duplicates are dropped, and what the ingest report contains.
Splitting bytes into rows is left to `core.reading`; binning, features and graphs to
`core.snapshots`.

A load is atomic and idempotent. Its rows, quarantine rows and report are written in
one DuckDB transaction, so a failure or a killed process stores nothing of it.
Each report records the SHA-256 of the bytes read so far and their end offset, so
loading content that is already stored (the same file, or a copy) stores 0 rows and
reports the earlier load. A file that grew since its last load is read from where
that load stopped, after checking that its first bytes are unchanged, so only the
appended rows are stored. A last line without a line end is held back until it is
ended (see `reading.complete_end`). A file whose loaded part changed is rejected, and
so is any changed Parquet file, because it is read whole: reading either again would
store the earlier rows twice (`core.withdraw` removes a load first). Only loads made
with the same options (`IngestOptions.identity`) count as the same load.

Clean event files, CSV or Parquet with zoned ISO-8601 or typed times and no row
to reject, are checked and stored column by column with Arrow (`core.columnar`),
several times faster per row. Every other file takes the general path below.

CSV files are read with every column as text and converted here, so a late
non-numeric id or a late decimal never changes a column's type. Parquet columns that
already have a type keep it. Zeek logs (TSV with `#fields`, or JSON lines) are read
too. Line numbers in messages and in `quarantine.line` are file lines, the header
being line 1 (a JSON-lines file has no header, so its first record is line 1).

Measurements are also checked against the readings that earlier loads stored, with
the same duplicate policy as inside one file (see `_against_stored`).
"""

from __future__ import annotations

import codecs
import hashlib
import ipaddress
import json
import logging
import re
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from core import allocation, columnar, reading, store
from core.errors import IngestError, StoreBusyError
from core.store import Workspace

log = logging.getLogger(__name__)

TARGETS = ("events", "measurements", "devices", "links")
LAYOUTS = ("long", "wide")
WEIGHT_POLICIES = ("quarantine", "count")
DUPLICATE_POLICIES = ("last", "keep")
DATE_ORDERS = ("day-first", "month-first")

# Epoch values are accepted as seconds or milliseconds when they fall in 1990-2100.
EPOCH_SECONDS_MIN = 631_152_000
EPOCH_SECONDS_MAX = 4_102_444_800
EPOCH_UNITS = {"s": 1_000_000, "ms": 1_000}
EPOCH_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds"}
EPOCH_MAX_DIGITS = 18
EPOCH_SAMPLE_ROWS = 1000

MISSING_TOKENS = frozenset({"", "-", "nan", "null", "none", "na", "n/a", "(empty)"})
INFINITE_TOKENS = frozenset(
    {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
)

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "time": ("time", "ts", "timestamp", "datetime", "date_time", "date time", "t"),
    "src": ("src", "source", "source ip", "src ip", "src_ip", "srcip", "source_ip",
            "id.orig_h", "saddr", "sender"),
    "dst": ("dst", "destination", "destination ip", "dst ip", "dst_ip", "dstip",
            "destination_ip", "id.resp_h", "daddr", "receiver"),
    "weight": ("weight", "bytes", "count", "byte_count", "octets"),
    "protocol": ("protocol", "proto"),
    "device": ("device", "device_id", "host", "node"),
    "sensor": ("sensor", "sensor_id", "tag", "signal", "metric"),
    "value": ("value", "val", "reading"),
    "kind": ("kind", "type", "device_type"),
    "zone": ("zone", "area"),
    "criticality": ("criticality",),
    "label": ("label",),
    "date": ("date",),
}
TARGET_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "events": (("time", "src", "dst"), ("weight", "protocol")),
    "measurements": (("time",), ("device", "sensor", "value")),
    "devices": (("device",), ("kind", "zone", "criticality", "label")),
    "links": (("src", "dst"), ("weight",)),
}
LABEL_ALIASES = ("label", "normal/attack", "att_flag", "attack", "attack_label")
ROW_ID_COLUMNS = frozenset({"row", "index", "unnamed: 0"})
NORMAL_LABELS = frozenset({"normal", "benign", "0", "false"})
ATTACK_LABELS = frozenset({"attack", "1", "true", "anomaly", "anomalous", "abnormal"})

ISO_PATTERN = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?)?)?"
    r"\s*(?:Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
ISO_ZONE_PATTERN = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}[^Zz+-]*(?:Z|z|[+-]\d{2}(?::?\d{2})?)$"
)
DAY_MONTH_PATTERN = re.compile(
    r"^(\d{1,2})([/.-])(\d{1,2})[/.-](\d{4}|\d{2})(?:[ T]+(.*))?$"
)
CLOCK_PATTERN = re.compile(
    r"^(\d{1,2})(?::(\d{2}))?(?::(\d{2})(?:[.,](\d+))?)?\s*([AaPp][Mm])?$"
)
EPOCH_PATTERN = re.compile(r"^([+-]?\d+)(?:\.(\d*))?$")
IPV4_PATTERN = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})(?::\d{1,5})?$")
BRACKETED_PATTERN = re.compile(r"^\[([^\]]+)\](?::\d{1,5})?$")
IPV6_LIKE_PATTERN = re.compile(r"^[0-9A-Fa-f]{0,4}:[0-9A-Za-z:.%]*$")
MAC_PATTERN = re.compile(r"^(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")
LOOPBACK_V4_PATTERN = r"^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$"

# A writer waits this long for a dashboard or another ingest to release the store.
WRITE_RETRY_SECONDS = 60.0
# Loads planned on a store state that another process changed before the write.
PLAN_ATTEMPTS = 3

BATADAL_FILES = (
    "BATADAL_dataset03.csv",
    "BATADAL_dataset04.csv",
    "BATADAL_test_dataset.csv",
)
BATADAL_TIME_FORMAT = "%d/%m/%y %H"


@dataclass(frozen=True)
class IngestOptions:
    """The content of a file and how to read it.

    Attributes:
        target: the table to fill: "events", "measurements", "devices" or "links".
        layout: measurements only. "long" has one reading per row: time, device,
            sensor and value. Without a device column each sensor is its own
            device, and without a sensor column the value column's name is the
            sensor. "wide" has a time column and one column per sensor.
        columns: our column name to the file's column name, for example
            {"time": "Timestamp", "src": "Source IP"}. Names not given are found
            case-insensitively among common names after trimming the headers.
        time_format: a `strptime` format applied to the whole time column.
        date_order: "day-first" or "month-first" for dates such as 03/07/2017.
            None detects the order from a value whose day is above 12 and raises
            when no value settles it.
        timezone: IANA zone of timestamps that carry no zone or offset.
        epoch_unit: "s" or "ms" for epoch timestamps; None detects the unit.
        sensor_map: wide layout: sensor column to device. Columns not in the map
            are their own device.
        ignore_columns: file columns that are neither sensors nor mapped.
        label_column: a column of normal/attack labels, kept out of the features.
            None looks for a column named label, Normal/Attack or ATT_FLAG.
        label_intervals: store each run of rows labelled attack in `ground_truth`
            (kind "label").
        weight_policy: "quarantine" rejects rows whose weight is negative, missing
            or not finite; "count" gives every row weight 1.
        duplicate_policy: measurements with the same time, device and sensor:
            "last" keeps the last of them, "keep" stores them all. Exact duplicates
            are dropped under "last" only.
        drop_loopback: reject self-loop events on 127.0.0.0/8 and ::1.
        encoding: the text encoding of CSV, Zeek and JSON-lines files. Rows with
            bytes that are not valid in it are rejected and kept in the quarantine.
        read_unterminated_line: read a last line that has no line end. By
            default it is held back, because a writer may still be appending to
            it. A later load reads it once it ends with a newline.
        sentinels: file column to the values that mean "no reading" in it, for
            example {"Init_Win_bytes_forward": (-1,)}. Such cells are stored as
            NULL. It applies to numeric event attributes and to measurement values.
    """

    target: str
    layout: str = "long"
    columns: Mapping[str, str] = field(default_factory=dict)
    time_format: str | None = None
    date_order: str | None = None
    timezone: str = "UTC"
    epoch_unit: str | None = None
    sensor_map: Mapping[str, str] | None = None
    ignore_columns: tuple[str, ...] = ()
    label_column: str | None = None
    label_intervals: bool = True
    weight_policy: str = "quarantine"
    duplicate_policy: str = "last"
    drop_loopback: bool = True
    encoding: str = "utf-8"
    read_unterminated_line: bool = False
    sentinels: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore_columns", tuple(self.ignore_columns))
        object.__setattr__(self, "sentinels", _sentinel_values(self.sentinels))
        choices = {
            "target": (self.target, TARGETS),
            "layout": (self.layout, LAYOUTS),
            "weight_policy": (self.weight_policy, WEIGHT_POLICIES),
            "duplicate_policy": (self.duplicate_policy, DUPLICATE_POLICIES),
            "epoch_unit": (self.epoch_unit, (None, *EPOCH_UNITS)),
            "date_order": (self.date_order, (None, *DATE_ORDERS)),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                allowed_text = ", ".join(repr(a) for a in allowed)
                raise IngestError(
                    f"invalid ingest option {name}={value!r}",
                    f"{name} must be one of {allowed_text}.",
                )
        unknown = sorted(set(self.columns) - set(COLUMN_ALIASES))
        if unknown:
            raise IngestError(
                f"invalid column mapping: unknown name {unknown[0]!r}",
                f"Mappable names: {', '.join(COLUMN_ALIASES)}.",
            )
        _zone(self.timezone)
        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            raise IngestError(
                f"invalid ingest option encoding={self.encoding!r}",
                "Give a Python codec name such as 'utf-8', 'latin-1' or 'cp1252'.",
            ) from exc


    def identity(self) -> str:
        """Return the options that change what a file stores, as canonical JSON.

        Two loads of the same bytes are the same load only when these match;
        `read_unterminated_line` is left out because the checksum covers the bytes
        read.
        """
        document = {
            "target": self.target,
            "layout": self.layout,
            "columns": {k: str(v) for k, v in sorted(self.columns.items())},
            "time_format": self.time_format,
            "timezone": self.timezone,
            "epoch_unit": self.epoch_unit,
            "sensor_map": (dict(sorted(self.sensor_map.items()))
                           if self.sensor_map else None),
            "ignore_columns": sorted(self.ignore_columns),
            "label_column": self.label_column,
            "label_intervals": self.label_intervals,
            "weight_policy": self.weight_policy,
            "duplicate_policy": self.duplicate_policy,
            "drop_loopback": self.drop_loopback,
            "encoding": codecs.lookup(self.encoding).name,
            "sentinels": {k: list(v) for k, v in sorted(self.sentinels.items())},
        }
        # Added only when set, so loads stored before the option existed keep
        # their identity.
        if self.date_order is not None:
            document["date_order"] = self.date_order
        return json.dumps(document, sort_keys=True, ensure_ascii=False)


def _sentinel_values(sentinels: Mapping[str, object]) -> dict[str, tuple[float, ...]]:
    """Return column to a sorted tuple of finite floats; raise on anything else."""
    result: dict[str, tuple[float, ...]] = {}
    for column, values in dict(sentinels or {}).items():
        items = values if isinstance(values, (list, tuple, set)) else (values,)
        numbers = []
        for value in items:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if not np.isfinite(number):
                raise IngestError(
                    f"invalid sentinel {value!r} for column {column!r}",
                    "A sentinel is a finite number, such as "
                    "--sentinel Init_Win_bytes_forward=-1.",
                )
            numbers.append(number)
        if not str(column).strip():
            raise IngestError("invalid sentinel: empty column name",
                              "Write it as COLUMN=VALUE, e.g. --sentinel Flow=-1.")
        result[str(column).strip()] = tuple(sorted(set(numbers)))
    return result


@dataclass
class IngestReport:
    """The outcome of one ingest: rows stored, rejected and deduplicated, and notes.

    `rows_read` always equals `rows_stored + rows_rejected + rows_deduplicated`. For
    wide measurements a row is a file row, which becomes one measurement per sensor.
    A load of content that is already stored reads 0 rows and names the earlier
    report in `already_loaded`. `bytes_start` and `bytes_end` give the part of the
    file this load read (None for an in-memory frame).
    """

    report_id: int
    file: str
    target: str
    rows_read: int
    rows_stored: int
    rows_rejected: int
    rows_deduplicated: int
    notes: list[str] = field(default_factory=list)
    bytes_start: int | None = None
    bytes_end: int | None = None
    already_loaded: int | None = None

    def summary(self) -> str:
        """Return the report as a few lines of text for the CLI and the dashboard."""
        if self.already_loaded is not None:
            head = (f"report {self.report_id}: {self.file} -> {self.target}: already "
                    f"loaded as report {self.already_loaded}; nothing stored")
            return "\n".join([head, *(f"  {note}" for note in self.notes[1:])])
        head = (
            f"report {self.report_id}: {self.file} -> {self.target}: "
            f"{self.rows_read} row{_plural(self.rows_read)} read, "
            f"{self.rows_stored} stored, "
            f"{self.rows_rejected} rejected, {self.rows_deduplicated} deduplicated"
        )
        return "\n".join([head, *(f"  {note}" for note in self.notes)])


@dataclass
class _Batch:
    """Rows parsed from one source, ready to be written in one transaction."""

    table: str
    rows: pd.DataFrame
    rows_read: int
    rows_stored: int
    rejected: list[pd.DataFrame] = field(default_factory=list)
    cell_notices: list[pd.DataFrame] = field(default_factory=list)
    rows_deduplicated: int = 0
    notes: list[str] = field(default_factory=list)
    labels: pd.DataFrame | None = None
    attributes: pd.DataFrame | None = None
    replace: bool = False

    @property
    def rows_rejected(self) -> int:
        return int(sum(len(part) for part in self.rejected))


class _Rows:
    """A frame of text cells with file lines; rejecting rows records a reason.

    `rejected` starts with the rows the reader rejected. Each rejected row keeps
    its cells as they were read, as JSON in `record`, because the parsers rewrite
    cells in place (canonical addresses, stripped text).
    """

    def __init__(
        self, frame: pd.DataFrame, lines: np.ndarray,
        rejected: pd.DataFrame | None = None,
    ) -> None:
        self.frame = frame.reset_index(drop=True)
        self.columns = [str(c) for c in self.frame.columns]
        self.original = self.frame.copy(deep=False)
        self.frame["_line"] = np.asarray(lines, dtype=np.int64)
        self.rejected: list[pd.DataFrame] = []
        if rejected is not None and len(rejected):
            self.rejected.append(rejected)

    def reject(self, mask: pd.Series, column: str, values: pd.Series, reason) -> None:
        """Move the rows under `mask` to the rejected rows with `reason`.

        `reason` is one text or a Series of texts aligned with the frame.
        """
        flags = mask.to_numpy()
        if flags.dtype == bool and not flags.any():
            return
        mask = mask.reindex(self.frame.index, fill_value=False)
        mask = mask.fillna(False).astype(bool)
        if not mask.any():
            return
        picked = mask[mask].index
        value = values.loc[picked].astype(object)
        value = value.where(value.notna(), None).map(
            lambda v: None if v is None else reading.printable(str(v))
        )
        reasons = (reason.loc[picked].to_numpy(dtype=object)
                   if isinstance(reason, pd.Series) else reason)
        cells = self.original.loc[picked, self.columns].itertuples(index=False)
        self.rejected.append(pd.DataFrame({
            "line": self.frame.loc[picked, "_line"].to_numpy(),
            "column": column,
            "value": value.to_numpy(dtype=object),
            "reason": reasons,
            "record": [reading.record_text(self.columns, list(row)) for row in cells],
        }))
        self.frame = self.frame.loc[~mask]


@dataclass(frozen=True)
class _Origin:
    """The part of a source one load reads, and the store state it was planned on.

    `checksum` is the SHA-256 of the file's bytes up to `bytes_end` (of the frame's
    hashed rows for a frame). `latest` is the last report of the same path and
    target when the load was planned; the write checks that it is still the last.
    """

    source: str
    target: str
    checksum: str
    path: str | None = None
    bytes_start: int = 0
    bytes_end: int | None = None
    latest: int | None = None
    already: int | None = None
    notes: tuple[str, ...] = ()
    options: str = ""


class _StoreChanged(Exception):
    """Another process stored a load of the same content or file meanwhile."""


def ingest_file(
    workspace: Workspace, path: str | Path, options: IngestOptions
) -> IngestReport:
    """Read a CSV, TSV, Zeek log, JSON-lines or Parquet file into the store.

    Content that is already stored is not stored again, and a file that grew since
    its last load is read from the byte where that load stopped (see the module
    docstring).

    Args:
        workspace: the workspace whose `store.duckdb` receives the rows.
        path: the file. `.parquet` and `.pq` are read as Parquet. `.json`,
            `.jsonl`, `.ndjson` and files starting with `{` are read as JSON lines,
            and a file starting with `#separator` as a Zeek TSV log. Any other
            file is read as CSV with the delimiter (comma, semicolon, tab or bar)
            that the header line uses most.
        options: the file's target table and how to read it.

    Returns:
        The ingest report, also stored in `ingest_reports`.

    Raises:
        IngestError: the file cannot be read or a column cannot be interpreted.
            Nothing of the file is stored then.
        StoreBusyError: another process kept the store locked for
            `WRITE_RETRY_SECONDS`.
    """
    path = Path(path)
    data = read_file(path)
    kind = reading.file_kind(path, data)
    end = reading.complete_end(data, kind, options.read_unterminated_line)
    held_back = []
    if end < len(data):
        line = data.count(b"\n", 0, end) + 1
        held_back.append(
            f"line {line} has no line end and was held back: the next load reads it "
            "once it ends with a newline, or read_unterminated_line "
            "(--read-unterminated-line) reads it now"
        )
    for _ in range(PLAN_ATTEMPTS):
        origin = _plan_file(workspace, path, data, kind, end, options)
        origin = replace(origin, notes=(*origin.notes, *held_back))
        try:
            if origin.already is not None:
                return _write_already_loaded(workspace, origin, options)
            with allocation.small_pages():
                batch = _columnar_batch(data, kind, end, options, origin)
                if batch is not None:
                    return _write(workspace, batch, options, origin)
            table = reading.read_table(data, kind, path.name, options.encoding,
                                       origin.bytes_start, end)
            notes = [*origin.notes, *table.notes]
            return _ingest(workspace, table.frame, table.lines, options, origin,
                           notes, table.rejected)
        except _StoreChanged:
            log.info("store changed while %s was read; planning the load again",
                     path)
    raise StoreBusyError(
        f"{path.name} was not stored: other loads kept changing the store",
        f"The store changed {PLAN_ATTEMPTS} times while the file was read. Retry "
        "when the other ingest processes have finished.",
    )


def ingest_frame(
    workspace: Workspace, frame: pd.DataFrame, options: IngestOptions, source: str
) -> IngestReport:
    """Ingest an in-memory frame exactly as a file with the same columns.

    Row i of the frame (counting from 0) is reported as line i + 2, as if the frame
    were a CSV file with a header line. A frame whose rows and columns hash to an
    already stored checksum is not stored again.

    Args:
        workspace: the workspace whose store receives the rows.
        frame: the rows; text, numeric and datetime columns are accepted.
        options: the frame's target table and how to read it.
        source: the name recorded as the report's file.
    """
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    lines = np.arange(len(frame), dtype=np.int64) + 2
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update("\x00".join(frame.columns).encode("utf-8", "surrogatepass"))
    for _ in range(PLAN_ATTEMPTS):
        with _store_connection(workspace) as con:
            already, _ = _stored_state(con, digest.hexdigest(), None, options.target,
                                       options.identity())
        origin = _Origin(source, options.target, digest.hexdigest(), already=already,
                         options=options.identity())
        try:
            if already is not None:
                return _write_already_loaded(workspace, origin, options)
            return _ingest(workspace, frame, lines, options, origin, [], None)
        except _StoreChanged:
            log.info("store changed while %s was read; planning again", source)
    raise StoreBusyError(
        f"{source} was not stored: other loads kept changing the store",
        "Retry when the other ingest processes have finished.",
    )


def ingest_parsed_events(
    workspace: Workspace, frame: pd.DataFrame, lines: np.ndarray,
    options: IngestOptions, source: str, checksum: str, notes: list[str],
    rejected: pd.DataFrame | None,
) -> IngestReport:
    """Ingest rows that a format-specific reader has already split, with their lines.

    An importer on top of the general ingest (`core.linkstream`) reads its own
    format, rejects the lines it cannot split, and hands the rest here with their
    file lines, so messages and the quarantine name the real line numbers.

    Args:
        frame: the rows, with columns the target's parser finds.
        lines: shape [rows], file line of each row.
        source: the file, recorded in the report.
        checksum: identifies the content (and how it was read) for the
            already-loaded check.
        notes: what the reader did, for the report.
        rejected: the reader's rejected lines (columns line, column, value,
            reason, record), or None.
    """
    def store_rows(origin: _Origin) -> IngestReport:
        return _ingest(workspace, frame, lines, options, origin, list(notes),
                       rejected)

    return _store_once(workspace, source, checksum, options, store_rows)


def ingest_arrow_events(
    workspace: Workspace,
    read_events: Callable[[], tuple[pa.Table, pd.DataFrame, list[str]]],
    options: IngestOptions, source: str, checksum: str,
) -> IngestReport:
    """Store events that a format-specific reader checks itself, as Arrow.

    For large files in a fixed layout (`core.darpa`): the reader converts and
    checks every column with vectorised code, so no Python object is built per
    row, and returns the clean rows and the rejected ones. The load gets the
    same already-loaded check, report and transaction as any other. The check
    comes first, so content that is already stored is not read again.

    Args:
        read_events: returns the rows in the `events` layout (t as a UTC
            timestamp, src, dst, weight, protocol, line, and optionally label and
            attack), the rejected rows (columns line, column, value, reason,
            record) and notes on what the reader did. It is called at most
            once: a retried write reuses its result.
        options: recorded as the load's identity; target must be "events".
        source: the file, recorded in the report.
        checksum: identifies the content (and how it was read) for the
            already-loaded check.
    """
    read: list[tuple[pa.Table, pd.DataFrame, list[str]]] = []

    def store_rows(origin: _Origin) -> IngestReport:
        if not read:
            read.append(read_events())
        events, rejected, notes = read[0]
        rows_read = events.num_rows + len(rejected)
        batch = _Batch("events", events, rows_read, events.num_rows,
                       rejected=[rejected] if len(rejected) else [],
                       notes=list(notes))
        return _write(workspace, batch, options, origin)

    return _store_once(workspace, source, checksum, options, store_rows)


def _store_once(
    workspace: Workspace, source: str, checksum: str, options: IngestOptions,
    store_rows: Callable[[_Origin], IngestReport],
) -> IngestReport:
    """Store one load with `store_rows`, unless its content is already stored.

    The load is planned again when another process changed the store meanwhile.
    """
    resolved = str(Path(source).resolve())
    identity = options.identity()
    for _ in range(PLAN_ATTEMPTS):
        with _store_connection(workspace) as con:
            already, latest = _stored_state(con, checksum, resolved, options.target,
                                            identity)
        origin = _Origin(source, options.target, checksum, resolved,
                         latest=latest[0] if latest else None, already=already,
                         options=identity)
        try:
            if already is not None:
                return _write_already_loaded(workspace, origin, options)
            return store_rows(origin)
        except _StoreChanged:
            log.info("store changed while %s was read; planning again", source)
    raise StoreBusyError(
        f"{Path(source).name} was not stored: other loads kept changing the store",
        "Retry when the other ingest processes have finished.",
    )


def load_sensor_map(
    path: str | Path, device_column: str = "device", columns_column: str = "columns"
) -> dict[str, str]:
    """Read a CSV that maps sensor columns to devices.

    One row may list several sensor columns separated by spaces; a sensor listed
    twice for the same device is fine.

    Args:
        path: the CSV file.
        device_column: the column holding the device.
        columns_column: the column holding the space-separated sensor columns.

    Returns:
        Sensor column to device.

    Raises:
        IngestError: a column is missing, or a sensor maps to two devices.
    """
    frame, lines, _ = _read_source(Path(path))
    for name in (device_column, columns_column):
        if name not in frame.columns:
            raise IngestError(
                f"column {name!r} not found in {path}",
                f"The file has columns: {', '.join(frame.columns)}.",
            )
    mapping: dict[str, str] = {}
    pairs = zip(frame[device_column], frame[columns_column], lines)
    for device, columns, line in pairs:
        for sensor in str(columns).split():
            previous = mapping.setdefault(sensor, str(device).strip())
            if previous != str(device).strip():
                raise IngestError(
                    f"sensor {sensor!r} maps to two devices in {path}",
                    f"Line {line} maps it to {device!r}, an earlier line to "
                    f"{previous!r}. Keep one device per sensor column.",
                )
    return mapping


def ingest_batadal(
    workspace: Workspace, folder: str | Path, files: Sequence[str] = BATADAL_FILES
) -> list[IngestReport]:
    """Import the BATADAL C-Town data: measurements, PLCs, cyber links, attacks.

    Each wide SCADA file becomes measurements, with its signals mapped to PLCs by
    `ctown_plc_tags.csv`; ATT_FLAG is read as a label, not a sensor. The devices
    are PLC1..PLC9 and SCADA. The links are those of `ctown_cyber_links.csv`,
    weighted by the number of tags each carries. Each attack of
    `attack_targets.csv` becomes one `ground_truth` row. An attack's end in that
    file is its last labelled hour, so the stored exclusive end is one hour later.

    NOTE: the ground truth is written in its own transaction after the files, so
    a failure there leaves the measurements, devices and links stored.

    Args:
        workspace: the workspace to fill.
        folder: the folder holding the BATADAL files.
        files: the SCADA files to ingest, in that order.

    Returns:
        One report per SCADA file, then the devices and the links reports.
    """
    folder = Path(folder)
    sensor_map = load_sensor_map(
        folder / "ctown_plc_tags.csv", device_column="plc",
        columns_column="batadal_columns",
    )
    options = IngestOptions(
        target="measurements", layout="wide", columns={"time": "DATETIME"},
        time_format=BATADAL_TIME_FORMAT, sensor_map=sensor_map,
        label_column="ATT_FLAG", label_intervals=False,
    )
    reports = [ingest_file(workspace, folder / name, options) for name in files]

    plcs = sorted(set(sensor_map.values()), key=lambda d: (len(d), d))
    devices = pd.DataFrame({
        "device": [*plcs, "SCADA"],
        "kind": ["plc"] * len(plcs) + ["scada"],
        "zone": "ctown",
    })
    reports.append(ingest_frame(
        workspace, devices, IngestOptions(target="devices"), "batadal devices"
    ))

    links_path = folder / "ctown_cyber_links.csv"
    links, _, _ = _read_source(links_path)
    links["weight"] = links["transmitted_tags"].str.split().str.len().astype(float)
    reports.append(ingest_frame(
        workspace, links[["src", "dst", "weight"]], IngestOptions(target="links"),
        str(links_path),
    ))

    _store_batadal_attacks(workspace, folder)
    return reports


def _store_batadal_attacks(workspace: Workspace, folder: Path) -> None:
    targets, _, _ = _read_source(folder / "attack_targets.csv")
    descriptions: dict[str, str] = {}
    described = folder / "batadal_attacks.csv"
    if described.is_file():
        attacks, _, _ = _read_source(described)
        descriptions = dict(zip(attacks["attack_id"], attacks["short_description"]))

    start = pd.to_datetime(targets["start"], format="%Y-%m-%d %H:%M", utc=True)
    end = pd.to_datetime(targets["end"], format="%Y-%m-%d %H:%M", utc=True)
    truth = pd.DataFrame({
        "anomaly_id": "attack-" + targets["attack_id"].astype(str),
        "kind": "attack",
        "start": start,
        "end": end + pd.Timedelta(hours=1),
        "devices": [value.split() for value in targets["accepted_plcs"]],
        "sensors": [value.split() for value in targets["target_signals"]],
        "description": [descriptions.get(i) for i in targets["attack_id"]],
    })
    with store.connect(workspace.store_path) as con:
        con.register("_truth", truth)
        try:
            con.execute(
                "INSERT OR REPLACE INTO ground_truth BY NAME SELECT * FROM _truth"
            )
        finally:
            con.unregister("_truth")
    log.info("stored %d BATADAL attacks as ground truth", len(truth))


def _ingest(
    workspace: Workspace,
    frame: pd.DataFrame,
    lines: np.ndarray,
    options: IngestOptions,
    origin: _Origin,
    notes: list[str],
    rejected: pd.DataFrame | None,
) -> IngestReport:
    source = origin.source
    frame, trimmed = _trim_headers(frame, source)
    if trimmed:
        notes.append(f"{trimmed} header name{_plural(trimmed)} trimmed")
    rows = _Rows(frame, lines, rejected)
    if options.target == "events":
        batch = _parse_events(rows, options, source)
    elif options.target == "links":
        batch = _parse_links(rows, options, source)
    elif options.target == "devices":
        batch = _parse_devices(rows, options, source)
    elif options.layout == "wide":
        batch = _parse_wide(rows, options, source)
    else:
        batch = _parse_long(rows, options, source)
    batch.notes[:0] = notes
    # Rows the reader rejected never reached the parser, so they are added here.
    batch.rows_read += 0 if rejected is None else len(rejected)
    batch.rejected = rows.rejected
    return _write(workspace, batch, options, origin)


def _columnar_batch(
    data: bytes, kind: str, end: int, options: IngestOptions, origin: _Origin
) -> _Batch | None:
    """Read an events file with Arrow when every row is clean; None otherwise.

    The batch equals what the general path builds for such a file: the same rows,
    lines, notes and counts (see `core.columnar`).
    """
    if options.target != "events" or kind not in ("csv", "parquet"):
        return None

    def encoded(names: list[str]) -> list[str]:
        return _address_columns(names, options, origin.source)

    if kind == "csv":
        columns = columnar.read_csv(data, origin.bytes_start, end, options.encoding,
                                    encoded)
    else:
        columns = columnar.read_parquet(data, encoded)
    if columns is None or columns.table.num_rows == 0:
        return None
    source = origin.source
    probe, trimmed = _trim_headers(pd.DataFrame(columns=columns.table.column_names),
                                   source)
    notes = list(origin.notes)
    if trimmed:
        notes.append(f"{trimmed} header name{_plural(trimmed)} trimmed")
    batch = _columnar_events(columns.table.rename_columns(list(probe.columns)),
                             columns.first_line, options, source)
    if batch is not None:
        batch.notes[:0] = notes
        log.debug("read %s column-wise: every row is clean", source)
    return batch


def _address_columns(
    names: list[str], options: IngestOptions, source: str
) -> list[str]:
    """Return the file columns that contain addresses or protocols.

    Such columns have few distinct values, so the fast path reads them
    dictionary-encoded. When the names do not resolve, this returns no column,
    so every column is read as plain text and the checks after reading decide.
    """
    try:
        probe, _ = _trim_headers(pd.DataFrame(columns=names), source)
        found = _resolve_columns(probe, options, ("src", "dst", "protocol"), source)
    except IngestError:
        return []
    position = {name: i for i, name in enumerate(probe.columns)}
    return [names[position[column]] for column in found.values()]


def _columnar_events(
    table: pa.Table, first_line: int, options: IngestOptions, source: str
) -> _Batch | None:
    probe = pd.DataFrame(columns=table.column_names)
    required, optional = TARGET_COLUMNS["events"]
    found = _resolve_columns(probe, options, (*required, *optional), source)
    _require(found, required, probe, "events", source)
    if _find_label(probe, options, set(found.values())) is not None:
        return None
    # Further columns are stored as event attributes, with sentinels applied, and
    # the general path does that.
    if options.sentinels or set(table.column_names) - set(found.values()):
        return None
    times = columnar.times(table[found["time"]], options.timezone)
    if times is None:
        return None
    notes: list[str] = []
    ends = {}
    for name in ("src", "dst"):
        ends[name] = columnar.addresses(table[found[name]], _canonical_address)
        if ends[name] is None:
            return None
        changed = ends[name].changed
        if changed:
            notes.append(
                f"{changed} {name} address{'es' if changed != 1 else ''} rewritten to "
                "canonical form (port removed, IPv6 compressed or IPv4-mapped)"
            )
    src, dst = columnar.dictionary_pair(ends["src"], ends["dst"])
    count = table.num_rows
    weight_column = found.get("weight")
    if weight_column is None or options.weight_policy == "count":
        if weight_column is not None:
            notes.append(f"weight policy count: column {weight_column} ignored, "
                         "weight 1")
        weights = pa.array(np.ones(count))
    else:
        weights = columnar.weights(table[weight_column])
        if weights is None:
            return None
    # A self-loop needs a note, and one on loopback a rejection, so the general
    # path reads the file.
    if (src.indices.to_numpy() == dst.indices.to_numpy()).any():
        return None
    protocol = pa.nulls(count, pa.string())
    if "protocol" in found:
        protocol = columnar.optional_text(table[found["protocol"]])
        if protocol is None:
            return None

    instants = times.cast(pa.int64()).to_numpy()
    events = pa.table({
        "t": times,
        "src": src,
        "dst": dst,
        "weight": weights,
        "protocol": protocol,
        "line": pa.array(np.arange(first_line, first_line + count, dtype=np.int64)),
    })
    order = event_order(instants, notes)
    if order is not None:
        events = events.take(pa.array(order))
    return _Batch("events", events, count, count, notes=notes)


def event_order(instants: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """Return a stable time order of epoch microseconds, or None if already sorted.

    Adds a note on out-of-order rows, worded as the general path words it.
    """
    # Most files are in order, and checking that needs no running maximum.
    if (instants[1:] >= instants[:-1]).all():
        return None
    previous_max = np.maximum.accumulate(instants)
    late = instants[1:] < previous_max[:-1]
    lag = int((previous_max[:-1] - instants[1:]).max())
    notes.append(
        f"{len(instants)} event{_plural(len(instants))}, {int(late.sum())} out of "
        f"order, max lag {_format_seconds(lag / 1e6)} s; sorted"
    )
    return np.argsort(instants, kind="stable")


def _plan_file(
    workspace: Workspace, path: Path, data: bytes, kind: str, end: int,
    options: IngestOptions,
) -> _Origin:
    """Find what of `data[:end]` the store lacks: nothing, a tail, or all of it.

    Raises:
        IngestError: the file changed since its last load in a way other than an
            append, so loading it again would store its earlier rows twice.
    """
    # Memory views, because slicing a large file's bytes would copy them.
    checksum = _sha256(memoryview(data)[:end])
    resolved = str(path.resolve())
    target, identity = options.target, options.identity()
    with _store_connection(workspace) as con:
        already, latest = _stored_state(con, checksum, resolved, target, identity)
        other = _other_options_load(con, resolved, target, identity)
    notes: tuple[str, ...] = ()
    if other is not None and already is None:
        notes = (f"this file was also loaded as report {other} with other options, "
                 f"and both loads' rows are stored; `tgloc ingest --withdraw {other}` "
                 "removes that one",)
    origin = _Origin(str(path), target, checksum, resolved, 0, end,
                     latest=latest[0] if latest else None, already=already,
                     notes=notes, options=identity)
    if already is not None or latest is None:
        return origin
    report_id, bytes_end, stored_checksum = latest
    if (kind != "parquet" and bytes_end is not None and 0 < bytes_end <= end
            and _sha256(memoryview(data)[:bytes_end]) == stored_checksum):
        line = data.count(b"\n", 0, bytes_end) + 1
        note = (f"file grew since report {report_id}: read from byte {bytes_end} "
                f"(line {line}) on")
        return replace(origin, bytes_start=bytes_end, notes=(*notes, note))
    if kind == "parquet":
        reason = ("A Parquet file is read whole, so a changed one cannot be read "
                  "as an append to its earlier load.")
    else:
        reason = (f"The first {bytes_end} bytes that report {report_id} read are no "
                  "longer the same, so this is not an append.")
    raise IngestError(
        f"{path.name} changed since report {report_id} loaded it; nothing stored",
        f"{reason} Loading it again would store its earlier rows twice. To replace "
        f"that load, run `tgloc ingest --workspace DIR --withdraw {report_id}` and "
        "load the file again; to keep both (a rotated log, say), load the new "
        "content under another file name.",
    )


def _stored_state(
    con: duckdb.DuckDBPyConnection, checksum: str, path: str | None, target: str,
    identity: str,
) -> tuple[int | None, tuple | None]:
    """Return the first load of `checksum` and the last load of `path`.

    Only loads with the same options (`IngestOptions.identity`) count, and none
    that was withdrawn. Reports written before options were recorded match any.
    """
    found = con.execute(
        "SELECT (SELECT min(report_id) FROM ingest_reports "
        "        WHERE checksum = $checksum AND target = $target "
        "          AND coalesce(options, $options) = $options "
        "          AND already_loaded IS NULL AND withdrawn IS NULL), "
        "       (SELECT max(report_id) FROM ingest_reports "
        "        WHERE path = $path AND target = $target "
        "          AND coalesce(options, $options) = $options "
        "          AND withdrawn IS NULL)",
        {"checksum": checksum, "path": path, "target": target, "options": identity},
    ).fetchall()[0]
    already, latest_id = found
    if latest_id is None:
        return already, None
    latest = con.execute(
        "SELECT report_id, bytes_end, checksum FROM ingest_reports "
        "WHERE report_id = ?", [latest_id],
    ).fetchall()[0]
    return already, latest


def _other_options_load(
    con: duckdb.DuckDBPyConnection, path: str, target: str, identity: str
) -> int | None:
    """Return the last load of `path` made with other options, if one is stored."""
    found = con.execute(
        "SELECT max(report_id) FROM ingest_reports WHERE path = $path "
        "AND target = $target AND options IS NOT NULL AND options <> $options "
        "AND withdrawn IS NULL AND rows_stored > 0",
        {"path": path, "target": target, "options": identity},
    ).fetchall()[0][0]
    return None if found is None else int(found)


@contextmanager
def _store_connection(workspace: Workspace) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the store for writing, with its schema up to date."""
    with store.connect(workspace.store_path,
                       retry_seconds=WRITE_RETRY_SECONDS) as con:
        store.ensure_store_schema(con)
        yield con


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_already_loaded(
    workspace: Workspace, origin: _Origin, options: IngestOptions
) -> IngestReport:
    note = (f"already loaded: same content as report {origin.already}; nothing "
            "stored")
    batch = _Batch(options.target, pd.DataFrame(), 0, 0, notes=[note, *origin.notes])
    origin = replace(origin, bytes_start=origin.bytes_end or 0)
    return _write(workspace, batch, options, origin)


def _write(
    workspace: Workspace,
    batch: _Batch,
    options: IngestOptions,
    origin: _Origin,
) -> IngestReport:
    started = pd.Timestamp.now(tz="UTC")
    try:
        with _store_connection(workspace) as con:
            log.debug("storing %d rows of %s in %s in one transaction",
                      len(batch.rows), origin.source, batch.table)
            con.execute("BEGIN TRANSACTION")
            try:
                _check_unchanged(con, origin)
                report = _write_batch(con, batch, options, origin, started)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
    except duckdb.Error as exc:
        raise IngestError(
            f"failed to store {Path(origin.source).name}; nothing of it was stored",
            f"DuckDB reported: {exc}",
        ) from exc
    log.info("ingested %s into %s: report %d, %d of %d rows stored", origin.source,
             batch.table, report.report_id, report.rows_stored, report.rows_read)
    return report


def _check_unchanged(con: duckdb.DuckDBPyConnection, origin: _Origin) -> None:
    """Raise `_StoreChanged` if a load committed since `origin` was planned."""
    already, latest = _stored_state(con, origin.checksum, origin.path, origin.target,
                                    origin.options)
    if already != origin.already:
        raise _StoreChanged
    if origin.path is not None and (latest[0] if latest else None) != origin.latest:
        raise _StoreChanged


def _write_batch(
    con: duckdb.DuckDBPyConnection,
    batch: _Batch,
    options: IngestOptions,
    origin: _Origin,
    started: pd.Timestamp,
) -> IngestReport:
    # fetchall, not fetchone: DuckDB rejects register() while a result is pending.
    report_id = int(con.execute(
        "SELECT coalesce(max(report_id), 0) + 1 FROM ingest_reports"
    ).fetchall()[0][0])
    source = origin.source
    notes = list(batch.notes)

    rows = batch.rows
    if "report_id" in _table_columns(batch.table):
        if isinstance(rows, pa.Table):
            rows = rows.append_column(
                "report_id", pa.repeat(pa.scalar(report_id, pa.int64()), len(rows)))
        else:
            rows = rows.assign(report_id=report_id)
    if batch.table == "measurements" and not rows.empty:
        rows = _against_stored(con, batch, rows, options, notes)
    if batch.replace and not rows.empty:
        con.register("_frame", rows)
        try:
            con.execute(
                f"INSERT OR REPLACE INTO {batch.table} BY NAME SELECT * FROM _frame"
            )
        finally:
            con.unregister("_frame")
    else:
        store.insert_frame(con, batch.table, rows)

    quarantine = [part.assign(outcome="row rejected") for part in batch.rejected]
    quarantine += [part.assign(outcome="cell stored as NULL", record=None)
                   for part in batch.cell_notices]
    if quarantine:
        frame = pd.concat(quarantine, ignore_index=True)
        frame = frame.sort_values("line", kind="stable")
        frame.insert(0, "report_id", report_id)
        frame.insert(1, "file", source)
        store.insert_frame(con, "quarantine", frame)
    if batch.attributes is not None and not batch.attributes.empty:
        store.insert_frame(con, "event_attributes",
                           batch.attributes.assign(report_id=report_id))
    if batch.labels is not None and not batch.labels.empty:
        labels = batch.labels.copy()
        labels.insert(0, "anomaly_id", [
            f"label-{report_id}-{i + 1}" for i in range(len(labels))
        ])
        store.insert_frame(con, "ground_truth", labels)

    report = IngestReport(
        report_id=report_id,
        file=source,
        target=options.target,
        rows_read=batch.rows_read,
        rows_stored=batch.rows_stored,
        rows_rejected=batch.rows_rejected,
        rows_deduplicated=batch.rows_deduplicated,
        notes=notes,
        bytes_start=origin.bytes_start if origin.path else None,
        bytes_end=origin.bytes_end if origin.path else None,
        already_loaded=origin.already,
    )
    if report.rows_read != report.rows_stored + report.rows_rejected + (
        report.rows_deduplicated
    ):
        raise AssertionError(f"ingest counts do not add up: {report}")
    con.execute(
        "INSERT INTO ingest_reports (report_id, file, checksum, target, started, "
        "rows_read, rows_stored, rows_rejected, rows_deduplicated, notes, path, "
        "bytes_start, bytes_end, already_loaded, options) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [report_id, source, origin.checksum, options.target, started.to_pydatetime(),
         report.rows_read, report.rows_stored, report.rows_rejected,
         report.rows_deduplicated, notes, origin.path, report.bytes_start,
         report.bytes_end, origin.already, options.identity()],
    )
    return report


STORED_MATCH_SQL = """
SELECT f.t, f.device, f.sensor,
       bool_and(m.value IS NOT DISTINCT FROM f.value) AS same,
       min(m.report_id) AS report_id
FROM _frame f JOIN measurements m
  ON m.t = f.t AND m.device = f.device AND m.sensor = f.sensor
GROUP BY ALL
"""


def _against_stored(
    con: duckdb.DuckDBPyConnection, batch: _Batch, rows: pd.DataFrame,
    options: IngestOptions, notes: list[str],
) -> pd.DataFrame:
    """Apply the duplicate policy to readings that earlier loads already stored.

    Under "last", a reading equal to every stored one of the same (time, device,
    sensor) is not stored again, and a reading that differs replaces the stored
    ones, as a later row does inside one file. Under "keep" both are kept and
    counted. A file row counts as deduplicated when none of its readings is
    stored; `batch` counts are updated so that read = stored + rejected +
    deduplicated still holds.
    """
    con.register("_frame", rows[["t", "device", "sensor", "value"]])
    try:
        matches = con.execute(STORED_MATCH_SQL).df()
    finally:
        con.unregister("_frame")
    if matches.empty:
        return rows
    earlier = _report_list(matches["report_id"])
    if options.duplicate_policy == "keep":
        count = len(matches)
        verb = "repeats" if count == 1 else "repeat"
        notes.append(f"{count} reading{_plural(count)} {verb} a (time, device, "
                     f"sensor) stored by report {earlier}; kept")
        return rows
    key = ["t", "device", "sensor"]
    flagged = rows.merge(matches, on=key, how="left", indicator=True)
    exact = (flagged["_merge"] == "both") & flagged["same"].fillna(False).astype(bool)
    conflicting = matches[~matches["same"].astype(bool)]
    if len(conflicting):
        con.register("_conflicts", conflicting[key])
        try:
            con.execute(
                "DELETE FROM measurements m USING _conflicts c "
                "WHERE m.t = c.t AND m.device = c.device AND m.sensor = c.sensor")
        finally:
            con.unregister("_conflicts")
        first = conflicting.iloc[0]
        count = len(conflicting)
        notes.append(
            f"{count} reading{_plural(count)} conflicting with report "
            f"{_report_list(conflicting['report_id'])} "
            f"({first['device']}/{first['sensor']} at {_format_instant(first['t'])}"
            f"{' and others' if count > 1 else ''}) resolved: last, the stored "
            f"value{_plural(count)} replaced")
    if exact.any():
        kept = rows.loc[~exact.to_numpy()]
        lines = rows["line"].to_numpy()
        dropped_rows = len(set(lines)) - len(set(kept["line"].to_numpy()))
        count = int(exact.sum())
        same = matches.loc[matches["same"].astype(bool), "report_id"]
        notes.append(f"{count} reading{_plural(count)} already stored by report "
                     f"{_report_list(same)} not stored again ({dropped_rows} file "
                     f"row{_plural(dropped_rows)} deduplicated)")
        batch.rows_stored -= dropped_rows
        batch.rows_deduplicated += dropped_rows
        rows = kept
    return rows


def _report_list(report_ids: pd.Series) -> str:
    """Return up to five report ids as text, with "and others" beyond them."""
    unique = sorted(int(r) for r in report_ids.dropna().unique())
    text = ", ".join(str(r) for r in unique[:5])
    return text + (" and others" if len(unique) > 5 else "")


def _table_columns(table: str) -> tuple[str, ...]:
    return {
        "events": ("t", "src", "dst", "weight", "protocol", "label", "attack",
                   "report_id", "line"),
        "measurements": ("t", "device", "sensor", "value", "report_id", "line"),
        "devices": ("device", "kind", "zone", "criticality", "label", "report_id"),
        "links": ("src", "dst", "weight", "report_id"),
    }[table]


# Reading files.


def read_file(path: Path) -> bytes:
    """Return the content of the file at `path`.

    Raises:
        IngestError: the file is not found or cannot be read.
    """
    if not path.is_file():
        raise IngestError(f"file not found: {path}", "Check the path and try again.")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IngestError(f"failed to read {path}", str(exc)) from exc


def _read_source(path: Path) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Return an auxiliary file's cells, file lines and notes; every row must read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestError(f"failed to read {path}", str(exc)) from exc
    table = reading.read_table(data, reading.file_kind(path, data), path.name,
                               "utf-8")
    if len(table.rejected):
        first = table.rejected.iloc[0]
        raise IngestError(
            f"{path.name} has an unreadable row at line {first['line']}",
            f"{first['reason']}: {first['value']!r}. Fix the row and retry.",
        )
    return table.frame, table.lines, table.notes


def _trim_headers(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, int]:
    names = [str(c) for c in frame.columns]
    trimmed = [name.strip() for name in names]
    seen: dict[str, str] = {}
    for name, clean in zip(names, trimmed):
        if clean.lower() in seen:
            raise IngestError(
                f"duplicate column {clean!r} in {Path(source).name}",
                f"Columns {seen[clean.lower()]!r} and {name!r} read the same after "
                "trimming spaces and ignoring case. Rename one of them.",
            )
        seen[clean.lower()] = name
    frame = frame.set_axis(trimmed, axis=1)
    return frame, sum(a != b for a, b in zip(names, trimmed))


def _resolve_columns(
    frame: pd.DataFrame, options: IngestOptions, names: Sequence[str], source: str
) -> dict[str, str]:
    """Return our column name to the file's column, for the names found."""
    by_lower = {c.lower(): c for c in frame.columns}
    resolved: dict[str, str] = {}
    for name, requested in options.columns.items():
        column = by_lower.get(str(requested).strip().lower())
        if column is None:
            raise IngestError(
                f"column {requested!r} (mapped to {name}) not found in "
                f"{Path(source).name}",
                f"The file has columns: {', '.join(frame.columns)}. Fix the column "
                "mapping.",
            )
        resolved[name] = column
    used = set(resolved.values()) | set(options.ignore_columns)
    for name in names:
        if name in resolved:
            continue
        for alias in COLUMN_ALIASES[name]:
            column = by_lower.get(alias)
            if column is not None and column not in used:
                resolved[name] = column
                used.add(column)
                break
    return resolved


def _require(
    found: dict[str, str], names: Sequence[str], frame: pd.DataFrame, target: str,
    source: str,
) -> None:
    for name in names:
        if name not in found:
            aliases = ", ".join(COLUMN_ALIASES[name])
            raise IngestError(
                f"no {name} column found for {target} in {Path(source).name}",
                f"The file has columns: {', '.join(frame.columns)}. Map one of them "
                f"with --column {name}=COLUMN (in Python, "
                f"columns={{{name!r}: 'COLUMN'}}), or rename it to one of: "
                f"{aliases}.",
            )


# Cell conversion.


def _text(series: pd.Series) -> pd.Series:
    """Return cells as stripped text, "" for missing; integral floats lose ".0"."""
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        finite = np.isfinite(values)
        # Floats beyond the int64 range keep their exponent form, because the cast
        # to int64 below would overflow.
        integral = finite & (np.floor(values) == values) & (np.abs(values) < 2.0**63)
        text = np.where(finite, [repr(v) for v in values.tolist()], "").astype(object)
        text[integral] = values[integral].astype(np.int64).astype(str)
        return pd.Series(text, index=series.index, dtype=str)
    if isinstance(series.dtype, pd.StringDtype):
        return series.fillna("").str.strip()
    if pd.api.types.is_object_dtype(series):
        return series.where(series.notna(), "").astype(str).str.strip()
    return series.astype(str).where(series.notna(), "")


def _numbers(series: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Parse numbers; return values, a missing-or-non-finite mask, a non-numeric mask.

    Missing tokens and non-finite values become NaN and are flagged in the first
    mask. Text that is no number becomes NaN and is flagged in the second.
    """
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.astype(float)
        bad = ~np.isfinite(values.to_numpy())
        return values.where(~bad), pd.Series(bad, index=series.index), pd.Series(
            False, index=series.index
        )
    text = _text(series)
    lower = text.str.lower()
    try:
        values = text.astype(float)
    except (ValueError, TypeError):
        values = pd.to_numeric(text.where(~lower.isin(MISSING_TOKENS)),
                               errors="coerce").astype(float)
    blank = lower.isin(MISSING_TOKENS) | lower.isin(INFINITE_TOKENS)
    finite = np.isfinite(values.to_numpy())
    non_finite = blank | (values.notna() & ~finite)
    non_numeric = values.isna() & ~blank
    return values.where(finite), non_finite, non_numeric


def _utc_numpy(times: pd.Series) -> np.ndarray:
    """Return UTC instants as naive `datetime64[us]` values."""
    return times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")


def _blank_to_none(text: pd.Series) -> pd.Series:
    return text.where(text != "", None)


def _plural(count: int) -> str:
    return "" if count == 1 else "s"


def _format_instant(value: pd.Timestamp) -> str:
    text = value.tz_convert("UTC").isoformat()
    return text.replace("+00:00", "Z")


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


# Timestamps.


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise IngestError(
            f"unknown time zone {name!r}",
            "Give an IANA zone name such as 'UTC' or 'Europe/Berlin'.",
        ) from exc


def _parse_times(
    series: pd.Series, column: str, lines: pd.Series, options: IngestOptions
) -> tuple[pd.Series, pd.Series, list[str]]:
    """Read a time column as UTC instants.

    Returns:
        The instants (NaT where a row is rejected), each rejected row's reason
        (None elsewhere) and notes for the report.
    """
    index = series.index
    reasons = pd.Series(None, index=index, dtype=object)
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC"), _missing_time(series, reasons), []
    if pd.api.types.is_datetime64_dtype(series):
        reasons = _missing_time(series, reasons)
        return _localize(series, options.timezone, reasons)
    if pd.api.types.is_numeric_dtype(series):
        values = series.astype(float)
        reasons[values.isna()] = "missing time"
        whole = np.floor(values.fillna(0)).astype(np.int64)
        fraction = (values.fillna(0) - whole)
        return _epoch(whole, fraction, None, series.astype(str), column, lines,
                      options, reasons)

    text = _text(series)
    missing = text.str.lower().isin(MISSING_TOKENS)
    reasons[missing] = "missing time"
    present = text[~missing]
    if options.time_format:
        return _parse_with_format(text, present, options, reasons)
    if len(present) == 0:
        return pd.Series(pd.NaT, index=index, dtype="datetime64[us, UTC]"), reasons, []

    # The epoch pattern runs over the whole column only when most of a sample fits
    # it, so a stray first value neither decides the format nor costs a full scan.
    sample = present.iloc[:EPOCH_SAMPLE_ROWS]
    if sample.str.fullmatch(EPOCH_PATTERN.pattern).mean() > 0.5:
        epoch = present.str.fullmatch(EPOCH_PATTERN.pattern)
        if epoch.mean() > 0.5:
            reasons[epoch[~epoch].index] = (
                "time not an epoch number like the rest of the column"
            )
            parts = present[epoch].str.extract(EPOCH_PATTERN)
            # A value with more digits than an int64 can store is far outside
            # 1990-2100 in any unit. It becomes 0 and is rejected as out of range.
            huge = parts[0].str.lstrip("+-").str.len() > EPOCH_MAX_DIGITS
            whole = pd.to_numeric(parts[0].mask(huge, "0")).astype(np.int64)
            whole = whole.reindex(index, fill_value=0)
            digits = parts[1].fillna("").reindex(index, fill_value="")
            return _epoch(whole, None, digits, text, column, lines, options, reasons)

    iso = present.str.fullmatch(ISO_PATTERN.pattern)
    if iso.all():
        return _parse_iso(text, present, options, reasons)
    day_month = present[~iso].str.fullmatch(DAY_MONTH_PATTERN.pattern)
    day_month = day_month.reindex(present.index, fill_value=False)
    if iso.any() and iso.sum() >= day_month.sum():
        reasons[iso[~iso].index] = "time not in ISO-8601 like the rest of the column"
        return _parse_iso(text, present[iso], options, reasons)
    if day_month.any():
        reasons[day_month[~day_month].index] = (
            "time not in the day/month form of the rest of the column"
        )
        return _parse_day_month(present[day_month], column, lines, reasons, index,
                                options)
    first = present.index[0] if len(present) else index[0]
    raise IngestError(
        f"unrecognised time format in column {column}",
        f"Line {lines[first]} has {text[first]!r}. Set --time-format (time_format) "
        "to a strptime format such as '%d.%m.%Y %H:%M:%S', or give ISO-8601 or "
        "epoch times.",
    )


def _missing_time(series: pd.Series, reasons: pd.Series) -> pd.Series:
    reasons[series.isna()] = "missing time"
    return reasons


def _parse_with_format(
    text: pd.Series, present: pd.Series, options: IngestOptions, reasons: pd.Series
) -> tuple[pd.Series, pd.Series, list[str]]:
    fmt = options.time_format
    zoned = "%z" in fmt or "%Z" in fmt
    try:
        parsed = pd.to_datetime(present, format=fmt, errors="coerce", utc=zoned)
    except ValueError as exc:
        raise IngestError(f"invalid time format {fmt!r}: {exc}",
                          "Give a strptime format such as %Y-%m-%d %H:%M:%S.") from exc
    reasons[parsed[parsed.isna()].index] = f"time does not match format {fmt}"
    parsed = parsed.reindex(text.index)
    if zoned:
        return parsed, reasons, []
    return _localize(parsed, options.timezone, reasons)


def _parse_iso(
    text: pd.Series, iso: pd.Series, options: IngestOptions, reasons: pd.Series
) -> tuple[pd.Series, pd.Series, list[str]]:
    has_zone = iso.str.contains(ISO_ZONE_PATTERN.pattern)
    zoned = pd.to_datetime(iso[has_zone], format="ISO8601", utc=True, errors="coerce")
    naive = pd.to_datetime(iso[~has_zone], format="ISO8601", errors="coerce")
    invalid = pd.concat([zoned[zoned.isna()], naive[naive.isna()]]).index
    reasons[invalid] = "invalid date or time"

    notes: list[str] = []
    result = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    result[zoned.index] = zoned.astype("datetime64[us, UTC]")
    if len(naive):
        local, reasons, notes = _localize(
            naive.reindex(text.index), options.timezone, reasons
        )
        result[naive.index] = local[naive.index].astype("datetime64[us, UTC]")
        if len(zoned):
            notes.append(
                f"{len(naive)} timestamps without a zone read in {options.timezone}, "
                f"{len(zoned)} with a zone"
            )
    return result, reasons, notes


def _parse_day_month(
    present: pd.Series,
    column: str,
    lines: pd.Series,
    reasons: pd.Series,
    index: pd.Index,
    options: IngestOptions,
) -> tuple[pd.Series, pd.Series, list[str]]:
    parts = present.str.extract(DAY_MONTH_PATTERN)
    if options.date_order is not None:
        return _parse_declared_order(parts, present, column, reasons, index, options)
    first, second = parts[0].astype(int), parts[2].astype(int)
    day_first = (first > 12) & (second <= 12)
    month_first = (second > 12) & (first <= 12)
    suggestion = _suggest_format(parts, present, day_first.any() or
                                 not month_first.any())
    if day_first.any() and month_first.any():
        a, b = day_first.idxmax(), month_first.idxmax()
        raise IngestError(
            f"inconsistent day/month order in column {column}",
            f"Line {lines[a]} has {present[a]!r} (day first) and line {lines[b]} has "
            f"{present[b]!r} (month first). Fix the file or pass --time-format "
            "(time_format), which rejects the rows of the other order.",
        )
    if not day_first.any() and not month_first.any():
        raise IngestError(
            f"ambiguous day/month order in column {column}; pass an explicit format "
            f"such as --time-format '{suggestion}'",
            f"No value in the column has a day above 12, so both readings are "
            f"possible (line {lines[present.index[0]]} has {present.iloc[0]!r}). "
            "Declare the order with --date-order day-first or --date-order "
            "month-first (date_order), or give --time-format (time_format).",
        )
    order = "day-first" if day_first.any() else "month-first"
    settle = day_first.idxmax() if day_first.any() else month_first.idxmax()
    local, reasons, notes = _day_month_instants(parts, order == "day-first", reasons,
                                                index, options)
    notes.insert(0, f"{order} dates in column {column} (line {lines[settle]} "
                    f"has {present[settle]!r}); read as {suggestion}")
    return local, reasons, notes


def _parse_declared_order(
    parts: pd.DataFrame, present: pd.Series, column: str, reasons: pd.Series,
    index: pd.Index, options: IngestOptions,
) -> tuple[pd.Series, pd.Series, list[str]]:
    """Read day/month dates in the declared `options.date_order`.

    A value that is no date in that order (a month above 12) is rejected.
    """
    day_first = options.date_order == "day-first"
    suggestion = _suggest_format(parts, present, day_first)
    local, reasons, notes = _day_month_instants(parts, day_first, reasons, index,
                                                options)
    notes.insert(0, f"{options.date_order} dates in column {column} as declared "
                    f"(date_order); read as {suggestion}")
    return local, reasons, notes


def _day_month_instants(
    parts: pd.DataFrame, day_first: bool, reasons: pd.Series, index: pd.Index,
    options: IngestOptions,
) -> tuple[pd.Series, pd.Series, list[str]]:
    """Convert split day/month dates to UTC instants, NaT with a reason if invalid.

    Returns the instants, the rejection reasons and the time-zone notes.
    """
    first, second = parts[0].astype(int), parts[2].astype(int)
    day, month = (first, second) if day_first else (second, first)
    year = parts[3].astype(int)
    year = year.where(parts[3].str.len() == 4, np.where(year < 69, 2000, 1900) + year)

    clock = parts[4].fillna("").str.strip().str.extract(CLOCK_PATTERN)
    has_clock = parts[4].fillna("").str.strip() != ""
    hour = pd.to_numeric(clock[0]).fillna(0).astype(int)
    meridiem = clock[4].str.lower()
    bad_clock = (has_clock & clock[0].isna()) | (meridiem.notna() & (hour > 12))
    hour = hour.where(~((meridiem == "pm") & (hour < 12)), hour + 12)
    hour = hour.where(~((meridiem == "am") & (hour == 12)), 0)
    fraction = clock[3].fillna("").str.slice(0, 6).str.pad(6, "right", "0")
    parsed = pd.to_datetime(pd.DataFrame({
        "year": year, "month": month, "day": day, "hour": hour,
        "minute": pd.to_numeric(clock[1]).fillna(0).astype(int),
        "second": pd.to_numeric(clock[2]).fillna(0).astype(int),
        "us": pd.to_numeric(fraction).fillna(0).astype(int),
    }), errors="coerce")
    parsed[bad_clock] = pd.NaT
    reasons[parsed[parsed.isna()].index] = "invalid date or time"
    local, reasons, notes = _localize(parsed.reindex(index), options.timezone, reasons)
    return local, reasons, notes


def _suggest_format(parts: pd.DataFrame, present: pd.Series, day_first: bool) -> str:
    sample = parts.iloc[0]
    separator = sample[1]
    year = "%Y" if len(sample[3]) == 4 else "%y"
    date = (f"%d{separator}%m{separator}{year}" if day_first
            else f"%m{separator}%d{separator}{year}")
    clock_text = sample[4] if isinstance(sample[4], str) else ""
    clock = CLOCK_PATTERN.match(clock_text.strip()) if clock_text else None
    if clock is None:
        return date
    text = "%I" if clock.group(5) else "%H"
    if clock.group(2):
        text += ":%M"
    if clock.group(3):
        text += ":%S"
    if clock.group(4):
        text += ".%f"
    if clock.group(5):
        text += " %p"
    return f"{date} {text}"


def _epoch(
    whole: pd.Series,
    fraction: pd.Series | None,
    digits: pd.Series | None,
    text: pd.Series,
    column: str,
    lines: pd.Series,
    options: IngestOptions,
    reasons: pd.Series,
) -> tuple[pd.Series, pd.Series, list[str]]:
    """Convert epoch numbers, given as whole part plus a float or digit fraction."""
    valid = reasons.isna()
    if not valid.any():
        empty = pd.Series(pd.NaT, index=whole.index, dtype="datetime64[us, UTC]")
        return empty, reasons, []
    in_seconds = valid & whole.between(EPOCH_SECONDS_MIN, EPOCH_SECONDS_MAX - 1)
    in_millis = valid & whole.between(EPOCH_SECONDS_MIN * 1000,
                                      EPOCH_SECONDS_MAX * 1000 - 1)
    notes: list[str] = []
    unit = options.epoch_unit
    if unit is None:
        if in_seconds.any() and in_millis.any():
            a, b = in_seconds.idxmax(), in_millis.idxmax()
            first, second = ("seconds", "milliseconds") if a < b else (
                "milliseconds", "seconds")
            ra, rb = sorted((lines[a], lines[b]))
            raise IngestError(
                f"column {column} mixes epoch units (row {ra - 1} looks like "
                f"{first}, row {rb - 1} like {second})",
                f"Line {lines[a]} has {text[a]} (seconds) and line {lines[b]} has "
                f"{text[b]} (milliseconds). Convert the column to one unit, or set "
                "--epoch-unit (epoch_unit) so that values of the other unit are "
                "rejected.",
            )
        if not in_seconds.any() and not in_millis.any():
            first = valid.idxmax()
            raise IngestError(
                f"invalid epoch times in column {column}: outside 1990-2100",
                f"Line {lines[first]} has {text[first]}. Epoch seconds and "
                "milliseconds are detected in 1990-2100; for other numbers set "
                "--time-format (time_format).",
            )
        unit = "s" if in_seconds.any() else "ms"
        notes.append(f"epoch unit detected: {unit}")
    plausible = in_seconds if unit == "s" else in_millis
    reasons[valid & ~plausible] = (
        f"epoch value outside 1990-2100 in {EPOCH_UNIT_NAMES[unit]}"
    )

    scale = EPOCH_UNITS[unit]
    if digits is not None:
        width = len(str(scale)) - 1
        sub = digits.str.slice(0, width).str.pad(width, "right", "0")
        sub = pd.to_numeric(sub.where(sub != "", "0")).astype(np.int64)
    else:
        sub = np.round(fraction * scale).astype(np.int64)
    micros = whole.where(plausible, 0) * scale + sub.where(plausible, 0)
    instants = pd.to_datetime(micros.to_numpy(), unit="us", utc=True)
    result = pd.Series(instants, index=whole.index).where(plausible)
    return result, reasons, notes


def _localize(
    naive: pd.Series, zone: str, reasons: pd.Series
) -> tuple[pd.Series, pd.Series, list[str]]:
    """Read naive times in `zone`; reject times in a daylight-saving gap."""
    naive = naive.astype("datetime64[us]")
    if zone == "UTC":
        return naive.dt.tz_localize("UTC"), reasons, []
    present = naive.notna()
    shifted = naive.dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward")
    folded = present & shifted.isna()
    gap_check = naive.dt.tz_localize(
        zone, ambiguous=np.ones(len(naive), dtype=bool), nonexistent="NaT"
    )
    gap = present & gap_check.isna()

    notes: list[str] = []
    if folded.any():
        try:
            local = naive.dt.tz_localize(zone, ambiguous="infer", nonexistent="NaT")
            notes.append(
                f"{int(folded.sum())} timestamp{_plural(folded.sum())} in the "
                f"daylight-saving fold of {zone}; order of the repeated hour inferred"
            )
        except (ValueError, TypeError):
            local = gap_check
            notes.append(
                f"{int(folded.sum())} timestamp{_plural(folded.sum())} in the "
                f"daylight-saving fold of {zone} read as the first occurrence "
                "(summer time); give offsets to tell them apart"
            )
    else:
        local = gap_check
    if gap.any():
        text = naive[gap].dt.strftime("%Y-%m-%d %H:%M:%S")
        reasons[gap] = (
            "nonexistent local time " + text + f" in {zone} (daylight-saving gap); "
            "give the time with its UTC offset"
        )
        notes.append(
            f"{int(gap.sum())} timestamp{_plural(gap.sum())} in a daylight-saving "
            f"gap of {zone} rejected"
        )
    return local.dt.tz_convert("UTC"), reasons, notes


# Addresses and labels.


def _canonical_address(value: str) -> str | None:
    """Return an address without its port and in canonical form, or None if invalid.

    Text that does not look like an IP address (a host or tag name) is returned
    unchanged.
    """
    match = BRACKETED_PATTERN.match(value)
    if match:
        return _ipv6(match.group(1))
    match = IPV4_PATTERN.match(value)
    if match:
        try:
            return str(ipaddress.IPv4Address(match.group(1)))
        except ValueError:
            return None
    if value.count(":") >= 2 and IPV6_LIKE_PATTERN.match(value) and not (
        MAC_PATTERN.match(value)
    ):
        return _ipv6(value)
    return value


def _ipv6(value: str) -> str | None:
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError:
        return None
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else address.compressed


def _addresses(rows: _Rows, column: str, name: str, notes: list[str]) -> None:
    """Canonicalise the addresses of column `name`; reject unparseable ones."""
    values = _text(rows.frame[column])
    rows.frame[column] = values
    rows.reject(values == "", column, values, f"missing {name}")
    values = rows.frame[column]
    codes, unique = pd.factorize(values)
    canonical = {v: _canonical_address(v) for v in unique}
    mapped = pd.Series(
        np.asarray([canonical[v] for v in unique], dtype=object)[codes],
        index=values.index,
    )
    rows.reject(
        mapped.isna(), column, values,
        f"unparseable address in column {column}",
    )
    changed = sum(1 for k, v in canonical.items() if v is not None and v != k)
    if changed:
        notes.append(
            f"{changed} {name} address{'es' if changed != 1 else ''} rewritten to "
            "canonical form (port removed, IPv6 compressed or IPv4-mapped)"
        )
    rows.frame[column] = mapped[rows.frame.index]


def _find_label(
    frame: pd.DataFrame, options: IngestOptions, used: set[str]
) -> str | None:
    by_lower = {c.lower(): c for c in frame.columns}
    if options.label_column is not None:
        column = by_lower.get(options.label_column.strip().lower())
        if column is None:
            raise IngestError(
                f"label column {options.label_column!r} not found",
                f"The file has columns: {', '.join(frame.columns)}.",
            )
        return column
    ignored = {c.strip().lower() for c in options.ignore_columns}
    for alias in LABEL_ALIASES:
        column = by_lower.get(alias)
        if column is not None and column not in used and alias not in ignored:
            return column
    return None


def _parse_labels(
    values: pd.Series, column: str, lines: pd.Series, notes: list[str]
) -> pd.Series:
    """Read normal/attack labels as 0/1.

    Spaces inside a value are dropped and case is ignored, so 'A ttack' reads as
    attack (and is noted). When any value is 'benign', every other value names an
    attack class. Numbers read as 0 and 1. Any other value is an error.
    """
    text = _text(values)
    squeezed = text.str.lower().str.replace(r"\s+", "", regex=True)
    numeric = pd.to_numeric(squeezed, errors="coerce")
    flags = pd.Series(np.nan, index=values.index)
    flags[squeezed.isin(NORMAL_LABELS) | (numeric == 0)] = 0
    flags[squeezed.isin(ATTACK_LABELS) | (numeric == 1)] = 1
    if (squeezed == "benign").any():
        flags = flags.fillna(1)
    unknown = flags.isna()
    if unknown.any():
        first = unknown.idxmax()
        raise IngestError(
            f"unknown label value {text[first]!r} in column {column}, line "
            f"{lines[first]}",
            "Labels read as normal: normal, benign, 0, false; as attack: attack, 1, "
            "true, anomaly. Fix the value, or leave the column out with "
            "--ignore-column (ignore_columns).",
        )
    attacks = int(flags.sum())
    notes.append(f"column {column} read as the label: {attacks} of {len(flags)} "
                 f"row{_plural(len(flags))} attack")
    respelt = text[(text.str.lower() != squeezed) & (text != "")]
    for value, count in respelt.value_counts(sort=False).items():
        reading = "attack" if flags[respelt[respelt == value].index[0]] else "normal"
        notes.append(f"{count} label value {value!r} read as {reading}")
    return flags.astype(np.int8)


def _attack_names(values: pd.Series, flags: pd.Series) -> pd.Series:
    """Return the label text of attack rows that name a class, None elsewhere.

    Generic attack words and numbers ("attack", "1") name no class.
    """
    text = _text(values)
    squeezed = text.str.lower().str.replace(r"\s+", "", regex=True)
    generic = squeezed.isin(ATTACK_LABELS) | pd.to_numeric(squeezed,
                                                           errors="coerce").notna()
    named = (flags == 1) & ~generic
    return text.where(named, None).astype(object)


def _label_runs(
    times: pd.Series, flags: pd.Series, column: str, source: str
) -> pd.DataFrame:
    """Return one ground-truth row per run of attack-labelled rows in time order.

    A run ends where the next row in time starts. A run at the end of the file
    ends one median row step after its last row.
    """
    order = times.sort_values(kind="stable")
    flag = flags[order.index].to_numpy()
    instants = _utc_numpy(order)
    if not flag.any():
        return pd.DataFrame()
    steps = np.diff(instants)
    positive = steps[steps > np.timedelta64(0, "us")]
    step = np.median(positive) if len(positive) else np.timedelta64(1, "s")
    starts = np.flatnonzero(np.diff(np.concatenate([[0], flag])) == 1)
    ends = np.flatnonzero(np.diff(np.concatenate([flag, [0]])) == -1)
    rows = []
    for a, b in zip(starts, ends):
        end = instants[b + 1] if b + 1 < len(instants) else instants[b] + step
        rows.append({
            "kind": "label",
            "start": pd.Timestamp(instants[a], tz="UTC"),
            "end": pd.Timestamp(end, tz="UTC"),
            "description": f"{b - a + 1} row{_plural(b - a + 1)} labelled attack "
                           f"in column {column} of {Path(source).name}",
        })
    return pd.DataFrame(rows)


# Targets.


def _times_into(
    rows: _Rows, column: str, options: IngestOptions, notes: list[str]
) -> None:
    frame = rows.frame
    times, reasons, time_notes = _parse_times(
        frame[column], column, frame["_line"], options
    )
    notes.extend(time_notes)
    frame["_t"] = times
    rejected = reasons.notna()
    if rejected.any():
        rows.reject(rejected, column, _text(frame.loc[rejected, column]), reasons)


def _merge_date(
    rows: _Rows, found: dict[str, str], options: IngestOptions, notes: list[str]
) -> bool:
    """Join a separate date column to a time-of-day column named `time`."""
    time_column = found.get("time")
    date_column = found.get("date")
    if date_column is None or time_column is None or "time" in options.columns:
        return False
    if time_column.lower() != "time":
        return False
    frame = rows.frame
    frame[time_column] = _text(frame[date_column]) + " " + _text(frame[time_column])
    notes.append(f"columns {date_column} and {time_column} merged into one time")
    return True


def _parse_events(rows: _Rows, options: IngestOptions, source: str) -> _Batch:
    required, optional = TARGET_COLUMNS["events"]
    found = _resolve_columns(rows.frame, options, (*required, *optional), source)
    _require(found, required, rows.frame, "events", source)
    rows_read = len(rows.frame)
    notes: list[str] = []
    label = _find_label(rows.frame, options, set(found.values()))
    labels = None
    if label is not None:
        flags = _parse_labels(rows.frame[label], label, rows.frame["_line"], notes)
        rows.frame["_label"] = flags
        rows.frame["_attack"] = _attack_names(rows.frame[label], flags)

    _times_into(rows, found["time"], options, notes)
    _addresses(rows, found["src"], "src", notes)
    _addresses(rows, found["dst"], "dst", notes)
    weights = _weights(rows, found.get("weight"), options, notes)
    used = {*found.values(), *([label] if label else [])}

    frame = rows.frame
    src, dst = frame[found["src"]], frame[found["dst"]]
    loop = src == dst
    loopback = loop & (src.str.match(LOOPBACK_V4_PATTERN) | (src == "::1"))
    if loop.any():
        action = "dropped" if options.drop_loopback else "kept"
        notes.append(
            f"{int(loop.sum())} self-loop event{_plural(loop.sum())}; "
            f"{int(loopback.sum())} on loopback addresses {action} "
            "(127.0.0.0/8, ::1)"
        )
    if options.drop_loopback:
        rows.reject(loopback, found["src"], src, "self-loop on a loopback address")

    frame = rows.frame
    if label is not None and options.label_intervals:
        labels = _label_runs(frame["_t"], frame["_label"], label, source)
    events = pd.DataFrame({
        "t": frame["_t"],
        "src": frame[found["src"]].astype(str),
        "dst": frame[found["dst"]].astype(str),
        "weight": weights[frame.index],
        "protocol": (_blank_to_none(_text(frame[found["protocol"]]))
                     if "protocol" in found else None),
        "line": frame["_line"],
    })
    if label is not None:
        events["label"] = frame["_label"].astype(np.int8)
        events["attack"] = frame["_attack"]
    attributes, notices = _event_attributes(rows, used, options, notes, source)
    events = _sort_events(events, notes)
    batch = _Batch("events", events, rows_read, len(events), notes=notes,
                   labels=labels, attributes=attributes)
    batch.cell_notices = notices
    return batch


def _event_attributes(
    rows: _Rows, used: set[str], options: IngestOptions, notes: list[str],
    source: str,
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Return the numeric columns of an event file in long form: line, name, value.

    A column is numeric when most of its non-missing cells are numbers. Missing,
    non-finite and sentinel cells become NULL; so do the other cells of a numeric
    column, each listed in the quarantine. Columns of text are noted, not stored.
    """
    frame = rows.frame
    ignored = {c.strip().lower() for c in options.ignore_columns}
    candidates = [c for c in rows.columns
                  if c not in used and c.lower() not in ignored]
    _check_sentinel_columns(rows.columns, options, source)
    parts, notices, text_columns = [], [], []
    non_finite_cells = 0
    for column in candidates:
        values, non_finite, non_numeric = _numbers(frame[column])
        numeric = int(values.notna().sum())
        if numeric == 0 or int(non_numeric.sum()) * 2 > numeric + int(
                non_numeric.sum()):
            text_columns.append(column)
            continue
        non_finite_cells += int((non_finite & ~_blank_cells(frame[column])).sum())
        if non_numeric.any():
            notices.append(pd.DataFrame({
                "line": frame.loc[non_numeric, "_line"].to_numpy(),
                "column": column,
                "value": _text(frame[column])[non_numeric].to_numpy(),
                "reason": "non-numeric value stored as NULL",
            }))
        values = _apply_sentinels(values, column, options, notes)
        parts.append(pd.DataFrame({
            "line": frame["_line"].to_numpy(), "name": column,
            "value": values.to_numpy(dtype=float),
        }))
    if parts:
        notes.append(f"{len(parts)} numeric column{_plural(len(parts))} stored as "
                     f"event attributes: {', '.join(p['name'].iloc[0] for p in parts)}")
    if non_finite_cells:
        notes.append(f"{non_finite_cells} non-finite attribute cell"
                     f"{_plural(non_finite_cells)} (NaN, Infinity) stored as NULL")
    if text_columns:
        notes.append(f"{len(text_columns)} text column{_plural(len(text_columns))} "
                     f"not stored: {', '.join(text_columns)}")
    attributes = (pd.concat(parts, ignore_index=True) if parts
                  else pd.DataFrame(columns=["line", "name", "value"]))
    return attributes, notices


def _blank_cells(series: pd.Series) -> pd.Series:
    """Return where a cell is empty or a missing-value token other than NaN."""
    lower = _text(series).str.lower()
    return lower.isin(MISSING_TOKENS - {"nan"})


def _check_sentinel_columns(
    columns: Sequence[str], options: IngestOptions, source: str
) -> None:
    by_lower = {c.lower() for c in columns}
    for column in options.sentinels:
        if column.lower() not in by_lower:
            raise IngestError(
                f"sentinel column {column!r} not found in {Path(source).name}",
                f"The file has columns: {', '.join(columns)}. Fix the --sentinel "
                "option.",
            )


def _apply_sentinels(
    values: pd.Series, column: str, options: IngestOptions, notes: list[str]
) -> pd.Series:
    """Set the cells of `column` that equal one of its sentinels to NaN."""
    sentinels = next((v for k, v in options.sentinels.items()
                      if k.lower() == column.lower()), ())
    if not sentinels:
        return values
    hit = values.isin(sentinels)
    count = int(hit.sum())
    if count:
        shown = ", ".join(_format_seconds(v) for v in sentinels)
        notes.append(f"{count} cell{_plural(count)} of {column} equal to the "
                     f"sentinel {shown} stored as NULL")
    return values.mask(hit)


def _weights(
    rows: _Rows, column: str | None, options: IngestOptions, notes: list[str]
) -> pd.Series:
    """Return each row's weight and reject rows whose weight is unusable.

    NOTE: a weight of 0 is kept (a connection without payload), so a consumer
    that needs strictly positive weights has to handle it.
    """
    frame = rows.frame
    if column is None or options.weight_policy == "count":
        if column is not None:
            notes.append(f"weight policy count: column {column} ignored, weight 1")
        return pd.Series(1.0, index=frame.index)
    values, non_finite, non_numeric = _numbers(frame[column])
    text = _text(frame[column])
    lower = text.str.lower()
    negative_reason = ("negative byte count" if "byte" in column.lower()
                       else "negative weight")
    checks = [
        (lower.isin(MISSING_TOKENS - {"nan"}), "missing weight"),
        (non_numeric, "non-numeric weight"),
        (non_finite, "non-finite weight"),
        (values < 0, negative_reason),
    ]
    for mask, reason in checks:
        rows.reject(mask[rows.frame.index], column, text[rows.frame.index], reason)
    return values


def _sort_events(events: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    if events.empty:
        return events
    instants = _utc_numpy(events["t"]).view(np.int64)
    if event_order(instants, notes) is not None:
        events = events.sort_values("t", kind="stable")
    return events.reset_index(drop=True)


def _parse_long(rows: _Rows, options: IngestOptions, source: str) -> _Batch:
    required, optional = TARGET_COLUMNS["measurements"]
    found = _resolve_columns(rows.frame, options, (*required, *optional, "date"),
                             source)
    _require(found, (*required, "value"), rows.frame, "measurements", source)
    if "device" not in found and "sensor" not in found:
        raise IngestError(
            f"no device or sensor column found in {Path(source).name}",
            f"The file has columns: {', '.join(rows.frame.columns)}. Long "
            "measurements need a sensor column, a device column or both; for one "
            "column per sensor use --layout wide (layout='wide').",
        )
    rows_read = len(rows.frame)
    notes: list[str] = []
    _merge_date(rows, found, options, notes)
    _times_into(rows, found["time"], options, notes)
    for name in ("device", "sensor"):
        if name in found:
            column = found[name]
            rows.frame[column] = _text(rows.frame[column])
            rows.reject(rows.frame[column] == "", column, rows.frame[column],
                        f"missing {name}")
    value_column = found["value"]
    _check_sentinel_columns(rows.columns, options, source)
    values, non_finite, non_numeric = _numbers(rows.frame[value_column])
    values = _apply_sentinels(values, value_column, options, notes)
    rows.reject(non_numeric, value_column, _text(rows.frame[value_column]),
                "non-numeric value")

    frame = rows.frame
    if "sensor" not in found:
        sensor = pd.Series(value_column, index=frame.index)
        notes.append(f"no sensor column: the sensor is named {value_column!r}")
    else:
        sensor = frame[found["sensor"]]
    if "device" not in found:
        device = sensor
        notes.append("no device column: each sensor is its own device")
    else:
        device = frame[found["device"]]
    empty = int(non_finite[frame.index].sum())
    if empty:
        notes.append(f"{empty} missing or non-finite value{_plural(empty)} "
                     "stored as NULL")
    measurements = pd.DataFrame({
        "t": frame["_t"], "device": device.astype(str), "sensor": sensor.astype(str),
        "value": values[frame.index], "line": frame["_line"],
    })
    measurements, removed = _deduplicate(measurements, options, notes)
    return _Batch("measurements", measurements, rows_read, len(measurements),
                  rows_deduplicated=removed, notes=notes)


def _deduplicate(
    measurements: pd.DataFrame, options: IngestOptions, notes: list[str]
) -> tuple[pd.DataFrame, int]:
    key = ["t", "device", "sensor"]
    if options.duplicate_policy == "keep":
        repeated = int(measurements.duplicated(key).sum())
        if repeated:
            notes.append(f"{repeated} repeated (time, device, sensor) readings kept")
        return measurements.reset_index(drop=True), 0
    exact = measurements.duplicated([*key, "value"])
    measurements = measurements.loc[~exact]
    conflicting = measurements.duplicated(key, keep="last")
    parts = []
    if exact.any():
        count = int(exact.sum())
        parts.append(f"{count} exact duplicate{_plural(count)} removed")
    if conflicting.any():
        count = int(conflicting.sum())
        first = measurements.loc[conflicting].iloc[0]
        parts.append(
            f"{count} conflicting duplicate{_plural(count)} ({first['device']}/"
            f"{first['sensor']} at {_format_instant(first['t'])}"
            f"{' and others' if count > 1 else ''}) resolved: last"
        )
    measurements = measurements.loc[~conflicting]
    if parts:
        notes.append("; ".join(parts))
    return measurements.reset_index(drop=True), int(exact.sum() + conflicting.sum())


def _parse_wide(rows: _Rows, options: IngestOptions, source: str) -> _Batch:
    found = _resolve_columns(rows.frame, options, ("time", "date"), source)
    _require(found, ("time",), rows.frame, "wide measurements", source)
    rows_read = len(rows.frame)
    notes: list[str] = []
    merged = _merge_date(rows, found, options, notes)
    label = _find_label(rows.frame, options, set(found.values()))
    if label is not None:
        rows.frame["_label"] = _parse_labels(
            rows.frame[label], label, rows.frame["_line"], notes
        )
    skipped = {found["time"], label, "_line", "_label"}
    if merged:
        skipped.add(found["date"])
    ignored = {c.strip().lower() for c in options.ignore_columns}
    sensors = []
    for column in rows.frame.columns:
        if column in skipped or column.lower() in ignored:
            continue
        if column.lower() in ROW_ID_COLUMNS:
            notes.append(f"column {column} read as a row number, not a sensor")
            continue
        sensors.append(column)
    if not sensors:
        raise IngestError(
            f"no sensor columns in {Path(source).name}",
            "A wide file has a time column and one column per sensor.",
        )

    _times_into(rows, found["time"], options, notes)
    frame = rows.frame
    values: dict[str, pd.Series] = {}
    notices = []
    _check_sentinel_columns(rows.columns, options, source)
    for column in sensors:
        numbers, _, non_numeric = _numbers(frame[column])
        values[column] = _apply_sentinels(numbers, column, options, notes)
        if non_numeric.any():
            notices.append(pd.DataFrame({
                "line": frame.loc[non_numeric, "_line"].to_numpy(),
                "column": column,
                "value": _text(frame[column])[non_numeric].to_numpy(),
                "reason": "non-numeric value stored as NULL",
            }))
    table = pd.DataFrame(values, index=frame.index)
    empty = [c for c in sensors if table[c].isna().all()] if len(table) else []
    if empty and len(empty) == len(sensors):
        # Dropping every column would store nothing of rows the report counts as
        # stored, so their readings are stored as NULL instead.
        notes.append(f"all {len(empty)} sensor column{_plural(len(empty))} empty: "
                     "readings stored as NULL")
        empty = []
    if empty:
        notes.append(f"{len(empty)} entirely empty column{_plural(len(empty))} "
                     f"dropped: {', '.join(empty)}")
        table = table.drop(columns=empty)
    missing_cells = int(table.isna().sum().sum())
    if missing_cells:
        notes.append(f"{missing_cells} missing or non-finite cell"
                     f"{_plural(missing_cells)} stored as NULL")
    if notices:
        count = sum(len(n) for n in notices)
        notes.append(f"{count} non-numeric cell{_plural(count)} stored as NULL "
                     "(listed in the quarantine)")

    table.insert(0, "_t", frame["_t"])
    table, removed = _deduplicate_rows(table, notes)
    sensor_map = dict(options.sensor_map or {})
    unknown = sorted(set(sensor_map) - set(rows.frame.columns))
    if unknown:
        notes.append(f"sensor map names {len(unknown)} column"
                     f"{_plural(len(unknown))} not in the file: {', '.join(unknown)}")
    columns = [c for c in table.columns if c != "_t"]
    unmapped = [c for c in columns if c not in sensor_map]
    if sensor_map and unmapped:
        notes.append(f"{len(unmapped)} sensor column{_plural(len(unmapped))} not in "
                     f"the sensor map, each its own device: {', '.join(unmapped)}")
    count = len(table)
    measurements = pd.DataFrame({
        "t": np.tile(table["_t"].to_numpy(), len(columns)),
        "device": np.repeat([sensor_map.get(c, c) for c in columns], count),
        "sensor": np.repeat(columns, count),
        "value": table[columns].to_numpy(dtype=float).ravel(order="F"),
        "line": np.tile(frame.loc[table.index, "_line"].to_numpy(), len(columns)),
    })
    notes.append(f"{count} row{_plural(count)} x {len(columns)} "
                 f"sensor{_plural(len(columns))} = {len(measurements)} "
                 f"measurement{_plural(len(measurements))}")
    labels = None
    if label is not None and options.label_intervals:
        labels = _label_runs(frame.loc[table.index, "_t"],
                             frame.loc[table.index, "_label"], label, source)
    batch = _Batch("measurements", measurements, rows_read, count,
                   rows_deduplicated=removed, notes=notes, labels=labels)
    batch.cell_notices = notices
    return batch


def _deduplicate_rows(table: pd.DataFrame, notes: list[str]) -> tuple[
        pd.DataFrame, int]:
    exact = table.duplicated()
    table = table.loc[~exact]
    conflicting = table.duplicated("_t", keep="last")
    parts = []
    if exact.any():
        parts.append(f"{int(exact.sum())} exact duplicate row"
                     f"{_plural(exact.sum())} removed")
    if conflicting.any():
        first = table.loc[conflicting, "_t"].iloc[0]
        parts.append(f"{int(conflicting.sum())} conflicting duplicate row"
                     f"{_plural(conflicting.sum())} (at {_format_instant(first)}) "
                     "resolved: last")
    if parts:
        notes.append("; ".join(parts))
    return table.loc[~conflicting], int(exact.sum() + conflicting.sum())


def _parse_devices(rows: _Rows, options: IngestOptions, source: str) -> _Batch:
    required, optional = TARGET_COLUMNS["devices"]
    found = _resolve_columns(rows.frame, options, (*required, *optional), source)
    _require(found, required, rows.frame, "devices", source)
    rows_read = len(rows.frame)
    notes: list[str] = []
    column = found["device"]
    rows.frame[column] = _text(rows.frame[column])
    rows.reject(rows.frame[column] == "", column, rows.frame[column],
                "missing device")
    criticality = pd.Series(np.nan, index=rows.frame.index)
    if "criticality" in found:
        criticality, _, non_numeric = _numbers(rows.frame[found["criticality"]])
        rows.reject(non_numeric, found["criticality"],
                    _text(rows.frame[found["criticality"]]), "non-numeric criticality")
    frame = rows.frame
    devices = pd.DataFrame({"device": frame[column].astype(str)})
    for name in ("kind", "zone", "label"):
        devices[name] = (_blank_to_none(_text(frame[found[name]]))
                         if name in found else None)
    devices["criticality"] = criticality[frame.index]
    repeated = devices.duplicated("device", keep="last")
    if repeated.any():
        notes.append(f"{int(repeated.sum())} repeated device row"
                     f"{_plural(repeated.sum())}; the last of each kept")
    devices = devices.loc[~repeated].reset_index(drop=True)
    return _Batch("devices", devices, rows_read, len(devices),
                  rows_deduplicated=int(repeated.sum()), notes=notes, replace=True)


def _parse_links(rows: _Rows, options: IngestOptions, source: str) -> _Batch:
    required, optional = TARGET_COLUMNS["links"]
    found = _resolve_columns(rows.frame, options, (*required, *optional), source)
    _require(found, required, rows.frame, "links", source)
    rows_read = len(rows.frame)
    notes: list[str] = []
    _addresses(rows, found["src"], "src", notes)
    _addresses(rows, found["dst"], "dst", notes)
    weights = _weights(rows, found.get("weight"), options, notes)
    frame = rows.frame
    links = pd.DataFrame({
        "src": frame[found["src"]].astype(str),
        "dst": frame[found["dst"]].astype(str),
        "weight": weights[frame.index],
    })
    repeated = links.duplicated(["src", "dst"], keep="last")
    if repeated.any():
        notes.append(f"{int(repeated.sum())} repeated link row"
                     f"{_plural(repeated.sum())}; the last of each kept")
    links = links.loc[~repeated].reset_index(drop=True)
    return _Batch("links", links, rows_read, len(links),
                  rows_deduplicated=int(repeated.sum()), notes=notes, replace=True)
