"""Maintenance windows and behaviour accepted as normal, from the pages to the store.

Each test writes the analyst file of a fresh copy of the fixture run. The planted
incidents are inc-7f3a2c (plc-01, pump-04, 01:20 to 01:32), inc-1b9d04 (hmi_*08*,
<b>plc-07</b>, 01:36 to 01:44) and inc-c55e81 (ws-11, gateway-06, historian-10,
01:48 to 01:56).
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import REPOSITORY
from fixture_run import INCIDENTS, RUN_ID, build_fixture_workspace
from streamlit.testing.v1 import AppTest

from core import views
from core.accepted import accept_incident, apply_accepted, list_accepted
from core.feedback import flag_incidents
from core.maintenance import (
    add_maintenance_window,
    list_maintenance_windows,
    matching_windows,
)

TIMEOUT = 60
FIRST, SECOND, THIRD = (incident["incident_id"] for incident in INCIDENTS)


@pytest.fixture
def fresh_workspace(tmp_path):
    return build_fixture_workspace(tmp_path / "workspace")


@pytest.fixture
def app(fresh_workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(fresh_workspace.root))
    monkeypatch.chdir(REPOSITORY)
    test = AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)
    test.query_params["run"] = RUN_ID
    return test


def _listed(app: AppTest) -> list[str]:
    return list(app.dataframe[0].value["incident_id"])


def test_window_matches_by_device_and_time(fresh_workspace):
    incidents = views.incidents(fresh_workspace, RUN_ID)
    # Overlaps the first incident in time and names one of its devices.
    add_maintenance_window(fresh_workspace, "2026-03-01T01:30", "2026-03-01T01:40",
                           ["pump-04"], "pump seal swap")
    # Overlaps the third in time but names none of its devices.
    add_maintenance_window(fresh_workspace, "2026-03-01T01:50", "2026-03-01T02:00",
                           ["plc-02"], "firmware update")
    matched = matching_windows(incidents, list_maintenance_windows(fresh_workspace))
    by_id = dict(zip(incidents["incident_id"], matched))

    assert by_id[FIRST] == 1
    assert pd.isna(by_id[SECOND])
    assert pd.isna(by_id[THIRD])


def test_window_for_all_devices(fresh_workspace):
    add_maintenance_window(fresh_workspace, "2026-03-01T01:40", "2026-03-01T01:50",
                           None, "plant shutdown")
    flagged = flag_incidents(fresh_workspace, views.incidents(fresh_workspace, RUN_ID))
    during = flagged.set_index("incident_id")["maintenance"]

    assert pd.isna(during[FIRST])
    assert during[SECOND] == 1
    assert during[THIRD] == 1


@pytest.mark.parametrize(("start", "end", "reason", "message"), [
    ("2026-03-01T02:00", "2026-03-01T01:00", "x", "must end after it starts"),
    ("yesterday noon", "2026-03-01T01:00", "x", "invalid maintenance window start"),
    ("2026-03-01T01:00", "2026-03-01T02:00", "  ", "needs a reason"),
])
def test_window_rejects_bad_input(fresh_workspace, start, end, reason, message):
    add_maintenance_window(fresh_workspace, "2026-03-01T00:00", "2026-03-01T00:10",
                           None, "kept")
    with pytest.raises(ValueError, match=message):
        add_maintenance_window(fresh_workspace, start, end, None, reason)
    assert list(list_maintenance_windows(fresh_workspace)["reason"]) == ["kept"]


def test_window_declared_hides_incident(app, fresh_workspace):
    app.run()
    app.switch_page("pages/3_Suppressions.py").run()
    assert [m.value for m in app.metric if m.label == "Maintenance windows"] == ["0"]
    devices = [box for box in app.multiselect if box.label == "Devices"][0]
    devices.select("<b>plc-07</b>")
    [box for box in app.text_input if box.label == "Start"][0].input("2026-03-01T01:30")
    [box for box in app.text_input if box.label == "End"][0].input("2026-03-01T01:40")
    [box for box in app.text_input if box.label == "Reason"][0].input("cabinet *swap*")
    [b for b in app.button if b.label == "Save window"][0].click().run()
    assert not app.exception
    assert any("Maintenance window 1 saved" in s.value for s in app.success)
    listed = app.dataframe[0].value
    assert list(listed["reason"]) == ["cabinet *swap*"]
    assert list(listed["devices"][0]) == ["<b>plc-07</b>"]
    assert listed.loc[0, "incidents_in_run"] == 1

    app.switch_page("app.py").run()
    assert SECOND not in _listed(app)
    assert len(_listed(app)) == len(INCIDENTS) - 1
    assert app.toggle(key="show_maintenance").label == "Show during maintenance (1)"
    assert any("1 hidden by suppression rules or maintenance windows" in c.value
               for c in app.caption)
    app.toggle(key="show_maintenance").set_value(True).run()
    table = app.dataframe[0].value.set_index("incident_id")
    assert table.loc[SECOND, "maintenance"] == 1
    assert table["maintenance"].isna().sum() == len(INCIDENTS) - 1


def test_window_bad_time_shows_error(app, fresh_workspace):
    app.run()
    app.switch_page("pages/3_Suppressions.py").run()
    [box for box in app.text_input if box.label == "Start"][0].input("2026-03-01T02:00")
    [box for box in app.text_input if box.label == "End"][0].input("2026-03-01T01:00")
    [box for box in app.text_input if box.label == "Reason"][0].input("test")
    [b for b in app.button if b.label == "Save window"][0].click().run()
    assert not app.exception
    assert any("must end after it starts" in e.value for e in app.error)
    assert list_maintenance_windows(fresh_workspace).empty


def test_window_deleted(app, fresh_workspace):
    add_maintenance_window(fresh_workspace, "2026-03-01T01:40", "2026-03-01T01:50",
                           None, "first")
    add_maintenance_window(fresh_workspace, "2026-03-01T01:00", "2026-03-01T01:10",
                           None, "second")
    app.run()
    app.switch_page("pages/3_Suppressions.py").run()
    [box for box in app.selectbox if box.label == "Window to delete"][0].set_value(1)
    app.run()
    app.button(key="delete_window").click().run()
    assert not app.exception
    assert list(list_maintenance_windows(fresh_workspace)["reason"]) == ["second"]
    assert [m.value for m in app.metric if m.label == "Maintenance windows"] == ["1"]


def test_heatmap_hides_maintenance_outline(app, fresh_workspace):
    add_maintenance_window(fresh_workspace, "2026-03-01T01:40", "2026-03-01T01:50",
                           ["ws-11"], "laptop reimaged")
    app.run()
    app.switch_page("pages/1_Heatmap.py").run()
    assert not app.exception
    figure = app.get("plotly_chart")[0].proto.spec
    assert THIRD not in figure
    assert FIRST in figure
    assert [m.value for m in app.metric if m.label == "Incidents"] == ["2"]

    app.query_params["show"] = "maintenance"
    heatmap = AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)
    heatmap.query_params.update(app.query_params)
    heatmap.run()
    heatmap.switch_page("pages/1_Heatmap.py").run()
    assert THIRD in heatmap.get("plotly_chart")[0].proto.spec
    assert [m.value for m in heatmap.metric if m.label == "Incidents"] == ["3"]


def test_accept_recorded_from_page(app, fresh_workspace):
    app.query_params["incident"] = SECOND
    app.run()
    app.switch_page("pages/2_Incident.py").run()
    [b for b in app.button if b.label == "Accept as the new normal"][0].click().run()
    assert any("needs the analyst's name" in e.value for e in app.error)
    assert list_accepted(fresh_workspace).empty

    app.text_input(key="accepted_by").input("<i>ana</i>")
    [b for b in app.button if b.label == "Accept as the new normal"][0].click().run()
    assert not app.exception
    record = list_accepted(fresh_workspace).iloc[0]
    assert record["incident_id"] == SECOND
    assert record["run_id"] == RUN_ID
    assert record["accepted_by"] == "<i>ana</i>"
    assert record["start"] == pd.Timestamp("2026-03-01T01:36", tz="UTC")
    assert record["end"] == pd.Timestamp("2026-03-01T01:44", tz="UTC")
    roles = sorted((m["role"], m["device"], m["peer"]) for m in record["members"])
    assert roles == sorted([
        ("device", "hmi_*08*", None), ("device", "<b>plc-07</b>", None),
        ("pair", "hmi_*08*", "<b>plc-07</b>"), ("target", "flow:red[09]", None)])
    assert any("trains on this interval" in s.value for s in app.success)

    app.switch_page("pages/3_Suppressions.py").run()
    accepted = app.dataframe[-1].value
    assert list(accepted["incident_id"]) == [SECOND]
    assert accepted.loc[0, "in_this_run"] == "pending: a later run trains on it"
    assert "pair hmi_*08* → <b>plc-07</b>" in list(accepted.loc[0, "members"])


def test_accepted_bins_move_to_training():
    periods = np.array(["train"] * 4 + ["calibration"] * 2 + ["score"] * 4
                       + ["gap"] + ["score"] * 3)
    width = 60_000_000
    starts = np.arange(len(periods), dtype=np.int64) * width
    origin = pd.Timestamp(0, tz="UTC")
    accepted = pd.DataFrame({
        "accept_id": [1, 2, 3],
        "incident_id": ["a", "b", "c"],
        # Bins 7 to 11: three score bins, a gap, then a score bin.
        "start": [origin + pd.Timedelta(minutes=7, seconds=30),
                  origin + pd.Timedelta(days=1), origin + pd.Timedelta(minutes=5)],
        "end": [origin + pd.Timedelta(minutes=11, seconds=30),
                origin + pd.Timedelta(days=2), origin + pd.Timedelta(minutes=6)],
        "accepted_by": ["ana", "bo", "cy"],
    })
    moved, applied = apply_accepted(periods, starts, width, accepted)

    assert list(moved[7:12]) == ["train", "train", "train", "gap", "train"]
    assert list(moved[:7]) == list(periods[:7])
    assert list(moved[12:]) == list(periods[12:])
    assert [record["bins"] for record in applied] == [4, 0, 1]


def test_accept_twice_keeps_one_record(fresh_workspace):
    members = views.incident_members(fresh_workspace, RUN_ID, FIRST)
    row = views.incident(fresh_workspace, RUN_ID, FIRST)
    first = accept_incident(fresh_workspace, RUN_ID, FIRST, members, row["start"],
                            row["end"], "ana")
    again = accept_incident(fresh_workspace, RUN_ID, FIRST, members, row["start"],
                            row["end"], "bo")
    assert first == again
    assert len(list_accepted(fresh_workspace)) == 1


def test_accepted_shown_as_trained(app, fresh_workspace):
    members = views.incident_members(fresh_workspace, RUN_ID, FIRST)
    row = views.incident(fresh_workspace, RUN_ID, FIRST)
    accept_id = accept_incident(fresh_workspace, RUN_ID, FIRST, members,
                                row["start"], row["end"], "ana")
    later = accept_incident(fresh_workspace, RUN_ID, SECOND, members, row["start"],
                            row["end"], "bo")
    # The run records what a pipeline run records when it trained on an interval.
    record = [{"accept_id": accept_id, "incident_id": FIRST, "bins": 12,
               "start": str(row["start"]), "end": str(row["end"]),
               "accepted_by": "ana"}]
    with duckdb.connect(str(fresh_workspace.run_path(RUN_ID))) as con:
        con.execute("INSERT INTO run_info VALUES ('accepted', ?)", [json.dumps(record)])
    app.run()
    app.switch_page("pages/3_Suppressions.py").run()
    assert not app.exception
    accepted = app.dataframe[-1].value.set_index("accept_id")
    assert accepted.loc[accept_id, "in_this_run"] == "in the reference, 12 bins"
    assert accepted.loc[later, "in_this_run"] == "pending: a later run trains on it"
