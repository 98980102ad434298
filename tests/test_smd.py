"""Tests for the SMD importer (core.smd) on small hand-made machines and one real one."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import store
from core.errors import IngestError
from core.smd import (SMD_ORIGIN, dependency_links, ingest_smd, parse_segments,
                      read_machine)
from core.store import Workspace
from tests.conftest import data_folder

METRICS = ["m01", "m02", "m03", "m04"]


def _write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)


def _machine(folder: Path, name: str = "machine-9-1", segments: str = "2-4:1,3\n",
             labels: list[int] | None = None, test_t: list[int] | None = None) -> Path:
    """Write a machine of 4 metrics: 8 training rows, 6 test rows."""
    steps = np.arange(8)
    train = pd.DataFrame({"t": steps, "m01": steps / 8, "m02": (steps / 8) ** 2,
                          "m03": np.cos(steps), "m04": 0.5})
    labels = labels if labels is not None else [0, 0, 1, 1, 0, 0]
    test = pd.DataFrame({"t": test_t if test_t is not None else range(6),
                         "m01": 0.1, "m02": 0.2, "m03": 0.3, "m04": 0.5,
                         "label": labels})
    _write_gz(folder / "csv" / f"{name}_train.csv.gz", train.to_csv(index=False))
    _write_gz(folder / "csv" / f"{name}_test.csv.gz", test.to_csv(index=False))
    labels_dir = folder / "interpretation_label"
    labels_dir.mkdir(parents=True, exist_ok=True)
    (labels_dir / f"{name}.txt").write_text(segments)
    return folder


def test_parse_segments_exclusive_end_one_based():
    segments = parse_segments("246-252:1,2,38\n\n7-8:5\n", "x.txt", 300,
                              [f"m{i:02d}" for i in range(1, 39)])
    assert len(segments) == 2
    assert (segments[0].start, segments[0].stop) == (246, 252)
    assert segments[0].metrics == ("m01", "m02", "m38")
    assert (segments[1].start, segments[1].stop) == (7, 8)
    assert segments[1].metrics == ("m05",)


@pytest.mark.parametrize(("text", "message"), [
    ("5-3:1", "end 3 is not after start 5"),
    ("1-2:0", "metric id 0 is outside 1..4"),
    ("1-2:5", "metric id 5 is outside 1..4"),
    ("1-20:1", "end 20 is after the last test row"),
    ("1 2:1", "line 1"),
])
def test_parse_segments_rejects_bad_line(text, message):
    with pytest.raises(IngestError, match=message):
        parse_segments(text, "x.txt", 10, METRICS)


def test_dependency_links_top_k_and_threshold():
    steps = np.arange(50, dtype=float)
    train = pd.DataFrame({
        "m01": steps, "m02": 2 * steps + 1, "m03": -steps,
        "m04": np.sin(steps * 1.7), "m05": np.full(50, 0.3),
    })
    links = dependency_links(train, top_k=1, min_correlation=0.5)
    pairs = set(zip(links["src"], links["dst"]))
    # m01, m02 and m03 are perfectly correlated (m03 negatively); with k = 1 each
    # picks its first strongest partner. m04 is uncorrelated, m05 constant.
    assert pairs == {("m01", "m02"), ("m01", "m03")}
    assert np.allclose(links["weight"], 1.0)
    assert "m05" not in set(links["src"]) | set(links["dst"])
    wide = dependency_links(train, top_k=3, min_correlation=0.5)
    assert set(zip(wide["src"], wide["dst"])) == {("m01", "m02"), ("m01", "m03"),
                                                  ("m02", "m03")}


def test_ingest_smd_clock_and_segments(tmp_path):
    folder = _machine(tmp_path / "smd")
    workspace = Workspace.create(tmp_path / "ws")
    reports = ingest_smd(workspace, folder, "machine-9-1", step_seconds=60)
    assert [r.rows_stored for r in reports[:3]] == [8, 6, 4]
    counts = store.query(workspace.store_path,
                         "SELECT count(*) AS n, min(t) AS first, max(t) AS last, "
                         "count(DISTINCT device) AS devices FROM measurements")
    assert int(counts["n"][0]) == (8 + 6) * 4
    assert int(counts["devices"][0]) == 4
    assert counts["first"][0] == SMD_ORIGIN
    # Test row 5 follows the 8 training rows: 13 steps after the origin.
    assert counts["last"][0] == SMD_ORIGIN + pd.Timedelta(minutes=13)
    labels = store.query(workspace.store_path,
                         "SELECT count(*) AS n FROM measurements WHERE sensor = 'label'")
    assert int(labels["n"][0]) == 0
    truth = store.query(workspace.store_path, "SELECT * FROM ground_truth")
    assert len(truth) == 1
    assert truth["start"][0] == SMD_ORIGIN + pd.Timedelta(minutes=8 + 2)
    assert truth["end"][0] == SMD_ORIGIN + pd.Timedelta(minutes=8 + 4)
    assert list(truth["sensors"][0]) == ["m01", "m03"]
    devices = store.query(workspace.store_path, "SELECT * FROM devices")
    assert set(devices["kind"]) == {"metric"}
    assert set(devices["zone"]) == {"machine-9-1"}


def test_ingest_smd_again_stores_nothing(tmp_path):
    folder = _machine(tmp_path / "smd")
    workspace = Workspace.create(tmp_path / "ws")
    ingest_smd(workspace, folder, "machine-9-1")
    again = ingest_smd(workspace, folder, "machine-9-1")
    assert all(r.rows_stored == 0 for r in again)
    counts = store.query(workspace.store_path, "SELECT count(*) AS n FROM measurements")
    assert int(counts["n"][0]) == 14 * 4


def test_ingest_smd_rejects_second_machine(tmp_path):
    folder = _machine(tmp_path / "smd")
    _machine(folder, name="machine-9-2")
    workspace = Workspace.create(tmp_path / "ws")
    ingest_smd(workspace, folder, "machine-9-1")
    with pytest.raises(IngestError, match="already holds SMD machine machine-9-1"):
        ingest_smd(workspace, folder, "machine-9-2")


def test_read_machine_labels_disagree(tmp_path):
    folder = _machine(tmp_path / "smd", labels=[0, 0, 1, 1, 1, 0])
    with pytest.raises(IngestError, match="t=4 \\(line 6\\) has label 1"):
        read_machine(folder, "machine-9-1")


def test_read_machine_row_index_gap(tmp_path):
    folder = _machine(tmp_path / "smd", test_t=[0, 1, 2, 4, 5, 6])
    with pytest.raises(IngestError, match="line 5: t is '4', expected 3"):
        read_machine(folder, "machine-9-1")


def test_read_machine_missing_file(tmp_path):
    folder = _machine(tmp_path / "smd")
    with pytest.raises(IngestError, match="SMD file not found"):
        read_machine(folder, "machine-9-3")


@pytest.mark.data
def test_smd_real_machine(tmp_path):
    folder = data_folder("smd")
    workspace = Workspace.create(tmp_path / "ws")
    reports = ingest_smd(workspace, folder, "machine-1-6")
    # Row counts and segments of machine-1-6 as listed in the data set's files.
    assert reports[0].rows_stored == 23688
    assert reports[1].rows_stored == 23689
    counts = store.query(workspace.store_path,
                         "SELECT count(*) AS n, count(DISTINCT sensor) AS s "
                         "FROM measurements")
    assert int(counts["n"][0]) == (23688 + 23689) * 38
    assert int(counts["s"][0]) == 38
    truth = store.query(workspace.store_path,
                        "SELECT * FROM ground_truth ORDER BY start")
    assert len(truth) == 30
    first = truth.iloc[0]
    # interpretation_label line 1 is 246-252:1,2,3,4,6,9,10,11,12,13,15.
    assert first["start"] == SMD_ORIGIN + pd.Timedelta(minutes=23688 + 246)
    assert first["end"] == SMD_ORIGIN + pd.Timedelta(minutes=23688 + 252)
    assert list(first["sensors"])[:3] == ["m01", "m02", "m03"]
    assert len(first["sensors"]) == 11
    machine = read_machine(folder, "machine-1-6")
    assert int(machine.labels.sum()) == 3708


def test_cli_ingest_smd(tmp_path):
    folder = _machine(tmp_path / "smd")
    root = Path(__file__).resolve().parent.parent
    environment = dict(os.environ, PYTHONPATH=str(root))
    command = [sys.executable, "-m", "core.cli", "ingest", "--workspace",
               str(tmp_path / "ws"), "--smd", str(folder), "--machine", "machine-9-1"]
    done = subprocess.run(command, cwd=root, env=environment, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "machine-9-1_test -> measurements: 6 rows read, 6 stored" in done.stdout
    missing = subprocess.run(command[:-2], cwd=root, env=environment,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "--smd needs --machine" in missing.stderr
    assert "Traceback" not in missing.stderr
