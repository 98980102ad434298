"""A `tgloc ingest` process killed at random points leaves the store whole.

Each attempt copies a store that already contains one small load, starts the real
command line on a 200,000-row file, kills it with SIGKILL after a seeded random
delay and opens the store: it must contain either none of the file or all of it,
rows, quarantine rows and report alike.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from core.ingest import IngestOptions, ingest_file
from core.store import Workspace

ROOT = Path(__file__).resolve().parent.parent
ROWS = 200_000
BAD_EVERY = 1_000
KILLS = 24
SEED = 20240301


def _write_events(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2024-03-01T00:00:00Z")
    offsets = np.sort(rng.integers(0, 86_400_000, rows))
    weight = rng.integers(40, 1500, rows)
    weight[::BAD_EVERY] = -1
    frame = pd.DataFrame({
        "ts": (start + pd.to_timedelta(offsets, unit="ms")).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"),
        "src": pd.Series(rng.integers(1, 250, rows)).map("10.0.0.{}".format),
        "dst": pd.Series(rng.integers(1, 250, rows)).map("10.0.1.{}".format),
        "bytes": weight,
    })
    frame.to_csv(path, index=False)


def _start_ingest(workspace: Path, path: Path) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "core.cli", "--debug", "ingest", str(path),
         "--workspace", str(workspace)],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )


def _store_state(workspace: Path, file: Path) -> dict[str, int]:
    """Open the store read-only, as the dashboard does, and count what it holds."""
    with duckdb.connect(str(workspace / "store.duckdb"), read_only=True) as con:
        counts = {
            table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("events", "quarantine", "ingest_reports")
        }
        counts["file_reports"] = con.execute(
            "SELECT count(*) FROM ingest_reports WHERE file = ?", [str(file)]
        ).fetchone()[0]
        counts["file_stored"] = con.execute(
            "SELECT coalesce(sum(rows_stored), 0) FROM ingest_reports WHERE file = ?",
            [str(file)],
        ).fetchone()[0]
    return counts


def _timed_run(workspace: Path, path: Path) -> tuple[float, float]:
    """Run the ingest to its end; return the seconds to its write and to its exit."""
    began = time.monotonic()
    process = _start_ingest(workspace, path)
    write_started: list[float] = []

    def watch() -> None:
        for line in process.stderr:
            if "storing" in line and not write_started:
                write_started.append(time.monotonic() - began)

    reader = threading.Thread(target=watch)
    reader.start()
    assert process.wait(timeout=120) == 0
    reader.join()
    assert write_started, "the ingest logged no 'storing' line at debug level"
    return write_started[0], time.monotonic() - began


def test_killed_ingest_leaves_none_or_all(tmp_path):
    big = tmp_path / "big.csv"
    _write_events(big, ROWS)
    base = Workspace.create(tmp_path / "base")
    small = tmp_path / "small.csv"
    small.write_text("ts,src,dst,bytes\n2024-02-29T23:00:00Z,10.0.0.1,10.0.0.2,5\n",
                     encoding="utf-8")
    ingest_file(base, small, IngestOptions("events"))
    before = _store_state(base.root, big)

    complete = tmp_path / "complete"
    shutil.copytree(base.root, complete)
    write_at, total = _timed_run(complete, big)
    after = _store_state(complete, big)
    bad = len(range(0, ROWS, BAD_EVERY))
    assert after["events"] == before["events"] + ROWS - bad
    assert after["quarantine"] == before["quarantine"] + bad
    assert after["file_reports"] == 1

    rng = random.Random(SEED)
    outcomes = {"none": 0, "all": 0}
    began = time.monotonic()
    for attempt in range(KILLS):
        # Half the kills land anywhere, half around the write and its commit.
        if attempt % 2:
            delay = rng.uniform(write_at - 0.1, total + 0.1)
        else:
            delay = rng.uniform(0.0, total)
        workspace = tmp_path / f"kill-{attempt}"
        shutil.copytree(base.root, workspace)
        process = _start_ingest(workspace, big)
        time.sleep(max(0.0, delay))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)

        state = _store_state(workspace, big)
        if state == before:
            outcomes["none"] += 1
        else:
            assert state == after, f"attempt {attempt}, killed after {delay:.2f} s"
            outcomes["all"] += 1
        shutil.rmtree(workspace)

    seconds = time.monotonic() - began
    print(f"\n{KILLS} kills in {seconds:.1f} s (one full ingest {total:.2f} s, write "
          f"from {write_at:.2f} s): {outcomes['none']} left none, "
          f"{outcomes['all']} left all")
    assert sum(outcomes.values()) == KILLS
    assert outcomes["none"] > 0
    assert outcomes["all"] > 0


@pytest.mark.parametrize("kind", ["read-only", "read-write"])
def test_store_opens_after_kill_mid_write(tmp_path, kind):
    big = tmp_path / "big.csv"
    _write_events(big, 50_000)
    workspace = Workspace.create(tmp_path / "ws")
    process = _start_ingest(workspace.root, big)
    for line in process.stderr:
        if "storing" in line:
            break
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    with duckdb.connect(str(workspace.store_path),
                        read_only=kind == "read-only") as con:
        events = con.execute("SELECT count(*) FROM events").fetchone()[0]
        reports = con.execute("SELECT count(*) FROM ingest_reports").fetchone()[0]
    assert (events, reports) in {(0, 0), (50_000 - 50, 1)}
