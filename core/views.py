"""Read-only queries behind the dashboard, one hardened DuckDB connection per call.

Every function here except `store_summary` opens the run file read-only with external access off and the
configuration locked, binds its parameters, returns plain pandas or Python values and
closes the file. The database does the aggregation (re-binning, ranking, paging), so a
page receives at most what a screen can show. A run file held by a writer raises
`StoreBusyError` after a short retry, and a file that cannot be read raises
`DataError`. `store_summary` reads the workspace's `store.duckdb` the same way. An
ingest holds that file's write lock while it stores a file.
Nothing here imports Streamlit.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from core.errors import DataError, RunNotFoundError, TglocError
from core.store import Workspace, connect

# One heatmap page sends at most 200 x 1,000 cells: under 1 MB as Plotly's base64
# float32 array, far below Streamlit's message size limit (200 MB by default in
# 1.67). More rows make a figure taller than a browser draws quickly; the devices
# beyond the first 200 are on the next pages.
MAX_HEATMAP_ROWS = 200
MAX_HEATMAP_COLUMNS = 1000
MAX_TARGETS_SHOWN = 20
MAX_CONTEXT_EDGES = 60
MISSING_EXPECTED_EVENTS = 3.0
PROGRESS_FILE = ".progress.jsonl"
PIPELINE_LOG_FILE = ".pipeline.log"
PROGRESS_TAIL_BYTES = 4096
RUN_ARGS_ENV = "TGLOC_RUN_ARGS"
# The dashboard waits this long for an ingest to release the store. After that it
# shows a message and the last published run, so a page render does not stall.
STORE_RETRY_SECONDS = 1.5

STORE_COUNTS_SQL = """
SELECT
    (SELECT count(*) FROM events) AS events,
    (SELECT count(*) FROM measurements) AS measurements,
    (SELECT count(*) FROM devices) AS devices,
    (SELECT count(*) FROM quarantine) AS quarantined,
    (SELECT count(*) FROM ingest_reports) AS reports
"""
LAST_REPORT_SQL = """
SELECT report_id, file, target, started, rows_read, rows_stored, rows_rejected,
       rows_deduplicated
FROM ingest_reports
ORDER BY report_id DESC
LIMIT 1
"""

RUN_COUNTS_SQL = """
SELECT
    (SELECT count(*) FROM devices) AS devices,
    (SELECT count(*) FROM bins WHERE scale = 1) AS bins,
    (SELECT min(start) FROM bins WHERE scale = 1) AS start,
    (SELECT max("end") FROM bins WHERE scale = 1) AS "end",
    (SELECT count(*) FROM incidents) AS incidents
