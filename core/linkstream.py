"""Import of headerless integer link streams `u,v,t` with a declared slot clock.

Files of this family (the MAD link-stream benchmarks, many SocioPatterns exports)
carry one event per line as three integers: two node ids and a slot index. The slot
index is a clock only once a slot length and the start of slot 0 are declared, so
the import turns slot t into the instant `origin + t * slot_seconds` and hands the
events to the general ingest (`core.ingest`), which stores them with the same
report, quarantine and already-loaded checks as any other events file.

Undirected streams list each contact once, in either direction. With `undirected`
every contact is stored as the canonical ordered pair (smaller id, larger id), so a
pair has one element whichever way its contacts were written, and its pair score is
symmetric by construction. The node features then split a node's contacts into
"out" (towards larger ids) and "in" (towards smaller ids); their sum is the node's
contact count.

Empty slots need nothing stored: binning keeps every bin between the first and the
last event, empty or not (`core.snapshots`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from core import ingest, reading
from core.errors import IngestError
from core.store import Workspace

DEFAULT_ORIGIN = "1970-01-01T00:00:00Z"
FIELDS = ("u", "v", "t")
MAX_SLOT_SECONDS = 86_400 * 366


def slot_origin_us(origin: str) -> int:
    """Return the start of slot 0 in epoch microseconds (UTC).

    Raises:
        IngestError: `origin` is not an ISO-8601 time.
    """
    try:
        stamp = pd.Timestamp(origin)
    except (ValueError, TypeError) as exc:
        raise IngestError(
            f"invalid origin {origin!r}",
            "Give the start of slot 0 as an ISO-8601 time such as "
            "2024-03-04T08:00:00Z.",
        ) from exc
    if stamp is pd.NaT:
        raise IngestError(f"invalid origin {origin!r}",
                          "Give the start of slot 0 as an ISO-8601 time.")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    stamp = stamp.tz_convert("UTC")
    return int(stamp.value // 1000)


def ingest_uvt(
    workspace: Workspace, path: str | Path, slot_seconds: float,
    origin: str = DEFAULT_ORIGIN, undirected: bool = False,
) -> ingest.IngestReport:
    """Store the events of a headerless `u,v,t` file of integers.

    Event (u, v, t) becomes an event from u to v at `origin + t * slot_seconds`,
    weight 1. A line that is not three comma-separated integers with t >= 0 is
    rejected into the quarantine with its line number and reason; the rest is
    stored in one transaction. A file whose content was already loaded with the
    same slot clock and direction is not stored again.

    Args:
        workspace: the workspace whose store receives the events.
        path: the file; line 1 is the first event (there is no header line).
        slot_seconds: the length of one slot in seconds, > 0.
        origin: ISO-8601 start of slot 0 (default 1970-01-01T00:00:00Z).
        undirected: store each contact as (smaller id, larger id).

    Raises:
        IngestError: the file cannot be read, or an option is invalid.
    """
    number = isinstance(slot_seconds, (int, float))
    if not (number and 0 < slot_seconds <= MAX_SLOT_SECONDS):
        raise IngestError(
            f"invalid slot length {slot_seconds!r}",
            f"--slot-seconds must be a number of seconds in (0, {MAX_SLOT_SECONDS}].",
        )
    origin_us = slot_origin_us(origin)
    path = Path(path)
    data = ingest.read_file(path)

    frame, lines, rejected, notes = parse_uvt(data, undirected)
    micros = origin_us + np.round(frame["t"].to_numpy(np.float64) * slot_seconds * 1e6)
    events = pd.DataFrame({
        "time": pd.to_datetime(micros.astype(np.int64), unit="us", utc=True),
        "src": frame["u"].astype(str),
        "dst": frame["v"].astype(str),
    })
    clock = f"format uvt: slot t -> {origin} + t * {slot_seconds:g} s"
    if undirected:
        clock += "; undirected, stored as (smaller id, larger id)"
    notes.insert(0, clock)
    # The slot clock and direction are part of what is stored, so the same bytes
    # read with another clock are a different load.
    digest = hashlib.sha256(data)
    clock = f"\x00uvt\x00{slot_seconds!r}\x00{origin_us}\x00{undirected}"
    digest.update(clock.encode())
    options = ingest.IngestOptions(target="events")
    return ingest.ingest_parsed_events(workspace, events, lines, options, str(path),
                                       digest.hexdigest(), notes, rejected)


def parse_uvt(
    data: bytes, undirected: bool,
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, list[str]]:
    """Split `data` into u, v, t integers, with the rows that are not.

    Returns:
        frame: columns u, v, t (int64), one row per valid line.
        lines: shape [rows], the file line of each row (line 1 is the first).
        rejected: the invalid lines in the quarantine's layout.
        notes: what the parse changed, for the ingest report.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(
            "the file is not UTF-8 text",
            f"Byte {exc.start} cannot be decoded; a u,v,t file holds digits and "
            "commas only.",
        ) from exc
    raw_lines = text.splitlines()
    values, lines, bad = [], [], []
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        cells = [cell.strip() for cell in raw.split(",")]
        reason = _invalid_reason(cells, number)
        if reason is None:
            values.append((int(cells[0]), int(cells[1]), int(cells[2])))
            lines.append(number)
        else:
            bad.append({"line": number, "column": None, "value": reading.printable(raw),
                        "reason": reason,
                        "record": reading.record_text(list(FIELDS), cells)})
    frame = pd.DataFrame(values if values else np.zeros((0, 3), np.int64),
                         columns=list(FIELDS)).astype(np.int64)
    notes: list[str] = []
    if undirected and len(frame):
        swapped = frame["u"] > frame["v"]
        low = np.minimum(frame["u"], frame["v"])
        high = np.maximum(frame["u"], frame["v"])
        frame["u"], frame["v"] = low, high
        if swapped.any():
            count = int(swapped.sum())
            notes.append(f"{count} contact{'' if count == 1 else 's'} given as "
                         "(larger id, smaller id) stored as (smaller id, larger id)")
    rejected = pd.DataFrame(bad,
                            columns=["line", "column", "value", "reason", "record"])
    rejected["line"] = rejected["line"].astype(np.int64)
    return frame, np.asarray(lines, dtype=np.int64), rejected, notes


def _invalid_reason(cells: list[str], line: int) -> str | None:
    """Return why a split line is not an event `u,v,t`, or None when it is one."""
    if len(cells) != 3:
        return f"{len(cells)} fields; a uvt line has 3: u,v,t"
    for name, cell in zip(FIELDS, cells):
        if not _is_integer(cell):
            hint = " (the uvt format has no header line)" if line == 1 else ""
            return f"{name} {cell!r} is not a whole number{hint}"
    if int(cells[2]) < 0:
        return f"slot t {cells[2]} is negative; slots count from 0"
    return None


def _is_integer(cell: str) -> bool:
    digits = cell[1:] if cell[:1] in "+-" else cell
    return digits.isdigit() and digits.isascii()
