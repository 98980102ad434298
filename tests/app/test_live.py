"""The home page's live mode over the online results of `tgloc watch` or replay."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import REPOSITORY
from streamlit.testing.v1 import AppTest

from core import online
from core.store import Workspace

TIMEOUT = 60


@pytest.fixture
def live_workspace(workspace, tmp_path) -> Workspace:
    root = tmp_path / "workspace"
    shutil.copytree(workspace.root, root)
    return Workspace(root)


def write_results(workspace: Workspace, incident_id: str, late_rows: int) -> None:
    end = pd.Timestamp("2024-03-04T10:05:00Z")
    incidents = pd.DataFrame({
        "incident_id": [incident_id], "version": [2], "type": ["communication"],
        "severity": [71.5], "start": [end - pd.Timedelta(minutes=5)], "end": [end],
        "summary": ["Communication anomaly on plc-1."]})
    bins = pd.DataFrame({"bin": [604, 605], "end": [end - pd.Timedelta(minutes=1), end],
                         "seconds": [0.2, 0.4]})
    online.write_online(workspace, "run-live", {"base_run": "run-live", "late_rows": late_rows,
                                                "updated": "2024-03-04T10:05:01+00:00"},
                        {"incidents": incidents, "bins": bins})


def test_live_mode_shows_online_results(live_workspace, monkeypatch):
    monkeypatch.setenv("TGLOC_WORKSPACE", str(live_workspace.root))
    monkeypatch.chdir(REPOSITORY)
    app = AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)
    app.run()
    assert not app.exception
    app.toggle(key="live_mode").set_value(True).run()
    assert any("No online results yet" in str(i.value) for i in app.info)

    write_results(live_workspace, "inc-live-1", late_rows=3)
    app.run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Online incidents"] == "1"
    assert metrics["Late rows"] == "3"
    assert metrics["Last closed bin"] == "10:05"
    assert metrics["Seconds per bin"] == "0.30"
    tables = [d.value for d in app.dataframe if "version" in d.value.columns]
    assert len(tables) == 1
    assert tables[0]["incident_id"].tolist() == ["inc-live-1"]

    app.toggle(key="live_mode").set_value(False).run()
    assert "Online incidents" not in [m.label for m in app.metric]
