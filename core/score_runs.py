"""Run files built from a given score matrix, for dashboard tests and benchmarks.

`publish_scores` writes a run whose `device_evidence` is exactly the matrix it gets,
one device per row and one one-minute bin per column, with no model and no store,
so the sizes a page must draw are known in advance. `planted_scores` makes such a
matrix: seeded background noise with one planted stretch of high evidence.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from core.config import RunConfig, StreamConfig
from core.store import Workspace, publish_run

ORIGIN = pd.Timestamp("2024-03-01T00:00:00Z")
RUN_ID = "big"
PLANTED_EVIDENCE = 5.0


def publish_scores(root: str | os.PathLike, scores: np.ndarray, names: list[str],
                   run_id: str = RUN_ID) -> Workspace:
    """Create a workspace at `root` and publish a run whose device evidence is `scores`.

    Args:
        scores: shape [num_devices, num_bins], evidence per device and one-minute
            bin from `ORIGIN` (higher is more anomalous).
        names: device names, one per row of `scores`.
        run_id: the run's name.
    """
    workspace = Workspace.create(root)
    num_devices, num_bins = scores.shape
    starts = ORIGIN + pd.to_timedelta(np.arange(num_bins), unit="min")
    codes = np.repeat(np.arange(num_devices, dtype=np.int32), num_bins)
    evidence = pd.DataFrame({
        "device": pd.Categorical.from_codes(codes, categories=names),
        "scale": np.int32(1),
        "bin": np.tile(np.arange(num_bins, dtype=np.int32), num_devices),
        "evidence": scores.reshape(-1),
    })
    tables = {
        "devices": pd.DataFrame({"idx": np.arange(num_devices), "device": names,
                                 "kind": "plc", "zone": "", "criticality": 0.5,
                                 "first_bin": 0}),
        "bins": pd.DataFrame({"scale": 1, "bin": np.arange(num_bins), "start": starts,
                              "end": starts + pd.Timedelta(minutes=1),
                              "period": "score"}),
        "device_evidence": evidence,
    }
    config = RunConfig(stream=StreamConfig(bin_seconds=60, scales=(1,)))
    publish_run(workspace, run_id, tables, {"config": config.to_dict()})
    return workspace


def device_names(count: int) -> list[str]:
    """Return `count` names: dev-0000, dev-0001, ..."""
    return [f"dev-{i:04d}" for i in range(count)]


def planted_scores(devices: int, bins: int, row: int, first: int, last: int,
                   seed: int = 0) -> np.ndarray:
    """Return gamma noise of shape [devices, bins] with `PLANTED_EVIDENCE` planted
    at `row` in bins [first, last)."""
    rng = np.random.default_rng(seed)
    scores = rng.gamma(2.0, 0.05, size=(devices, bins)).astype("float32")
    scores[row, first:last] = PLANTED_EVIDENCE
    return scores
