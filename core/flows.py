"""Import of network flow CSVs in the CICFlowMeter layout.

CICFlowMeter writes one flow a row with about 80 columns. Files of this family
(CIC-IDS2017, CSE-CIC-IDS2018 and exports of the tool itself) have details that
the general ingest (`core.ingest`) stops on or reads wrongly. This module maps
them first and then hands the rows to the general path. That path stores them
with the same report, quarantine and already-loaded checks as any events file:

- Header cells are padded with spaces (` Source IP`, ` Timestamp`). They are
  trimmed, and a name that repeats (CIC-IDS2017 has `Fwd Header Length` twice)
  gets a suffix `.1`, `.2` in order, so no column is lost.
- The columns are found by name, case-insensitively: `Source IP` or `Src IP`,
  `Destination IP` or `Dst IP`, `Timestamp`, `Protocol` and `Label`. A `--column`
  mapping given by the caller takes precedence.
- Timestamps such as `03/07/2017 08:55:58` or `3/7/2017 8:55` put the day or the
  month first. The order is detected from a value whose day is above 12, or
  declared with `date_order`. A file where no value settles it is rejected with an
  error that names the column and the option that settles it.
- The event weight is the flow's bytes (forward plus backward payload), its
  packets (forward plus backward), or 1 per flow. The sum is stored as a column
  `total_bytes` or `total_packets`. A row whose parts are missing, not numbers or
  negative is rejected with the column and value.
- `Label` is read as the general path reads labels: `BENIGN` is normal and every
  other value names an attack, kept in `events.attack`. The other numeric
  columns are stored per event in `event_attributes`.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from core import ingest, reading
from core.errors import IngestError
from core.store import Workspace

WEIGHTS = ("bytes", "packets", "count")
ROLE_ALIASES = {
    "src": ("source ip", "src ip"),
    "dst": ("destination ip", "dst ip"),
    "time": ("timestamp",),
    "protocol": ("protocol",),
}
LABEL_ALIASES = ("label",)
# The forward and the backward column of each weight, as CIC-IDS2017,
# CSE-CIC-IDS2018 and later CICFlowMeter exports name them.
WEIGHT_PARTS = {
    "bytes": (("total length of fwd packets", "totlen fwd pkts",
               "total length of fwd packet"),
              ("total length of bwd packets", "totlen bwd pkts",
               "total length of bwd packet")),
    "packets": (("total fwd packets", "tot fwd pkts", "total fwd packet"),
                ("total backward packets", "tot bwd pkts", "total bwd packets")),
}
WEIGHT_COLUMNS = {"bytes": "total_bytes", "packets": "total_packets"}


def ingest_flows(
    workspace: Workspace, path: str | Path, weight: str = "bytes",
    options: ingest.IngestOptions | None = None,
) -> ingest.IngestReport:
    """Store the flows of a CICFlowMeter CSV file as events.

    Args:
        workspace: the workspace whose store receives the events.
        path: the CSV file, with a header line.
        weight: "bytes", "packets" or "count" (weight 1 per flow).
        options: how to read times and cells: `date_order`, `timezone`,
            `time_format`, `encoding`, `sentinels`, `ignore_columns`, and
            `columns` to override a column found by name. Target "events".

    Raises:
        IngestError: the file cannot be read, a required column is missing, the
            day/month order of the timestamps is ambiguous, or an option is
            invalid. Nothing of the file is stored then.
    """
    options = options or ingest.IngestOptions(target="events")
    if weight not in WEIGHTS:
        raise IngestError(f"invalid flow weight {weight!r}",
                          f"--flow-weight must be one of {', '.join(WEIGHTS)}.")
    if options.target != "events":
        raise IngestError(f"flows are events, not {options.target}",
                          "Leave --target out, or set it to events.")
    path = Path(path)
    data = ingest.read_file(path)

    table = reading.read_table(data, "csv", path.name, options.encoding)
    frame, notes = _trimmed_header(table.frame)
    notes[:0] = table.notes
    columns = _find_columns(frame, options, path.name)
    rejected = [table.rejected]
    lines = table.lines
    if weight == "count":
        notes.append("weight: 1 per flow")
    else:
        parts = _weight_parts(frame, weight, path.name)
        name, total, problems = _weight(frame, parts, weight)
        rejected.append(_rejections(frame, lines, problems))
        keep = problems["reason"].isna().to_numpy()
        frame = frame.assign(**{name: total})[keep].reset_index(drop=True)
        lines = lines[keep]
        columns["weight"] = name
        notes.append(f"weight: {name} = {' + '.join(parts)}")

    label = _find(frame, LABEL_ALIASES)
    flow_options = replace(
        options, columns={**columns, **options.columns},
        label_column=options.label_column or label,
        weight_policy="count" if weight == "count" else options.weight_policy,
    )
    notes.insert(0, f"format flows: CICFlowMeter columns, weight {weight}")
    digest = hashlib.sha256(data)
    digest.update(f"\x00flows\x00{weight}".encode())
    return ingest.ingest_parsed_events(
        workspace, frame, lines, flow_options, str(path), digest.hexdigest(),
        notes, pd.concat(rejected, ignore_index=True),
    )


def _trimmed_header(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Trim the header names and number the repeats of a name; note both."""
    names = [str(c) for c in frame.columns]
    trimmed = [name.strip() for name in names]
    seen: dict[str, int] = {}
    unique = []
    repeated = []
    for name in trimmed:
        count = seen.get(name.lower(), 0)
        seen[name.lower()] = count + 1
        if count:
            repeated.append(name)
            name = f"{name}.{count}"
        unique.append(name)
    notes = []
    changed = sum(a != b for a, b in zip(names, trimmed))
    if changed:
        notes.append(f"{changed} header name{_plural(changed)} trimmed of spaces")
    for name in dict.fromkeys(repeated):
        count = seen[name.lower()]
        renamed = ", ".join(f"{name}.{k}" for k in range(1, count))
        notes.append(f"column {name!r} appears {count} times; the repeats are "
                     f"read as {renamed}")
    return frame.set_axis(unique, axis=1), notes