"""

# The window's bins numbered by position; shared by the heatmap queries below. Only
# module constants are joined into SQL text, never input.
SPAN_CTE = """
WITH span AS (
    SELECT bin, start, "end",
           row_number() OVER (ORDER BY bin) - 1 AS position,
           count(*) OVER () AS total
    FROM bins
    WHERE scale = $scale
      AND "end" > coalesce(CAST($start AS TIMESTAMPTZ), '-infinity'::TIMESTAMPTZ)
      AND start < coalesce(CAST($end AS TIMESTAMPTZ), 'infinity'::TIMESTAMPTZ)
)
"""

# Bins in the window are numbered by position, and `factor` consecutive bins share one
# column, so a long window never sends more than `max_cols` columns. Rows are ranked
# by their peak evidence in the window, with devices without evidence last. Bin numbers
# of one scale grow with time, so the window is a range of bin numbers: the two scans of
# device evidence filter on that range, and only the page's rows meet the column join.
HEATMAP_SQL = SPAN_CTE + """,
columns AS (
    SELECT bin, start, "end",
           position // greatest(1, CAST(ceil(total / $max_cols) AS BIGINT)) AS col
    FROM span
),
bounds AS (SELECT min(bin) AS first_bin, max(bin) AS last_bin FROM span),
chosen AS (
    SELECT device FROM devices
    WHERE ($kinds IS NULL OR list_contains($kinds, kind))
      AND ($zones IS NULL OR list_contains($zones, zone))
      AND ($devices IS NULL OR list_contains($devices, device))
),
peaks AS (
    SELECT e.device, max(e.evidence) AS peak
    FROM device_evidence e, bounds b
    WHERE e.scale = $scale AND e.bin BETWEEN b.first_bin AND b.last_bin
    GROUP BY e.device
),
ranked AS (
    SELECT c.device, p.peak,
           row_number() OVER (ORDER BY p.peak DESC NULLS LAST, c.device) - 1 AS row,
           count(*) OVER () AS total_rows
    FROM chosen c
    LEFT JOIN peaks p ON p.device = c.device
),
page AS (
    SELECT * FROM ranked WHERE row >= $offset AND row < $offset + $max_rows
),
cells AS (
    SELECT e.device, e.bin, e.evidence
    FROM device_evidence e, bounds b
    WHERE e.scale = $scale AND e.bin BETWEEN b.first_bin AND b.last_bin
      AND e.device IN (SELECT device FROM page)
)
SELECT r.row, r.device, r.peak, r.total_rows, c.col, max(x.evidence) AS evidence
FROM page r
LEFT JOIN (cells x JOIN columns c ON c.bin = x.bin) ON x.device = r.device
GROUP BY r.row, r.device, r.peak, r.total_rows, c.col
ORDER BY r.row, c.col
"""

HEATMAP_COLUMNS_SQL = SPAN_CTE + """
SELECT position // greatest(1, CAST(ceil(total / $max_cols) AS BIGINT)) AS col,
       min(start) AS start, max("end") AS "end", count(*) AS bins
FROM span
GROUP BY col
ORDER BY col
"""

# `significance` is the incident's family-wise p-value, stored by the run: the chance
# that a scored period with nothing abnormal gets any incident at its score, from the
# tails fitted to the null scan. Older run files have no such column, so the union
# below supplies it as NULL. For them the value is the share of null-scan maxima at
# the same scale at or above the score, (1 + k) / (1 + n).
INCIDENTS_SQL = """
WITH stored AS (
    SELECT * FROM incidents
    UNION ALL BY NAME
    SELECT NULL::DOUBLE AS p_value, NULL::DOUBLE AS false_alarms_per_day WHERE false
),
significance AS (
    SELECT i.incident_id,
           CASE WHEN i.p_value IS NOT NULL THEN i.p_value
                WHEN count(n.max_score) = 0 THEN NULL
                ELSE (1 + count(n.max_score) FILTER (WHERE n.max_score >= i.score))
                     / (1 + count(n.max_score))
           END AS significance
    FROM stored i
    LEFT JOIN null_scan n ON n.scale = i.scale
    GROUP BY i.incident_id, i.p_value, i.score
)
SELECT i.incident_id, i.rank, i.type, i.severity, s.significance,
       i.false_alarms_per_day, i.score,
       i.threshold, i.alpha, i.scale, i.start, i."end", i.summary,
       count(DISTINCT m.device) FILTER (WHERE m.role = 'device') AS devices,
       count(*) FILTER (WHERE m.role = 'pair') AS pairs,
       count(*) FILTER (WHERE m.role = 'sensor') AS sensors,
       count(*) FILTER (WHERE m.role = 'target') AS targets,
       list(DISTINCT m.device ORDER BY m.device) FILTER (WHERE m.role = 'device')
           AS member_devices
FROM stored i
JOIN significance s USING (incident_id)
LEFT JOIN incident_members m USING (incident_id)
GROUP BY ALL
ORDER BY i.rank, i.incident_id
"""

MEMBERS_SQL = """
SELECT role, device, peer, sensor, evidence, p_value
FROM incident_members
WHERE incident_id = $incident
ORDER BY CASE role WHEN 'device' THEN 0 WHEN 'pair' THEN 1 WHEN 'target' THEN 2
         ELSE 3 END, evidence DESC NULLS LAST, device, peer, sensor
"""

MEMBER_CELLS_SQL = """
SELECT DISTINCT i.rank, i.incident_id, i.start, i."end", d.device
FROM incidents i
JOIN incident_members m USING (incident_id),
     unnest([m.device, CASE WHEN m.role = 'pair' THEN m.peer END]) AS d(device)
