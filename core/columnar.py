"""Event files read column by column with Arrow, when every row of them is clean.

The general ingest path (`core.ingest`) reads cells into pandas and checks them one
rule at a time. That costs several seconds per million rows. Most event files are
clean, though: every time in one ISO-8601 form with a zone or typed, every address
valid, every weight a finite number >= 0. For those files this module does the same
work with Arrow compute kernels and hands `core.ingest` an Arrow table to store.

The rule is all or nothing. A row that would be rejected, or a column that needs
the general path's detection (epoch numbers, local times, labels, day/month dates),
makes the functions here return None. The caller (`core.ingest`) then reads the
whole file the general way, so quarantine rows, notes and counts come from one
implementation. Rows are never split between the two paths.

Accepted here:

- CSV as UTF-8 without a byte order mark. The rows read contain no double quote,
  no lone carriage return and no blank line, so row i is file line i + 2, or
  counts on from the offset of a grown file. Every cell is read as text.
  NOTE: a quoted CSV file takes the general path even when its quoted fields
  contain no line break.
- Parquet whose time column is a timestamp (with a zone, or naive when the
  ingest's zone is UTC) and whose address columns are strings.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core import reading

# An ISO-8601 instant with seconds and a zone. Arrow and pandas read this form to the
# same instant; anything else goes to the general path.
ZONED_ISO_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})$"
)
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
DICTIONARY_TYPE = pa.dictionary(pa.int32(), pa.string())


@dataclass
class Columns:
    """The cells of a file as Arrow columns, with the file line of row 0."""

    table: pa.Table
    first_line: int


def read_csv(
    data: bytes, start: int, end: int, encoding: str,
    encoded: Callable[[list[str]], Collection[str]] = lambda names: (),
) -> Columns | None:
    """Read `data[start:end]` of a CSV file as text columns, or None if not simple.

    The header comes from the first line of `data`, split by the same delimiter
    choice as `core.reading`. None means the general reader must read the file.

    Args:
        encoded: returns, from the header names, the columns to read as
            dictionary-encoded text. Read that way, a column with few distinct
            values, such as an address, builds no string per row.
    """
    if codecs.lookup(encoding).name != "utf-8" or data.startswith(codecs.BOM_UTF8):
        return None
    head_end = reading.header_end(data, "csv")
    body_start = max(start, head_end)
    body = memoryview(data)[body_start:end]
    if len(body) == 0 or not _plain_body(data, body_start, end):
        return None
    found = _header(data)
    if found is None:
        return None
    header, separator = found
    chosen = set(encoded(header))

    read_options = pacsv.ReadOptions(column_names=header)
    parse_options = pacsv.ParseOptions(
        delimiter=separator, quote_char=False, newlines_in_values=False,
        ignore_empty_lines=False,
    )
    convert_options = pacsv.ConvertOptions(
        column_types={name: DICTIONARY_TYPE if name in chosen else pa.string()
                      for name in header},
        check_utf8=True, strings_can_be_null=False, quoted_strings_can_be_null=False,
        null_values=[],
    )
    try:
        table = pacsv.read_csv(pa.py_buffer(body), read_options, parse_options,
                               convert_options)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if table.num_rows != _count_rows(data, body_start, end):
        return None
    first_line = data.count(b"\n", 0, body_start) + 1
    return Columns(table.combine_chunks(), first_line)


def read_parquet(
    data: bytes, encoded: Callable[[list[str]], Collection[str]] = lambda names: (),
) -> Columns | None:
    """Read a Parquet file's columns, or None if Arrow cannot read it.

    Args:
        encoded: returns, from the column names, the text columns to read
            dictionary-encoded. Parquet usually stores text with a dictionary,
            and then reading builds no string per row.
    """
    try:
        schema = pq.read_schema(io.BytesIO(data))
        chosen = set(encoded([str(name) for name in schema.names]))
        text = [field.name for field in schema
                if str(field.name) in chosen and _is_text_type(field.type)]
        table = pq.read_table(io.BytesIO(data), read_dictionary=text or None)
    except (pa.ArrowException, OSError, ValueError):
        return None
    table = table.rename_columns([str(name) for name in table.column_names])
    return Columns(table.combine_chunks(), 2)


def optional_text(column) -> pa.DictionaryArray | None:
    """Return stripped text with blanks as null, or None when the cells are not text."""
    encoded = _encoded(column)
    if encoded is None:
        return None
    values = pc.utf8_trim_whitespace(encoded.dictionary).cast(pa.string())
    blank = pc.fill_null(pc.equal(values, ""), True).to_numpy(zero_copy_only=False)
    codes = encoded.indices.fill_null(0).to_numpy()
    mask = encoded.indices.is_null().to_numpy(zero_copy_only=False)
    present = ~mask
    mask[present] = blank[codes[present]]
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=mask), values)


def times(column, zone: str) -> pa.Array | None:
    """Return the UTC instants of a clean time column, else None.

    Text must be ISO-8601 with seconds and a zone in every row. A typed column
    must have no missing value, and a naive one is read only when `zone` is UTC.
    """
    column = _plain(column)
    if column.null_count:
        return None
    kind = column.type
    if pa.types.is_timestamp(kind):
        if kind.tz is None and zone != "UTC":
            return None
        if kind.tz is not None and kind.unit == "us":
            return column.cast(TIMESTAMP_TYPE)
        try:
            column = column.cast(pa.timestamp("us", tz=kind.tz), safe=True)
        except pa.ArrowInvalid:
            return None
        return column.cast(TIMESTAMP_TYPE) if kind.tz else pc.assume_timezone(
            column, "UTC").cast(TIMESTAMP_TYPE)
    if not _is_text(column):
        return None
    text = pc.utf8_trim_whitespace(column)
    if not pc.all(pc.match_substring_regex(
            text, ZONED_ISO_PATTERN)).as_py():
        return None
    try:
        return text.cast(TIMESTAMP_TYPE)
    except pa.ArrowInvalid:
        return None


def weights(column) -> pa.Array | None:
    """Return weights as float64 when every one is a finite number >= 0, else None."""
    column = _plain(column)
    if column.null_count:
        return None
    if _is_text(column):
        text = pc.utf8_trim_whitespace(column)
        try:
            column = text.cast(pa.float64())
        except pa.ArrowInvalid:
            return None
    elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        column = column.cast(pa.float64())
    else:
        return None
    values = column.to_numpy(zero_copy_only=False)
    if not (np.isfinite(values).all() and (values >= 0).all()):
        return None
    return column


@dataclass
class Addresses:
    """One address column: row i contains `values[codes[i]]`.

    Attributes:
        values: the canonical form of each distinct cell (several cells may share
            one form, such as an address with and without its port).
        codes: shape [num_rows], int32.
        changed: distinct stripped cells that their canonical form rewrote.
    """

    values: list[str]
    codes: np.ndarray
    changed: int


def addresses(column, canonical) -> Addresses | None:
    """Strip and canonicalise each distinct cell with `canonical`.

    Returns None when a cell is missing, blank or invalid (`canonical` returned
    None), or the cells are not text.
    """
    encoded = _encoded(column)
    if encoded is None or encoded.null_count:
        return None
    stripped = pc.utf8_trim_whitespace(encoded.dictionary).to_pylist()
    forms = {value: canonical(value) if value else None for value in set(stripped)}
    if any(form is None for form in forms.values()):
        return None
    changed = sum(1 for value, form in forms.items() if value != form)
    return Addresses([forms[value] for value in stripped],
                     encoded.indices.to_numpy(), changed)


def dictionary_pair(
    first: Addresses, second: Addresses
) -> tuple[pa.DictionaryArray, pa.DictionaryArray]:
    """Return both address columns over one shared dictionary of distinct forms."""
    names = sorted(set(first.values) | set(second.values))
    position = {name: i for i, name in enumerate(names)}
    dictionary = pa.array(names, type=pa.string())
    arrays = []
    for column in (first, second):
        remap = np.array([position[value] for value in column.values], dtype=np.int32)
        arrays.append(pa.DictionaryArray.from_arrays(
            pa.array(remap[column.codes]), dictionary))
    return arrays[0], arrays[1]


def _header(data: bytes) -> tuple[list[str], str] | None:
    """Return the header line's names and delimiter, or None if not simple."""
    head_end = reading.header_end(data, "csv")
    try:
        first = data[:head_end].decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        return None
    separator = max(reading.SEPARATORS, key=first.count)
    header = next(csv.reader([first], delimiter=separator), [])
    if not header or all(not cell.strip() for cell in header):
        return None
    if len(set(header)) != len(header):
        return None
    return header, separator


