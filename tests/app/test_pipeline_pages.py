"""The dashboard pages under AppTest on a run that the real pipeline published."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest
from conftest import REPOSITORY
from streamlit.testing.v1 import AppTest

from core import views
from core.config import RunConfig

TIMEOUT = 60
EMPTY_RUN_TEXT = "This run found no incident"


def _query(workspace, sql: str, params: list | None = None) -> list[tuple]:
    path = workspace.run_path(workspace.latest_run())
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def _incident_count(workspace) -> int:
    return _query(workspace, "SELECT count(*) FROM incidents")[0][0]


def _first_incident(workspace) -> str | None:
    rows = _query(
        workspace, "SELECT incident_id FROM incidents ORDER BY rank, incident_id LIMIT 1"
    )
    return rows[0][0] if rows else None


def _member_devices(workspace, incident_id: str) -> list[str]:
    rows = _query(
        workspace,
        "SELECT device FROM incident_members WHERE incident_id = ? AND role = 'device'",
        [incident_id],
    )
    return sorted(device for (device,) in rows)


def _member_count(workspace, incident_id: str) -> int:
    rows = _query(
        workspace, "SELECT count(*) FROM incident_members WHERE incident_id = ?",
        [incident_id],
    )
    return rows[0][0]


def _metric(app: AppTest, label: str) -> str:
    values = [m.value for m in app.metric if m.label == label]
    assert values, f"no metric labelled {label!r}"
    return values[0]


@pytest.fixture
def app(pipeline_workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(pipeline_workspace.root))
    monkeypatch.chdir(REPOSITORY)
    return AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)


def test_home_incident_count_matches_run(app, pipeline_workspace):
    app.run()
    assert not app.exception
    assert not app.error
    count = _incident_count(pipeline_workspace)
    assert _metric(app, "Incidents") == str(count)
    assert app.query_params["run"] == pipeline_workspace.latest_run()
    if count == 0:
        assert any(EMPTY_RUN_TEXT in info.value for info in app.info)
        return
    table = app.dataframe[0].value
    assert len(table) == count
    assert table["incident_id"].iloc[0] == _first_incident(pipeline_workspace)


def test_heatmap_incident_count_matches_run(app, pipeline_workspace):
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    assert not app.exception
    assert not app.error
    count = _incident_count(pipeline_workspace)
    assert _metric(app, "Incidents") == str(count)
    # The time range starts as the whole run, so every incident is in the window.
    assert _metric(app, "In this window") == str(count)
    assert app.get("plotly_chart")


def test_heatmap_window_in_training_period(app, pipeline_workspace):
    # The training period has bins but no evidence, so the page says so instead of
    # failing or drawing an empty grid.
    run_id = pipeline_workspace.latest_run()
    periods = views.periods(pipeline_workspace, run_id)
    training = periods[periods["period"] == "train"].iloc[0]
    start, end = training["start"], training["end"]
    app.query_params["run"] = run_id
    app.query_params["start"] = f"{start:%Y-%m-%dT%H:%M}"
    app.query_params["end"] = f"{min(end, start + pd.Timedelta(hours=1)):%Y-%m-%dT%H:%M}"
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    assert not app.exception
    assert not app.error
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert figure["data"] == []
    notes = [note.get("text", "") for note in figure["layout"].get("annotations", [])]
    assert any("the model trained on this time" in note for note in notes)


def test_drilldown_lists_first_incident_devices(app, pipeline_workspace):
    run_id = pipeline_workspace.latest_run()
    incident_id = _first_incident(pipeline_workspace)
    app.query_params["run"] = run_id
    app.query_params["incident"] = incident_id or "none"
    app.run()
    app.switch_page("pages/2_Incident.py").run()
    assert not app.exception
    assert not app.error
    if incident_id is None:
        assert any(EMPTY_RUN_TEXT in info.value for info in app.info)
        return
    members = app.dataframe[0].value
    shown = sorted(members.loc[members["role"] == "device", "device"])
    assert shown == _member_devices(pipeline_workspace, incident_id)
    assert len(members) == _member_count(pipeline_workspace, incident_id)


def test_real_run_significance(app, pipeline_workspace):
    app.run()
    assert not app.exception
    if _incident_count(pipeline_workspace) == 0:
        pytest.skip("the pipeline run found no incident")
    table = app.dataframe[0].value
    stored = _query(pipeline_workspace,
                    "SELECT incident_id, p_value, false_alarms_per_day FROM incidents")
    level = RunConfig().search.level
    # The table shows the family-wise p-value the run stored. An incident is only
    # reported below the run's level, and its rate of false alarms is positive.
    displayed = dict(zip(table["incident_id"], table["significance"]))
    for incident_id, p_value, per_day in stored:
        assert displayed[incident_id] == pytest.approx(p_value)
        assert 0 < p_value <= level
        assert per_day > 0
    rates = dict(zip(table["incident_id"], table["false_alarms_per_day"]))
    assert rates == pytest.approx({i: d for i, _, d in stored})


def test_real_run_model_page(app, pipeline_workspace):
    app.run()
    app.switch_page("pages/5_Model.py").run()
    assert not app.exception
    assert not app.error
    epochs = _query(pipeline_workspace, "SELECT count(*) FROM training_loss")[0][0]
    assert any(f"{epochs} epochs" in caption.value for caption in app.caption)
    reference = _query(
        pipeline_workspace,
        "SELECT count(*) FROM elements e JOIN bins b USING (scale, bin) "
        "WHERE b.period = 'calibration' AND e.scale = 1 AND e.p_value IS NOT NULL",
    )[0][0]
    assert _metric(app, "Reference elements") == f"{reference:,}"


def test_real_run_pairs_page(app, pipeline_workspace):
    app.run()
    app.switch_page("pages/4_Device_pairs.py").run()
    assert not app.exception
    assert not app.error
    shown = sum(int(_metric(app, f"{change} pairs"))
                for change in ("New", "Missing", "Surging"))
    if shown:
        assert len(app.dataframe[0].value) <= shown
    else:
        assert any("No pair is new" in info.value for info in app.info)
