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
        last_non_null: the window function of a column's last non-NULL value so
            far, with `{}` for the column.
    """

    name: str
    epoch_us: str
    marker: str
    last_non_null: str


DUCKDB = Dialect("duckdb", "epoch_us", "$", "last_value({} IGNORE NULLS)")
SPARK = Dialect("spark", "unix_micros", ":", "last_value({}, true)")


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


def measurement_bins_sql(dialect: Dialect, source: str = "measurements") -> str:
    """Return the query of sensor features per (bin, device, sensor).

    `source` is the relation read: the store's `measurements`, or a module
    constant that derives rows of the same columns from it.

    `last_change_us` is the epoch microsecond of the last reading in the bin whose
    value differs from the sensor's previous reading (NULL when none differs).

    `fill` applies the gap-fill policy: a NULL reading takes the last earlier
    non-NULL reading of its sensor (`last_seen`), provided it is at most the
    `limit`-th NULL since that reading (no limit when `limit` is negative). `run`
    counts the non-NULL readings so far, so the rows of one run share it and
    row_number() - 1 is the number of NULL readings up to this one. `imputed`
    counts the filled readings; `count` includes them.
    """
    p = dialect.marker
    last_seen = dialect.last_non_null.format("value")
    return f"""
WITH runs AS (
    SELECT device, sensor, t, value,
           count(value) OVER so_far AS run,
           {last_seen} OVER so_far AS last_seen
    FROM {source}
    WHERE {in_window(dialect)}
    WINDOW so_far AS (PARTITION BY device, sensor ORDER BY t
                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
filled AS (
    SELECT device, sensor, t, value IS NULL AS missing,
           CASE WHEN value IS NOT NULL THEN value
                WHEN {p}fill AND ({p}limit < 0 OR
                     row_number() OVER (PARTITION BY device, sensor, run ORDER BY t) - 1
                     <= {p}limit)
                THEN last_seen END AS value
    FROM runs
),
ordered AS (
    SELECT device, sensor, t, value, missing,
           value IS DISTINCT FROM lag(value) OVER w AS changed
    FROM filled
    WHERE value IS NOT NULL
    WINDOW w AS (PARTITION BY device, sensor ORDER BY t)
)
SELECT {bin_of(dialect)} AS bin,
       device, sensor,
       avg(value) AS mean, stddev_pop(value) AS std, min(value) AS min,
       max(value) AS max, count(value) AS count,
       max({dialect.epoch_us}(t)) FILTER (WHERE changed) AS last_change_us,
       count(*) FILTER (WHERE missing) AS imputed
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
    """Return the named parameters of the event and span queries."""
    return {"origin": int(origin_us), "width": int(width_seconds) * MICROS,
            "start": int(start_us), "stop": int(stop_us)}


def measurement_parameters(origin_us: int, width_seconds: int, start_us: int,
                           stop_us: int, fill: bool = False, limit: int | None = None
                           ) -> dict[str, int | bool]:
    """Return the named parameters of `measurement_bins_sql`; a `limit` of None
    fills every run of NULL readings."""
    return {**parameters(origin_us, width_seconds, start_us, stop_us),
            "fill": bool(fill), "limit": -1 if limit is None else int(limit)}


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
