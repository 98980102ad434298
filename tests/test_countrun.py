"""`tgloc run` on a link stream through the count path: the choice of path, the run
file, accepted behaviour, and the dashboard pages on that file."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import countrun, darpa, linkcounts, model_views, pipeline, store
from core.accepted import accept_incident
from core.cli import main
from core.config import RunConfig, SearchConfig
from core.errors import DataError
from tests.test_real_darpa import SWEPT, darpa_file

REPOSITORY = Path(__file__).resolve().parents[1]
REFERENCE_END = "1998-06-15T00:00:00Z"
FLOOD_SOURCE, FLOOD_VICTIM = "135.13.216.191", "172.16.112.10"
SWEEPER = "202.77.162.213"


@pytest.fixture(scope="module")
def stream_workspace(tmp_path_factory) -> store.Workspace:
    root = tmp_path_factory.mktemp("counts")
    darpa_file(root / "darpa.zip")
    workspace = store.Workspace.create(root / "workspace")
    darpa.ingest_darpa(workspace, root / "darpa.zip")
    return workspace


@pytest.fixture(scope="module")
def count_run(stream_workspace) -> pipeline.RunResult:
    config = RunConfig(reference_end=REFERENCE_END, method="counts")
    return pipeline.run_pipeline(stream_workspace, config, run_id="counts")


def run_table(workspace: store.Workspace, run_id: str, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(workspace.run_path(run_id)), read_only=True) as con:
        return con.execute(sql).df()


def test_count_run_flood_and_sweep(stream_workspace, count_run) -> None:
    assert count_run.info["method"] == countrun.METHOD
    incidents = run_table(stream_workspace, "counts", "SELECT * FROM incidents ORDER BY start")
    assert len(incidents) == 2
    assert list(incidents["type"]) == ["communication", "communication"]
    flood, sweep = incidents["incident_id"]
    members = run_table(stream_workspace, "counts", "SELECT * FROM incident_members")
    flood_members = members[members["incident_id"] == flood]
    assert set(flood_members.loc[flood_members["role"] == "device", "device"]) == {
        FLOOD_SOURCE, FLOOD_VICTIM}
    pair = flood_members[flood_members["role"] == "pair"]
    assert list(zip(pair["device"], pair["peer"])) == [(FLOOD_SOURCE, FLOOD_VICTIM)]
    sweep_members = members[members["incident_id"] == sweep]
    assert list(sweep_members.loc[sweep_members["role"] == "device", "device"]) == [SWEEPER]
    targets = sweep_members.loc[sweep_members["role"] == "target", "device"]
    assert sorted(targets) == sorted(".".join(str(int(octet)) for octet in host.split("."))
                                     for host in SWEPT)
    assert incidents.loc[0, "start"] == pd.Timestamp("1998-06-15 09:00", tz="UTC")
    assert incidents.loc[0, "end"] == pd.Timestamp("1998-06-15 09:04", tz="UTC")


def test_count_run_hosts_and_bins(stream_workspace, count_run) -> None:
    devices = run_table(stream_workspace, "counts", "SELECT * FROM devices")
    # 8 clients polling 8 servers, the flood's source, the sweeper and the swept hosts.
    assert len(devices) == 8 + 8 + 1 + 1 + len(SWEPT)
    assert len(devices) == len(set(devices["device"]))
    assert {FLOOD_SOURCE, SWEEPER} <= set(devices["device"])
    bins = run_table(stream_workspace, "counts",
                     "SELECT period, count(*) AS n FROM bins WHERE scale = 1 GROUP BY 1")
    periods = dict(zip(bins["period"], bins["n"]))
    # 13 June 12:00 to 15 June: 36 hours of reference, of which the last 40% (one
    # minus the run's train share) is held out to calibrate.
    assert periods["train"] + periods["calibration"] == 36 * 60
    assert periods["calibration"] == 36 * 60 * 0.4
    assert periods["score"] == 24 * 60
    evidence = run_table(stream_workspace, "counts",
                         "SELECT max(evidence) AS top FROM device_evidence "
                         f"WHERE device = '{FLOOD_VICTIM}' AND scale = 1")
    assert evidence.loc[0, "top"] > 10
    assert run_table(stream_workspace, "counts",
                     "SELECT count(*) AS n FROM training_loss").loc[0, "n"] == 0
    # The held-out end of the reference feeds the Model page's calibration check.
    reference = model_views.reference_p_values(stream_workspace, "counts", 1)
    held_out = run_table(stream_workspace, "counts", """
        SELECT count(*) AS n FROM elements WHERE calibration = 'held out' AND scale = 1""")
    assert reference["elements"].sum() == held_out.loc[0, "n"] > 1000
    assert reference["bucket"].nunique() == model_views.P_VALUE_BUCKETS


def test_auto_counts_beyond_dense_limit(stream_workspace,
                                                       monkeypatch) -> None:
    config = RunConfig(reference_end=REFERENCE_END)
    bins, devices, measured = countrun.dense_cells(stream_workspace, 60)
    assert (bins, devices, measured) == (60 * 60, 58, False)
    assert not countrun.wants_counts(stream_workspace, config)
    monkeypatch.setattr(countrun, "DENSE_CELL_LIMIT", bins * devices - 1)
    assert countrun.wants_counts(stream_workspace, config)
    assert not countrun.wants_counts(stream_workspace, RunConfig(method="model"))


def test_counts_reject_sensor_readings(tmp_path, monkeypatch) -> None:
    workspace = store.Workspace.create(tmp_path)
    with store.connect(workspace.store_path) as con:
        con.execute("INSERT INTO events VALUES ('2024-01-01 00:00:00+00', 'a', 'b', 1, "
                    "NULL, NULL, NULL, 0, NULL)")
        con.execute("INSERT INTO measurements VALUES ('2024-01-01 00:00:00+00', 'a', "
                    "'temperature', 20.5, NULL, NULL)")
    with pytest.raises(DataError, match="sensor readings"):
        countrun.wants_counts(workspace, RunConfig(method="counts"))
    monkeypatch.setattr(countrun, "DENSE_CELL_LIMIT", 0)
    with pytest.raises(DataError, match="more than the 0 cells"):
        countrun.wants_counts(workspace, RunConfig())


def test_accepted_flood_joins_reference(tmp_path) -> None:
    darpa_file(tmp_path / "darpa.zip")
    workspace = store.Workspace.create(tmp_path / "workspace")
    darpa.ingest_darpa(workspace, tmp_path / "darpa.zip")
    config = RunConfig(reference_end=REFERENCE_END, method="counts")
    first = pipeline.run_pipeline(workspace, config, run_id="first")
    flood = first.incidents.sort_values("start").iloc[0]
    members = first.members[first.members["incident_id"] == flood["incident_id"]]
    accept_incident(workspace, "first", flood["incident_id"], members, flood["start"],
                    flood["end"], "ana")

    second = pipeline.run_pipeline(workspace, config, run_id="second")

    assert len(second.incidents) == 1
    assert second.incidents.iloc[0]["start"] == pd.Timestamp("1998-06-15 14:00", tz="UTC")
    assert [record["bins"] for record in second.info["accepted"]] == [4]
    periods = run_table(workspace, "second", """
        SELECT period FROM bins WHERE scale = 1 AND start >= '1998-06-15 09:00+00'
        AND start < '1998-06-15 09:04+00'""")
    assert set(periods["period"]) == {"train"}


def test_cli_run_counts(stream_workspace, capsys) -> None:
    code = main(["run", "--workspace", str(stream_workspace.root), "--run-id", "cli",
                 "--reference-end", REFERENCE_END, "--method", "counts",
                 "--scales", "1,10,60"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "run cli: 2 incidents" in printed
    info = store.read_run_info(stream_workspace, "cli")
    assert info["config"]["stream"]["scales"] == [1, 10, 60]
    with pytest.raises(SystemExit) as exited:
        main(["run", "--workspace", str(stream_workspace.root), "--scales", "1,x"])
    assert exited.value.code == 2
    assert "invalid scales '1,x'" in capsys.readouterr().err


def open_page(workspace: store.Workspace, page: str, monkeypatch, **params) -> AppTest:
    """Run the dashboard on `workspace` with `params` in the URL, then open `page`."""
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    monkeypatch.chdir(REPOSITORY)
    app = AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=60)
    for key, value in params.items():
        app.query_params[key] = value
    app.run()
    return app.switch_page(page).run()


def test_incident_page_count_members(stream_workspace, count_run, monkeypatch) -> None:
    sweep = count_run.incidents.sort_values("start").iloc[1]["incident_id"]
    app = open_page(stream_workspace, "pages/2_Incident.py", monkeypatch, run="counts",
                    incident=sweep)

    assert not app.exception
    assert not app.error
    members = app.dataframe[0].value
    assert list(members.loc[members["role"] == "device", "device"]) == [SWEEPER]
    assert (members["role"] == "target").sum() == 20  # the table's strongest 20
    assert any(f"+{len(SWEPT) - 20} more targets" in caption.value
               for caption in app.caption)


def test_model_page_count_run(stream_workspace, count_run, monkeypatch) -> None:
    app = open_page(stream_workspace, "pages/5_Model.py", monkeypatch, run="counts")

    assert not app.exception
    assert not app.error
    captions = " ".join(caption.value for caption in app.caption)
    assert "No model was trained" in captions
    assert "held-out end of the reference" in captions
    held_out = run_table(stream_workspace, "counts", """
        SELECT count(*) AS n FROM elements e JOIN bins b USING (scale, bin)
        WHERE b.period = 'calibration' AND e.scale = 1""").loc[0, "n"]
    assert [m.value for m in app.metric if m.label == "Reference elements"] == [
        f"{held_out:,}"]


def test_tied_incidents_rank_by_evidence() -> None:
    def element(host: str, minute: int) -> dict:
        return {"scale": 1, "kind": "out", "src": host, "dst": None, "bin": minute,
                "start": minute, "stop": minute + 1, "count": 90.0, "expected": 2.0,
                "novel": False, "p_raw": 1e-12, "p_value": 1e-12}

    # A one-minute burst first, then a three-minute flood; both reach the floor.
    elements = pd.DataFrame([element("a", 10)] + [element("b", m) for m in (50, 51, 52)])
    incidents = pd.DataFrame({
        "incident": [0, 1], "start_bin": [10, 50], "stop_bin": [11, 53],
        "devices": [["a"], ["b"]], "pairs": [[], []], "elements": [1, 3],
        "p_min": [1e-12, 1e-12], "significance": [4e-12, 4e-12], "targets": [[], []]})
    flagged = elements.assign(incident=[0, 1, 1, 1])
    scores = linkcounts.CountScores(0, 5, elements, elements.iloc[:0], 4, 1e-3, incidents,
                                    flagged, [])
    devices = pd.DataFrame({"device": ["a", "b"], "criticality": [0.5, 0.5]})

    table, members = countrun.describe(scores, devices, linkcounts.CountConfig(), 1.0)

    assert list(table["severity"].diff().dropna()) == [0.0]
    assert list(table["start"]) == [pd.Timestamp(50 * 60, unit="s", tz="UTC"),
                                    pd.Timestamp(10 * 60, unit="s", tz="UTC")]
    assert list(table["rank"]) == [1, 2]
    assert sorted(members["device"]) == ["a", "b"]


def test_members_own_evidence_only() -> None:
    def element(kind: str, src: str, dst, p: float) -> dict:
        return {"scale": 1, "kind": kind, "src": src, "dst": dst, "bin": 20, "start": 20,
                "stop": 21, "count": 50.0, "expected": 2.0, "novel": True, "p_raw": p,
                "p_value": p}

    # Two incidents in the same minute: a flood at the floor and a weaker sweep.
    elements = pd.DataFrame([element("out", "flooder", None, 1e-12),
                             element("pair", "flooder", "server", 1e-12),
                             element("out", "sweeper", None, 1e-7)])
    incidents = pd.DataFrame({
        "incident": [0, 1], "start_bin": [20, 20], "stop_bin": [21, 21],
        "devices": [["flooder"], ["sweeper"]], "pairs": [[("flooder", "server")], []],
        "elements": [2, 1], "p_min": [1e-12, 1e-7], "significance": [4e-12, 4e-7],
        "targets": [["server"], ["h1", "h2"]]})
    scores = linkcounts.CountScores(0, 5, elements, elements.iloc[:0], 4, 1e-3, incidents,
                                    elements.assign(incident=[0, 0, 1]), [])
    devices = pd.DataFrame({"device": ["flooder", "server", "sweeper", "h1", "h2"],
                            "criticality": [0.5] * 5})

    table, members = countrun.describe(scores, devices, linkcounts.CountConfig(), 1.0)

    sweep = table.loc[table["score"] < 12, "incident_id"].item()
    rows = members[members["incident_id"] == sweep].set_index(["role", "device"])
    assert rows.loc[("device", "sweeper"), "p_value"] == pytest.approx(1e-7)
    assert list(rows.loc["target", "p_value"]) == [pytest.approx(1e-7)] * 2


def test_score_end_bounds_bins_and_days(stream_workspace) -> None:
    config = RunConfig(reference_end=REFERENCE_END, score_end="1998-06-15T12:00:00Z",
                       method="counts")
    result = pipeline.run_pipeline(stream_workspace, config, run_id="half-day")

    bins = run_table(stream_workspace, "half-day",
                     "SELECT count(*) AS n FROM bins WHERE scale = 1 AND period = 'score'")
    assert bins.loc[0, "n"] == 12 * 60
    assert result.info["count_path"]["scored_days"] == 0.5
    assert result.info["periods"]["score"]["end"] == "1998-06-15T12:00:00+00:00"
    # The sweep at 14:00 lies after the score end.
    assert list(result.incidents["start"]) == [pd.Timestamp("1998-06-15 09:00", tz="UTC")]


@pytest.mark.parametrize("window, message", [
    ({"reference_end": REFERENCE_END, "score_end": "1998-06-14T00:00:00Z"},
     "no events after the reference end 1998-06-15 00:00:00 UTC: the events run from "
     "1998-06-13 12:00:00 UTC to 1998-06-13 23:59:00 UTC"),
    ({"reference_end": "1998-07-01T00:00:00Z"},
     "no events after the reference end 1998-07-01 00:00:00 UTC"),
    ({"reference_end": "1998-06-01T00:00:00Z"},
     "no events before the reference end 1998-06-01 00:00:00 UTC"),
    ({"reference_start": "1998-06-17T00:00:00Z"},
     "no events between the reference start and the score end"),
    ({"reference_end": REFERENCE_END, "score_start": "1998-06-15T06:00:00Z"},
     "the count path scores from the reference end on, and --score-start "
     "1998-06-15T06:00:00Z asks for a later start"),
    ({"reference_end": REFERENCE_END, "search": SearchConfig(calibrate_on_scored=True)},
     "the count path calibrates on the held-out end of the reference only"),
])
def test_count_run_rejects_empty_windows(stream_workspace, window, message) -> None:
    config = RunConfig(method="counts", **window)
    with pytest.raises(DataError) as raised:
        pipeline.run_pipeline(stream_workspace, config, run_id="rejected")
    assert raised.value.headline.startswith(message)
    assert not stream_workspace.run_path("rejected").exists()


def test_count_run_caps_its_bins(stream_workspace, monkeypatch) -> None:
    monkeypatch.setattr(countrun, "MAX_BASE_BINS", 1000)
    config = RunConfig(reference_end=REFERENCE_END, method="counts")
    with pytest.raises(DataError, match="3,600 bins of 60 s .* more than the 1,000 bins"):
        pipeline.run_pipeline(stream_workspace, config, run_id="capped")