WHERE m.role IN ('device', 'sensor', 'pair') AND d.device IS NOT NULL
ORDER BY i.rank, i.incident_id, d.device
"""

# Flags of each member sensor in the base bins that start inside its incident, with
# the number of such bins. `sensor_flags` has one row per (bin, sensor, flag).
SENSOR_FLAGS_SQL = """
WITH members AS (
    SELECT DISTINCT m.incident_id, m.device, m.sensor, i.start, i."end"
    FROM incident_members m
    JOIN incidents i USING (incident_id)
    WHERE m.role = 'sensor'
      AND ($incident IS NULL OR m.incident_id = $incident)
)
SELECT m.incident_id, m.device, m.sensor, f.flag, count(*) AS bins
FROM members m
JOIN sensor_flags f ON f.device = m.device AND f.sensor = m.sensor
    AND f.start >= m.start AND f.start < m."end"
GROUP BY m.incident_id, m.device, m.sensor, f.flag
ORDER BY m.incident_id, m.device, m.sensor, f.flag
"""

# Consecutive base bins of one period form one interval ("gaps and islands").
PERIODS_SQL = """
WITH base AS (
    SELECT bin, start, "end", period,
           bin - row_number() OVER (PARTITION BY period ORDER BY bin) AS island
    FROM bins
    WHERE scale = (SELECT min(scale) FROM bins)
)
SELECT period, min(start) AS start, max("end") AS "end"
FROM base
GROUP BY period, island
ORDER BY start
"""

SENSOR_SERIES_SQL = """
SELECT b.start, b."end", e.observed, e.expected, e.residual, e.p_value
FROM elements e
JOIN bins b ON b.scale = e.scale AND b.bin = e.bin
WHERE e.kind = 'sensor' AND e.device = $device AND e.sensor = $sensor
  AND e.scale = $scale
  AND b."end" > coalesce(CAST($start AS TIMESTAMPTZ), '-infinity'::TIMESTAMPTZ)
  AND b.start < coalesce(CAST($end AS TIMESTAMPTZ), 'infinity'::TIMESTAMPTZ)
ORDER BY b.start
"""

PAIR_SERIES_SQL = """
SELECT b.start, b."end", e.observed, e.expected, e.residual, e.p_value
FROM elements e
JOIN bins b ON b.scale = e.scale AND b.bin = e.bin
WHERE e.kind = 'pair' AND e.device = $src AND e.peer = $dst AND e.scale = $scale
  AND b."end" > coalesce(CAST($start AS TIMESTAMPTZ), '-infinity'::TIMESTAMPTZ)
  AND b.start < coalesce(CAST($end AS TIMESTAMPTZ), 'infinity'::TIMESTAMPTZ)
ORDER BY b.start
"""

# Pairs touching a member device during the incident, strongest evidence first. A
# pair is missing when it carried no event while the model expected at least
# $missing_expected events over the incident.
CONTEXT_EDGES_SQL = """
SELECT e.device AS src, e.peer AS dst, max(-log10(greatest(e.p_value, 1e-300)))
       AS evidence, avg(e.observed) AS weight, avg(e.expected) AS expected,
       coalesce(sum(e.observed) = 0 AND isfinite(sum(e.expected))
                AND sum(e.expected) >= $missing_expected, false) AS missing
FROM elements e
JOIN bins b ON b.scale = e.scale AND b.bin = e.bin
WHERE e.kind = 'pair' AND e.scale = $scale
  AND (list_contains($devices, e.device) OR list_contains($devices, e.peer))
  AND b."end" > $start AND b.start < $end