def _find(frame: pd.DataFrame, aliases: tuple[str, ...]) -> str | None:
    by_lower = {c.lower(): c for c in frame.columns}
    return next((by_lower[a] for a in aliases if a in by_lower), None)


def _find_columns(
    frame: pd.DataFrame, options: ingest.IngestOptions, name: str,
) -> dict[str, str]:
    """Return our column name to the file's, for src, dst, time and protocol."""
    columns = {}
    for role, aliases in ROLE_ALIASES.items():
        found = _find(frame, aliases)
        if found is not None:
            columns[role] = found
        elif role != "protocol" and role not in options.columns:
            raise IngestError(
                f"no {role} column found in {name} for --format flows",
                f"Looked for {' or '.join(repr(a) for a in aliases)} (any case). "
                f"The file has columns: {', '.join(frame.columns[:20])}"
                f"{' ...' if len(frame.columns) > 20 else ''}. Map one with "
                f"--column {role}=COLUMN, or load the file without --format flows.",
            )
    return columns


def _weight_parts(frame: pd.DataFrame, weight: str, name: str) -> list[str]:
    """Return the forward and the backward column that make up `weight`."""
    parts = []
    for aliases in WEIGHT_PARTS[weight]:
        column = _find(frame, aliases)
        if column is None:
            other = "packets" if weight == "bytes" else "bytes"
            raise IngestError(
                f"no {aliases[0]!r} column found in {name} for --flow-weight {weight}",
                f"Looked for {' or '.join(repr(a) for a in aliases)} (any case). "
                f"Use --flow-weight {other} or --flow-weight count.",
            )
        parts.append(column)
    return parts


def _weight(
    frame: pd.DataFrame, parts: list[str], weight: str,
) -> tuple[str, np.ndarray, pd.DataFrame]:
    """Sum the parts of each row's weight.

    Returns:
        name: the weight column's name, one the file does not use.
        total: shape [rows], the sums (0 where a part is unusable).
        problems: per row, the first unusable part's column and the reason
            (None where the row is usable).
    """
    name = WEIGHT_COLUMNS[weight]
    existing = {c.lower() for c in frame.columns}
    while name.lower() in existing:
        name += "_sum"

    total = np.zeros(len(frame))
    problems = pd.DataFrame({"column": None, "reason": None}, index=frame.index,
                            dtype=object)
    for column in parts:
        text = frame[column].fillna("").astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce")
        checks = [
            (text == "", f"missing {column}"),
            (values.isna() & (text != ""), f"{column} is not a number"),
            (~np.isfinite(values.fillna(0)), f"{column} is not finite"),
            (values < 0, f"negative {column}"),
        ]
        for mask, reason in checks:
            hit = mask & problems["reason"].isna()
            problems.loc[hit, "reason"] = reason
            problems.loc[hit, "column"] = column
        total += values.fillna(0).to_numpy()
    return name, total, problems


def _rejections(
    frame: pd.DataFrame, lines: np.ndarray, problems: pd.DataFrame,
) -> pd.DataFrame:
    """Return the rows with a problem in the quarantine's layout."""
    picked = np.flatnonzero(problems["reason"].notna().to_numpy())
    names = list(frame.columns)
    rows = []
    for i in picked:
        column = problems["column"].iloc[i]
        cells = frame.iloc[i].tolist()
        rows.append({
            "line": int(lines[i]), "column": column,
            "value": reading.printable(str(frame[column].iloc[i])),
            "reason": problems["reason"].iloc[i],
            "record": reading.record_text(names, cells),
        })
    result = pd.DataFrame(rows, columns=list(reading.REJECTED_COLUMNS))
    result["line"] = result["line"].astype(np.int64)
    return result


def _plural(count: int) -> str:
    return "" if count == 1 else "s"
