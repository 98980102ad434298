"""The workspace: one DuckDB store, one DuckDB file per run, one SQLite analyst file.

A workspace is a folder::

    store.duckdb       events, measurements, devices, links, ground truth,
                       ingest reports and the quarantine of rejected rows
    runs/<run>.duckdb  one run: its configuration, bins, elements, incidents
    analyst.sqlite     incident status, owner, notes, annotations, suppressions,
                       maintenance windows and behaviour accepted as normal

No process keeps a database open longer than one operation: every helper here opens a
connection, does its work and closes it. A run file is written under a temporary name
and published by an atomic rename, so a reader sees the previous state or the complete
new one. Timestamps are stored as `TIMESTAMPTZ` and every connection uses UTC. Every
query binds its parameters; table and column names come from constants in this module,
never from input text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from core.errors import RunNotFoundError, StoreBusyError

log = logging.getLogger(__name__)

STORE_FILE = "store.duckdb"
ANALYST_FILE = "analyst.sqlite"
RUNS_DIR = "runs"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
LOCK_RETRY_SECONDS = 5.0

# `ingest_reports.checksum` is the SHA-256 of the file's bytes up to `bytes_end`, which
# this load and the earlier loads of the same `path` read. `options` is the JSON of
# the ingest options that change what is stored; `withdrawn` is set when the load's
# rows were removed. `quarantine.record` is the whole rejected row as JSON. `outcome`
# is "row rejected" or "cell stored as NULL". `events.label` is 0 (normal) or 1
# (attack) when the file has a label column. `event_attributes` contains the other
# numeric columns of an event file, one row per (event, column), keyed by the
# event's `report_id` and file `line`; a missing, non-finite or sentinel cell is
# NULL. `events.attack` is the attack name of a labelled event when the file names
# it (NULL for normal events and for files with plain 0/1 labels). The ALTER
# statements add the newer columns to stores created before them.
STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    t TIMESTAMPTZ NOT NULL, src VARCHAR NOT NULL, dst VARCHAR NOT NULL,
    weight DOUBLE NOT NULL, protocol VARCHAR, report_id BIGINT, line BIGINT);
CREATE TABLE IF NOT EXISTS measurements (
    t TIMESTAMPTZ NOT NULL, device VARCHAR NOT NULL, sensor VARCHAR NOT NULL,
    value DOUBLE, report_id BIGINT, line BIGINT);
CREATE TABLE IF NOT EXISTS devices (
    device VARCHAR PRIMARY KEY, kind VARCHAR, zone VARCHAR, criticality DOUBLE,
    label VARCHAR);
CREATE TABLE IF NOT EXISTS links (
    src VARCHAR NOT NULL, dst VARCHAR NOT NULL, weight DOUBLE NOT NULL,
    PRIMARY KEY (src, dst));
CREATE TABLE IF NOT EXISTS ground_truth (
    anomaly_id VARCHAR PRIMARY KEY, kind VARCHAR, start TIMESTAMPTZ, "end" TIMESTAMPTZ,
    devices VARCHAR[], pairs STRUCT(src VARCHAR, dst VARCHAR)[], targets VARCHAR[],
    sensors VARCHAR[], description VARCHAR);
CREATE TABLE IF NOT EXISTS ingest_reports (
    report_id BIGINT PRIMARY KEY, file VARCHAR, checksum VARCHAR, target VARCHAR,
    started TIMESTAMPTZ, rows_read BIGINT, rows_stored BIGINT, rows_rejected BIGINT,
    rows_deduplicated BIGINT, notes VARCHAR[]);
CREATE TABLE IF NOT EXISTS quarantine (
    report_id BIGINT, file VARCHAR, line BIGINT, "column" VARCHAR, value VARCHAR,
    reason VARCHAR);
CREATE TABLE IF NOT EXISTS settings (key VARCHAR PRIMARY KEY, value VARCHAR);
ALTER TABLE ingest_reports ADD COLUMN IF NOT EXISTS path VARCHAR;
ALTER TABLE ingest_reports ADD COLUMN IF NOT EXISTS bytes_start BIGINT;
ALTER TABLE ingest_reports ADD COLUMN IF NOT EXISTS bytes_end BIGINT;
ALTER TABLE ingest_reports ADD COLUMN IF NOT EXISTS already_loaded BIGINT;
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS record VARCHAR;
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS outcome VARCHAR;
CREATE TABLE IF NOT EXISTS event_attributes (
    report_id BIGINT NOT NULL, line BIGINT NOT NULL, name VARCHAR NOT NULL,
    value DOUBLE);
ALTER TABLE events ADD COLUMN IF NOT EXISTS label TINYINT;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS report_id BIGINT;
ALTER TABLE links ADD COLUMN IF NOT EXISTS report_id BIGINT;
ALTER TABLE ingest_reports ADD COLUMN IF NOT EXISTS options VARCHAR;
ALTER TABLE ingest_reports ADD COLUMN IF NOT EXISTS withdrawn TIMESTAMPTZ;
ALTER TABLE events ADD COLUMN IF NOT EXISTS attack VARCHAR;
"""