GROUP BY e.device, e.peer
ORDER BY evidence DESC, src, dst
LIMIT $limit
"""


@dataclass(frozen=True)
class HeatmapMatrix:
    """Device evidence on a devices x time grid, aggregated by the database.

    Attributes:
        devices: device names in row order (highest peak evidence first).
        peaks: peak evidence of each row in the window, NaN when it has none.
        evidence: shape [num_rows, num_columns], the maximum of -log10(min p-value)
            over the bins a cell covers (higher is more anomalous). NaN where the run
            stored no evidence.
        starts: start of each column (UTC).
        ends: end of each column (UTC).
        factor: bins of the chosen scale per column (1 when not re-binned).
        total_rows: devices that match the filters, of which this page shows some.
        offset: index of the first row shown among `total_rows`.
    """

    devices: list[str]
    peaks: np.ndarray
    evidence: np.ndarray
    starts: pd.DatetimeIndex
    ends: pd.DatetimeIndex
    factor: int
    total_rows: int
    offset: int

    @property
    def empty(self) -> bool:
        return not self.devices or len(self.starts) == 0


def store_summary(workspace: Workspace) -> dict[str, Any] | None:
    """Return the store's row counts and its last ingest report, or None if no store.

    Raises:
        StoreBusyError: an ingest kept the store locked for `STORE_RETRY_SECONDS`.
        DataError: the store cannot be read.
    """
    if not workspace.store_path.is_file():
        return None
    try:
        with connect(workspace.store_path, read_only=True, hardened=True,
                     retry_seconds=STORE_RETRY_SECONDS) as con:
            counts = con.execute(STORE_COUNTS_SQL).df().iloc[0]
            last = con.execute(LAST_REPORT_SQL).df()
    except duckdb.Error as exc:
        raise DataError(
            "the store cannot be read",
            f"The file may be damaged or from another tgloc. DuckDB said: {exc}",
        ) from exc
    summary: dict[str, Any] = {name: int(value) for name, value in counts.items()}
    summary["last_report"] = last.iloc[0].to_dict() if len(last) else None
    return summary


def list_runs(workspace: Workspace) -> list[str]:
    """Return the published run ids, newest first."""
    return list(reversed(workspace.list_runs()))


def run_version(workspace: Workspace, run_id: str) -> int:
    """Return the run file's modification time in ns, which changes on republish."""
    path = workspace.run_path(workspace.resolve_run(run_id))
    return path.stat().st_mtime_ns


def run_summary(workspace: Workspace, run_id: str) -> dict[str, Any]:
    """Summarize a run: sizes, time span, scales and incident count.

    Returns:
        A dict with `run_id`, `devices`, `bins` (base bins), `start` and `end` (UTC
        timestamps or None), `incidents`, `scales`, `bin_seconds` and `created`.
    """
    counts = _frame(workspace, run_id, RUN_COUNTS_SQL).iloc[0]
    info = run_info(workspace, run_id)
    stream = info.get("config", {}).get("stream", {})
    return {
        "run_id": run_id,
        "devices": int(counts["devices"]),
        "bins": int(counts["bins"]),
        "start": _timestamp(counts["start"]),
        "end": _timestamp(counts["end"]),
        "incidents": int(counts["incidents"]),
        "scales": scales(workspace, run_id),
        "bin_seconds": stream.get("bin_seconds"),
        "created": info.get("created"),
    }


