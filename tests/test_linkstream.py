"""The u,v,t link-stream importer on small generated files, and its command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core import linkstream, store
from core.cli import main
from core.errors import IngestError
from core.snapshots import build_snapshots


def write(path, lines: list[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def stored_events(workspace: store.Workspace) -> pd.DataFrame:
    return store.query(workspace.store_path,
                       "SELECT t, src, dst, weight, line FROM events ORDER BY line")


def test_uvt_slots_become_instants(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt", ["0,1,0", "1,2,3", "2,0,10"])
    report = linkstream.ingest_uvt(workspace, path, 20, origin="2024-01-01T00:00:00Z")
    events = stored_events(workspace)
    expected = pd.to_datetime(["2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z",
                               "2024-01-01T00:03:20Z"])
    assert report.rows_stored == 3
    assert list(events["t"]) == list(expected)
    assert list(events["src"]) == ["0", "1", "2"]
    assert list(events["dst"]) == ["1", "2", "0"]
    assert list(events["weight"]) == [1.0, 1.0, 1.0]
    assert list(events["line"]) == [1, 2, 3]


def test_uvt_undirected_canonical_pair(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt", ["5,3,0", "3,5,1", "12,9,2"])
    report = linkstream.ingest_uvt(workspace, path, 1, undirected=True)
    events = stored_events(workspace)
    pairs = list(zip(events["src"], events["dst"]))
    assert pairs == [("3", "5"), ("3", "5"), ("9", "12")]
    assert any("2 contacts given as (larger id" in note for note in report.notes)


def test_uvt_undirected_one_pair_element(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt", ["1,0,0", "0,1,1", "1,0,2"])
    linkstream.ingest_uvt(workspace, path, 10, undirected=True)
    snapshots = build_snapshots(workspace.store_path, 10)
    assert snapshots.pairs.shape == (1, 2)
    assert snapshots.pair_events[:, 0].tolist() == [1.0, 1.0, 1.0]


def test_uvt_directed_keeps_direction(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt", ["1,0,0", "0,1,1"])
    linkstream.ingest_uvt(workspace, path, 10)
    snapshots = build_snapshots(workspace.store_path, 10)
    assert snapshots.pairs.shape == (2, 2)


def test_uvt_empty_slots_kept_as_bins(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt", ["0,1,2", "1,2,9"])
    linkstream.ingest_uvt(workspace, path, 20)
    origin = linkstream.slot_origin_us(linkstream.DEFAULT_ORIGIN)
    snapshots = build_snapshots(workspace.store_path, 20, origin_us=origin,
                                stop_us=origin + 12 * 20_000_000)
    per_bin = snapshots.pair_events.sum(axis=1)
    assert snapshots.num_bins == 12
    assert np.flatnonzero(per_bin).tolist() == [2, 9]


def test_uvt_bad_lines_quarantined(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt",
                 ["u,v,t", "0,1,4", "0,1", "0,1,-2", "0,x,3", "0,1,2,9", "", "2,3,5"])
    report = linkstream.ingest_uvt(workspace, path, 20)
    rejected = store.query(workspace.store_path,
                           "SELECT line, reason FROM quarantine ORDER BY line")
    assert report.rows_read == report.rows_stored + report.rows_rejected
    assert report.rows_stored == 2
    assert stored_events(workspace)["line"].tolist() == [2, 8]
    assert rejected["line"].tolist() == [1, 3, 4, 5, 6]
    reasons = rejected["reason"].tolist()
    assert "no header line" in reasons[0]
    assert reasons[1] == "2 fields; a uvt line has 3: u,v,t"
    assert "negative" in reasons[2]
    assert "'x' is not a whole number" in reasons[3]
    assert reasons[4] == "4 fields; a uvt line has 3: u,v,t"


def test_uvt_same_file_not_stored_twice(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt", ["0,1,0", "1,2,1"])
    first = linkstream.ingest_uvt(workspace, path, 20)
    second = linkstream.ingest_uvt(workspace, path, 20)
    other_clock = linkstream.ingest_uvt(workspace, path, 60)
    assert first.rows_stored == 2
    assert second.already_loaded == first.report_id
    assert other_clock.rows_stored == 2


@pytest.mark.parametrize("slot", [0, -5, float("nan")])
def test_uvt_invalid_slot_length(tmp_path, slot):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt", ["0,1,0"])
    with pytest.raises(IngestError, match="invalid slot length"):
        linkstream.ingest_uvt(workspace, path, slot)


def test_uvt_invalid_origin(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write(tmp_path / "s.txt", ["0,1,0"])
    with pytest.raises(IngestError, match="invalid origin 'monday'"):
        linkstream.ingest_uvt(workspace, path, 20, origin="monday")
    assert not workspace.store_path.exists() or stored_events(workspace).empty


def test_cli_uvt_ingest(tmp_path, capsys):
    path = write(tmp_path / "s.txt", ["3,1,0", "1,3,1", "bad"])
    code = main(["ingest", "--workspace", str(tmp_path / "ws"), path, "--format", "uvt",
                 "--slot-seconds", "20", "--undirected"])
    out = capsys.readouterr().out
    assert code == 0
    assert "3 rows read, 2 stored, 1 rejected" in out
    assert "line 3 (row 3)" in out


def test_cli_uvt_needs_slot_seconds(tmp_path, capsys):
    path = write(tmp_path / "s.txt", ["0,1,0"])
    code = main(["ingest", "--workspace", str(tmp_path / "ws"), path,
                 "--format", "uvt"])
    assert code == 2
    assert "--slot-seconds" in capsys.readouterr().err


def test_cli_slot_seconds_needs_uvt(tmp_path, capsys):
    path = write(tmp_path / "s.txt", ["time,src,dst", "2024-01-01T00:00:00Z,a,b"])
    code = main(["ingest", "--workspace", str(tmp_path / "ws"), path,
                 "--slot-seconds", "20"])
    assert code == 2
    assert "need --format uvt" in capsys.readouterr().err
