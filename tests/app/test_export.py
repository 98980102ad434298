"""Incident exports: standalone HTML with escaped names, sanitized CSV and JSON."""

from __future__ import annotations

import csv
import html
import io
import json
import re

import pandas as pd
import plotly.graph_objects as go
import pytest
from conftest import REPOSITORY
from fixture_run import INCIDENTS
from streamlit.testing.v1 import AppTest

from core import plots, report, views

TIMEOUT = 60
HOSTILE = "=cmd|' /C calc'!A0"
SCRIPT_NAME = "</script><script>alert(1)</script>"


def _hostile_members() -> pd.DataFrame:
    return pd.DataFrame({
        "role": ["device", "device", "pair", "target"],
        "device": [HOSTILE, SCRIPT_NAME, HOSTILE, "+plc"],
        "peer": [None, None, SCRIPT_NAME, None],
        "sensor": [None, None, None, None],
        "evidence": [5.5, 4.0, 3.2, float("nan")],
        "p_value": [3e-6, 1e-4, 6e-4, float("nan")],
    })


def _incident() -> dict:
    return {"incident_id": "inc-<x>", "rank": 1, "type": "communication",
            "start": pd.Timestamp("2026-03-01T01:36", tz="UTC"),
            "end": pd.Timestamp("2026-03-01T01:44", tz="UTC"),
            "severity": 0.7, "score": 64.4}


def test_members_csv_sanitized():
    rows = list(csv.reader(io.StringIO(report.members_csv(_hostile_members()))))
    assert rows[0] == report.MEMBER_COLUMNS
    assert rows[1][1] == "'" + HOSTILE
    assert rows[3][2] == SCRIPT_NAME
    assert rows[4][1] == "'+plc"
    assert rows[4][4] == ""
    assert len(rows) == 5


def test_members_json_keeps_names_exactly():
    document = json.loads(report.members_json(_incident(), _hostile_members()))
    assert document["incident_id"] == "inc-<x>"
    assert document["members"][0]["device"] == HOSTILE
    assert document["members"][3]["evidence"] is None
    assert document["members"][2]["p_value"] == pytest.approx(6e-4)
    assert document["start"] == "2026-03-01T01:36:00+00:00"


def test_incident_html_standalone():
    members = _hostile_members()
    figures = [
        ("Subgraph", plots.subgraph_figure(members, pd.DataFrame(
            columns=["src", "dst", "evidence", "weight"]))),
        (f"{SCRIPT_NAME} · temperature", go.Figure(go.Scatter(
            x=[1, 2], y=[3, 4], name=SCRIPT_NAME))),
    ]
    page = report.incident_html(_incident(), f"Summary of {SCRIPT_NAME}", members,
                                figures, {"status": "acknowledged", "owner": "<i>a</i>",
                                          "notes": "x & y"})
    assert SCRIPT_NAME not in page
    assert "<i>a</i>" not in page
    assert "&lt;i&gt;a&lt;/i&gt;" in page
    assert html.escape(SCRIPT_NAME) in page
    assert page.count("* plotly.js v") == 1
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert "cdn.plot.ly/plotly" not in page
    assert page.count('class="plotly-graph-div"') == len(figures)


def test_fixture_members_round_trip(workspace, run_id):
    planted = INCIDENTS[1]
    members = views.incident_members(workspace, run_id, planted["incident_id"])
    rows = list(csv.DictReader(io.StringIO(report.members_csv(members))))
    devices = sorted(r["device"] for r in rows if r["role"] == "device")
    assert devices == sorted(planted["devices"])
    assert len(rows) == len(members)


def test_incident_page_offers_exports(workspace, run_id, monkeypatch):
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    monkeypatch.chdir(REPOSITORY)
    app = AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)
    app.query_params["run"] = run_id
    app.query_params["incident"] = INCIDENTS[1]["incident_id"]
    app.run()
    app.switch_page("pages/2_Incident.py").run()
    assert not app.exception
    labels = [button.proto.label for button in app.get("download_button")]
    assert labels == ["Members as CSV", "Members as JSON"]

    app.button(key="build_report").click().run()
    assert not app.exception
    labels = [button.proto.label for button in app.get("download_button")]
    assert labels == ["Members as CSV", "Members as JSON", "HTML report"]


def test_members_csv_file_has_bom_for_excel():
    members = _hostile_members()
    members.loc[1, "device"] = "Pumpe-Süd-µ"
    data = report.members_csv_file(members)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))

    assert data.startswith(b"\xef\xbb\xbf")
    assert rows[0] == report.MEMBER_COLUMNS
    assert rows[2][1] == "Pumpe-Süd-µ"


def test_incidents_csv_file_bom_and_list_separator(workspace, run_id, tmp_path,
                                                   capsys):
    from core import cli

    target = tmp_path / "incidents.csv"
    status = cli.main(["incidents", "--workspace", str(workspace.root), "--run",
                       run_id, "--format", "csv", "--output", str(target)])
    data = target.read_bytes()
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    status_stdout = cli.main(["incidents", "--workspace", str(workspace.root),
                              "--run", run_id, "--format", "csv"])
    piped = capsys.readouterr().out

    assert status == 0
    assert status_stdout == 0
    assert data.startswith(b"\xef\xbb\xbf")
    assert not piped.lstrip().startswith("\ufeff")
    assert f"incidents of run {run_id} written to {target}" in piped
    by_id = {row["id"]: row for row in rows}
    for planted in INCIDENTS:
        shown = by_id[planted["incident_id"]]["devices"]
        # A formula-like first name gets a quote in front of the whole cell.
        assert sorted(shown.lstrip("'").split(cli.LIST_SEPARATOR)) == sorted(
            planted["devices"])