def run_info(workspace: Workspace, run_id: str) -> dict[str, Any]:
    """Return the run's `run_info` table as a dict of decoded JSON values."""
    frame = _frame(workspace, run_id, "SELECT key, value FROM run_info")
    info: dict[str, Any] = {}
    for key, value in zip(frame["key"], frame["value"]):
        try:
            info[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            info[key] = value
    return info


def scales(workspace: Workspace, run_id: str) -> list[int]:
    """Return the scales that have bins in the run, finest first."""
    frame = _frame(workspace, run_id, "SELECT DISTINCT scale FROM bins ORDER BY scale")
    return [int(s) for s in frame["scale"]]


def device_filters(workspace: Workspace, run_id: str) -> dict[str, list[str]]:
    """Return the distinct device kinds and zones, for the heatmap filters."""
    frame = _frame(workspace, run_id, "SELECT kind, zone FROM devices")
    return {
        "kinds": sorted(frame["kind"].dropna().unique().tolist()),
        "zones": sorted(frame["zone"].dropna().unique().tolist()),
    }


def device_names(workspace: Workspace, run_id: str) -> list[str]:
    """Return the run's device names, sorted."""
    frame = _frame(workspace, run_id, "SELECT device FROM devices ORDER BY device")
    return frame["device"].astype(str).tolist()


def heatmap_matrix(
    workspace: Workspace,
    run_id: str,
    scale: int,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    max_rows: int = MAX_HEATMAP_ROWS,
    max_cols: int = MAX_HEATMAP_COLUMNS,
    offset: int = 0,
    kinds: Sequence[str] | None = None,
    zones: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
) -> HeatmapMatrix:
    """Aggregate device evidence into a devices x time grid for one scale.

    Bins overlapping [start, end) are kept. When more than `max_cols` remain,
    consecutive bins merge into one column holding their maximum evidence. Rows are
    devices sorted by peak evidence in the window (higher is more anomalous); the
    page shows rows `offset` to `offset + max_rows`.

    Args:
        scale: bin width as a multiple of the base bin.
        start: first instant shown (UTC); None for the run's start.
        end: end of the window (UTC, exclusive); None for the run's end.
        max_rows: most device rows returned.
        max_cols: most time columns returned.
        offset: rows to skip, for paging through devices.
        kinds: keep only devices of these kinds; None keeps all.
        zones: keep only devices in these zones; None keeps all.
        devices: keep only these devices; None keeps all. With a short window this
            is the zoom: a full-resolution slice of the chosen devices and bins.

    Raises:
        ValueError: `max_rows` or `max_cols` is below 1, or `offset` is negative.
    """
    if max_rows < 1 or max_cols < 1 or offset < 0:
        raise ValueError(
            f"invalid heatmap size: max_rows={max_rows} and max_cols={max_cols} "
            f"must be >= 1 and offset={offset} must be >= 0"
        )
    window = {
        "scale": int(scale),
        "start": _bound(start),
        "end": _bound(end),
        "max_cols": int(max_cols),
    }
    cells_params = {
        **window,
        "max_rows": int(max_rows),
        "offset": int(offset),
        "kinds": list(kinds) if kinds else None,
        "zones": list(zones) if zones else None,
        "devices": [str(d) for d in devices] if devices else None,
    }
    with _connect(workspace, run_id) as con:
        cells = _execute(con, HEATMAP_SQL, cells_params)
        columns = _execute(con, HEATMAP_COLUMNS_SQL, window)
    return _assemble_matrix(cells, columns, offset)


def incidents(workspace: Workspace, run_id: str) -> pd.DataFrame:
    """Return the run's incidents ranked, with member counts per role.

    Columns: incident_id, rank, type, severity, significance,
    false_alarms_per_day, score, threshold, alpha, scale, start, end, summary,
    devices, pairs, sensors, targets (counts) and member_devices (sorted names,
    None without device members). Severity and score: higher is more anomalous.
    Significance: the family-wise p-value of the score against the null scan, small
    is significant, None when the run has no null scan. false_alarms_per_day: the
    false alarms a day expected at that level, None for older run files.
    """
    return _frame(workspace, run_id, INCIDENTS_SQL)


def incident(workspace: Workspace, run_id: str, incident_id: str) -> dict[str, Any]:
    """Return one incident's row as a dict.

    Raises:
        RunNotFoundError: the run has no incident with this id.
    """
    frame = _frame(
        workspace, run_id, "SELECT * FROM incidents WHERE incident_id = $incident",
        {"incident": incident_id},
    )
    if frame.empty:
        raise RunNotFoundError(
            f"incident {incident_id!r} not found in run {run_id!r}",
            "Pick an incident from the list on the home page or the heatmap.",
        )
    return frame.iloc[0].to_dict()


def incident_members(
    workspace: Workspace, run_id: str, incident_id: str
) -> pd.DataFrame:
    """Return an incident's members exactly as the run stores them.

    Columns: role (device, pair, target, sensor), device, peer, sensor, evidence
    (higher is more anomalous) and p_value. Rows are ordered by role, then evidence.
    """
    return _frame(workspace, run_id, MEMBERS_SQL, {"incident": incident_id})


def split_targets(
    members: pd.DataFrame, limit: int = MAX_TARGETS_SHOWN
) -> tuple[pd.DataFrame, int]:
    """Keep an incident's `limit` strongest targets among its members.

    A scan touches hundreds of hosts, and a table of all of them hides the
    devices and pairs. Rows of other roles are all kept, in their order.

    Returns:
        The kept rows, and how many target rows were left out.
    """
    is_target = members["role"] == "target"
    targets = members[is_target].sort_values(
        ["evidence", "device"], ascending=[False, True], na_position="last",
        kind="stable")
    shown = pd.concat([members[~is_target], targets.head(limit)])
    return shown.reset_index(drop=True), max(0, len(targets) - limit)


def member_sensor_flags(
    workspace: Workspace, run_id: str, incident_id: str | None = None
) -> pd.DataFrame:
    """Return the flags of incident member sensors during their incidents.

    A flag is "constant in training" (the sensor never changed in the training
    bins) or "outside training range" (its bin mean lies outside the training bin
    means). Only base bins that start inside the incident count, and a member
    sensor without a flag there has no row.

    Args:
        incident_id: one incident, or None for every incident of the run.

    Returns:
        Columns incident_id, device, sensor, flag and bins (flagged base bins),
        ordered by incident, device, sensor and flag.
    """
    return _frame(workspace, run_id, SENSOR_FLAGS_SQL, {"incident": incident_id})


def member_cells(workspace: Workspace, run_id: str) -> pd.DataFrame:
    """Return (rank, incident_id, start, end, device) for each device an incident flags.

    A pair contributes both its ends; targets are left out because they are
    touched, not abnormal.
    """
    return _frame(workspace, run_id, MEMBER_CELLS_SQL)


def periods(workspace: Workspace, run_id: str) -> pd.DataFrame:
    """Return the run's periods (train, calibration, score) as base-bin intervals.

    Columns: period, start and end (UTC, end exclusive), ordered by start.
    """
    return _frame(workspace, run_id, PERIODS_SQL)


def sensor_series(
    workspace: Workspace,
    run_id: str,
    device: str,
    sensor: str,
    scale: int = 1,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Return one sensor's observed bin mean and its expected value over time.

    Columns: start, end, observed, expected, residual (observed minus expected) and
    p_value (small is surprising).
    """
    params = {"device": device, "sensor": sensor, "scale": int(scale),
              "start": _bound(start), "end": _bound(end)}
    return _frame(workspace, run_id, SENSOR_SERIES_SQL, params)


def pair_series(
    workspace: Workspace,
    run_id: str,
    src: str,
    dst: str,
    scale: int = 1,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Return one directed pair's observed and expected weight over time.

    Columns: start, end, observed, expected, residual and p_value.
    """
    params = {"src": src, "dst": dst, "scale": int(scale),
              "start": _bound(start), "end": _bound(end)}
    return _frame(workspace, run_id, PAIR_SERIES_SQL, params)


def context_edges(
    workspace: Workspace,
    run_id: str,
    incident_id: str,
    limit: int = MAX_CONTEXT_EDGES,
) -> pd.DataFrame:
    """Return the pairs within one hop of an incident's devices during it.

    Columns: src, dst, evidence (peak -log10 p-value, higher is more anomalous),
    weight and expected (mean observed and expected events per bin) and missing:
    the pair carried no event during the incident while at least
    `MISSING_EXPECTED_EVENTS` were expected, so that under a Poisson law its
    silence had a chance of at most exp(-3), about 5%. At most `limit` pairs,
    strongest first.

    NOTE: only pairs the run stored as elements appear; a large run that keeps only
    elements with small p-values shows fewer quiet neighbours.
    """
    row = incident(workspace, run_id, incident_id)
    members = incident_members(workspace, run_id, incident_id)
    devices = sorted(
        set(members["device"].dropna()) | set(members["peer"].dropna())
    )
    params = {"scale": int(row["scale"]), "devices": devices,
              "start": row["start"], "end": row["end"], "limit": int(limit),
              "missing_expected": MISSING_EXPECTED_EVENTS}
    return _frame(workspace, run_id, CONTEXT_EDGES_SQL, params)


def training_loss(workspace: Workspace, run_id: str) -> pd.DataFrame:
    """Return the loss per epoch (columns epoch, loss, validation_loss, seconds)."""
    return _frame(workspace, run_id, "SELECT * FROM training_loss ORDER BY epoch")


def page_count(total_rows: int, rows_per_page: int = MAX_HEATMAP_ROWS) -> int:
    """Return how many heatmap pages `total_rows` devices need (at least 1)."""
    return max(1, math.ceil(total_rows / max(1, rows_per_page)))


def pipeline_command(workspace: Workspace) -> list[str]:
    """Return the command line that runs the pipeline on `workspace` with progress.

    The `TGLOC_RUN_ARGS` environment variable, split like a shell line, appends
    further `tgloc run` options, for example `--epochs 10` for a quick run.
    """
    extra = shlex.split(os.environ.get(RUN_ARGS_ENV, ""))
    return [
        sys.executable, "-m", "core.cli", "run",
        "--workspace", str(workspace.root),
        "--progress-file", str(workspace.root / PROGRESS_FILE),
        *extra,
    ]


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """Return the last complete progress record of a running pipeline, if any.

    The pipeline appends one JSON object per line, `{"stage": str, "fraction":
    float}`. A line still being written, or a record of another shape, is skipped.

    Returns:
        `{"stage": str, "fraction": float in [0, 1]}`, or None when the file is
        missing or holds no valid record yet.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - PROGRESS_TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            record = json.loads(line)
            stage = str(record["stage"])
            fraction = float(record["fraction"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(fraction):
            return {"stage": stage, "fraction": min(1.0, max(0.0, fraction))}
    return None


def _connect(workspace: Workspace, run_id: str):
    path = workspace.run_path(workspace.resolve_run(run_id))
    return connect(path, read_only=True, hardened=True)


def _execute(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None
) -> pd.DataFrame:
    try:
        return con.execute(sql, params or {}).df()
    except duckdb.Error as exc:
        raise DataError(
            "the run file cannot be read",
            f"It may come from an older or newer tgloc. DuckDB said: {exc}",
        ) from exc


def _frame(
    workspace: Workspace,
    run_id: str,
    sql: str,
    params: dict[str, Any] | None = None,
) -> pd.DataFrame:
    try:
        with _connect(workspace, run_id) as con:
            return _execute(con, sql, params)
    except TglocError:
        raise
    except duckdb.Error as exc:
        raise DataError(
            f"run {run_id!r} cannot be opened",
            f"The file may be damaged or still being written. DuckDB said: {exc}",
        ) from exc


def _bound(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _timestamp(value: Any) -> pd.Timestamp | None:
    if value is None or pd.isna(value):
        return None
    return _bound(value)


def _assemble_matrix(
    cells: pd.DataFrame, columns: pd.DataFrame, offset: int
) -> HeatmapMatrix:
    rows = cells.drop_duplicates("row").sort_values("row")
    devices = rows["device"].tolist()
    row_position = {int(r): i for i, r in enumerate(rows["row"])}
    evidence = np.full((len(devices), len(columns)), np.nan)

    placed = cells.dropna(subset=["col", "evidence"])
    if not placed.empty:
        row_index = placed["row"].map(row_position).to_numpy(dtype=int)
        col_index = placed["col"].to_numpy(dtype=int)
        evidence[row_index, col_index] = placed["evidence"].to_numpy(dtype=float)

    bins_per_column = int(columns["bins"].max()) if not columns.empty else 1
    total_rows = int(cells["total_rows"].iloc[0]) if not cells.empty else 0
    return HeatmapMatrix(
        devices=devices,
        peaks=rows["peak"].to_numpy(dtype=float),
        evidence=evidence,
        starts=pd.DatetimeIndex(columns["start"]).tz_convert("UTC"),
        ends=pd.DatetimeIndex(columns["end"]).tz_convert("UTC"),
        factor=max(1, bins_per_column),
        total_rows=total_rows,
        offset=offset,
    )

