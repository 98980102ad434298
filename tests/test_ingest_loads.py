"""Tests for repeated, growing and failing loads, and for the quarantine of bad rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from core import store
from core.errors import IngestError
from core.ingest import IngestOptions, ingest_file, ingest_frame
from core.store import Workspace
from core.withdraw import withdraw_ingest

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
HEADER = "ts,src,dst,bytes\n"
TABLES = ("events", "measurements", "devices", "links", "ground_truth",
          "ingest_reports", "quarantine")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


def _rows(workspace: Workspace, sql: str, params=None) -> pd.DataFrame:
    return store.query(workspace.store_path, sql, params)


def _event_lines(count: int, first: int = 0) -> str:
    return "".join(f"2024-03-01T08:00:{(first + i) % 60:02d}Z,10.0.0.1,10.0.0.2,"
                   f"{first + i}\n" for i in range(count))


def _counts(workspace: Workspace) -> dict[str, int]:
    return {
        table: int(_rows(workspace, f"SELECT count(*) AS n FROM {table}")["n"][0])
        for table in TABLES
    }


# Idempotency.


def test_same_file_twice_stores_nothing(workspace, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + _event_lines(4), encoding="utf-8")

    first = ingest_file(workspace, path, IngestOptions("events"))
    second = ingest_file(workspace, path, IngestOptions("events"))
    reports = _rows(workspace, "SELECT * FROM ingest_reports ORDER BY report_id")

    assert first.rows_stored == 4
    assert second.already_loaded == first.report_id
    assert (second.rows_read, second.rows_stored, second.rows_rejected,
            second.rows_deduplicated) == (0, 0, 0, 0)
    assert second.summary().splitlines()[0].endswith(
        f"already loaded as report {first.report_id}; nothing stored")
    assert _counts(workspace)["events"] == 4
    assert reports["checksum"].nunique() == 1
    assert reports["already_loaded"].isna().tolist() == [True, False]


def test_copy_of_loaded_file_recognised(workspace, tmp_path):
    original = tmp_path / "a.csv"
    original.write_text(HEADER + _event_lines(3), encoding="utf-8")
    copy = tmp_path / "b.csv"
    shutil.copy(original, copy)

    ingest_file(workspace, original, IngestOptions("events"))
    again = ingest_file(workspace, copy, IngestOptions("events"))

    assert again.already_loaded == 1
    assert _counts(workspace)["events"] == 3


def test_same_frame_twice_stores_nothing(workspace):
    frame = pd.DataFrame({"ts": ["2024-03-01T08:00:00Z"] * 2, "src": ["A", "A"],
                          "dst": ["B", "B"]})
    ingest_frame(workspace, frame, IngestOptions("events"), "memory")
    again = ingest_frame(workspace, frame, IngestOptions("events"), "memory")

    assert again.already_loaded == 1
    assert _counts(workspace)["events"] == 2


def test_repeated_link_events_kept_as_multiplicity(workspace, tmp_path):
    row = "2024-03-01T08:00:00Z,10.0.0.1,10.0.0.2,60\n"
    path = tmp_path / "repeated.csv"
    path.write_text(HEADER + row * 3, encoding="utf-8")

    report = ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT line FROM events ORDER BY line")

    assert (report.rows_read, report.rows_stored, report.rows_deduplicated) == (
        3, 3, 0)
    assert stored["line"].tolist() == [2, 3, 4]


def test_repeated_measurements_deduplicated_counted(workspace):
    report = ingest_file(workspace, FIXTURES / "long_duplicates.csv",
                         IngestOptions("measurements"))

    assert report.rows_deduplicated == 2
    assert report.rows_read == report.rows_stored + report.rows_deduplicated
    assert _counts(workspace)["measurements"] == report.rows_stored


# Growing files.


def test_grown_file_reads_only_new_rows(workspace, tmp_path):
    path = tmp_path / "growing.csv"
    path.write_text(HEADER + _event_lines(3), encoding="utf-8")
    first = ingest_file(workspace, path, IngestOptions("events"))
    size = path.stat().st_size
    with path.open("a", encoding="utf-8") as handle:
        handle.write(_event_lines(2, first=3))

    second = ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT report_id, line, weight FROM events "
                              "ORDER BY line")

    assert (first.bytes_start, first.bytes_end) == (0, size)
    assert (second.bytes_start, second.bytes_end) == (size, path.stat().st_size)
    assert second.rows_read == 2
    assert second.notes[0] == (f"file grew since report 1: read from byte {size} "
                               "(line 5) on")
    assert stored["line"].tolist() == [2, 3, 4, 5, 6]
    assert stored["report_id"].tolist() == [1, 1, 1, 2, 2]
    assert stored["weight"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_partial_last_line_held_back(workspace, tmp_path):
    path = tmp_path / "writing.csv"
    path.write_bytes((HEADER + _event_lines(2)
                      + "2024-03-01T08:00:09Z,10.0.0.1,10.0").encode())

    first = ingest_file(workspace, path, IngestOptions("events"))
    with path.open("a", encoding="utf-8") as handle:
        handle.write(".0.2,77\n" + _event_lines(1, first=20))
    second = ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT line, dst, weight FROM events ORDER BY line")

    assert first.rows_read == 2
    assert ("line 4 has no line end and was held back: the next load reads it once "
            "it ends with a newline, or read_unterminated_line "
            "(--read-unterminated-line) reads it now") in first.notes
    assert second.rows_read == 2
    assert stored["line"].tolist() == [2, 3, 4, 5]
    assert stored["dst"].tolist() == ["10.0.0.2"] * 4
    assert stored["weight"].tolist() == [0.0, 1.0, 77.0, 20.0]
    assert _counts(workspace)["quarantine"] == 0


def test_unterminated_line_read_when_asked(workspace, tmp_path):
    path = tmp_path / "final.csv"
    path.write_bytes((HEADER + "2024-03-01T08:00:09Z,10.0.0.1,10.0.0.2,5").encode())

    report = ingest_file(workspace, path,
                         IngestOptions("events", read_unterminated_line=True))

    assert report.rows_stored == 1
    assert report.bytes_end == path.stat().st_size


def test_rewritten_file_refused_names_report(workspace, tmp_path):
    path = tmp_path / "rotated.csv"
    path.write_text(HEADER + _event_lines(3), encoding="utf-8")
    ingest_file(workspace, path, IngestOptions("events"))
    path.write_text(HEADER + _event_lines(4, first=30), encoding="utf-8")
    before = _counts(workspace)

    with pytest.raises(IngestError) as raised:
        ingest_file(workspace, path, IngestOptions("events"))

    assert raised.value.headline == (
        "rotated.csv changed since report 1 loaded it; nothing stored")
    assert "--withdraw 1" in raised.value.detail
    assert _counts(workspace) == before


def test_changed_parquet_refused_then_replaced(workspace, tmp_path):
    path = tmp_path / "events.parquet"
    frame = pd.DataFrame({
        "ts": pd.date_range("2024-03-01T08:00:00Z", periods=3, freq="s"),
        "src": "10.0.0.1", "dst": "10.0.0.2", "bytes": [1.0, 2.0, 3.0],
    })
    frame.to_parquet(path)
    first = ingest_file(workspace, path, IngestOptions("events"))
    grown = pd.concat([frame, frame.assign(ts=frame["ts"] + pd.Timedelta(minutes=1))])
    grown.to_parquet(path)

    with pytest.raises(IngestError) as raised:
        ingest_file(workspace, path, IngestOptions("events"))
    stored_before = _counts(workspace)["events"]
    withdraw_ingest(workspace, first.report_id)
    replaced = ingest_file(workspace, path, IngestOptions("events"))

    assert raised.value.headline == (
        f"events.parquet changed since report {first.report_id} loaded it; "
        "nothing stored")
    assert "Parquet file is read whole" in raised.value.detail
    assert stored_before == 3
    assert replaced.rows_read == 6
    assert replaced.rows_read == (replaced.rows_stored + replaced.rows_rejected
                                  + replaced.rows_deduplicated)
    assert _counts(workspace)["events"] == 6


def test_same_file_other_options_loaded_again(workspace, tmp_path):
    path = tmp_path / "local.csv"
    path.write_text("ts,src,dst\n2024-03-31 02:30:00,a,b\n2024-03-31 03:30:00,a,b\n",
                    encoding="utf-8")
    utc = ingest_file(workspace, path, IngestOptions("events"))
    berlin = ingest_file(workspace, path,
                         IngestOptions("events", timezone="Europe/Berlin"))
    again = ingest_file(workspace, path,
                        IngestOptions("events", timezone="Europe/Berlin"))

    assert utc.rows_stored == 2
    assert berlin.already_loaded is None
    assert berlin.rows_read == 2
    assert berlin.notes[0].startswith(
        f"this file was also loaded as report {utc.report_id} with other options")
    assert again.already_loaded == berlin.report_id
    assert again.rows_stored == 0


def test_same_content_other_mapping_not_already_loaded(workspace, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("ts,a,b\n2024-03-01T08:00:00Z,x,y\n", encoding="utf-8")
    forward = ingest_file(workspace, path,
                          IngestOptions("events", columns={"src": "a", "dst": "b"}))
    backward = ingest_file(workspace, path,
                           IngestOptions("events", columns={"src": "b", "dst": "a"}))
    stored = _rows(workspace, "SELECT src, dst FROM events ORDER BY report_id")

    assert forward.rows_stored == 1
    assert backward.rows_stored == 1
    assert stored.values.tolist() == [["x", "y"], ["y", "x"]]


def test_zeek_log_followed_with_file_lines(workspace, tmp_path):
    text = (FIXTURES / "conn.log").read_text(encoding="utf-8")
    head = text[:text.index("#close")]
    path = tmp_path / "conn.log"
    path.write_text(head, encoding="utf-8")
    first = ingest_file(workspace, path, IngestOptions("events"))
    with path.open("a", encoding="utf-8") as handle:
        handle.write("1709280003.000000\tC9\t10.1.1.6\t1\t10.1.1.20\t502\ttcp\t-\t"
                     "-\t40\t0\tS0\n")

    second = ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT line, src FROM events ORDER BY line")

    assert first.rows_stored == 3
    assert second.rows_read == 1
    assert stored["line"].tolist() == [8, 9, 10, 11]
    assert stored["src"].tolist()[-1] == "10.1.1.6"


def test_json_lines_followed(workspace, tmp_path):
    path = tmp_path / "events.jsonl"
    record = '{{"ts": "2024-03-01T08:00:0{0}Z", "src": "A", "dst": "B"}}\n'
    path.write_text(record.format(0) + record.format(1), encoding="utf-8")
    ingest_file(workspace, path, IngestOptions("events"))
    with path.open("a", encoding="utf-8") as handle:
        handle.write(record.format(2))

    second = ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT line FROM events ORDER BY line")

    assert second.rows_read == 1
    assert stored["line"].tolist() == [1, 2, 3]


# Rejected rows.


def test_wrong_field_count_quarantined(workspace, tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text(HEADER + "2024-03-01T08:00:00Z,A,B,1\n"
                    "2024-03-01T08:00:01Z,A,B,2,extra\n"
                    "2024-03-01T08:00:02Z,A\n"
                    '"2024-03-01T08:00:03Z","A\nB",C,3\n'
                    "2024-03-01T08:00:04Z,A,B,-4\n", encoding="utf-8")

    report = ingest_file(workspace, path, IngestOptions("events"))
    rejected = _rows(workspace, "SELECT * FROM quarantine ORDER BY line")
    stored = _rows(workspace, "SELECT line, src FROM events ORDER BY line")

    assert (report.rows_read, report.rows_stored, report.rows_rejected) == (5, 2, 3)
    assert stored["line"].tolist() == [2, 5]
    assert stored["src"].tolist() == ["A", "A\nB"]
    assert rejected["line"].tolist() == [3, 4, 7]
    assert rejected["reason"].tolist() == [
        "expected 4 fields, found 5", "expected 4 fields, found 2",
        "negative byte count"]
    assert rejected["column"].tolist()[2] == "bytes"
    assert rejected["file"].unique().tolist() == [str(path)]
    assert set(rejected["outcome"]) == {"row rejected"}
    assert json.loads(rejected["record"][0]) == [
        "2024-03-01T08:00:01Z", "A", "B", "2", "extra"]
    assert json.loads(rejected["record"][2]) == {
        "ts": "2024-03-01T08:00:04Z", "src": "A", "dst": "B", "bytes": "-4"}


def test_latin1_bytes_quarantined_with_fix(workspace, tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"time,device,sensor,value\r\n"
                     b"2024-03-01T08:00:00Z,pump-1,flow,1.5\r\n"
                     b"2024-03-01T08:00:01Z,Pumpe S\xfcd,flow,2.5\r\n")

    report = ingest_file(workspace, path, IngestOptions("measurements"))
    rejected = _rows(workspace, "SELECT line, value, reason FROM quarantine")

    assert (report.rows_stored, report.rows_rejected) == (1, 1)
    assert rejected["line"].tolist() == [3]
    assert rejected["reason"][0] == (
        "byte 0xfc is not valid utf-8; save the file as UTF-8 or set the encoding "
        "option (for example latin-1)")
    assert "Pumpe S\\xfcd" in rejected["value"][0]


def test_latin1_encoding_option_reads_all(workspace, tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\xef\xbb\xbftime,device,sensor,value\r\n"
                     b"2024-03-01T08:00:01Z,Pumpe S\xfcd,flow,2.5\r\n")

    report = ingest_file(workspace, path,
                         IngestOptions("measurements", encoding="latin-1"))
    stored = _rows(workspace, "SELECT device, value FROM measurements")

    assert report.rows_stored == 1
    assert stored["device"].tolist() == ["Pumpe Süd"]


def test_bom_and_crlf_read_as_plain_utf8(workspace, tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffts,src,dst,bytes\r\n2024-03-01T08:00:00Z,A,Bé,7\r\n"
                     .encode("utf-8"))

    report = ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT src, dst, weight FROM events")

    assert report.rows_stored == 1
    assert stored.to_dict("records") == [{"src": "A", "dst": "Bé", "weight": 7.0}]


def test_invalid_json_lines_quarantined(workspace, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"ts": "2024-03-01T08:00:00Z", "src": "A", "dst": "B"}\n'
                    '{"ts": "2024-03-01T08:00:01Z", "src": \n'
                    '[1, 2]\n', encoding="utf-8")

    report = ingest_file(workspace, path, IngestOptions("events"))
    rejected = _rows(workspace, "SELECT line, reason FROM quarantine ORDER BY line")

    assert (report.rows_read, report.rows_stored, report.rows_rejected) == (3, 1, 2)
    assert rejected["line"].tolist() == [2, 3]
    assert rejected["reason"][0].startswith("invalid JSON")
    assert rejected["reason"][1] == "line is not a JSON object"


def test_utf16_file_raises_with_fix(workspace, tmp_path):
    path = tmp_path / "wide.csv"
    path.write_bytes("ts,src,dst\n".encode("utf-16"))
    before = _counts(workspace)

    with pytest.raises(IngestError, match="is UTF-16 text"):
        ingest_file(workspace, path, IngestOptions("events"))
    assert _counts(workspace) == before


def test_failed_file_leaves_store_unchanged(workspace, tmp_path):
    ingest_file(workspace, FIXTURES / "bad_weights.csv", IngestOptions("events"))
    before = _counts(workspace)
    path = tmp_path / "late_error.csv"
    path.write_text("time,src,dst,label\n2024-03-01T08:00:00Z,A,B,normal\n"
                    "2024-03-01T08:00:01Z,A,B,Atack\n", encoding="utf-8")

    with pytest.raises(IngestError, match="unknown label value 'Atack'"):
        ingest_file(workspace, path, IngestOptions("events"))
    again = ingest_file(workspace, FIXTURES / "bad_weights.csv",
                        IngestOptions("events"))

    assert _counts(workspace) == {**before,
                                  "ingest_reports": before["ingest_reports"] + 1}
    assert again.already_loaded == 1


def test_stray_first_time_rejected_not_fatal(workspace, tmp_path):
    path = tmp_path / "stray.csv"
    path.write_text("ts,src,dst\nx,A,B\n1709280000,A,B\n1709280001.5,A,C\n",
                    encoding="utf-8")

    report = ingest_file(workspace, path, IngestOptions("events"))
    rejected = _rows(workspace, "SELECT line, reason FROM quarantine")

    assert (report.rows_stored, report.rows_rejected) == (2, 1)
    assert rejected["line"].tolist() == [2]
    assert rejected["reason"][0] == (
        "time not an epoch number like the rest of the column")


def test_huge_float_ids_not_overflowed(workspace, tmp_path):
    frame = pd.DataFrame({"ts": ["2024-03-01T08:00:00Z"] * 2, "src": [1e20, 3.0],
                          "dst": ["B", "C"], "bytes": [1e300, 2.0**70]})
    path = tmp_path / "huge.parquet"
    frame.to_parquet(path)

    ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT src, weight FROM events ORDER BY dst")

    assert stored["src"].tolist() == ["1e+20", "3"]
    assert stored["weight"].tolist() == [1e300, 2.0**70]


def test_quoted_line_break_in_last_record_held(workspace, tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text(HEADER + '2024-03-01T08:00:00Z,A,"B\nC', encoding="utf-8")

    first = ingest_file(workspace, path, IngestOptions("events"))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('",5\n')
    second = ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT dst, weight, line FROM events")

    assert first.rows_read == 0
    assert second.rows_read == 1
    assert stored.to_dict("records") == [{"dst": "B\nC", "weight": 5.0, "line": 2}]


# The duplicate rule across files.


def _long(tmp_path: Path, name: str, rows: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("ts,device,sensor,value\n" + "\n".join(rows) + "\n",
                    encoding="utf-8")
    return path


def test_conflicting_reading_across_files_last_wins(workspace, tmp_path):
    first = _long(tmp_path, "a.csv", ["2024-03-01T08:00:00Z,plc-1,LIT101,5.0",
                                      "2024-03-01T08:00:01Z,plc-1,LIT101,6.0"])
    second = _long(tmp_path, "b.csv", ["2024-03-01T08:00:01Z,plc-1,LIT101,7.5",
                                       "2024-03-01T08:00:02Z,plc-1,LIT101,8.0"])
    ingest_file(workspace, first, IngestOptions("measurements"))
    report = ingest_file(workspace, second, IngestOptions("measurements"))
    stored = _rows(workspace, "SELECT t, value, report_id FROM measurements ORDER BY t")

    assert stored["value"].tolist() == [5.0, 7.5, 8.0]
    assert stored["report_id"].tolist() == [1, 2, 2]
    assert report.rows_stored == 2
    assert report.rows_deduplicated == 0
    assert report.notes[-1] == (
        "1 reading conflicting with report 1 (plc-1/LIT101 at 2024-03-01T08:00:01Z) "
        "resolved: last, the stored value replaced")


def test_exact_reading_across_files_deduplicated(workspace, tmp_path):
    first = _long(tmp_path, "a.csv", ["2024-03-01T08:00:00Z,plc-1,LIT101,5.0",
                                      "2024-03-01T08:00:01Z,plc-1,LIT101,"])
    second = _long(tmp_path, "b.csv", ["2024-03-01T08:00:00Z,plc-1,LIT101,5.0",
                                       "2024-03-01T08:00:01Z,plc-1,LIT101,NaN",
                                       "2024-03-01T08:00:02Z,plc-1,LIT101,8.0"])
    ingest_file(workspace, first, IngestOptions("measurements"))
    report = ingest_file(workspace, second, IngestOptions("measurements"))
    stored = _rows(workspace, "SELECT value FROM measurements ORDER BY t")

    assert stored["value"].tolist()[0] == 5.0
    assert len(stored) == 3
    assert report.rows_read == 3
    assert report.rows_stored == 1
    assert report.rows_deduplicated == 2
    assert report.notes[-1] == ("2 readings already stored by report 1 not stored "
                                "again (2 file rows deduplicated)")


def test_wide_rows_across_files_counted_per_row(workspace, tmp_path):
    first = tmp_path / "a.csv"
    first.write_text("time,A,B\n2024-05-01T00:00:00Z,1,2\n2024-05-01T00:00:01Z,3,4\n")
    second = tmp_path / "b.csv"
    second.write_text("time,A,B\n2024-05-01T00:00:01Z,3,4\n2024-05-01T00:00:02Z,5,6\n"
                      "2024-05-01T00:00:00Z,1,9\n")
    options = IngestOptions("measurements", layout="wide")
    ingest_file(workspace, first, options)
    report = ingest_file(workspace, second, options)
    stored = _rows(workspace, "SELECT sensor, value FROM measurements ORDER BY t, sensor")

    assert report.rows_read == 3
    assert report.rows_deduplicated == 1
    assert report.rows_stored == 2
    assert stored["value"].tolist() == [1.0, 9.0, 3.0, 4.0, 5.0, 6.0]


def test_keep_policy_across_files_keeps_both(workspace, tmp_path):
    first = _long(tmp_path, "a.csv", ["2024-03-01T08:00:00Z,plc-1,LIT101,5.0"])
    second = _long(tmp_path, "b.csv", ["2024-03-01T08:00:00Z,plc-1,LIT101,6.0"])
    options = IngestOptions("measurements", duplicate_policy="keep")
    ingest_file(workspace, first, options)
    report = ingest_file(workspace, second, options)

    assert report.rows_stored == 1
    assert _counts(workspace)["measurements"] == 2
    assert report.notes[-1] == ("1 reading repeats a (time, device, sensor) stored "
                                "by report 1; kept")
