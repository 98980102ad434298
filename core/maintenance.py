"""Maintenance windows that analysts declare, in the analyst file.

A window is a time interval, a device set (or every device) and a reason. An incident
is "during maintenance" when its interval overlaps a window and the window covers
every device, or at least one of the incident's member devices (role `device`).
Windows change what the dashboard shows and nothing else.

NOTE: the pipeline does not read maintenance windows, so their bins are still scored
and can still produce incidents. The dashboard marks those incidents and can hide them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from core.store import Workspace, init_analyst, sqlite_connect

WINDOW_COLUMNS = ["window_id", "start", "end", "devices", "reason", "created"]


def add_maintenance_window(
    workspace: Workspace,
    start: object,
    end: object,
    devices: Iterable[str] | None,
    reason: str,
) -> int:
    """Store a maintenance window; return its id.

    Args:
        start: first instant of the window; a time without a zone is read as UTC.
        end: end of the window (exclusive), after `start`.
        devices: the devices under maintenance; None or empty for every device.
        reason: why the window was declared, shown beside it.

    Raises:
        ValueError: a time cannot be read, `end` is not after `start`, or `reason`
            is blank.
    """
    first = _utc(start, "start")
    last = _utc(end, "end")
    if last <= first:
        raise ValueError(
            f"a maintenance window must end after it starts; got start {first} and "
            f"end {last}. Set an end time later than the start time."
        )
    if not str(reason or "").strip():
        raise ValueError("a maintenance window needs a reason; got an empty one")
    names = sorted({str(device) for device in devices or ()})
    encoded = json.dumps(names, ensure_ascii=False) if names else None
    stamp = pd.Timestamp.now(tz="UTC").isoformat()

    init_analyst(workspace.analyst_path)
    with sqlite_connect(workspace.analyst_path) as con:
        cursor = con.execute(
            'INSERT INTO maintenance_windows (start, "end", devices, note, created) '
            "VALUES (?, ?, ?, ?, ?)",
            (first.isoformat(), last.isoformat(), encoded, str(reason).strip(), stamp),
        )
        return int(cursor.lastrowid)


def delete_maintenance_window(workspace: Workspace, window_id: int) -> bool:
    """Delete one window; return False when no window has this id."""
    if not workspace.analyst_path.exists():
        return False
    with sqlite_connect(workspace.analyst_path) as con:
        cursor = con.execute("DELETE FROM maintenance_windows WHERE id = ?",
                             (int(window_id),))
        return cursor.rowcount > 0


def list_maintenance_windows(workspace: Workspace) -> pd.DataFrame:
    """Return every maintenance window, latest start first.

    Columns: window_id, start and end (UTC timestamps, end exclusive), devices (a
    sorted list of names, None for every device), reason and created (ISO-8601).
    """
    if not workspace.analyst_path.exists():
        return pd.DataFrame(columns=WINDOW_COLUMNS)
    init_analyst(workspace.analyst_path)
    with sqlite_connect(workspace.analyst_path) as con:
        rows = con.execute(
            'SELECT id, start, "end", devices, note, created FROM maintenance_windows '
            "ORDER BY start DESC, id DESC"
        ).fetchall()
    frame = pd.DataFrame(rows, columns=WINDOW_COLUMNS)
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    frame["end"] = pd.to_datetime(frame["end"], utc=True)
    frame["devices"] = [json.loads(text) if text else None for text in frame["devices"]]
    return frame


def matching_windows(incidents: pd.DataFrame, windows: pd.DataFrame) -> pd.Series:
    """Return, per incident, the id of the first window it falls in, else NA.

    Args:
        incidents: rows with `start`, `end` and `member_devices` (a list of names,
            or None).
        windows: the frame of `list_maintenance_windows`.
    """
    matches = []
    for start, end, devices in zip(incidents["start"], incidents["end"],
                                   incidents["member_devices"]):
        first, last = pd.Timestamp(start), pd.Timestamp(end)
        members = set(devices) if devices is not None else set()
        found = None
        for window in windows.itertuples(index=False):
            if not (window.start < last and window.end > first):
                continue
            if window.devices is None or members & set(window.devices):
                found = int(window.window_id)
                break
        matches.append(found)
    return pd.Series(matches, index=incidents.index, dtype="Int64")


def _utc(value: object, name: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"invalid maintenance window {name} {value!r}; write a time like "
            "2026-03-01T08:00 (UTC)"
        ) from exc
    if pd.isna(stamp):
        raise ValueError(f"the maintenance window {name} is missing; give a UTC time")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
