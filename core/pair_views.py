"""Device pairs for security analysts: new, missing and surging links, and their flows.

`pair_changes` reads the run file's pair elements (events per bin, observed and
expected); `pair_events` reads the raw events of one pair from the store. Both open
their file read-only with external access off and bind every parameter.

A pair is in the reference when it carried events in a reference bin (training or
calibration) that the run file stores elements for. The pipeline stores no element
of a training bin, because those bins have no p-value, so on its runs the calibration
bins decide. Within the chosen window:

- new: not in the reference, and carrying events;
- missing: in the reference, at least `MIN_EXPECTED_EVENTS` events expected and at
  most `MISSING_SHARE` of them seen (a silence rarely fills a window exactly, so a
  window around it still counts the few events at its edges);
- surging: in the reference, at least `SURGE_RATIO` times the expected events, with an
  element p-value at or below `SURGE_P_VALUE`.

The pipeline's expected count of a reference pair is its median count in the
training bins, 0 for a pair that is silent in most of them, so such a pair counts as
surging in any window where it is active with a small p-value.

`pair_matrix` sums each pair's events over the window into a source x destination
grid in the database. The `MAX_MATRIX_DEVICES` sources and destinations with the most
events get a row or a column of their own, and the rest share one "other" row and
one "other" column.

NOTE: a large run keeps only elements with small p-values, so a reference pair whose
calibration bins were all unremarkable may be missing from the run file and then
shows as new. On such runs the "new" list is an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from core.errors import DataError
from core.store import Workspace, connect
from core.views import STORE_RETRY_SECONDS, _bound, _frame

MIN_EXPECTED_EVENTS = 1.0
MISSING_SHARE = 0.1
SURGE_RATIO = 2.0
SURGE_P_VALUE = 0.01
MAX_PAIRS_PER_CHANGE = 50
MAX_EVENT_ROWS = 500
CHANGES = ("new", "missing", "surging")
# 100 rows and 100 columns keep every cell at least 6 px wide and tall on a plot of
# 600 px or more, so a click lands on the cell under the pointer.
MAX_MATRIX_DEVICES = 100

PAIR_CHANGES_SQL = """
WITH reference AS (
    SELECT DISTINCT e.device, e.peer
    FROM elements e
    JOIN bins b ON b.scale = e.scale AND b.bin = e.bin
    WHERE e.kind = 'pair' AND e.scale = 1 AND b.period IN ('train', 'calibration')
      AND e.observed > 0
),
windowed AS (
    SELECT e.device AS src, e.peer AS dst,
           sum(e.observed) AS observed,
           sum(e.expected) AS expected,
           count(*) FILTER (WHERE e.observed > 0) AS active_bins,
           min(e.p_value) AS min_p_value,
           (r.device IS NOT NULL) AS in_reference
    FROM elements e
    JOIN bins b ON b.scale = e.scale AND b.bin = e.bin
    LEFT JOIN reference r ON r.device = e.device AND r.peer = e.peer
    WHERE e.kind = 'pair' AND e.scale = $scale
      AND b."end" > coalesce(CAST($start AS TIMESTAMPTZ), '-infinity'::TIMESTAMPTZ)
      AND b.start < coalesce(CAST($end AS TIMESTAMPTZ), 'infinity'::TIMESTAMPTZ)
    GROUP BY e.device, e.peer, r.device
),
labelled AS (
    SELECT *,
           CASE
               WHEN NOT in_reference AND observed > 0 THEN 'new'
               WHEN in_reference AND expected >= $min_expected
                    AND observed <= $missing_share * expected THEN 'missing'
               WHEN in_reference AND observed >= $surge_ratio * expected
                    AND observed > 0 AND min_p_value <= $surge_p THEN 'surging'
           END AS change
    FROM windowed
),
ranked AS (
    SELECT *,
           row_number() OVER (
               PARTITION BY change
               ORDER BY CASE change WHEN 'missing' THEN expected ELSE observed END
                        DESC, src, dst) AS position,
           count(*) OVER (PARTITION BY change) AS total
    FROM labelled
    WHERE change IS NOT NULL
)
SELECT change, src, dst, observed, expected, active_bins, min_p_value, total
FROM ranked
WHERE position <= $limit
ORDER BY CASE change WHEN 'new' THEN 0 WHEN 'missing' THEN 1 ELSE 2 END, position
"""

# Sources and destinations are ranked by their events in the window, ties by name;
# those past `$max_devices` fall into the group whose row or column is NULL.
PAIR_MATRIX_SQL = """
WITH windowed AS (
    SELECT e.device AS src, e.peer AS dst, sum(e.observed) AS events,
           max(-log10(greatest(e.p_value, 1e-300))) AS evidence
    FROM elements e
    JOIN bins b ON b.scale = e.scale AND b.bin = e.bin
    WHERE e.kind = 'pair' AND e.scale = $scale
      AND b."end" > coalesce(CAST($start AS TIMESTAMPTZ), '-infinity'::TIMESTAMPTZ)
      AND b.start < coalesce(CAST($end AS TIMESTAMPTZ), 'infinity'::TIMESTAMPTZ)
    GROUP BY e.device, e.peer
),
sources AS (
    SELECT src, row_number() OVER (ORDER BY sum(events) DESC, src) AS position,
           count(*) OVER () AS total
    FROM windowed GROUP BY src
),
destinations AS (
    SELECT dst, row_number() OVER (ORDER BY sum(events) DESC, dst) AS position,
           count(*) OVER () AS total
    FROM windowed GROUP BY dst
)
SELECT least(s.position, $max_devices + 1) - 1 AS row,
       least(d.position, $max_devices + 1) - 1 AS col,
       CASE WHEN s.position <= $max_devices THEN w.src END AS src,
       CASE WHEN d.position <= $max_devices THEN w.dst END AS dst,
       sum(w.events) AS events, max(w.evidence) AS evidence, count(*) AS pairs,
       any_value(s.total) AS total_sources, any_value(d.total) AS total_destinations
