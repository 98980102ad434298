"""End to end on sample plants: planted anomalies are found and few incidents match
nothing. Each plant is built, ingested from files, run and read back from its run
file, as `tgloc demo --no-serve` does."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core import evaluate, ingest, online, pipeline, store, synth
from core.cli import demo_config

SEEDS = (0, 1, 2, 3, 4)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "acceptance"
# NOTE: training differs in the last bits between machines (see `core`), so a plant
# can move an anomaly across the line on another machine. These five plants found
# all 40 anomalies, with at most 2 unmatched incidents per plant, on the machine
# that recorded the figures in docs/benchmarks.md.
MAX_UNMATCHED = 2


def run_plant(root, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Build, run and read back the sample plant of `seed` (`RUNS` keeps the result,
    so each plant is trained once per test session)."""
    if seed in RUNS:
        return RUNS[seed][1:]
    result = _run_plant(root, seed)
    RUNS[seed] = (root, *result)
    return result


RUNS: dict[int, tuple] = {}


def _run_plant(root, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
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


@pytest.mark.slow
def test_sample_plant_online_matches_batch(tmp_path):
    # The scored bins of the sample plant, replayed through the online path, give
    # every incident of the batch run: the same devices, and both ends within one
    # bin.
    incidents, members, _ = run_plant(tmp_path / "ws", 0)
    workspace = store.Workspace.create(RUNS[0][0])
    model = online.OnlineModel.load(workspace)
    scorer = online.OnlineScorer(model, workspace, name="acceptance")
    width = model.bin_seconds * 1_000_000
    first = (online.micros(model.info["periods"]["score"]["start"]) - model.origin_us) // width
    scorer.warm_up(first)
    for bin_index in range(first, int(model.info["num_bins"])):
        scorer.close_bin(bin_index)
        scorer.settle_due(bin_index)
    scorer.settle_open()
    live, live_members = scorer.incident_table()

    def devices(table: pd.DataFrame) -> dict[str, frozenset]:
        chosen = table[table["role"] == "device"]
        return chosen.groupby("incident_id")["device"].apply(frozenset).to_dict()

    origin = pd.Timestamp(model.origin_us, unit="us", tz="UTC")
    step = pd.Timedelta(seconds=model.bin_seconds)
    online_spans = [(devices(live_members).get(row.incident_id), row.start_bin, row.stop_bin)
                    for row in live.itertuples()]
    batch_devices = devices(members)
    missing = []
    for row in incidents.itertuples():
        start = (pd.Timestamp(row.start) - origin) // step
        stop = (pd.Timestamp(row.end) - origin) // step
        names = batch_devices.get(row.incident_id)
        if not any(names == other and abs(start - a) <= 1 and abs(stop - b) <= 1
                   for other, a, b in online_spans):
            missing.append((sorted(names), start, stop))
    assert not missing, (missing, online_spans)
    # An online incident may split off the first bins of one the batch run found
    # whole, but it raises nothing the batch run does not have.
    batch_spans = [(batch_devices.get(row.incident_id),
                    (pd.Timestamp(row.start) - origin) // step,
                    (pd.Timestamp(row.end) - origin) // step) for row in incidents.itertuples()]
    for names, start, stop in online_spans:
        assert any(names & other and start < b and a < stop for other, a, b in batch_spans), \
            (sorted(names), start, stop, batch_spans)