# The column that the last change of STORE_SCHEMA added. A store that has it is
# current, so `ensure_store_schema` skips the DDL, which costs more than a small load.
NEWEST_STORE_COLUMN = ("events", "attack")

# One run file. `bin` counts base bins from the run's origin at scale 1 and bins of
# that scale at coarser scales. Element kinds: device, sensor, pair, new_device.
RUN_SCHEMA = """
CREATE TABLE run_info (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE devices (
    idx INTEGER, device VARCHAR, kind VARCHAR, zone VARCHAR, criticality DOUBLE,
    first_bin BIGINT);
CREATE TABLE sensors (device VARCHAR, sensor VARCHAR, slot INTEGER);
CREATE TABLE bins (
    scale INTEGER, bin BIGINT, start TIMESTAMPTZ, "end" TIMESTAMPTZ, period VARCHAR,
    score DOUBLE, events BIGINT, note VARCHAR);
CREATE TABLE sensor_flags (
    bin BIGINT, start TIMESTAMPTZ, device VARCHAR, sensor VARCHAR, value DOUBLE,
    scaled DOUBLE, flag VARCHAR);
CREATE TABLE elements (
    kind VARCHAR, device VARCHAR, peer VARCHAR, sensor VARCHAR, scale INTEGER,
    bin BIGINT, observed DOUBLE, expected DOUBLE, residual DOUBLE, score DOUBLE,
    p_value DOUBLE, calibration VARCHAR);
CREATE TABLE device_evidence (
    device VARCHAR, scale INTEGER, bin BIGINT, evidence DOUBLE, min_p DOUBLE,
    elements INTEGER);
CREATE TABLE incidents (
    incident_id VARCHAR, rank INTEGER, start TIMESTAMPTZ, "end" TIMESTAMPTZ,
    type VARCHAR, score DOUBLE, threshold DOUBLE, alpha DOUBLE, scale INTEGER,
    severity DOUBLE, summary VARCHAR, p_value DOUBLE, false_alarms_per_day DOUBLE);
CREATE TABLE incident_members (
    incident_id VARCHAR, role VARCHAR, device VARCHAR, peer VARCHAR, sensor VARCHAR,
    evidence DOUBLE, p_value DOUBLE);
CREATE TABLE training_loss (
    epoch INTEGER, loss DOUBLE, validation_loss DOUBLE, seconds DOUBLE);
CREATE TABLE calibration_fallback (
    kind VARCHAR, scale INTEGER, level VARCHAR, elements BIGINT);
CREATE TABLE null_scan (scale INTEGER, shift INTEGER, max_score DOUBLE);
CREATE TABLE model_checkpoint (name VARCHAR, data BLOB);
"""

