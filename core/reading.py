"""File bytes into cells: file kinds, encodings, line numbers and malformed rows.

This module decides which bytes of a file one ingest reads, how they are decoded and
split into rows of text cells, and which rows are rejected before any column is
interpreted: a row with the wrong number of fields, a line that is not a JSON
object, a row with bytes the encoding cannot decode. What the cells mean is left to
`core.ingest`.

Line numbers are file lines, the header being line 1; a quoted CSV field that spans
several lines counts all of them. A JSON-lines file has no header, so its first
record is line 1.

A file that grew since its last load is read from a byte offset: the header lines
come from the start of the file and the rows from the offset on, with their own
file line numbers. A last line without a line end is held back by default, because
a process that is still writing the file may not have finished it (see
`complete_end`).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import IngestError

KINDS = ("csv", "zeek", "json", "parquet")
SEPARATORS = (",", ";", "\t", "|")
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
SURROGATE_PATTERN = re.compile("[\ud800-\udfff]")
# Python's csv module raises on a field longer than this. Such a field is usually an
# unclosed quote that swallowed the rest of the file.
MAX_FIELD_CHARACTERS = 1_000_000
REJECTED_COLUMNS = ("line", "column", "value", "reason", "record")


@dataclass
class Table:
    """Rows of one read: text cells (typed values for Parquet) and their file lines.

    Attributes:
        frame: one column per file column, one row per data row that has the
            header's number of fields.
        lines: shape [num_rows], int64: the file line where each row starts.
        rejected: rows rejected while reading, with the columns of
            `REJECTED_COLUMNS`.
        notes: what the reader did, for the ingest report.
    """

    frame: pd.DataFrame
    lines: np.ndarray
    rejected: pd.DataFrame = field(default_factory=lambda: _rejected_frame([]))
    notes: list[str] = field(default_factory=list)


def file_kind(path: Path, data: bytes) -> str:
    """Return "parquet", "json", "zeek" or "csv" from the suffix and first bytes."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    head = data[:64].removeprefix(codecs.BOM_UTF8)
    if suffix in JSON_SUFFIXES or head.lstrip().startswith(b"{"):
        return "json"
    if head.startswith(b"#separator"):
        return "zeek"
    return "csv"


def complete_end(data: bytes, kind: str, read_unterminated: bool) -> int:
    """Return the end of the bytes an ingest reads: the last complete line's end.

    A last line without a line end is held back, because the process writing the
    file may still be appending to it. A later load reads it once it is ended.
    It is read now when `read_unterminated` is true, when it is the only line (a
    header), or when it contains only white space. In a CSV file, a last record
    whose quoted field spans lines is held back whole. Parquet files are read whole.
    """
    if kind == "parquet" or read_unterminated:
        return len(data)
    newline = data.rfind(b"\n")
    if newline < 0 or not data[newline + 1:].strip():
        return len(data)
    end = newline + 1
    if kind != "csv":
        return end
    # A line break inside a quoted CSV field is no record end. An odd number of
    # quote characters before `end` means the cut falls inside such a field, so
    # the cut moves back to an earlier line end.
    quotes = data.count(b'"', 0, end)
    while quotes % 2 and end > 0:
        newline = data.rfind(b"\n", 0, end - 1)
        start = newline + 1 if newline >= 0 else 0
        quotes -= data.count(b'"', start, end)
        end = start
    return end


def header_end(data: bytes, kind: str) -> int:
    """Return the end of the header lines that a read from an offset repeats."""
    if kind == "json":
        return 0
    if kind == "csv":
        newline = data.find(b"\n")
        return len(data) if newline < 0 else newline + 1
    end = 0
    while data.startswith(b"#", end):
        newline = data.find(b"\n", end)
        if newline < 0:
            return len(data)
        end = newline + 1
    return end


