"""`tgloc plant`: faults planted into a copy of a workspace, with ground truth."""

from __future__ import annotations

import pandas as pd
import pytest

from core import cli, ingest, store, synth

PLANT = synth.PlantConfig(seed=2, field_devices=12, hours=2.0, anomalies=())


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("plant") / "ws"
    workspace = store.Workspace.create(root)
    plant = synth.generate_plant(PLANT)
    files = synth.write_plant(plant, root / "input")
    ingest.ingest_file(workspace, files["events"], ingest.IngestOptions(target="events"))
    ingest.ingest_file(workspace, files["measurements"],
                       ingest.IngestOptions(target="measurements"))
    synth.store_plant(workspace, plant)
    return root, plant


def count(root, sql):
    return int(store.query(root / "store.duckdb", sql).iloc[0, 0])


def test_plant_writes_faults_and_truth(source, tmp_path, capsys):
    root, plant = source
    target = tmp_path / "copy"
    sensor = plant.measurements.iloc[0]
    device = str(sensor["device"])
    code = cli.main(["plant", "--workspace", str(root), "--into", str(target),
                     "--fault", "scan", "--fault", f"drift:{device}", "--fault", "silence",
                     "--seed", "4", "--minutes", "20"])
    assert code == 0
    truth = store.query(target / "store.duckdb", "SELECT * FROM ground_truth ORDER BY start")
    assert list(truth["kind"]) == ["port_scan", "drift", "silence"]
    assert list(truth["devices"].iloc[1]) == [device]
    assert (truth["end"] - truth["start"] == pd.Timedelta(minutes=20)).all()
    assert "planted 3 faults" in capsys.readouterr().out

    scan = truth.iloc[0]
    probes = count(target, "SELECT count(*) FROM events WHERE protocol = 'tcp-syn'")
    assert probes >= len(scan["targets"]) >= 1
    source_rows = count(root, "SELECT count(*) FROM measurements")
    silent = truth.iloc[2]
    missing = count(target, "SELECT count(*) FROM measurements")
    inside = store.query(root / "store.duckdb",
                         "SELECT count(*) FROM measurements WHERE device = ? AND t >= ? AND t < ?",
                         [silent["devices"][0], silent["start"], silent["end"]]).iloc[0, 0]
    assert source_rows - missing == inside

    drift = truth.iloc[1]
    sql = ("SELECT avg(value) FROM measurements WHERE device = ? AND sensor = ? "
           "AND t >= ? AND t < ?")
    args = [device, drift["sensors"][0], drift["end"] - pd.Timedelta(minutes=5), drift["end"]]
    before = store.query(root / "store.duckdb", sql, args).iloc[0, 0]
    after = store.query(target / "store.duckdb", sql, args).iloc[0, 0]
    assert abs(after - before) > 0

    # The source is unchanged.
    assert count(root, "SELECT count(*) FROM events WHERE protocol = 'tcp-syn'") == 0


def test_plant_link_loss_drops_one_pair(source, tmp_path):
    root, _ = source
    target = tmp_path / "copy"
    code = cli.main(["plant", "--workspace", str(root), "--into", str(target),
                     "--fault", "link_loss", "--seed", "2", "--minutes", "20"])
    assert code == 0
    truth = store.query(target / "store.duckdb", "SELECT * FROM ground_truth").iloc[0]
    first, second = truth["devices"]
    window = [truth["start"], truth["end"]]
    between = ("SELECT count(*) FROM events WHERE ((src = ? AND dst = ?) OR (src = ? AND dst = ?))"
               " AND t >= ? AND t < ?")
    others = ("SELECT count(*) FROM events WHERE (src = ? OR dst = ?) AND NOT "
              "((src = ? AND dst = ?) OR (src = ? AND dst = ?)) AND t >= ? AND t < ?")
    pair = [first, second, second, first]

    assert truth["kind"] == "link_loss"
    assert count_with(root, between, pair + window) > 0
    assert count_with(target, between, pair + window) == 0
    for device in (first, second):
        args = [device, device] + pair + window
        assert count_with(target, others, args) == count_with(root, others, args) > 0


def count_with(root, sql, args):
    return int(store.query(root / "store.duckdb", sql, args).iloc[0, 0])


def test_plant_same_seed_same_truth(source, tmp_path):
    root, _ = source
    for name in ("a", "b"):
        assert cli.main(["plant", "--workspace", str(root), "--into", str(tmp_path / name),
                         "--fault", "flood", "--fault", "stuck", "--seed", "9"]) == 0
    first = store.query(tmp_path / "a" / "store.duckdb", "SELECT * FROM ground_truth")
    second = store.query(tmp_path / "b" / "store.duckdb", "SELECT * FROM ground_truth")
    assert first["devices"].map(list).tolist() == second["devices"].map(list).tolist()
    assert first["description"].tolist() == second["description"].tolist()


@pytest.mark.parametrize("args, message", [
    (["--fault", "meteor"], "invalid fault type 'meteor'"),
    (["--fault", "drift:no-such-device"], "device 'no-such-device' not found"),
    ([], "no fault to plant"),
])
def test_plant_bad_input_message(source, tmp_path, capsys, args, message):
    root, _ = source
    target = tmp_path / "copy"
    code = cli.main(["plant", "--workspace", str(root), "--into", str(target), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not target.exists()


def test_plant_existing_target_rejected(source, tmp_path, capsys):
    root, _ = source
    target = tmp_path / "copy"
    target.mkdir()
    assert cli.main(["plant", "--workspace", str(root), "--into", str(target),
                     "--fault", "spike"]) == 2
    assert "already exists" in capsys.readouterr().err
