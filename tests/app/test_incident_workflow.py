"""Incident list, status form and suppression rules, on a workspace of their own.

These tests write the analyst file, so they use a fresh copy of the fixture run
instead of the session workspace that other tests read.
"""

from __future__ import annotations

import shutil

import pytest
from conftest import REPOSITORY
from fixture_run import INCIDENTS, RUN_ID, build_fixture_workspace
from pages.common.ui import escape_markdown
from streamlit.testing.v1 import AppTest

from core.feedback import list_suppressions
from core.store import incident_statuses

TIMEOUT = 60
RERUN_ID = "fixture-rerun"
HOSTILE_NOTE = "'); DROP TABLE incident_status; -- <b>=cmd|' /C calc'!A0</b>"


@pytest.fixture
def fresh_workspace(tmp_path):
    return build_fixture_workspace(tmp_path / "workspace")


@pytest.fixture
def app(fresh_workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(fresh_workspace.root))
    monkeypatch.chdir(REPOSITORY)
    return AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)


def _open_incident(app: AppTest, incident_id: str, run_id: str = RUN_ID) -> AppTest:
    app.query_params["run"] = run_id
    app.query_params["incident"] = incident_id
    app.run()
    return app.switch_page("pages/2_Incident.py").run()


def _save_status(app: AppTest, status: str, owner: str, notes: str) -> None:
    [box for box in app.selectbox if box.label == "Status"][0].set_value(status)
    [box for box in app.text_input if box.label == "Owner"][0].input(owner)
    [box for box in app.text_area if box.label == "Notes"][0].input(notes)
    [button for button in app.button if button.label == "Save"][0].click().run()


def _status_line(app: AppTest) -> str:
    lines = [t.value for t in app.text if t.value.startswith("Status: ")]
    assert lines, "the page shows no status line"
    return lines[0]


def test_incident_list_columns(app):
    app.run()
    assert not app.exception
    table = app.dataframe[0].value.set_index("incident_id")
    for planted in INCIDENTS:
        row = table.loc[planted["incident_id"]]
        assert row["type"] == planted["type"]
        assert row["devices"] == len(planted["devices"])
        assert row["pairs"] == len(planted["pairs"])
        assert row["sensors"] == len(planted["sensors"])
        assert row["targets"] == len(planted["targets"])
        assert row["significance"] == pytest.approx(1 / 50)
        assert row["status"] == "new"
    assert list(table["rank"]) == sorted(table["rank"])


def test_status_saved_and_shown(app, fresh_workspace):
    incident_id = INCIDENTS[0]["incident_id"]
    _open_incident(app, incident_id)
    assert _status_line(app) == "Status: new"

    _save_status(app, "acknowledged", "ana", HOSTILE_NOTE)
    assert not app.exception
    assert _status_line(app) == "Status: acknowledged  ·  owner: ana"
    assert any("Saved" in message.value for message in app.success)

    stored = incident_statuses(fresh_workspace).set_index("incident_id")
    assert stored.loc[incident_id, "status"] == "acknowledged"
    assert stored.loc[incident_id, "owner"] == "ana"
    assert stored.loc[incident_id, "notes"] == HOSTILE_NOTE
    assert [area.value for area in app.text_area] == [HOSTILE_NOTE]


def test_status_kept_across_rerun(app, fresh_workspace):
    incident_id = INCIDENTS[1]["incident_id"]
    _open_incident(app, incident_id)
    _save_status(app, "resolved", "bo", "valve replaced")

    # A re-run of the same data publishes the same incidents under a new run id.
    shutil.copy(fresh_workspace.run_path(RUN_ID), fresh_workspace.run_path(RERUN_ID))
    assert fresh_workspace.latest_run() == RERUN_ID
    home = AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)
    home.query_params["run"] = RERUN_ID
    home.run()
    assert not home.exception
    table = home.dataframe[0].value.set_index("incident_id")
    assert table.loc[incident_id, "status"] == "resolved"
    assert table.loc[incident_id, "owner"] == "bo"
    assert (table["status"] == "new").sum() == len(INCIDENTS) - 1


def test_false_positive_creates_rule(app, fresh_workspace):
    planted = INCIDENTS[1]
    _open_incident(app, planted["incident_id"])
    assert not [b for b in app.button if b.label == "Create suppression rule"]
    _save_status(app, "false positive", "", "")
    offer = [t.value for t in app.text if "<b>plc-07</b>" in t.value]
    assert offer == ["\n".join(sorted(planted["devices"]))]

    app.button(key="create_suppression").click().run()
    assert not app.exception
    assert any("Suppression rule 1 covers" in info.value for info in app.info)
    rules = list_suppressions(fresh_workspace)
    assert len(rules) == 1
    assert rules.loc[0, "devices"] == sorted(planted["devices"])
    assert rules.loc[0, "type"] == planted["type"]

    app.switch_page("pages/3_Suppressions.py").run()
    assert not app.exception
    assert [m.value for m in app.metric if m.label == "Rules"] == ["1"]
    listed = app.dataframe[0].value
    assert listed.loc[0, "matches_in_run"] == 1
    assert list(listed.loc[0, "devices"]) == sorted(planted["devices"])

    # The sidebar link home drops the incident from the address, as here.
    del app.query_params["incident"]
    app.switch_page("app.py").run()
    hidden = app.dataframe[0].value
    assert planted["incident_id"] not in set(hidden["incident_id"])
    assert len(hidden) == len(INCIDENTS) - 1

    app.toggle(key="show_suppressed").set_value(True).run()
    assert app.toggle(key="show_suppressed").label == "Show suppressed (1)"
    assert app.query_params["show"] == "suppressed"
    table = app.dataframe[0].value.set_index("incident_id")
    assert table.loc[planted["incident_id"], "suppressed_by"] == 1
    assert table["suppressed_by"].isna().sum() == len(INCIDENTS) - 1


def test_suppression_rule_deleted_from_page(app, fresh_workspace):
    from core.feedback import add_suppression

    kept = add_suppression(fresh_workspace, "inc-a", ["plc-1"], "process")
    deleted = add_suppression(fresh_workspace, "inc-b", ["hmi-1"], "communication")
    app.run()
    app.switch_page("pages/3_Suppressions.py").run()
    app.selectbox(key="rule_to_delete").set_value(deleted)
    app.button(key="delete_rule").click().run()

    assert not app.exception
    assert any(f"Suppression rule {deleted} deleted." in s.value for s in app.success)
    assert [m.value for m in app.metric if m.label == "Rules"] == ["1"]
    assert app.dataframe[0].value["rule_id"].tolist() == [kept]
    assert list_suppressions(fresh_workspace)["rule_id"].tolist() == [kept]


def test_suppressions_empty_state(app):
    app.run()
    app.switch_page("pages/3_Suppressions.py").run()
    assert not app.exception
    assert any("No rule yet" in info.value for info in app.info)


def test_home_url_opens_incident(app):
    planted = INCIDENTS[2]
    app.query_params["run"] = RUN_ID
    app.query_params["incident"] = planted["incident_id"]
    app.run()
    assert not app.exception
    heading = escape_markdown(planted["incident_id"])
    assert any(heading in header.value for header in app.subheader)
    members = app.dataframe[0].value
    assert sorted(members.loc[members["role"] == "device", "device"]) == sorted(
        planted["devices"])