FROM windowed w
JOIN sources s ON s.src = w.src
JOIN destinations d ON d.dst = w.dst
GROUP BY ALL
ORDER BY row, col
"""

PAIR_EVENTS_SQL = """
SELECT t, src, dst, weight, protocol
FROM events
WHERE src = $src AND dst = $dst AND t >= $start AND t < $end
ORDER BY t
LIMIT $limit
"""

PAIR_EVENT_COUNT_SQL = """
SELECT count(*) FROM events
WHERE src = $src AND dst = $dst AND t >= $start AND t < $end
"""


def pair_changes(
    workspace: Workspace,
    run_id: str,
    scale: int,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    limit: int = MAX_PAIRS_PER_CHANGE,
) -> pd.DataFrame:
    """Return the new, missing and surging pairs of a window, strongest first.

    Args:
        scale: bin width as a multiple of the base bin; p-values come from it.
        start: first instant (UTC); None for the run's start.
        end: end of the window (UTC, exclusive); None for the run's end.
        limit: most pairs returned per change.

    Returns:
        Columns change (new, missing or surging), src, dst, observed and expected
        (events summed over the window's bins), active_bins (bins with events),
        min_p_value (small is surprising) and total (pairs with this change before
        the limit). New and surging pairs are ordered by observed events, missing
        ones by expected events.
    """
    params = {
        "scale": int(scale), "start": _bound(start), "end": _bound(end),
        "min_expected": MIN_EXPECTED_EVENTS, "missing_share": MISSING_SHARE,
        "surge_ratio": SURGE_RATIO,
        "surge_p": SURGE_P_VALUE, "limit": int(limit),
    }
    return _frame(workspace, run_id, PAIR_CHANGES_SQL, params)


@dataclass(frozen=True)
class PairMatrix:
    """Events and evidence of device pairs on a source x destination grid.

    Attributes:
        sources: row names, most events first; the last is None when the row
            groups the sources beyond `MAX_MATRIX_DEVICES`.
        destinations: column names, in the same order and with the same rule.
        events: shape [num_rows, num_columns], events summed over the window, NaN
            where no pair of the cell has an element.
        evidence: shape [num_rows, num_columns], the maximum -log10 p-value of the
            cell's pairs in the window (higher is more anomalous), NaN where none.
        pairs: shape [num_rows, num_columns], int, pairs that the cell covers.
        total_sources: distinct sources in the window.
        total_destinations: distinct destinations in the window.
    """

    sources: list[str | None]
    destinations: list[str | None]
    events: np.ndarray
    evidence: np.ndarray
    pairs: np.ndarray
    total_sources: int
    total_destinations: int

    @property
    def empty(self) -> bool:
        return not self.sources

    @property
    def grouped_sources(self) -> int:
        """Sources that share the "other" row (0 when there is none)."""
        return self.total_sources - sum(name is not None for name in self.sources)

    @property
    def grouped_destinations(self) -> int:
        """Destinations that share the "other" column (0 when there is none)."""
        return self.total_destinations - sum(
            name is not None for name in self.destinations)


def pair_matrix(
    workspace: Workspace,
    run_id: str,
    scale: int,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    max_devices: int = MAX_MATRIX_DEVICES,
) -> PairMatrix:
    """Aggregate the window's pair elements into a source x destination grid.

    Args:
        scale: bin width as a multiple of the base bin; evidence comes from it.
        start: first instant (UTC); None for the run's start.
        end: end of the window (UTC, exclusive); None for the run's end.
        max_devices: most sources, and most destinations, with a row or column of
            their own; the rest share an "other" row or column.

    Raises:
        ValueError: `max_devices` is below 1.
    """
    if max_devices < 1:
        raise ValueError(f"invalid max_devices={max_devices}; it must be >= 1")
    params = {"scale": int(scale), "start": _bound(start), "end": _bound(end),
              "max_devices": int(max_devices)}
    cells = _frame(workspace, run_id, PAIR_MATRIX_SQL, params)
    if cells.empty:
        empty = np.zeros((0, 0))
        return PairMatrix([], [], empty, empty, empty.astype(int), 0, 0)

    num_rows = int(cells["row"].max()) + 1
    num_columns = int(cells["col"].max()) + 1
    sources = _axis_names(cells, "row", "src", num_rows)
    destinations = _axis_names(cells, "col", "dst", num_columns)
    rows = cells["row"].to_numpy(dtype=int)
    columns = cells["col"].to_numpy(dtype=int)
    events = np.full((num_rows, num_columns), np.nan)
    evidence = np.full((num_rows, num_columns), np.nan)
    pairs = np.zeros((num_rows, num_columns), dtype=int)
    events[rows, columns] = cells["events"].to_numpy(dtype=float)
    evidence[rows, columns] = cells["evidence"].to_numpy(dtype=float)
    pairs[rows, columns] = cells["pairs"].to_numpy(dtype=int)
    return PairMatrix(sources, destinations, events, evidence, pairs,
                      int(cells["total_sources"].iloc[0]),
                      int(cells["total_destinations"].iloc[0]))


def _axis_names(cells: pd.DataFrame, position: str, name: str,
                count: int) -> list[str | None]:
    names: list[str | None] = [None] * count
    for index, value in zip(cells[position], cells[name]):
        if value is not None and not pd.isna(value):
            names[int(index)] = str(value)
    return names


def pair_events(
    workspace: Workspace,
    src: str,
    dst: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    limit: int = MAX_EVENT_ROWS,
) -> tuple[pd.DataFrame, int]:
    """Return the stored events from `src` to `dst` in [start, end), oldest first.

    Returns:
        At most `limit` rows (columns t, src, dst, weight, protocol), and the
        number of events in the window; an empty frame and 0 without a store.

    Raises:
        StoreBusyError: an ingest kept the store locked for `STORE_RETRY_SECONDS`.
        DataError: the store cannot be read.
    """
    empty = pd.DataFrame(columns=["t", "src", "dst", "weight", "protocol"])
    if not workspace.store_path.is_file():
        return empty, 0
    params: dict[str, Any] = {"src": src, "dst": dst, "start": _bound(start),
                              "end": _bound(end)}
    try:
        with connect(workspace.store_path, read_only=True, hardened=True,
                     retry_seconds=STORE_RETRY_SECONDS) as con:
            rows = con.execute(PAIR_EVENTS_SQL, {**params, "limit": int(limit)}).df()
            total = con.execute(PAIR_EVENT_COUNT_SQL, params).fetchone()[0]
    except duckdb.Error as exc:
        raise DataError(
            "the store cannot be read",
            f"The file may be damaged or from another tgloc. DuckDB said: {exc}",
        ) from exc
    return rows, int(total)
