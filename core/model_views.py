"""Read-only views of how a run's model was fitted and calibrated.

The reference p-values are those of the elements in the run's calibration bins. The
pipeline scores each fold of those bins against the other folds and recalibrates them
with the scored bins' p-values. If the calibration is valid they are uniform on
[0, 1], so their histogram is flat. A peak near 0 means the reference itself looked
anomalous, and a peak near 1 means the p-values are conservative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.store import Workspace
from core.views import _frame

P_VALUE_BUCKETS = 20

REFERENCE_P_SQL = """
SELECT e.kind,
       least(CAST(floor(e.p_value * $buckets) AS INTEGER), $buckets - 1) AS bucket,
       count(*) AS elements
FROM elements e
JOIN bins b ON b.scale = e.scale AND b.bin = e.bin
WHERE b.period = 'calibration' AND e.scale = $scale AND e.p_value IS NOT NULL
GROUP BY ALL
ORDER BY e.kind, bucket
"""


def reference_p_values(
    workspace: Workspace, run_id: str, scale: int = 1, buckets: int = P_VALUE_BUCKETS
) -> pd.DataFrame:
    """Count the calibration bins' element p-values in equal-width buckets.

    Returns:
        One row per element kind and bucket, empty buckets included: kind, bucket,
        lower and upper (bucket edges in [0, 1]) and elements (the count). Empty
        when the run has no calibration bins at this scale.

    Raises:
        ValueError: `buckets` is below 2.
    """
    if buckets < 2:
        raise ValueError(f"invalid buckets={buckets}: at least 2 are needed")
    counts = _frame(workspace, run_id, REFERENCE_P_SQL,
                    {"scale": int(scale), "buckets": int(buckets)})
    if counts.empty:
        return pd.DataFrame(columns=["kind", "bucket", "lower", "upper", "elements"])
    grid = pd.MultiIndex.from_product(
        [sorted(counts["kind"].unique()), range(buckets)], names=["kind", "bucket"])
    table = counts.set_index(["kind", "bucket"])["elements"].reindex(grid, fill_value=0)
    table = table.reset_index()
    edges = np.linspace(0.0, 1.0, buckets + 1)
    table["lower"] = edges[table["bucket"]]
    table["upper"] = edges[table["bucket"] + 1]
    return table[["kind", "bucket", "lower", "upper", "elements"]]


def run_notes(info: dict) -> list[str]:
    """Return the lines of a run's report that describe how its input was treated."""
    notes = []
    gaps = info.get("collection_gaps") or {}
    if gaps.get("bins"):
        count, spans = int(gaps["bins"]), int(gaps["intervals"])
        first = gaps["first"][0]
        notes.append(
            f"{count:,} bin{plural(count)} without data from any device "
            f"({spans} collection gap{plural(spans)}, the first {first[0]} to "
            f"{first[1]}) excluded from training and scoring")
    rounded = info.get("rounded_readings") or []
    if rounded:
        first = rounded[0]
        notes.append(
            f"{len(rounded)} sensor{plural(len(rounded))} read at different resolutions "
            f"by different sources, so read at the coarsest everywhere in this run "
            f"(the first: {first['device']}/{first['sensor']} to {first['places']} "
            f"decimal place{plural(first['places'])})")
    fill = info.get("gap_fill") or {}
    if fill.get("policy", "none") != "none":
        count = int(fill.get("imputed_cells", 0))
        limit = fill.get("limit")
        rule = fill["policy"] if limit is None else f"{fill['policy']}, limit {limit}"
        notes.append(f"{count:,} cell{plural(count)} imputed ({rule})")
    notes += info.get("count_notes") or []
    return notes


def plural(count: int) -> str:
    """Return "s" unless `count` is 1."""
    return "" if count == 1 else "s"