def read_table(
    data: bytes, kind: str, name: str, encoding: str, start: int = 0,
    end: int | None = None,
) -> Table:
    """Read the rows of `data[start:end]`, with the header from the start of `data`.

    Args:
        data: the whole file.
        kind: one of `KINDS`.
        name: the file name used in messages.
        encoding: the text encoding; a leading byte order mark is dropped.
        start: the byte offset of the first row to read, at a line start. 0 reads
            the file from its header.
        end: the byte offset where reading stops (default: the end).

    Raises:
        IngestError: the file is empty, UTF-16, not of its kind, or its header
            cannot be decoded.
    """
    end = len(data) if end is None else end
    if kind == "parquet":
        return _parquet_table(data, name)
    if data.startswith(UTF16_BOMS):
        raise IngestError(
            f"{name} is UTF-16 text",
            "Save the file as UTF-8 (or another 8-bit encoding and set the "
            "encoding option) and retry.",
        )
    shift = 0
    if start > 0:
        header = data[:header_end(data, kind)]
        shift = data[:start].count(b"\n") - header.count(b"\n")
        buffer = header + data[start:end]
    else:
        buffer = data[:end]
    text, undecodable = _decode(buffer, encoding, name)
    if kind == "json":
        table = _json_table(text, encoding)
    elif kind == "zeek":
        table = _zeek_table(text, name, undecodable, encoding)
    else:
        table = _csv_table(text, name, undecodable, encoding)
    if shift:
        table.lines = table.lines + shift
        table.rejected["line"] = table.rejected["line"] + shift
    if undecodable:
        count = len(table.rejected)
        table.notes.append(
            f"bytes not valid in {encoding}: rows containing them rejected "
            f"({count} rejected row{'' if count == 1 else 's'} in all)"
        )
    return table