def _is_text(column: pa.Array) -> bool:
    return _is_text_type(column.type)


def _is_text_type(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _encoded(column) -> pa.DictionaryArray | None:
    """Return text as one dictionary array whose every entry some row uses.

    A dictionary read from a file may list values that no row uses, and those
    must not decide whether the column is clean. None means the cells are not text.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        if not _is_text(column):
            return None
        return pc.dictionary_encode(column)
    if not _is_text_type(column.type.value_type):
        return None
    valid = column.indices.drop_null().to_numpy()
    used = np.bincount(valid, minlength=len(column.dictionary)) > 0
    if used.all():
        return column
    codes = column.indices.fill_null(0).to_numpy()
    position = np.cumsum(used) - 1
    indices = pa.array(position[codes].astype(np.int32),
                       mask=column.indices.is_null().to_numpy(zero_copy_only=False))
    return pa.DictionaryArray.from_arrays(indices, column.dictionary.filter(used))


def _plain(column) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _plain_body(data: bytes, start: int, end: int) -> bool:
    """Return True if the rows contain no quote, no lone CR and no blank line."""
    if data.find(b'"', start, end) >= 0:
        return False
    carriage_return = data.find(b"\r", start, end) >= 0
    # Counting CRs costs about 80 ms on a 60 MB file, so only a file with a CR
    # is counted.
    if carriage_return and (
            data.count(b"\r", start, end) != data.count(b"\r\n", start, end)):
        return False
    if data[start:start + 1] in (b"\n", b"\r"):
        return False
    return re.search(rb"\n\r?\n", memoryview(data)[start:end]) is None


def _count_rows(data: bytes, start: int, end: int) -> int:
    """Return the lines in `data[start:end]`: line ends, plus an unended last line."""
    count = data.count(b"\n", start, end)
    return count if data[end - 1:end] == b"\n" else count + 1
