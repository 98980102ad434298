"""Behaviour that analysts accept as the new normal, and its use in the next run.

Accepting an incident stores its id, members, interval, the analyst's name and the
time in the analyst file. The next `tgloc run` on the workspace reads these records
and moves the base bins that each accepted interval overlaps into the training
period (`apply_accepted`), for every device, because a bin is one snapshot of the
whole graph. The model then learns that behaviour, the standardization and the
reference pairs include it, and those bins are no longer scored. The run records in
its `run_info` which intervals it trained on and which fell outside its data.

NOTE: calibration is not recomputed on the accepted bins. They join the training
period only, and the calibration bins stay those of the reference period.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.store import Workspace, init_analyst, sqlite_connect

ACCEPTED_COLUMNS = ["accept_id", "incident_id", "run_id", "members", "start", "end",
                    "accepted_by", "created"]
MEMBER_FIELDS = ("role", "device", "peer", "sensor")


def accept_incident(
    workspace: Workspace,
    run_id: str,
    incident_id: str,
    members: pd.DataFrame,
    start: object,
    end: object,
    accepted_by: str,
) -> int:
    """Record an incident's behaviour as accepted; return the record's id.

    Accepting the same incident id again returns the existing record.

    Args:
        run_id: the run the incident comes from.
        members: the incident's members (columns role, device, peer, sensor).
        start: incident start (UTC).
        end: incident end (UTC, exclusive).
        accepted_by: the analyst's name.

    Raises:
        ValueError: `accepted_by` is blank, or `end` is not after `start`.
    """
    who = str(accepted_by or "").strip()
    if not who:
        raise ValueError("accepting behaviour as normal needs the analyst's name; "
                         "got an empty one")
    first, last = _utc(start), _utc(end)
    if last <= first:
        raise ValueError(f"an accepted interval must end after it starts; got "
                         f"{first} to {last}")
    records = [
        {field: (None if pd.isna(value) else str(value))
         for field, value in zip(MEMBER_FIELDS, row)}
        for row in members[list(MEMBER_FIELDS)].itertuples(index=False)
    ]
    stamp = pd.Timestamp.now(tz="UTC").isoformat()

    init_analyst(workspace.analyst_path)
    with sqlite_connect(workspace.analyst_path) as con:
        found = con.execute("SELECT id FROM accepted_behaviour WHERE incident_id = ?",
                            (incident_id,)).fetchone()
        if found is not None:
            return int(found[0])
        cursor = con.execute(
            "INSERT INTO accepted_behaviour (incident_id, run_id, members, start, "
            '"end", accepted_by, created) VALUES (?, ?, ?, ?, ?, ?, ?)',
            (incident_id, run_id, json.dumps(records, ensure_ascii=False),
             first.isoformat(), last.isoformat(), who, stamp),
        )
        return int(cursor.lastrowid)


def list_accepted(workspace: Workspace) -> pd.DataFrame:
    """Return every accepted record, oldest first.

    Columns: accept_id, incident_id, run_id, members (a list of dicts with role,
    device, peer and sensor), start and end (UTC timestamps), accepted_by and
    created (ISO-8601, UTC).
    """
    if not workspace.analyst_path.exists():
        return pd.DataFrame(columns=ACCEPTED_COLUMNS)
    init_analyst(workspace.analyst_path)
    with sqlite_connect(workspace.analyst_path) as con:
        rows = con.execute(
            'SELECT id, incident_id, run_id, members, start, "end", accepted_by, '
            "created FROM accepted_behaviour ORDER BY id"
        ).fetchall()
    frame = pd.DataFrame(rows, columns=ACCEPTED_COLUMNS)
    frame["members"] = [json.loads(text) for text in frame["members"]]
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    frame["end"] = pd.to_datetime(frame["end"], utc=True)
    return frame


def apply_accepted(
    periods: np.ndarray,
    bin_starts_us: np.ndarray,
    bin_width_us: int,
    accepted: pd.DataFrame,
) -> tuple[np.ndarray, list[dict]]:
    """Move the bins that accepted intervals overlap into the training period.

    Gap bins stay gaps, because the model never encodes them, and calibration bins
    stay calibration bins, because they are already reference data.

    Args:
        periods: shape [T], str, the period of each base bin.
        bin_starts_us: shape [T], int64, each base bin's start in epoch microseconds.
        bin_width_us: base bin width in microseconds.
        accepted: the frame of `list_accepted`.

    Returns:
        The new periods, and one record per accepted interval: accept_id,
        incident_id, start, end, accepted_by and bins (base bins of the interval
        now in the reference period, 0 when it lies outside the run's data).
    """
    periods = periods.astype(object).copy()
    applied = []
    for row in accepted.itertuples(index=False):
        first = row.start.value // 1000
        last = row.end.value // 1000
        overlaps = (bin_starts_us < last) & (bin_starts_us + bin_width_us > first)
        chosen = overlaps & (periods != "gap") & (periods != "calibration")
        periods[chosen] = "train"
        reference = overlaps & np.isin(periods, ("train", "calibration"))
        applied.append({
            "accept_id": int(row.accept_id), "incident_id": row.incident_id,
            "start": row.start.isoformat(), "end": row.end.isoformat(),
            "accepted_by": row.accepted_by, "bins": int(reference.sum()),
        })
    return periods.astype(str), applied


def _utc(value: object) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
