"""Each dashboard page runs under AppTest and shows what the run file holds."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest
from conftest import REPOSITORY
from fixture_run import INCIDENTS, NUM_BINS
from pages.common.ui import escape_markdown
from streamlit.testing.v1 import AppTest

from core.store import Workspace

TIMEOUT = 60


def _incident_count(workspace, run_id) -> int:
    with duckdb.connect(str(workspace.run_path(run_id)), read_only=True) as con:
        return con.execute("SELECT count(*) FROM incidents").fetchone()[0]


def _member_devices(workspace, run_id, incident_id) -> list[str]:
    with duckdb.connect(str(workspace.run_path(run_id)), read_only=True) as con:
        rows = con.execute(
            "SELECT device FROM incident_members WHERE incident_id = ? AND role = ?",
            [incident_id, "device"],
        ).fetchall()
    return sorted(device for (device,) in rows)


@pytest.fixture
def app(workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    monkeypatch.chdir(REPOSITORY)
    return AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)


def _metric(app: AppTest, label: str) -> str:
    values = [m.value for m in app.metric if m.label == label]
    assert values, f"no metric labelled {label!r}"
    return values[0]


def test_home_shows_incident_count(app, workspace, run_id):
    app.run()
    assert not app.exception
    assert not app.error
    assert _metric(app, "Incidents") == str(_incident_count(workspace, run_id))
    table = app.dataframe[0].value
    assert list(table["incident_id"]) == [
        i["incident_id"] for i in sorted(INCIDENTS, key=lambda i: -len(i["devices"]))
    ]
    assert app.query_params["run"] == run_id


def test_home_without_run_shows_next_step(app, tmp_path, monkeypatch):
    monkeypatch.setenv("TGLOC_WORKSPACE", str(tmp_path))
    app.run()
    assert not app.exception
    assert any("tgloc demo" in info.value for info in app.info)


def test_heatmap_shows_incident_count(app, workspace, run_id):
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    assert not app.exception
    assert not app.error
    assert _metric(app, "Incidents") == str(_incident_count(workspace, run_id))
    assert _metric(app, "In this window") == str(_incident_count(workspace, run_id))


def test_heatmap_coarse_scale(app, workspace, run_id):
    app.query_params["scale"] = "4"
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    assert not app.exception
    scale = [box for box in app.selectbox if box.label.startswith("Scale")]
    assert scale[0].value == 4


@pytest.mark.parametrize("planted", INCIDENTS, ids=lambda i: i["incident_id"])
def test_drilldown_lists_member_devices(app, workspace, run_id, planted):
    incident_id = planted["incident_id"]
    app.query_params["run"] = run_id
    app.query_params["incident"] = incident_id
    app.run()
    app.switch_page("pages/2_Incident.py").run()
    assert not app.exception
    assert not app.error
    members = app.dataframe[0].value
    shown = sorted(members.loc[members["role"] == "device", "device"])
    assert shown == _member_devices(workspace, run_id, incident_id)
    assert len(members) == sum(
        len(planted[key]) for key in ("devices", "pairs", "targets", "sensors")
    )
    heading = escape_markdown(incident_id)
    assert any(heading in header.value for header in app.subheader)


def test_drilldown_names_missing_links(app, run_id):
    captions = {}
    for planted in INCIDENTS:
        app.query_params["run"] = run_id
        app.query_params["incident"] = planted["incident_id"]
        app.run()
        app.switch_page("pages/2_Incident.py").run()
        assert not app.exception
        captions[planted["incident_id"]] = [c.value for c in app.caption
                                            if c.value.startswith("Dashed")]
    lost = INCIDENTS[2]["incident_id"]
    assert captions.pop(lost) == [
        "Dashed: 1 expected link that carried no events during the incident."]
    assert all(not found for found in captions.values())


def test_drilldown_shows_sensor_flags(app, run_id):
    app.query_params["run"] = run_id
    app.query_params["incident"] = INCIDENTS[0]["incident_id"]
    app.run()
    app.switch_page("pages/2_Incident.py").run()
    lines = {text.value for text in app.text}

    assert not app.exception
    assert ("pump-04 · temperature: flags in this incident: constant in training "
            "(12 bins), outside training range (2 bins)") in lines
    assert "plc-01 · pressure: no flags in this incident" in lines


def test_drilldown_unknown_incident(app, run_id):
    app.query_params["run"] = run_id
    app.query_params["incident"] = "no-such-incident"
    app.run()
    app.switch_page("pages/2_Incident.py").run()
    assert not app.exception
    assert any("no incident" in w.value for w in app.warning)
    assert any(t.value == "no-such-incident" for t in app.text)


def test_damaged_run_shows_headline(app, tmp_path, monkeypatch):
    workspace = Workspace.create(tmp_path / "damaged")
    workspace.run_path("broken").write_bytes(b"not a database")
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    app.run()
    assert not app.exception
    assert len(app.error) == 1
    assert "cannot be opened" in app.error[0].value
    assert "Traceback" not in app.error[0].value


def test_heatmap_picker_opens_drilldown(app, workspace, run_id):
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    chosen = [box for box in app.selectbox if box.label == "Incident"][0]
    incident_id = INCIDENTS[1]["incident_id"]
    chosen.set_value(incident_id).run()
    app.button(key="open_incident").click().run()
    assert not app.exception
    assert app.query_params["incident"] == incident_id
    members = app.dataframe[0].value
    shown = sorted(members.loc[members["role"] == "device", "device"])
    assert shown == _member_devices(workspace, run_id, incident_id)


def test_drilldown_follows_scale_parameter(app, run_id):
    app.query_params["run"] = run_id
    app.query_params["incident"] = INCIDENTS[0]["incident_id"]
    app.query_params["scale"] = "4"
    app.run()
    app.switch_page("pages/2_Incident.py").run()
    assert not app.exception
    assert not app.error
    charts = app.get("plotly_chart")
    assert len(charts) == 1 + len(INCIDENTS[0]["sensors"]) + len(INCIDENTS[0]["pairs"])
    sensor_chart = json.loads(charts[1].proto.spec)
    observed = [trace for trace in sensor_chart["data"] if trace["name"] == "observed"]
    # The padded window covers the whole run, which has 30 bins at scale 4.
    assert len(observed[0]["x"]) == NUM_BINS // 4


def test_escape_markdown_keeps_text_literal():
    assert escape_markdown("**x** <b>y</b> :red[z]") == (
        r"\*\*x\*\* \<b\>y\</b\> \:red\[z\]"
    )


def _slider(app: AppTest):
    return [s for s in app.slider if s.label == "Time range (UTC)"][0]


def test_heatmap_window_from_url(app, run_id):
    # Bins 80 to 100 cover the first planted incident (80-91) and part of the
    # second (96-103), and none of the third (108-115).
    app.query_params["run"] = run_id
    app.query_params["start"] = "2026-03-01T01:20"
    app.query_params["end"] = "2026-03-01T01:40"
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    assert not app.exception
    assert not app.warning
    assert _metric(app, "In this window") == "2"
    low, high = _slider(app).value
    assert (f"{low:%H:%M}", f"{high:%H:%M}") == ("01:20", "01:40")


def test_heatmap_window_into_url(app, run_id):
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    low, _ = _slider(app).value
    chosen = (low, low + pd.Timedelta(minutes=30).to_pytimedelta())
    _slider(app).set_value(chosen).run()
    assert not app.exception
    assert app.query_params["start"] == "2026-03-01T00:00"
    assert app.query_params["end"] == "2026-03-01T00:30"
    assert _metric(app, "In this window") == "0"


def test_heatmap_window_invalid_url(app, run_id):
    app.query_params["start"] = "yesterday-ish"
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    assert not app.exception
    assert any("not a UTC time" in w.value for w in app.warning)
    assert _metric(app, "In this window") == str(len(INCIDENTS))


@pytest.mark.parametrize("page", ["app.py", "pages/1_Heatmap.py",
                                  "pages/2_Incident.py", "pages/5_Model.py"])
def test_unknown_run_in_address_named(app, workspace, run_id, page):
    app.query_params["run"] = "run-typo"
    if page != "app.py":
        app.switch_page(page)
    app.run()

    assert not app.exception
    errors = [e.value for e in app.error]
    assert errors == [escape_markdown(
        f"run 'run-typo' from the address not found in {workspace.root}")]
    assert any(run_id in text.value for text in app.text)
    assert not app.dataframe
    assert not app.metric
    picker = [box for box in app.sidebar.selectbox if box.label == "Run"][0]
    assert picker.value is None
    picker.set_value(run_id).run()
    assert not app.error
    assert app.query_params["run"] == run_id