def printable(text: str) -> str:
    """Return `text` with undecodable bytes and lone surrogates as escapes."""
    if not SURROGATE_PATTERN.search(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def record_text(columns: list[str], cells: list[object]) -> str:
    """Return a row as JSON: an object by column name, or an array of its cells."""
    values = [None if _is_missing(c) else printable(str(c)) for c in cells]
    if len(columns) == len(values):
        return json.dumps(dict(zip(map(printable, columns), values)),
                          ensure_ascii=False)
    return json.dumps(values, ensure_ascii=False)


def _decode(buffer: bytes, encoding: str, name: str) -> tuple[str, bool]:
    """Decode; undecodable bytes become surrogate escapes and the flag is set.

    A UTF-8 byte order mark is dropped whatever the encoding, because in an 8-bit
    encoding its three bytes would become part of the first column's name.
    """
    buffer = buffer.removeprefix(codecs.BOM_UTF8)
    try:
        text, undecodable = buffer.decode(encoding), False
    except UnicodeDecodeError:
        text, undecodable = buffer.decode(encoding, "surrogateescape"), True
    text = text.removeprefix("\ufeff")
    header = text.split("\n", 1)[0]
    if undecodable and SURROGATE_PATTERN.search(header):
        raise IngestError(
            f"the header line of {name} has bytes that are not valid {encoding}",
            f"It reads {printable(header)!r}. Save the file as UTF-8, or set the "
            "encoding option (for example latin-1) and retry.",
        )
    return text, undecodable


def _csv_table(text: str, name: str, undecodable: bool, encoding: str) -> Table:
    first = text.split("\n", 1)[0]
    separator = max(SEPARATORS, key=first.count)
    csv.field_size_limit(MAX_FIELD_CHARACTERS)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    try:
        header = next(reader)
    except StopIteration:
        raise IngestError(f"{name} is empty", "The file has no header line.") \
            from None
    if not header or all(not cell.strip() for cell in header):
        raise IngestError(f"the header line of {name} is blank",
                          "The first line must name the columns.")
    width = len(header)

    rows: list[list[str]] = []
    lines: list[int] = []
    rejected: list[dict] = []
    blank = 0
    line = reader.line_num + 1
    try:
        for row in reader:
            row_line, line = line, reader.line_num + 1
            # The common row goes first: this loop runs once per row of the file.
            if len(row) == width and not undecodable and row[0]:
                rows.append(row)
                lines.append(row_line)
                continue
            if not row or (len(row) == width and not any(row)):
                blank += 1
                continue
            reason = _row_problem(row, width, undecodable, encoding)
            if reason is None:
                rows.append(row)
                lines.append(row_line)
            else:
                rejected.append(_rejected_row(row_line, header, row, reason,
                                              separator))
    except csv.Error as exc:
        raise IngestError(
            f"failed to read {name}: {exc} (line {reader.line_num})",
            "A quoted field may be missing its closing quote. Quote fields that "
            "contain the delimiter, double quotes inside them, and retry.",
        ) from exc

    frame = pd.DataFrame(rows, columns=range(width), dtype=str).set_axis(
        header, axis=1)
    notes = [f"{blank} blank line{'' if blank == 1 else 's'} skipped"] if blank else []
    return Table(frame, np.asarray(lines, dtype=np.int64), _rejected_frame(rejected),
                 notes)


def _zeek_table(text: str, name: str, undecodable: bool, encoding: str) -> Table:
    """Read a Zeek TSV log: `#` header lines, `#fields` names, `-` for unset."""
    fields: list[str] | None = None
    separator, unset, empty = "\t", "-", "(empty)"
    header_lines = 0
    rows: list[list[str]] = []
    lines: list[int] = []
    rejected: list[dict] = []

    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if raw.startswith("#"):
            if not rows and not rejected:
                header_lines += 1
            key, _, value = raw.partition(" " if raw.startswith("#separator")
                                          else separator)
            if key == "#separator":
                separator = value.encode("ascii", "backslashreplace").decode(
                    "unicode_escape") or "\t"
            elif key == "#fields":
                fields = value.split(separator)
            elif key == "#unset_field":
                unset = value
            elif key == "#empty_field":
                empty = value
            continue
        if not raw:
            continue
        if fields is None:
            raise IngestError(
                f"{name} looks like a Zeek log but has no #fields line",
                "Keep the log's header lines, or export it as CSV with a header.",
            )
        row = raw.split(separator)
        reason = _row_problem(row, len(fields), undecodable, encoding)
        if reason is None:
            rows.append(row)
            lines.append(number)
        else:
            rejected.append(_rejected_row(number, fields, row, reason, separator))

    if fields is None:
        raise IngestError(
            f"{name} looks like a Zeek log but has no #fields line",
            "Keep the log's header lines, or export it as CSV with a header.",
        )
    frame = pd.DataFrame(rows, columns=range(len(fields)), dtype=str).set_axis(
        fields, axis=1)
    frame = frame.replace({unset: "", empty: ""})
    return Table(frame, np.asarray(lines, dtype=np.int64), _rejected_frame(rejected),
                 [f"Zeek log: {header_lines} header lines read"])


def _json_table(text: str, encoding: str) -> Table:
    records: list[dict[str, str]] = []
    lines: list[int] = []
    rejected: list[dict] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            reason = (f"bytes not valid {encoding}" if SURROGATE_PATTERN.search(raw)
                      else f"invalid JSON: {getattr(exc, 'msg', exc)}")
            rejected.append(_rejected_line(number, raw, reason))
            continue
        if not isinstance(value, dict):
            rejected.append(_rejected_line(number, raw, "line is not a JSON object"))
            continue
        record = {str(k): _scalar_text(v) for k, v in value.items()}
        if any(SURROGATE_PATTERN.search(k) or SURROGATE_PATTERN.search(v)
               for k, v in record.items()):
            rejected.append(_rejected_line(
                number, raw, "text with lone surrogate escapes; write the "
                "characters as valid UTF-8"))
            continue
        records.append(record)
        lines.append(number)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame = frame.fillna("").astype(str)
    return Table(frame, np.asarray(lines, dtype=np.int64), _rejected_frame(rejected))


def _parquet_table(data: bytes, name: str) -> Table:
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except (OSError, ValueError, TypeError) as exc:
        raise IngestError(
            f"failed to read {name} as Parquet",
            f"The reader reported: {exc}. Check that the file is complete.",
        ) from exc
    frame.columns = [str(c) for c in frame.columns]
    return Table(frame, np.arange(len(frame), dtype=np.int64) + 2)


def _row_problem(
    row: list[str], width: int, undecodable: bool, encoding: str
) -> str | None:
    if len(row) != width:
        return f"expected {width} fields, found {len(row)}"
    if undecodable:
        for cell in row:
            match = SURROGATE_PATTERN.search(cell)
            if match:
                byte = ord(match.group()) - 0xDC00
                return (f"byte 0x{byte:02x} is not valid {encoding}; save the file "
                        "as UTF-8 or set the encoding option (for example latin-1)")
    return None


def _rejected_row(
    line: int, header: list[str], row: list[str], reason: str, separator: str
) -> dict:
    return {
        "line": line,
        "column": None,
        "value": printable(separator.join(row)),
        "reason": reason,
        "record": record_text(header, row),
    }


def _rejected_line(line: int, raw: str, reason: str) -> dict:
    text = printable(raw)
    return {"line": line, "column": None, "value": text, "reason": reason,
            "record": json.dumps([text], ensure_ascii=False)}


def _rejected_frame(rows: list[dict]) -> pd.DataFrame:
    columns = {name: pd.Series([row[name] for row in rows], dtype=object)
               for name in REJECTED_COLUMNS}
    columns["line"] = pd.Series([row["line"] for row in rows], dtype=np.int64)
    return pd.DataFrame(columns)


def _scalar_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _is_missing(cell: object) -> bool:
    if cell is None:
        return True
    try:
        return bool(pd.isna(cell))
    except (TypeError, ValueError):
        return False
