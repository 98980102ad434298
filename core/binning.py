"""The bin arithmetic and the binning SQL, written once for every SQL engine.

A bin is `floor((epoch microseconds - origin) / width)` in UTC, with `origin` and
`width` in microseconds. DuckDB (`core.snapshots`) and Spark (`core.spark_bins`) run
the same two queries built here, so both bin the same rows the same way. The
engines differ only in the name of the function that turns a timestamp into epoch
microseconds and in how a named parameter is written. A `Dialect` contains those
two spellings and nothing else. Only module constants are joined into SQL text, never
input.

Both queries read relations named `events` and `measurements` with the store's
columns (`t, src, dst, weight` and `t, device, sensor, value`), whether those are
store tables, views over Parquet files or Spark temporary views.
"""

from __future__ import annotations

from dataclasses import dataclass

MICROS = 1_000_000


@dataclass(frozen=True)
class Dialect:
    """The spellings that differ between SQL engines.

    Attributes:
        name: the engine.
        epoch_us: function from a UTC timestamp to epoch microseconds (BIGINT).
        marker: the prefix of a named query parameter.
    """

    name: str
    epoch_us: str
    marker: str


DUCKDB = Dialect("duckdb", "epoch_us", "$")
SPARK = Dialect("spark", "unix_micros", ":")


def bin_of(dialect: Dialect, column: str = "t") -> str:
    """Return the SQL expression of a timestamp column's bin (BIGINT).

    The division is of two BIGINTs, which both engines compute as a DOUBLE; the
    quotient is exact enough for floor while the distance to the origin stays
    below 2^53 microseconds (285 years).
    """
    p = dialect.marker
    micros = f"{dialect.epoch_us}({column})"
    return f"CAST(floor(({micros} - {p}origin) / {p}width) AS BIGINT)"


def in_window(dialect: Dialect, column: str = "t") -> str:
    """Return the SQL condition that a timestamp lies in [start, stop)."""
    p = dialect.marker
    micros = f"{dialect.epoch_us}({column})"
    return f"{micros} >= {p}start AND {micros} < {p}stop"


def event_bins_sql(dialect: Dialect) -> str:
    """Return the query of events per (bin, src, dst): counts and summed weight.

    Rows come in key order; both engines compare text byte by byte (UTF-8).
    """
    return f"""
SELECT {bin_of(dialect)} AS bin, src, dst, count(*) AS events, sum(weight) AS weight
FROM events
WHERE {in_window(dialect)}
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


def measurement_bins_sql(dialect: Dialect) -> str:
    """Return the query of sensor features per (bin, device, sensor).

    `last_change_us` is the epoch microsecond of the last reading in the bin whose
    value differs from the sensor's previous reading (NULL when none differs).
    """
    return f"""
WITH ordered AS (
    SELECT device, sensor, t, value,
           value IS DISTINCT FROM lag(value) OVER w AS changed
    FROM measurements
    WHERE {in_window(dialect)} AND value IS NOT NULL
    WINDOW w AS (PARTITION BY device, sensor ORDER BY t)
)
SELECT {bin_of(dialect)} AS bin,
       device, sensor,
       avg(value) AS mean, stddev_pop(value) AS std, min(value) AS min,
       max(value) AS max, count(value) AS count,
       max({dialect.epoch_us}(t)) FILTER (WHERE changed) AS last_change_us
FROM ordered
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


def span_sql(dialect: Dialect) -> str:
    """Return the query of the first and last timestamp over events and measurements."""
    micros = f"{dialect.epoch_us}(t)"
    return f"""
SELECT min(lo), max(hi) FROM (
    SELECT min({micros}) AS lo, max({micros}) AS hi FROM events
    UNION ALL
    SELECT min({micros}), max({micros}) FROM measurements) AS spans
"""


def parameters(origin_us: int, width_seconds: int, start_us: int, stop_us: int
               ) -> dict[str, int]:
    """Return the named parameters of the binning queries."""
    return {"origin": int(origin_us), "width": int(width_seconds) * MICROS,
            "start": int(start_us), "stop": int(stop_us)}


def align_origin(first_us: int, bin_seconds: int) -> int:
    """Return the start of the bin holding `first_us`, aligned to the epoch."""
    width = bin_seconds * MICROS
    return (first_us // width) * width


def window(first_us: int, last_us: int, bin_seconds: int,
           origin_us: int | None = None, stop_us: int | None = None
           ) -> tuple[int, int, int]:
    """Return (origin, stop, number of bins) covering [first_us, last_us].

    By default the origin is `first_us` aligned to the bin width and the stop is
    the end of the bin holding `last_us`.
    """
    if origin_us is None:
        origin_us = align_origin(first_us, bin_seconds)
    width = bin_seconds * MICROS
    if stop_us is None:
        stop_us = origin_us + ((last_us - origin_us) // width + 1) * width
    num_bins = int((stop_us - origin_us + width - 1) // width)
    return int(origin_us), int(stop_us), num_bins