ANALYST_SCHEMA = """
CREATE TABLE IF NOT EXISTS incident_status (
    incident_id TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'new', owner TEXT,
    notes TEXT, updated TEXT);
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id TEXT, start TEXT, "end" TEXT,
    text TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS suppressions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id TEXT, devices TEXT,
    pattern TEXT, created TEXT, active INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS maintenance_windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT, start TEXT, "end" TEXT, devices TEXT,
    note TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS accepted_behaviour (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id TEXT NOT NULL, run_id TEXT,
    members TEXT NOT NULL, start TEXT NOT NULL, "end" TEXT NOT NULL,
    accepted_by TEXT NOT NULL, created TEXT NOT NULL);
"""

STATUSES = ("new", "acknowledged", "false positive", "resolved")


@dataclass(frozen=True)
class Workspace:
    """A workspace folder and the paths of its files."""

    root: Path

    @property
    def store_path(self) -> Path:
        return self.root / STORE_FILE

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def analyst_path(self) -> Path:
        return self.root / ANALYST_FILE

    @classmethod
    def create(cls, root: str | os.PathLike) -> "Workspace":
        """Create the folder, the store schema and the analyst file if missing."""
        workspace = cls(Path(root).resolve())
        workspace.runs_dir.mkdir(parents=True, exist_ok=True)
        with connect(workspace.store_path) as con:
            con.execute(STORE_SCHEMA)
        init_analyst(workspace.analyst_path)
        return workspace

    def run_path(self, run_id: str) -> Path:
        if not RUN_ID_PATTERN.match(run_id):
            raise RunNotFoundError(
                f"invalid run id {run_id!r}",
                "A run id has letters, digits, '.', '_' or '-' (at most 80).",
            )
        return self.runs_dir / f"{run_id}.duckdb"

    def list_runs(self) -> list[str]:
        """Return the published run ids, oldest first (temporary files excluded)."""
        if not self.runs_dir.is_dir():
            return []
        paths = [p for p in self.runs_dir.glob("*.duckdb") if not p.name.startswith(".")]
        paths.sort(key=lambda p: (p.stat().st_mtime, p.name))
        return [p.stem for p in paths]

    def latest_run(self) -> str | None:
        runs = self.list_runs()
        return runs[-1] if runs else None

    def resolve_run(self, run_id: str | None) -> str:
        """Return `run_id` if published, or the latest run when it is None."""
        if run_id is None:
            latest = self.latest_run()
            if latest is None:
                raise RunNotFoundError(
                    f"no published run in {self.root}",
                    "Run `tgloc run --workspace DIR` (or `tgloc demo`) first.",
                )
            return latest
        if not self.run_path(run_id).exists():
            raise RunNotFoundError(
                f"run {run_id!r} not found in {self.runs_dir}",
                f"Published runs: {', '.join(self.list_runs()) or 'none'}.",
            )
        return run_id


