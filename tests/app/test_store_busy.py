"""The dashboard and `tgloc ingest` share a workspace without a lock error.

An ingest holds the store's write lock while it stores a file, and a DuckDB
read-only connection from another process fails while that lock is held. The home
page retries briefly, then shows that an ingest is running and still shows the last
published run. These tests use real processes on real DuckDB files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import REPOSITORY
from streamlit.testing.v1 import AppTest

from app import STORE_BUSY_MESSAGE
from core.store import Workspace

TIMEOUT = 60
PAGES = ("app.py", "pages/1_Heatmap.py", "pages/2_Incident.py")
FILES = 6
ROWS_PER_FILE = 40_000
HOLD_WRITE_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
"""
LOCK_WORDS = ("lock", "IO Error", "Traceback")


@pytest.fixture
def busy_workspace(workspace, tmp_path) -> Workspace:
    """A copy of the fixture workspace, so its store can be locked and written."""
    root = tmp_path / "workspace"
    shutil.copytree(workspace.root, root)
    return Workspace(root)


def _app(path: str, workspace: Workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    monkeypatch.chdir(REPOSITORY)
    return AppTest.from_file(str(REPOSITORY / path), default_timeout=TIMEOUT)


def _shown_text(app: AppTest) -> str:
    parts = [e.value for e in app.error] + [w.value for w in app.warning]
    parts += [e.value for e in app.exception] if app.exception else []
    parts += [t.value for t in app.text]
    return "\n".join(str(p) for p in parts)


def _write_events(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    start = pd.Timestamp("2024-03-01T00:00:00Z")
    paths = []
    for index in range(FILES):
        offsets = np.sort(rng.integers(0, 3_600_000, ROWS_PER_FILE))
        frame = pd.DataFrame({
            "ts": (start + pd.Timedelta(hours=index)
                   + pd.to_timedelta(offsets, unit="ms")).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"),
            "src": pd.Series(rng.integers(1, 50, ROWS_PER_FILE)).map("plc-{}".format),
            "dst": pd.Series(rng.integers(1, 50, ROWS_PER_FILE)).map("hmi-{}".format),
            "bytes": rng.integers(40, 1500, ROWS_PER_FILE),
        })
        path = folder / f"events-{index}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def test_home_while_store_locked_says_ingest(busy_workspace, monkeypatch):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(busy_workspace.store_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        app = _app("app.py", busy_workspace, monkeypatch)
        app.run()

        assert not app.exception
        assert not app.error
        assert [w.value for w in app.warning] == [STORE_BUSY_MESSAGE]
        assert [m.label for m in app.metric if m.label == "Incidents"] == [
            "Incidents"]
        assert not [m for m in app.metric if m.label == "Events stored"]
    finally:
        holder.communicate("\n", timeout=30)

    app.run()
    metrics = {m.label: m.value for m in app.metric}
    assert not app.warning
    assert metrics["Events stored"] == "0"
    assert "Quarantined rows" in metrics


def test_ingest_while_pages_read(busy_workspace, monkeypatch, tmp_path):
    paths = _write_events(tmp_path)
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    began = time.monotonic()
    ingest = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "ingest", *map(str, paths),
         "--workspace", str(busy_workspace.root)],
        cwd=REPOSITORY, env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    runs, busy = 0, 0
    while ingest.poll() is None or runs < len(PAGES):
        app = _app(PAGES[runs % len(PAGES)], busy_workspace, monkeypatch)
        app.run()
        runs += 1
        shown = _shown_text(app)
        assert not app.exception, shown
        assert not app.error, shown
        assert not any(word in shown for word in LOCK_WORDS), shown
        busy += STORE_BUSY_MESSAGE in [w.value for w in app.warning]
    stdout, stderr = ingest.communicate(timeout=60)
    seconds = time.monotonic() - began

    with duckdb.connect(str(busy_workspace.store_path), read_only=True) as con:
        events = con.execute("SELECT count(*) FROM events").fetchone()[0]
        reports = con.execute("SELECT count(*) FROM ingest_reports").fetchone()[0]
    print(f"\n{runs} page runs during an ingest of {FILES} files in {seconds:.1f} s; "
          f"{busy} showed the busy message")
    assert ingest.returncode == 0, stderr
    assert stderr == ""
    assert stdout.count(f"{ROWS_PER_FILE} stored") == FILES
    assert events == FILES * ROWS_PER_FILE
    assert reports == FILES
    assert runs >= len(PAGES)
