"""Withdrawing an ingest: remove exactly the rows that one load stored.

Every row a load stores carries its `report_id` (events, measurements, event
attributes, quarantine, devices and links), and the ground-truth intervals it read
from a label column are named `label-<report_id>-<n>`. Withdrawing deletes those
rows in one DuckDB transaction and marks the report withdrawn, so the same file can
be loaded again as new. The report itself stays, as the record of what happened.

Rows that a load removed from earlier loads are not restored: a device or link row
it replaced, or a measurement it replaced under the "last" duplicate policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from core import store
from core.errors import IngestError
from core.ingest import WRITE_RETRY_SECONDS
from core.store import Workspace

log = logging.getLogger(__name__)

# Tables whose rows carry the report that stored them.
REPORT_TABLES = ("events", "event_attributes", "measurements", "quarantine",
                 "devices", "links")


@dataclass
class Withdrawal:
    """Rows removed per table by withdrawing one report, and the reports marked."""

    report_id: int
    file: str
    removed: dict[str, int] = field(default_factory=dict)
    reports: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """Return one line for the CLI: the report, the file and the rows removed."""
        parts = [f"{count} {table} row{'' if count == 1 else 's'}"
                 for table, count in self.removed.items() if count]
        removed = ", ".join(parts) if parts else "no rows"
        return f"report {self.report_id} ({self.file}) withdrawn: {removed} removed"


def withdraw_ingest(workspace: Workspace, report_id: int) -> Withdrawal:
    """Remove the rows that ingest report `report_id` stored, in one transaction.

    Reports that found the same content already loaded by this one are marked
    withdrawn with it, because they stored nothing of their own.

    Raises:
        IngestError: the report does not exist, is already withdrawn, or a later
            load of the same growing file continues it (withdraw that one first).
    """
    if not workspace.store_path.is_file():
        raise IngestError(f"no store in {workspace.root}",
                          "Check --workspace; nothing has been ingested there.")
    with store.connect(workspace.store_path,
                       retry_seconds=WRITE_RETRY_SECONDS) as con:
        store.ensure_store_schema(con)
        con.execute("BEGIN TRANSACTION")
        try:
            result = _withdraw(con, int(report_id))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    log.info("withdrew report %d: %s", result.report_id, result.removed)
    return result


def _withdraw(con, report_id: int) -> Withdrawal:
    found = con.execute(
        "SELECT file, path, options, bytes_end, withdrawn FROM ingest_reports "
        "WHERE report_id = ?", [report_id],
    ).fetchall()
    if not found:
        known = con.execute(
            "SELECT report_id FROM ingest_reports WHERE withdrawn IS NULL "
            "ORDER BY report_id DESC LIMIT 10").fetchall()
        listed = ", ".join(str(row[0]) for row in known) or "none"
        raise IngestError(
            f"ingest report {report_id} not found",
            f"Reports that can be withdrawn (latest first, at most 10): {listed}.",
        )
    file, path, options, bytes_end, withdrawn = found[0]
    if withdrawn is not None:
        raise IngestError(
            f"ingest report {report_id} was already withdrawn "
            f"({pd.Timestamp(withdrawn).isoformat()})",
            "Its rows are gone; nothing to do.",
        )
    continued = con.execute(
        "SELECT min(report_id) FROM ingest_reports WHERE report_id > $id "
        "AND path = $path AND options IS NOT DISTINCT FROM $options "
        "AND bytes_start = $end AND bytes_start > 0 AND withdrawn IS NULL "
        "AND already_loaded IS NULL",
        {"id": report_id, "path": path, "options": options, "end": bytes_end},
    ).fetchall()[0][0]
    if continued is not None:
        raise IngestError(
            f"ingest report {report_id} cannot be withdrawn before report "
            f"{continued}",
            f"Report {continued} read the rest of {file} after it. Withdraw report "
            f"{continued} first, then report {report_id}.",
        )

    result = Withdrawal(report_id, file)
    for table in REPORT_TABLES:
        # The table name is a module constant, never input text.
        count = con.execute(
            f"SELECT count(*) FROM {table} WHERE report_id = ?", [report_id]
        ).fetchall()[0][0]
        con.execute(f"DELETE FROM {table} WHERE report_id = ?", [report_id])
        result.removed[table] = int(count)
    pattern = f"label-{report_id}-%"
    labels = con.execute("SELECT count(*) FROM ground_truth WHERE anomaly_id LIKE ?",
                         [pattern]).fetchall()[0][0]
    con.execute("DELETE FROM ground_truth WHERE anomaly_id LIKE ?", [pattern])
    result.removed["ground_truth"] = int(labels)

    stamp = pd.Timestamp.now(tz="UTC").to_pydatetime()
    marked = con.execute(
        "UPDATE ingest_reports SET withdrawn = $stamp "
        "WHERE (report_id = $id OR already_loaded = $id) AND withdrawn IS NULL "
        "RETURNING report_id",
        {"stamp": stamp, "id": report_id},
    ).fetchall()
    result.reports = sorted(int(row[0]) for row in marked)
    return result
