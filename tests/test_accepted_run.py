"""`tgloc run` on a workspace with behaviour accepted as normal: the interval trains.

A small sample plant is ingested, an interval of its scored period is accepted, and
the real pipeline runs through the command line with few epochs.
"""

from __future__ import annotations

import json

import duckdb
import pandas as pd

from core import ingest, synth
from core.accepted import accept_incident
from core.cli import main
from core.store import Workspace

PLANT = synth.PlantConfig(seed=3, field_devices=8, hours=4)
EPOCHS = "5"


def _workspace(path) -> Workspace:
    workspace = Workspace.create(path)
    plant = synth.generate_plant(PLANT)
    files = synth.write_plant(plant, workspace.root / "input")
    for target in ("events", "measurements"):
        options = ingest.IngestOptions(target=target)
        ingest.ingest_file(workspace, files[target], options)
    synth.store_plant(workspace, plant)
    return workspace


def test_run_trains_on_accepted_interval(tmp_path, capsys):
    workspace = _workspace(tmp_path / "ws")
    with duckdb.connect(str(workspace.store_path), read_only=True) as con:
        last = pd.Timestamp(con.execute("SELECT max(t) FROM events").fetchone()[0])
    # The last half hour lies in the scored period: the reference is the first 60%.
    start = last.floor("min") - pd.Timedelta(minutes=40)
    end = start + pd.Timedelta(minutes=30)
    members = pd.DataFrame({"role": ["device"], "device": ["plc-1"], "peer": [None],
                            "sensor": [None]})
    accept_incident(workspace, "earlier-run", "inc-accepted", members, start, end,
                    "ana")
    accept_incident(workspace, "earlier-run", "inc-before-data", members,
                    "2001-01-01T00:00", "2001-01-01T01:00", "bo")

    code = main(["run", "--workspace", str(workspace.root), "--epochs", EPOCHS,
                 "--run-id", "after-accept"])
    output = capsys.readouterr().out

    assert code == 0
    assert "accepted as normal: incident inc-accepted (" in output
    assert "by ana): 30 bins in the reference" in output
    assert "by bo): outside this run's data, not used" in output
    run_path = workspace.run_path("after-accept")
    with duckdb.connect(str(run_path), read_only=True) as con:
        periods = con.execute(
            "SELECT period, count(*) FROM bins WHERE scale = 1 AND start >= ? "
            "AND start < ? GROUP BY period", [start, end]).fetchall()
        after = con.execute(
            "SELECT count(*) FROM bins WHERE scale = 1 AND start >= ? "
            "AND period = 'score'", [end]).fetchone()[0]
        overlapping = con.execute(
            'SELECT count(*) FROM incidents WHERE "end" > ? AND start < ?',
            [start, end]).fetchone()[0]
        info = json.loads(con.execute(
            "SELECT value FROM run_info WHERE key = 'accepted'").fetchone()[0])

    assert periods == [("train", 30)]
    # The bins from `end` up to and including the last event's bin are still scored.
    assert after == 11
    assert overlapping == 0
    assert [(r["incident_id"], r["bins"]) for r in info] == [
        ("inc-accepted", 30), ("inc-before-data", 0)]
