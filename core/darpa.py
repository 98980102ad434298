"""Import of DARPA 1998 connection records in the layout that MIDAS distributes.

The MIDAS repository (`data/DARPA/darpa_original.zip`) ships the DARPA 1998
intrusion detection evaluation as one headerless CSV, one connection record a line:

    172.016.112.020,192.168.001.010,06/01/1998-07:55,-

that is source address, destination address, a minute timestamp `MM/DD/YYYY-HH:MM`
and the attack name, or `-` for a normal record. This module maps those four
columns onto the `events` table and hands the rows to the general ingest
(`core.ingest.ingest_arrow_events`), which stores them with the same report,
quarantine and already-loaded checks as any other events file:

- Addresses are written zero-padded (`172.016.112.020`). Each octet is read as a
  decimal number, so the canonical form is `172.16.112.20`, and a host written
  padded in one record and unpadded in another is one device.
- The timestamps state no zone. They are read in `timezone` (UTC by default), and
  the ingest report states the zone.
- A record whose date does not exist (`07/32/1998`) or whose time is not in the
  form above is rejected into the quarantine with its line and reason, never
  guessed.
- Repeated records are kept, each as one event of weight 1, so a pair's weight in
  a bin is its number of records. The report counts the repeats.
- A record's label is stored in `events.label` (0 for `-`, 1 otherwise) and its
  attack name in `events.attack`. Label intervals are not written to
  `ground_truth`, because normal and attack records of different pairs interleave
  within a minute; the labels are per record.

The file is read with Arrow into dictionary-encoded columns, and each distinct
address, timestamp and label is checked once, so 4.5 million records build no
Python object per row. A zip archive is read from its single CSV member; a plain
CSV file is read as it is.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from core import ingest, reading
from core.errors import IngestError
from core.store import Workspace

FIELDS = ("src", "dst", "time", "attack")
NORMAL_LABEL = "-"
TIME_FORMAT = "%m/%d/%Y-%H:%M"
TIME_PATTERN = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})-(\d{1,2}):(\d{2})$")
PADDED_IPV4_PATTERN = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
LOOPBACK_PREFIX = "127."
TEXT_TYPE = pa.dictionary(pa.int32(), pa.string())
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


@dataclass
class _Column:
    """One dictionary-encoded column: row i contains `values[codes[i]]`.

    `reasons[k]` is why distinct value k is rejected, or None when it is valid.
    """

    values: list
    codes: np.ndarray
    reasons: list[str | None]


def ingest_darpa(
    workspace: Workspace, path: str | Path, timezone: str = "UTC",
) -> ingest.IngestReport:
    """Store the connection records of a DARPA 1998 file in the MIDAS layout.

    Record (src, dst, time, attack) becomes an event from src to dst at that
    minute, weight 1, with `label` 0 for attack `-` and 1 otherwise, and the
    attack name in `attack`. A record that cannot be read is rejected into the
    quarantine with its line and reason (line 1 is the first record). The rest
    is stored in one transaction. Content already loaded with the same zone is
    not stored again, whether it comes zipped or not.

    Args:
        workspace: the workspace whose store receives the events.
        path: a zip archive with one CSV member, or the CSV file itself.
        timezone: IANA zone in which the timestamps are read (default UTC).

    Raises:
        IngestError: the file cannot be read, is empty or not UTF-8 text, the
            archive has several CSV members, or `timezone` is no IANA zone.
            Nothing of the file is stored then.
    """
    options = ingest.IngestOptions(target="events", timezone=timezone,
                                   label_intervals=False)
    path = Path(path)
    data, member = _read_records(path)
    # The zone is part of what is stored, so the same bytes read in another zone
    # are a different load. The digest covers the CSV bytes, not the archive, so
    # a load of the extracted member is recognised as the same content.
    digest = hashlib.sha256(data)
    digest.update(f"\x00darpa\x00{timezone}".encode())

    def read_events() -> tuple[pa.Table, pd.DataFrame, list[str]]:
        table, bad_rows = _read_csv(data, path.name)
        blank_lines = _blank_lines(data)
        lines, bad_rows = _record_lines(table.num_rows, bad_rows, blank_lines)
        notes = [
            "format darpa: headerless src,dst,MM/DD/YYYY-HH:MM,attack"
            + (f" (member {member} of {path.name})" if member else ""),
            f"the file's times carry no zone: read as {timezone}"
            + (" (--timezone sets another zone)" if timezone == "UTC" else ""),
        ]
        if len(blank_lines):
            count = len(blank_lines)
            notes.append(f"{count} blank line{_plural(count)} skipped")
        events, rejected = _events(table, lines, timezone, notes)
        rejected = pd.concat([_field_count_rejections(bad_rows), rejected],
                             ignore_index=True)
        return events, rejected, notes

    return ingest.ingest_arrow_events(workspace, read_events, options, str(path),
                                      digest.hexdigest())


def _read_records(path: Path) -> tuple[bytes, str | None]:
    """Return the CSV bytes of `path` and the zip member they came from, if any."""
    if not path.is_file():
        raise IngestError(f"file not found: {path}", "Check the path and try again.")
    try:
        if not zipfile.is_zipfile(path):
            return path.read_bytes(), None
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            csv_members = [m for m in members if m.filename.lower().endswith(".csv")]
            chosen = csv_members if csv_members else members
            if len(chosen) != 1:
                names = ", ".join(m.filename for m in members) or "none"
                raise IngestError(
                    f"{path.name} contains {len(chosen)} CSV members; expected 1",
                    f"Members: {names}. Extract the member to load and pass its "
                    "path instead of the archive.",
                )
            return archive.read(chosen[0]), chosen[0].filename
    except (OSError, zipfile.BadZipFile) as exc:
        raise IngestError(f"failed to read {path}", str(exc)) from exc


def _read_csv(data: bytes, name: str) -> tuple[pa.Table, list[tuple]]:
    """Read the four columns as dictionary-encoded text.

    Returns:
        table: one row per line with four fields.
        bad_rows: (number, text, fields) of each other line that is not blank.
            Arrow skips them and numbers them among the lines that are not
            blank.
    """
    if not data.strip():
        raise IngestError(f"{name} contains no record",
                          "A DARPA record file has one src,dst,time,attack line "
                          "per connection.")
    bad_rows: list[tuple] = []

    def skip(row) -> str:
        bad_rows.append((row.number, row.text, row.actual_columns))
        return "skip"

    def read(threads: bool) -> pa.Table:
        return pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=list(FIELDS),
                                           use_threads=threads),
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(
                column_types={field: TEXT_TYPE for field in FIELDS},
                null_values=[], strings_can_be_null=False),
        )

    try:
        table = read(threads=True)
        if bad_rows:
            # Arrow numbers the lines it skips only when it reads on one thread.
            bad_rows.clear()
            table = read(threads=False)
    except pa.ArrowInvalid as exc:
        if "utf8" in str(exc).lower() or "utf-8" in str(exc).lower():
            raise IngestError(
                f"{name} is not UTF-8 text",
                "A DARPA record file is ASCII text: addresses, a timestamp and an "
                f"attack name. Arrow reported: {exc}",
            ) from exc
        raise IngestError(f"failed to read {name} as CSV",
                          f"Arrow reported: {exc}") from exc
    return table.unify_dictionaries(), bad_rows


def _blank_lines(data: bytes) -> np.ndarray:
    """Return the numbers of the blank lines of `data` (line 1 is the first)."""
    if not (data.startswith((b"\n", b"\r\n")) or b"\n\n" in data
            or b"\n\r\n" in data):
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate([[0], np.flatnonzero(raw == ord("\n")) + 1])
    starts = starts[starts < len(raw)]
    first = raw[starts]
    second = raw[np.minimum(starts + 1, len(raw) - 1)]
    blank = (first == ord("\n")) | ((first == ord("\r")) & (second == ord("\n")))
    return np.flatnonzero(blank).astype(np.int64) + 1


def _record_lines(
    rows: int, bad_rows: list[tuple], blank_lines: np.ndarray,
) -> tuple[np.ndarray, list[tuple]]:
    """Return the file line of each row read, and `bad_rows` with file lines.

    Arrow numbers the lines that are not blank, so number k is the k-th of them.
    """
    total = rows + len(bad_rows) + len(blank_lines)
    filled = np.arange(1, total + 1, dtype=np.int64)
    filled = filled[~np.isin(filled, blank_lines)]
    if not bad_rows:
        return filled, bad_rows
    numbers = np.array([number for number, _, _ in bad_rows], dtype=np.int64)
    skipped = np.zeros(len(filled), dtype=bool)
    skipped[numbers - 1] = True
    bad_rows = [(int(filled[number - 1]), text, fields)
                for number, text, fields in bad_rows]
    return filled[~skipped], bad_rows


def _field_count_rejections(bad_rows: list[tuple]) -> pd.DataFrame:
    rows = [{
        "line": line, "column": None, "value": reading.printable(text),
        "reason": f"{fields} field{_plural(fields)}; a DARPA record has 4: "
                  "src,dst,MM/DD/YYYY-HH:MM,attack",
        "record": reading.record_text(list(FIELDS), text.split(",")),
    } for line, text, fields in bad_rows]
    frame = pd.DataFrame(rows, columns=list(reading.REJECTED_COLUMNS))
    frame["line"] = frame["line"].astype(np.int64)
    return frame


def _events(
    table: pa.Table, lines: np.ndarray, timezone: str, notes: list[str],
) -> tuple[pa.Table, pd.DataFrame]:
    """Convert the read columns to events; return them and the rejected rows."""
    src = _dictionary(table["src"])
    dst = _dictionary(table["dst"])
    times = _dictionary(table["time"])
    attack = _dictionary(table["attack"])
    for column, name in ((src, "src"), (dst, "dst")):
        column.reasons = [_address_reason(value, name) for value in column.values]
    src_map, dst_map, hosts, written = _canonical_hosts(src, dst)
    instants = _instants(times, timezone)
    attack.reasons = [None if value else
                      f"missing attack; {NORMAL_LABEL!r} marks a normal record"
                      for value in attack.values]

    checked = {"src": src, "dst": dst, "time": times, "attack": attack}
    bad = np.zeros(table.num_rows, dtype=bool)
    for column in checked.values():
        invalid = np.array([r is not None for r in column.reasons], dtype=bool)
        bad |= invalid[column.codes]
    src_host, dst_host = src_map[src.codes], dst_map[dst.codes]
    loopback = _loopback_loops(src_host, dst_host, hosts, notes) & ~bad
    bad |= loopback
    rejected = _rejections(table, lines, np.flatnonzero(bad), checked)
    keep = ~bad
    _note_hosts(src, dst, keep, written, notes)
    label = np.array([value != NORMAL_LABEL for value in attack.values], dtype=np.int8)
    names = pa.array([None if value == NORMAL_LABEL else value
                      for value in attack.values], pa.string())
    dictionary = pa.array(hosts, pa.string())
    events = pa.table({
        "t": pa.array(instants[times.codes[keep]], TIMESTAMP_TYPE),
        "src": pa.DictionaryArray.from_arrays(pa.array(src_host[keep]), dictionary),
        "dst": pa.DictionaryArray.from_arrays(pa.array(dst_host[keep]), dictionary),
        "weight": pa.array(np.ones(int(keep.sum()))),
        "protocol": pa.nulls(int(keep.sum()), pa.string()),
        "line": pa.array(lines[keep]),
        "label": pa.array(label[attack.codes[keep]]),
        "attack": pa.DictionaryArray.from_arrays(pa.array(attack.codes[keep]), names),
    })
    _note_repeats(events, notes)
    _note_labels(events, notes)
    order = ingest.event_order(events["t"].cast(pa.int64()).to_numpy(), notes)
    if order is not None:
        events = events.take(pa.array(order))
    return events, rejected


def _dictionary(column: pa.ChunkedArray) -> _Column:
    """Return the distinct stripped cells of `column` that some row uses."""
    combined = column.combine_chunks()
    codes = combined.indices.to_numpy()
    values = pc.utf8_trim_whitespace(combined.dictionary).to_pylist()
    used = np.bincount(codes, minlength=len(values)) > 0
    if not used.all():
        position = np.cumsum(used) - 1
        codes = position[codes]
        values = [value for value, kept in zip(values, used) if kept]
    return _Column(values, codes.astype(np.int64), [None] * len(values))


def _address_reason(value: str, name: str) -> str | None:
    """Return why `value` is no address, or None when it is one."""
    if not value:
        return f"missing {name}"
    if PADDED_IPV4_PATTERN.match(value):
        above = [octet for octet in value.split(".") if int(octet) > 255]
        if above:
            return (f"invalid IPv4 address {value!r} in {name}: octet {above[0]} is "
                    "above 255")
    return None


def _canonical_address(value: str) -> str:
    """Return a dotted IPv4 address without zero padding; other text unchanged.

    Each octet is read as a decimal number (`016` is 16), because the DARPA files
    pad every octet to three decimal digits.
    """
    if PADDED_IPV4_PATTERN.match(value):
        return ".".join(str(int(octet)) for octet in value.split("."))
    return value


def _canonical_hosts(
    src: _Column, dst: _Column,
) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, str]]:
    """Map both address columns onto one sorted list of canonical hosts.

    Returns:
        src_host: shape [distinct src cells], index into hosts (-1 if invalid).
        dst_host: the same for dst.
        hosts: the canonical addresses.
        written: each valid address as written to its canonical form.
    """
    written = {}
    for column in (src, dst):
        for value, reason in zip(column.values, column.reasons):
            if reason is None:
                written[value] = _canonical_address(value)
    hosts = sorted(set(written.values()))
    position = {host: i for i, host in enumerate(hosts)}
    maps = []
    for column in (src, dst):
        maps.append(np.array([
            position[written[value]] if reason is None else -1
            for value, reason in zip(column.values, column.reasons)
        ], dtype=np.int64))

    return maps[0], maps[1], hosts, written


def _note_hosts(
    src: _Column, dst: _Column, keep: np.ndarray, written: dict[str, str],
    notes: list[str],
) -> None:
    """Note the addresses of the stored rows that canonical form rewrote or merged."""
    used = set()
    for column in (src, dst):
        counts = np.bincount(column.codes[keep], minlength=len(column.values))
        used.update(column.values[k] for k in np.flatnonzero(counts))
    written = {value: written[value] for value in used}
    rewritten = sorted(value for value, host in written.items() if value != host)
    if rewritten:
        example = rewritten[0]
        notes.append(
            f"{len(rewritten)} distinct address{'es' if len(rewritten) != 1 else ''} "
            f"written zero-padded rewritten to canonical form (such as {example} -> "
            f"{written[example]})")
    forms: dict[str, list[str]] = {}
    for value, host in written.items():
        forms.setdefault(host, []).append(value)
    merged = sorted(host for host, values in forms.items() if len(values) > 1)
    if merged:
        spellings = sorted(forms[merged[0]])
        example = ", ".join(spellings[:-1]) + " and " + spellings[-1]
        notes.append(
            f"{len(merged)} host{_plural(len(merged))} written in more than one way "
            f"stored as one device each (such as {example}, stored as {merged[0]})")
    hosts = len(set(written.values()))
    notes.append(f"{hosts} distinct host{_plural(hosts)} from {len(written)} written "
                 f"address{'es' if len(written) != 1 else ''} in the stored records")


def _instants(times: _Column, timezone: str) -> np.ndarray:
    """Return each distinct time in epoch microseconds UTC; set `times.reasons`.

    An invalid time gets 0 and a reason.
    """
    values = pd.Series(times.values, dtype=object)
    naive = pd.to_datetime(values, format=TIME_FORMAT, errors="coerce")
    for k in np.flatnonzero(naive.isna().to_numpy()):
        times.reasons[k] = _time_reason(times.values[k])
    if timezone == "UTC":
        local = naive.dt.tz_localize("UTC")
    else:
        local = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        for k in np.flatnonzero((local.isna() & naive.notna()).to_numpy()):
            times.reasons[k] = (
                f"local time {times.values[k]!r} does not exist or occurs twice in "
                f"{timezone} (daylight-saving change)")
    micros = local.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return micros.fillna(pd.Timestamp(0, tz="UTC")).to_numpy(
        "datetime64[us]").view(np.int64)


def _time_reason(value: str) -> str:
    """Return why `value` is not a valid `MM/DD/YYYY-HH:MM` time."""
    if not value:
        return "missing time"
    match = TIME_PATTERN.match(value)
    if match is None:
        return f"time {value!r} is not in the form MM/DD/YYYY-HH:MM"
    month, day, year, hour, minute = (int(part) for part in match.groups())
    if not 1 <= month <= 12:
        return f"invalid date {value!r}: there is no month {month}"
    days = calendar.monthrange(year, month)[1]
    if not 1 <= day <= days:
        return (f"invalid date {value!r}: {calendar.month_name[month]} {year} has "
                f"no day {day}")
    if hour > 23 or minute > 59:
        return f"invalid time of day in {value!r}"
    return f"invalid date or time {value!r}"


def _loopback_loops(
    src_host: np.ndarray, dst_host: np.ndarray, hosts: list[str], notes: list[str],
) -> np.ndarray:
    """Return the rows that loop on a loopback address; note every self-loop."""
    loop = (src_host == dst_host) & (src_host >= 0)
    if not loop.any():
        return loop
    on_loopback = np.array([host.startswith(LOOPBACK_PREFIX) or host == "::1"
                            for host in hosts], dtype=bool)
    loopback = loop & on_loopback[np.maximum(src_host, 0)]
    notes.append(
        f"{int(loop.sum())} self-loop event{_plural(int(loop.sum()))}; "
        f"{int(loopback.sum())} on loopback addresses dropped (127.0.0.0/8, ::1)")
    return loopback


def _rejections(
    table: pa.Table, lines: np.ndarray, picked: np.ndarray,
    checked: dict[str, _Column],
) -> pd.DataFrame:
    """Return the rows at `picked` with the first invalid column, its value, why.

    A row whose every column is valid was rejected as a loopback self-loop.
    """
    rows = []
    for position, cells in zip(picked, table.take(pa.array(picked)).to_pylist()):
        column, reason = "src", "self-loop on a loopback address"
        for name, values in checked.items():
            found = values.reasons[values.codes[position]]
            if found is not None:
                column, reason = name, found
                break
        if lines[position] == 1:
            reason += " (a DARPA record file has no header line)"
        rows.append({
            "line": int(lines[position]), "column": column,
            "value": reading.printable(str(cells[column])), "reason": reason,
            "record": reading.record_text(list(FIELDS),
                                          [cells[f] for f in FIELDS]),
        })
    frame = pd.DataFrame(rows, columns=list(reading.REJECTED_COLUMNS))
    frame["line"] = frame["line"].astype(np.int64)
    return frame


def _note_repeats(events: pa.Table, notes: list[str]) -> None:
    """Note how many stored records repeat an earlier (src, dst, minute, attack)."""
    if events.num_rows == 0:
        return
    keys = pa.table({
        "t": events["t"].cast(pa.int64()),
        "src": events["src"].combine_chunks().indices,
        "dst": events["dst"].combine_chunks().indices,
        "attack": events["attack"].combine_chunks().indices,
    })
    distinct = keys.group_by(["t", "src", "dst", "attack"]).aggregate([]).num_rows
    repeats = events.num_rows - distinct
    if repeats == 0:
        return
    notes.append(
        f"{repeats} record{_plural(repeats)} repeat an earlier one (same src, dst, "
        f"minute and attack) and {'are' if repeats != 1 else 'is'} kept: each record "
        "is an event of weight 1, so a pair's weight in a bin is its number of "
        "records")


def _note_labels(events: pa.Table, notes: list[str]) -> None:
    attacks = int(pc.sum(events["label"]).as_py() or 0)
    names = pc.count_distinct(events["attack"].combine_chunks().dictionary_decode())
    notes.append(
        f"{attacks} of {events.num_rows} record{_plural(events.num_rows)} labelled "
        f"attack ({names.as_py()} attack name{_plural(names.as_py())}), stored in "
        f"events.label (0 for {NORMAL_LABEL!r}, else 1) and events.attack")


def _plural(count: int) -> str:
    return "" if count == 1 else "s"
