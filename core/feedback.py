"""Suppression rules that analysts create from false positives, in the analyst file.

A rule is a device set and an incident type. An incident matches a rule when its
member devices (role `device`) are exactly the rule's devices and its type is the
rule's type, so the rule follows the pattern into later runs even though a later
incident of the same devices gets a new id from its new start time.

The dashboard applies the rules when it displays a run: `flag_incidents` marks each
incident with the rule it matches and the maintenance window it falls in, and the
pages hide those incidents unless the analyst turns on their toggle. The run file keeps
every incident, so a rule hides nothing for good.

NOTE: `tgloc incidents` on the command line prints every incident, including those
that a rule or a maintenance window hides in the dashboard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from core.errors import SuppressionNotFoundError
from core.accepted import list_accepted
from core.maintenance import list_maintenance_windows, matching_windows
from core.store import Workspace, init_analyst, sqlite_connect

RULE_COLUMNS = ["rule_id", "incident_id", "devices", "type", "created", "active"]


def add_suppression(
    workspace: Workspace, incident_id: str, devices: Iterable[str], incident_type: str
) -> int:
    """Store a rule for this device set and incident type; return its id.

    An active rule with the same devices and type is reused, so saving twice does
    not list the pattern twice.

    Raises:
        ValueError: `devices` is empty or `incident_type` is blank.
    """
    names = sorted({str(device) for device in devices})
    if not names:
        raise ValueError("a suppression rule needs at least one device; got none")
    if not incident_type:
        raise ValueError("a suppression rule needs an incident type; got none")
    encoded = json.dumps(names, ensure_ascii=False)
    stamp = pd.Timestamp.now(tz="UTC").isoformat()

    init_analyst(workspace.analyst_path)
    with sqlite_connect(workspace.analyst_path) as con:
        found = con.execute(
            "SELECT id FROM suppressions "
            "WHERE devices = ? AND pattern = ? AND active = 1",
            (encoded, incident_type),
        ).fetchone()
        if found is not None:
            return int(found[0])
        cursor = con.execute(
            "INSERT INTO suppressions (incident_id, devices, pattern, created, active) "
            "VALUES (?, ?, ?, ?, 1)",
            (incident_id, encoded, incident_type, stamp),
        )
        return int(cursor.lastrowid)


def delete_suppression(workspace: Workspace, rule_id: int) -> None:
    """Delete suppression rule `rule_id`, so no incident is marked by it any more.

    Raises:
        SuppressionNotFoundError: no rule has that id; the detail lists the ids
            that exist.
    """
    init_analyst(workspace.analyst_path)
    with sqlite_connect(workspace.analyst_path) as con:
        deleted = con.execute("DELETE FROM suppressions WHERE id = ?",
                              (int(rule_id),)).rowcount
        if deleted:
            return
        known = [str(row[0]) for row in con.execute(
            "SELECT id FROM suppressions ORDER BY id").fetchall()]
    raise SuppressionNotFoundError(
        f"suppression rule {rule_id} not found",
        f"Rules in this workspace: {', '.join(known) or 'none'}.",
    )


def list_suppressions(workspace: Workspace) -> pd.DataFrame:
    """Return every rule, newest first.

    Columns: rule_id, incident_id (the false positive it came from), devices (a
    sorted list of names), type, created (ISO-8601, UTC) and active (bool).
    """
    if not workspace.analyst_path.exists():
        return pd.DataFrame(columns=RULE_COLUMNS)
    init_analyst(workspace.analyst_path)
    with sqlite_connect(workspace.analyst_path) as con:
        rows = con.execute(
            "SELECT id, incident_id, devices, pattern, created, active "
            "FROM suppressions ORDER BY id DESC"
        ).fetchall()
    frame = pd.DataFrame(rows, columns=RULE_COLUMNS)
    frame["devices"] = [json.loads(text) for text in frame["devices"]]
    frame["active"] = frame["active"].astype(bool)
    return frame


def matching_rules(incidents: pd.DataFrame, rules: pd.DataFrame) -> pd.Series:
    """Return, per incident, the id of the first active rule it matches, else NA.

    Args:
        incidents: rows with `type` and `member_devices` (a list of device names).
        rules: the frame of `list_suppressions`.
    """
    active = rules[rules["active"]] if not rules.empty else rules
    lookup = {
        (tuple(row.devices), row.type): int(row.rule_id)
        for row in active.itertuples(index=False)
    }
    matches = []
    for devices, kind in zip(incidents["member_devices"], incidents["type"]):
        # DuckDB returns NULL, not an empty list, for an incident without devices.
        names = tuple(sorted(devices)) if devices is not None else ()
        matches.append(lookup.get((names, kind)))
    return pd.Series(matches, index=incidents.index, dtype="Int64")


def flag_incidents(workspace: Workspace, incidents: pd.DataFrame) -> pd.DataFrame:
    """Return `incidents` with the analyst file's feedback on each one.

    Adds the columns suppressed_by (id of the active suppression rule it matches),
    maintenance (id of the maintenance window it falls in) and accepted_by (the
    analyst who accepted its behaviour as normal), each NA where none applies.

    Args:
        incidents: rows of `core.views.incidents` (incident_id, type, start, end
            and member_devices).
    """
    flagged = incidents.copy()
    if flagged.empty:
        for column in ("suppressed_by", "maintenance"):
            flagged[column] = pd.Series(dtype="Int64")
        flagged["accepted_by"] = pd.Series(dtype=object)
        return flagged
    flagged["suppressed_by"] = matching_rules(flagged, list_suppressions(workspace))
    flagged["maintenance"] = matching_windows(
        flagged, list_maintenance_windows(workspace))
    accepted = list_accepted(workspace).drop_duplicates("incident_id")
    by_incident = dict(zip(accepted["incident_id"], accepted["accepted_by"]))
    flagged["accepted_by"] = flagged["incident_id"].map(by_incident)
    return flagged
