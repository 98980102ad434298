"""Incident exports: one standalone HTML report, and members as CSV or JSON.

The HTML report carries plotly.js inline once, so it opens offline and loads nothing
from another host (about 4.8 MB with plotly 7.1, nearly all of it plotly.js). Every text
from the data is escaped with `html.escape`, and Plotly serializes figure data with
`<` and `>` escaped, so a device name cannot close the script that contains it.
CSV cells pass through `core.cli.sanitize_cell`, so a spreadsheet shows a name such
as `=cmd|...` as text instead of evaluating it, and a downloaded CSV file starts with
a UTF-8 byte order mark, so Excel reads its names as UTF-8. JSON keeps every name exactly, as
`tgloc incidents --format json` does: a JSON reader does not evaluate formulas.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.cli import CSV_FILE_ENCODING, sanitize_cell

MEMBER_COLUMNS = ["role", "device", "peer", "sensor", "evidence", "p_value"]

PAGE_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #1c1c1c; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f2f2f2; }
.meta td:first-child { font-weight: bold; }
"""


def members_csv_file(members: pd.DataFrame) -> bytes:
    """Return the members CSV as the bytes of a file for download.

    The bytes are UTF-8 with a byte order mark (`CSV_FILE_ENCODING`), so Excel
    reads non-ASCII device names as UTF-8 instead of the locale's code page.
    """
    return members_csv(members).encode(CSV_FILE_ENCODING)


def members_csv(members: pd.DataFrame) -> str:
    """Return an incident's members as CSV text, formula-like cells quoted."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MEMBER_COLUMNS)
    for record in _member_records(members):
        writer.writerow([record[column] for column in MEMBER_COLUMNS])
    return buffer.getvalue()


def members_json(incident: dict[str, Any], members: pd.DataFrame) -> str:
    """Return the incident's id, interval, type and members as JSON text.

    Names are kept exactly; numbers that are missing become null.
    """
    document = {
        "incident_id": str(incident["incident_id"]),
        "type": str(incident["type"]),
        "start": pd.Timestamp(incident["start"]).isoformat(),
        "end": pd.Timestamp(incident["end"]).isoformat(),
        "severity": _number(incident.get("severity")),
        "score": _number(incident.get("score")),
        "p_value": _number(incident.get("p_value")),
        "false_alarms_per_day": _number(incident.get("false_alarms_per_day")),
        "members": _member_records(members, sanitize=False),
    }
    return json.dumps(document, ensure_ascii=False, indent=2)


def incident_html(
    incident: dict[str, Any],
    summary: str,
    members: pd.DataFrame,
    figures: Sequence[tuple[str, go.Figure]],
    status: dict[str, Any] | None = None,
) -> str:
    """Build a standalone HTML report of one incident with its figures inline.

    Args:
        incident: the incident's row (incident_id, rank, type, start, end, ...).
        summary: a plain-language sentence about the incident.
        members: the members table as `core.views.incident_members` returns it.
        figures: (title, figure) pairs, drawn in this order.
        status: the analyst's status, owner and notes, if any.
    """
    status = status or {}
    rows = [
        ("Incident", incident["incident_id"]),
        ("Rank", incident.get("rank")),
        ("Type", incident["type"]),
        ("Interval (UTC)", f"{pd.Timestamp(incident['start']):%Y-%m-%d %H:%M} to "
                           f"{pd.Timestamp(incident['end']):%Y-%m-%d %H:%M}"),
        ("Status", status.get("status") or "new"),
        ("Owner", status.get("owner") or ""),
        ("Notes", status.get("notes") or ""),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Incident {_text(incident['incident_id'])}</title>",
        f"<style>{PAGE_STYLE}</style></head><body>",
        f"<h1>Incident {_text(incident['incident_id'])}</h1>",
        f"<p>{_text(summary)}</p>",
        '<table class="meta">',
        *(f"<tr><td>{_text(name)}</td><td>{_text(value)}</td></tr>"
          for name, value in rows),
        "</table>",
        "<h2>Members</h2>",
        _members_table(members),
    ]
    for position, (title, figure) in enumerate(figures):
        parts.append(f"<h2>{_text(title)}</h2>")
        # plotly.js goes inline with the first figure only; the rest reuse it.
        parts.append(figure.to_html(full_html=False, include_plotlyjs=position == 0))
    parts.append("</body></html>")
    return "\n".join(parts)


def _members_table(members: pd.DataFrame) -> str:
    header = "".join(f"<th>{_text(column)}</th>" for column in MEMBER_COLUMNS)
    lines = [f"<table><tr>{header}</tr>"]
    for record in members[MEMBER_COLUMNS].itertuples(index=False):
        cells = "".join(f"<td>{_text(_display(value))}</td>" for value in record)
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _member_records(members: pd.DataFrame, sanitize: bool = True) -> list[dict[str, Any]]:
    """Return the member rows as records, text cells through `sanitize_cell` when
    `sanitize` is set."""
    clean = sanitize_cell if sanitize else (lambda value: value)
    records = []
    for record in members[MEMBER_COLUMNS].to_dict(orient="records"):
        cleaned = {}
        for column, value in record.items():
            if column in ("evidence", "p_value"):
                cleaned[column] = _number(value)
            else:
                cleaned[column] = None if _missing(value) else clean(str(value))
        records.append(cleaned)
    return records


def _number(value: Any) -> float | None:
    if _missing(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) \
        or value is pd.NA


def _display(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value))