@contextmanager
def connect(
    path: str | os.PathLike,
    read_only: bool = False,
    hardened: bool = False,
    retry_seconds: float = LOCK_RETRY_SECONDS,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open a DuckDB file for one operation, in UTC, and close it afterwards.

    Args:
        path: the database file.
        read_only: open without write access (several readers may share the file).
        hardened: also turn external access off and lock the configuration, as the
            dashboard does, so no query can read or write other files.
        retry_seconds: how long to retry while another process holds the write lock.

    Raises:
        StoreBusyError: the file stayed locked for `retry_seconds`.
    """
    config: dict[str, Any] = {}
    if hardened:
        config["enable_external_access"] = False
    deadline = time.monotonic() + retry_seconds
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=config)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                if "lock" in str(exc).lower():
                    raise StoreBusyError(
                        f"{Path(path).name} is busy: another tgloc process is writing it",
                        f"Retry when that process ends. DuckDB said: {exc}",
                    ) from exc
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    try:
        # The zone is set after connecting because ICU loads on first use.
        con.execute("SET TimeZone = 'UTC'")
        if hardened:
            con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


def ensure_store_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the store tables, and add newer columns to an older store."""
    table, column = NEWEST_STORE_COLUMN
    try:
        # Both names are module constants. Selecting the column is the cheapest
        # check that the store is current.
        con.execute(f'SELECT "{column}" FROM {table} LIMIT 0').fetchall()
    except duckdb.CatalogException:
        con.execute(STORE_SCHEMA)
    except duckdb.BinderException:
        con.execute(STORE_SCHEMA)


def query(
    path: str | os.PathLike,
    sql: str,
    params: list[Any] | tuple[Any, ...] | None = None,
    hardened: bool = False,
) -> pd.DataFrame:
    """Run one read-only query with bound parameters and return a DataFrame."""
    with connect(path, read_only=True, hardened=hardened) as con:
        return con.execute(sql, params or []).df()


def insert_frame(
    con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame | pa.Table
) -> int:
    """Append a DataFrame or Arrow table to `table` by column name; return the rows.

    `table` must be one of the schema's own table names, never input text.
    """
    if not re.fullmatch(r"[a-z_]+", table):
        raise ValueError(f"invalid table name {table!r}")
    if len(frame) == 0:
        return 0
    con.register("_frame", frame)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _frame")
    finally:
        con.unregister("_frame")
    return len(frame)


def publish_run(
    workspace: Workspace,
    run_id: str,
    tables: dict[str, pd.DataFrame],
    info: dict[str, Any],
) -> Path:
    """Write a run file under a temporary name, then publish it by atomic rename.

    Args:
        tables: frames for the tables of `RUN_SCHEMA`, by table name.
        info: JSON-serialisable values for `run_info` (configuration, checksums).

    Returns:
        The published path `runs/<run_id>.duckdb`.
    """
    final = workspace.run_path(run_id)
    workspace.runs_dir.mkdir(parents=True, exist_ok=True)
    temporary = workspace.runs_dir / f".{run_id}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    try:
        with connect(temporary) as con:
            con.execute(RUN_SCHEMA)
            rows = pd.DataFrame(
                {"key": list(info), "value": [json.dumps(v, default=str) for v in info.values()]}
            )
            insert_frame(con, "run_info", rows)
            for name, frame in tables.items():
                insert_frame(con, name, frame)
            con.execute("CHECKPOINT")
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
        Path(str(temporary) + ".wal").unlink(missing_ok=True)
    log.info("published run %s (%s)", run_id, final)
    return final


def read_run_info(workspace: Workspace, run_id: str) -> dict[str, Any]:
    """Return the `run_info` table of a run as a dict of decoded JSON values."""
    frame = query(workspace.run_path(run_id), "SELECT key, value FROM run_info")
    return {k: json.loads(v) for k, v in zip(frame["key"], frame["value"])}


def init_analyst(path: str | os.PathLike) -> None:
    """Create the analyst file in WAL mode, so several processes may read and write."""
    with sqlite_connect(path) as con:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(ANALYST_SCHEMA)


@contextmanager
def sqlite_connect(path: str | os.PathLike) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(str(path), timeout=10.0)
    try:
        with con:
            yield con
    finally:
        con.close()


def set_incident_status(
    workspace: Workspace,
    incident_id: str,
    status: str,
    owner: str | None = None,
    notes: str | None = None,
) -> None:
    """Store the analyst's status, owner and notes for an incident id."""
    if status not in STATUSES:
        raise ValueError(
            f"invalid status {status!r}; expected one of: {', '.join(STATUSES)}"
        )
    stamp = pd.Timestamp.now(tz="UTC").isoformat()
    with sqlite_connect(workspace.analyst_path) as con:
        con.execute(
            "INSERT INTO incident_status (incident_id, status, owner, notes, updated) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(incident_id) DO UPDATE SET "
            "status=excluded.status, owner=excluded.owner, notes=excluded.notes, "
            "updated=excluded.updated",
            (incident_id, status, owner, notes, stamp),
        )


def incident_statuses(workspace: Workspace) -> pd.DataFrame:
    """Return every stored incident status (columns of `incident_status`)."""
    if not workspace.analyst_path.exists():
        return pd.DataFrame(columns=["incident_id", "status", "owner", "notes", "updated"])
    with sqlite_connect(workspace.analyst_path) as con:
        return pd.read_sql_query("SELECT * FROM incident_status", con)
