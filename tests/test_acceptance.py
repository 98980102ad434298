"""End to end on sample plants: planted anomalies are found and few incidents match
nothing. Each plant is built, ingested from files, run and read back from its run
file, as `tgloc demo --no-serve` does."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core import evaluate, ingest, pipeline, store, synth
from core.cli import demo_config

SEEDS = (0, 1, 2, 3, 4)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "acceptance"
# NOTE: training differs in the last bits between machines (see `core`), so a plant
# can move an anomaly across the line on another machine. These five plants found
# all 40 anomalies, with at most 2 unmatched incidents per plant, on the machine
# that recorded the figures in docs/benchmarks.md.
MAX_UNMATCHED = 2


def run_plant(root, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    workspace = store.Workspace.create(root)
    plant = synth.generate_plant(synth.PlantConfig(seed=seed))
    files = synth.write_plant(plant, workspace.root / "input")
    for target in ("events", "measurements"):
        ingest.ingest_file(workspace, files[target], ingest.IngestOptions(target=target))
    synth.store_plant(workspace, plant)
    result = pipeline.run_pipeline(workspace, demo_config(), run_id=f"seed-{seed}")
    path = workspace.run_path(result.run_id)
    incidents = store.query(path, "SELECT * FROM incidents ORDER BY rank")
    members = store.query(path, "SELECT * FROM incident_members")
    truth = store.query(workspace.store_path, "SELECT * FROM ground_truth")
    truth["devices"] = truth["devices"].apply(list)
    return incidents, members, truth


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_sample_plant_anomalies_found(tmp_path, seed):
    incidents, members, truth = run_plant(tmp_path / "ws", seed)
    match = evaluate.match_incidents(incidents, members, truth)
    summary = (f"seed {seed}: {match.found} of {len(truth)} planted anomalies found, "
               f"{len(match.unmatched)} incidents match none\n"
               f"{match.truth.to_string(index=False)}\n")
    print("\n" + summary)
    # Kept beside the screenshots, so that a full test run leaves each plant's result.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"seed-{seed}.txt").write_text(summary, encoding="utf-8")

    assert len(truth) == len(synth.DEFAULT_ANOMALIES)
    assert match.found == len(truth)
    assert len(match.unmatched) <= MAX_UNMATCHED
