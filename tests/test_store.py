"""Tests for core.store: run publishing, hardened connections, run ids, analyst file."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from core import store
from core.errors import RunNotFoundError
from core.store import Workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


def _incidents() -> pd.DataFrame:
    start = pd.Timestamp("2024-03-01 08:00:00", tz="UTC")
    return pd.DataFrame({
        "incident_id": ["inc-1", "inc-2"],
        "rank": [1, 2],
        "start": pd.Series([start, start + pd.Timedelta(minutes=5)]).astype(
            "datetime64[us, UTC]"),
        "end": pd.Series([start + pd.Timedelta(minutes=3),
                          start + pd.Timedelta(minutes=9)]).astype("datetime64[us, UTC]"),
        "type": ["sensor", "scan"],
        "score": [41.5, 20.25],
        "severity": [9.0, 4.5],
        "summary": ["P1 FIT101 drift", "=cmd|' /C calc'!A0"],
    })


def _leftovers(workspace: Workspace) -> list[str]:
    return sorted(p.name for p in workspace.runs_dir.iterdir() if p.name.startswith("."))


def test_publish_run_writes_complete_file(workspace):
    path = store.publish_run(workspace, "r1", {"incidents": _incidents()},
                             {"seed": 0, "alphas": [0.01, 0.1]})
    incidents = store.query(path, "SELECT * FROM incidents ORDER BY rank")

    assert path == workspace.run_path("r1")
    assert workspace.list_runs() == ["r1"]
    assert _leftovers(workspace) == []
    assert incidents["incident_id"].tolist() == ["inc-1", "inc-2"]
    assert incidents["score"].tolist() == [41.5, 20.25]
    assert incidents["summary"].tolist() == _incidents()["summary"].tolist()
    assert incidents["start"].iloc[0] == pd.Timestamp("2024-03-01 08:00:00", tz="UTC")
    assert store.read_run_info(workspace, "r1") == {"seed": 0, "alphas": [0.01, 0.1]}


def test_publish_run_failure_leaves_nothing(workspace):
    broken = pd.DataFrame({"no_such_column": [1]})

    with pytest.raises(duckdb.Error):
        store.publish_run(workspace, "r2",
                          {"incidents": _incidents(), "elements": broken}, {"seed": 0})

    assert not workspace.run_path("r2").exists()
    assert workspace.list_runs() == []
    assert _leftovers(workspace) == []


def test_publish_run_replaces_previous_run(workspace):
    store.publish_run(workspace, "r1", {"incidents": _incidents()}, {"version": 1})
    store.publish_run(workspace, "r1", {"incidents": _incidents().iloc[:1]}, {"version": 2})

    incidents = store.query(workspace.run_path("r1"), "SELECT * FROM incidents")

    assert len(incidents) == 1
    assert store.read_run_info(workspace, "r1") == {"version": 2}
    assert workspace.list_runs() == ["r1"]


def test_hardened_connection_rejects_write(workspace):
    with store.connect(workspace.store_path, read_only=True, hardened=True) as con:
        with pytest.raises(duckdb.Error):
            con.execute("CREATE TABLE intruder (a INTEGER)")
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM events")

    tables = store.query(workspace.store_path,
                         "SELECT table_name FROM information_schema.tables")
    assert "intruder" not in tables["table_name"].tolist()


def test_hardened_connection_rejects_read_csv(workspace, tmp_path):
    path = tmp_path / "secret.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    sql = "SELECT * FROM read_csv(?)"

    # Without hardening the same query reads the file, so the rejection below comes
    # from the external access setting.
    with store.connect(workspace.store_path, read_only=True) as con:
        assert con.execute(sql, [str(path)]).fetchall() == [(1, 2)]
    with store.connect(workspace.store_path, read_only=True, hardened=True) as con:
        with pytest.raises(duckdb.Error):
            con.execute(sql, [str(path)])
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")


def test_hardened_query_rejects_read_csv(workspace, tmp_path):
    path = tmp_path / "secret.csv"
    path.write_text("a\n1\n", encoding="utf-8")

    with pytest.raises(duckdb.Error):
        store.query(workspace.store_path, "SELECT * FROM read_csv(?)", [str(path)],
                    hardened=True)


@pytest.mark.parametrize("run_id", ["a/b", "..", "../r1", "/etc/passwd", ".hidden", "",
                                    "r1\\x", "x" * 81])
def test_run_path_rejects_unsafe_id(workspace, run_id):
    with pytest.raises(RunNotFoundError):
        workspace.run_path(run_id)


def test_publish_run_rejects_unsafe_id(workspace):
    with pytest.raises(RunNotFoundError):
        store.publish_run(workspace, "../escape", {"incidents": _incidents()}, {})

    assert not (workspace.root / "escape.duckdb").exists()
    assert list(workspace.runs_dir.iterdir()) == []


def test_run_path_accepts_plain_id(workspace):
    assert workspace.run_path("run-2024.03_01").name == "run-2024.03_01.duckdb"


def test_resolve_run_without_runs(workspace):
    with pytest.raises(RunNotFoundError, match="no published run"):
        workspace.resolve_run(None)


def test_set_incident_status_persists(workspace):
    store.set_incident_status(workspace, "inc-1", "acknowledged", owner="ops",
                              notes="pump P1")
    store.set_incident_status(workspace, "inc-2", "new")
    store.set_incident_status(workspace, "inc-1", "resolved", owner="ops", notes="fixed")

    statuses = store.incident_statuses(workspace).set_index("incident_id")

    assert sorted(statuses.index) == ["inc-1", "inc-2"]
    assert statuses.loc["inc-1", "status"] == "resolved"
    assert statuses.loc["inc-1", "notes"] == "fixed"
    assert statuses.loc["inc-1", "owner"] == "ops"
    assert statuses.loc["inc-2", "status"] == "new"


def test_set_incident_status_rejects_unknown(workspace):
    store.set_incident_status(workspace, "inc-1", "acknowledged")

    with pytest.raises(ValueError, match="invalid status 'closed'"):
        store.set_incident_status(workspace, "inc-1", "closed")

    statuses = store.incident_statuses(workspace)
    assert statuses["status"].tolist() == ["acknowledged"]
