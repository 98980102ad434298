"""The column-wise event ingest stores exactly what the general path stores.

Each case ingests one file twice into fresh workspaces: once as shipped, once with
the column-wise path switched off, and compares the stored events, quarantine and
report. A spy records whether the column-wise path took the file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import ingest, store
from core.store import Workspace

HEADER = "time,src,dst,bytes,protocol\n"
CLEAN_ROWS = [
    "2024-03-01T00:00:00Z,10.0.0.1,10.0.0.2,100,modbus\n",
    "2024-03-01T00:00:02.250000Z,10.0.0.2:502,10.0.0.1,80.5,\n",
    "2024-03-01T00:00:01+01:00,plc-1, 10.0.0.1 ,0, opc \n",
    "2024-03-01T00:00:03Z,[::ffff:10.0.0.3]:44818,10.0.0.1,7,modbus\n",
]


def _stored(workspace: Workspace) -> dict[str, pd.DataFrame]:
    path = workspace.store_path
    return {
        # Insertion order, which DuckDB keeps for a plain scan: rows are stored
        # sorted by time.
        "events": store.query(path, "SELECT * FROM events"),
        "quarantine": store.query(path, "SELECT * FROM quarantine ORDER BY line"),
        "reports": store.query(
            path, "SELECT * EXCLUDE (started) FROM ingest_reports ORDER BY report_id"),
    }


def _ingest_twice(tmp_path: Path, monkeypatch, files: list[Path], **options):
    """Ingest `files` with and without the column-wise path; return both and the spy."""
    taken: list[bool] = []
    original = ingest._columnar_batch

    def spy(*args, **kwargs):
        batch = original(*args, **kwargs)
        taken.append(batch is not None)
        return batch

    results = []
    for name, reader in (("columnar", spy), ("general", lambda *a, **k: None)):
        monkeypatch.setattr(ingest, "_columnar_batch", reader)
        workspace = Workspace.create(tmp_path / name)
        for path in files:
            ingest.ingest_file(workspace, path,
                               ingest.IngestOptions(target="events", **options))
        results.append(_stored(workspace))
    monkeypatch.setattr(ingest, "_columnar_batch", original)
    return results[0], results[1], taken


def _assert_same(left: dict, right: dict) -> None:
    for name in left:
        pd.testing.assert_frame_equal(left[name], right[name], obj=name)


def test_clean_csv_matches_general_path(tmp_path, monkeypatch):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + "".join(CLEAN_ROWS))

    columnar, general, taken = _ingest_twice(tmp_path, monkeypatch, [path])

    assert taken == [True]
    _assert_same(columnar, general)
    notes = list(columnar["reports"]["notes"][0])
    assert any("out of order" in note for note in notes)
    assert any("rewritten to canonical form" in note for note in notes)
    assert columnar["events"]["line"].tolist() == [4, 2, 3, 5]
    assert columnar["events"]["protocol"].isna().sum() == 1


def test_clean_parquet_matches_general_path(tmp_path, monkeypatch):
    frame = pd.DataFrame({
        "Time": pd.to_datetime(["2024-03-01 00:00:05", "2024-03-01 00:00:01"],
                               utc=True),
        "Source IP": ["10.0.0.1", "10.0.0.2"],
        "dst": ["10.0.0.2", "10.0.0.1"],
        "bytes": [10, 20],
    })
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False)

    columnar, general, taken = _ingest_twice(tmp_path, monkeypatch, [path])

    assert taken == [True]
    _assert_same(columnar, general)
    assert columnar["events"]["weight"].tolist() == [20.0, 10.0]


def test_parquet_dictionary_unused_entries_ignored(tmp_path, monkeypatch):
    # Parquet keeps an Arrow dictionary as written, with entries no row uses. An
    # invalid unused address must not send the file to the general path, and an
    # unused address with a port must not count as rewritten.
    addresses = pa.array(["10.0.0.1", "not an address", "10.0.0.9:502",
                          "10.0.0.2:502"])
    protocols = pa.array(["modbus", "unused", "opc"])
    table = pa.table({
        "time": pa.array([3, 1, 2, 4], pa.timestamp("s", tz="UTC")),
        "src": pa.DictionaryArray.from_arrays(
            pa.array([0, 3, 0, 3], pa.int32()), addresses),
        "dst": ["10.0.0.2", "10.0.0.1", "10.0.0.2", "10.0.0.1"],
        "protocol": pa.DictionaryArray.from_arrays(
            pa.array([0, None, 0, 2], pa.int32()), protocols),
    })
    path = tmp_path / "events.parquet"
    pq.write_table(table, path, row_group_size=2)

    columnar, general, taken = _ingest_twice(tmp_path, monkeypatch, [path])

    assert taken == [True]
    _assert_same(columnar, general)
    notes = list(columnar["reports"]["notes"][0])
    assert "1 src address rewritten to canonical form (port removed, IPv6 " \
        "compressed or IPv4-mapped)" in notes
    assert columnar["events"]["src"].tolist() == [
        "10.0.0.2", "10.0.0.1", "10.0.0.1", "10.0.0.2"]
    protocol = columnar["events"]["protocol"]
    assert protocol.isna().tolist() == [True, False, False, False]
    assert protocol.tolist()[1:] == ["modbus", "modbus", "opc"]


def test_grown_csv_continues_line_numbers(tmp_path, monkeypatch):
    grown = tmp_path / "grown.csv"
    start = HEADER + "".join(CLEAN_ROWS[:2])
    results = []
    for name, reader in (("columnar", ingest._columnar_batch),
                         ("general", lambda *a, **k: None)):
        monkeypatch.setattr(ingest, "_columnar_batch", reader)
        workspace = Workspace.create(tmp_path / name)
        grown.write_text(start)
        ingest.ingest_file(workspace, grown, ingest.IngestOptions(target="events"))
        grown.write_text(HEADER + "".join(CLEAN_ROWS))
        report = ingest.ingest_file(workspace, grown,
                                    ingest.IngestOptions(target="events"))
        assert report.rows_read == 2
        assert report.bytes_start == len(start.encode())
        results.append(_stored(workspace))

    _assert_same(results[0], results[1])
    assert results[0]["events"]["line"].tolist() == [2, 3, 4, 5]


@pytest.mark.parametrize("row, why", [
    ("2024-03-01T00:00:04Z,10.0.0.1,10.0.0.2,-5,modbus\n", "negative weight"),
    ("2024-03-01T00:00:04Z,10.0.0.1,,5,modbus\n", "missing dst"),
    ("2024-03-01T00:00:04Z,10.0.0.1,10.0.0.2,five,modbus\n", "non-numeric weight"),
    ("2024-03-01T00:00:04,10.0.0.1,10.0.0.2,5,modbus\n", "time without a zone"),
    ("1709251204,10.0.0.1,10.0.0.2,5,modbus\n", "epoch time"),
    ("2024-03-01T00:00:04Z,10.0.0.1,10.0.0.2,5\n", "missing field"),
    ('2024-03-01T00:00:04Z,10.0.0.1,10.0.0.2,5,"modbus"\n', "quoted field"),
    ("\n", "blank line"),
    ("2024-03-01T00:00:04Z,127.0.0.1,127.0.0.1,5,modbus\n", "loopback self-loop"),
    ("2024-03-01T00:00:04Z,300.1.1.1,10.0.0.2,5,modbus\n", "invalid address"),
    ("2024-02-30T00:00:04Z,10.0.0.1,10.0.0.2,5,modbus\n", "invalid date"),
])
def test_unclean_csv_takes_general_path(tmp_path, monkeypatch, row, why):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + "".join(CLEAN_ROWS) + row)

    columnar, general, taken = _ingest_twice(tmp_path, monkeypatch, [path])

    assert taken == [False], why
    _assert_same(columnar, general)


def test_latin1_csv_takes_general_path(tmp_path, monkeypatch):
    path = tmp_path / "events.csv"
    path.write_bytes((HEADER + "".join(CLEAN_ROWS)).encode("latin-1"))

    _, _, taken = _ingest_twice(tmp_path, monkeypatch, [path], encoding="latin-1")

    assert taken == [False]


def test_crlf_csv_matches_general_path(tmp_path, monkeypatch):
    path = tmp_path / "events.csv"
    text = HEADER + "".join(CLEAN_ROWS)
    path.write_bytes(text.replace("\n", "\r\n").encode())

    columnar, general, taken = _ingest_twice(tmp_path, monkeypatch, [path])

    assert taken == [True]
    _assert_same(columnar, general)
    assert len(columnar["events"]) == len(CLEAN_ROWS)


def test_unterminated_last_line_held_back(tmp_path, monkeypatch):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + "".join(CLEAN_ROWS) + CLEAN_ROWS[0].rstrip("\n"))

    columnar, general, taken = _ingest_twice(tmp_path, monkeypatch, [path])

    assert taken == [True]
    _assert_same(columnar, general)
    assert len(columnar["events"]) == len(CLEAN_ROWS)
