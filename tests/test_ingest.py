"""Tests for core.ingest on small text fixtures rebuilt into a store in tmp_path."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import ingest as ingest_module
from core import store
from core.errors import IngestError
from core.ingest import (
    IngestOptions,
    ingest_batadal,
    ingest_file,
    ingest_frame,
    load_sensor_map,
)
from core.store import Workspace

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
TABLES = ("events", "measurements", "devices", "links", "ground_truth",
          "ingest_reports", "quarantine")


def _data_folder() -> Path | None:
    root = os.environ.get("TGLOC_DATA", "")
    return Path(root) if root else None


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


def _rows(workspace: Workspace, sql: str, params=None) -> pd.DataFrame:
    return store.query(workspace.store_path, sql, params)


def _instants(series: pd.Series) -> list[str]:
    return [t.tz_convert("UTC").isoformat() for t in series]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _counts(workspace: Workspace) -> dict[str, int]:
    return {
        table: int(_rows(workspace, f"SELECT count(*) AS n FROM {table}")["n"][0])
        for table in TABLES
    }


def _assert_counts_add_up(report) -> None:
    assert report.rows_read == (
        report.rows_stored + report.rows_rejected + report.rows_deduplicated
    )


# Timestamps.


def test_iso_with_zone_mixed_precision(workspace):
    report = ingest_file(workspace, FIXTURES / "mixed_iso.csv", IngestOptions("events"))
    events = _rows(workspace, "SELECT * FROM events ORDER BY t")
    kinds = _rows(workspace, "DESCRIBE events")
    assert report.rows_stored == 3
    assert _instants(events["t"]) == [
        "2024-03-01T08:00:05+00:00",
        "2024-03-01T08:01:00+00:00",
        "2024-03-01T08:02:07.250000+00:00",
    ]
    assert kinds.set_index("column_name")["column_type"]["t"] == (
        "TIMESTAMP WITH TIME ZONE"
    )
    assert list(events["weight"]) == [120.0, 118.0, 64.0]


def test_iso_offsets_convert_to_utc(workspace, tmp_path):
    path = _write(tmp_path, "offsets.csv", "ts,src,dst\n"
                  "2024-03-01T09:00:00+01:00,A,B\n2024-03-01T03:30:00-04:30,A,B\n")
    ingest_file(workspace, path, IngestOptions("events"))
    events = _rows(workspace, "SELECT t FROM events ORDER BY line")
    assert _instants(events["t"]) == [
        "2024-03-01T08:00:00+00:00", "2024-03-01T08:00:00+00:00"
    ]


def test_utc_instants_independent_of_host_zone(tmp_path, monkeypatch):
    # Two workspaces, because the store does not load the same content twice.
    utc = Workspace.create(tmp_path / "utc")
    berlin = Workspace.create(tmp_path / "berlin")
    ingest_file(utc, FIXTURES / "utc_across_dst.csv", IngestOptions("measurements"))
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        ingest_file(berlin, FIXTURES / "utc_across_dst.csv",
                    IngestOptions("measurements", timezone="Europe/Berlin"))
    finally:
        monkeypatch.undo()
        time.tzset()
    for workspace in (utc, berlin):
        times = _rows(workspace, "SELECT t FROM measurements ORDER BY t")["t"]
        assert _instants(times) == [
            "2025-03-30T00:30:00+00:00",
            "2025-03-30T01:30:00+00:00",
            "2025-03-30T02:30:00+00:00",
        ]
        assert list(times.diff().dropna().dt.total_seconds()) == [3600.0, 3600.0]


def test_naive_times_read_in_zone_with_gap_rejected(workspace, tmp_path):
    path = _write(tmp_path, "berlin.csv", "time,device,sensor,value\n"
                  "2025-03-30 01:30:00,pump-7,flow,3.1\n"
                  "2025-03-30 02:30:00,pump-7,flow,3.2\n"
                  "2025-03-30 03:30:00,pump-7,flow,3.3\n")
    report = ingest_file(
        workspace, path, IngestOptions("measurements", timezone="Europe/Berlin")
    )
    stored = _rows(workspace, "SELECT t, value FROM measurements ORDER BY t")
    rejected = _rows(workspace, "SELECT * FROM quarantine")
    assert _instants(stored["t"]) == [
        "2025-03-30T00:30:00+00:00", "2025-03-30T01:30:00+00:00"
    ]
    assert report.rows_rejected == 1
    assert list(rejected["line"]) == [3]
    assert list(rejected["column"]) == ["time"]
    assert list(rejected["value"]) == ["2025-03-30 02:30:00"]
    assert rejected["reason"][0] == (
        "nonexistent local time 2025-03-30 02:30:00 in Europe/Berlin "
        "(daylight-saving gap); give the time with its UTC offset"
    )
    assert "1 timestamp in a daylight-saving gap of Europe/Berlin rejected" in (
        report.notes
    )
    _assert_counts_add_up(report)


def test_naive_times_in_fold_inferred_and_noted(workspace, tmp_path):
    path = _write(tmp_path, "fold.csv", "time,device,sensor,value\n"
                  "2025-10-26 01:30:00,pump-7,flow,1\n"
                  "2025-10-26 02:30:00,pump-7,flow,2\n"
                  "2025-10-26 02:30:00,pump-7,flow,3\n"
                  "2025-10-26 03:30:00,pump-7,flow,4\n")
    report = ingest_file(
        workspace, path, IngestOptions("measurements", timezone="Europe/Berlin")
    )
    stored = _rows(workspace, "SELECT t, value FROM measurements ORDER BY value")
    assert _instants(stored["t"]) == [
        "2025-10-25T23:30:00+00:00",
        "2025-10-26T00:30:00+00:00",
        "2025-10-26T01:30:00+00:00",
        "2025-10-26T02:30:00+00:00",
    ]
    assert report.rows_deduplicated == 0
    assert ("2 timestamps in the daylight-saving fold of Europe/Berlin; order of the "
            "repeated hour inferred") in report.notes


def test_epoch_seconds_and_millis_detected(workspace):
    seconds = ingest_file(workspace, FIXTURES / "epoch_seconds.csv",
                          IngestOptions("events"))
    millis = ingest_file(workspace, FIXTURES / "epoch_millis.csv",
                         IngestOptions("events"))
    stored = _rows(workspace, "SELECT report_id, t FROM events ORDER BY line")
    expected = ["2024-03-01T08:00:00+00:00", "2024-03-01T08:00:01.250000+00:00"]
    assert seconds.notes == ["epoch unit detected: s"]
    assert millis.notes == ["epoch unit detected: ms"]
    for report_id in (seconds.report_id, millis.report_id):
        times = stored.loc[stored["report_id"] == report_id, "t"]
        assert _instants(times) == expected


def test_epoch_mixed_units_rejected_whole_file(workspace):
    with pytest.raises(IngestError) as raised:
        ingest_file(workspace, FIXTURES / "epoch_mixed.csv", IngestOptions("events"))
    assert raised.value.headline == (
        "column ts mixes epoch units (row 1 looks like seconds, row 2 like "
        "milliseconds)"
    )
    assert "Line 2 has 1709280000 (seconds)" in raised.value.detail
    assert "line 3 has 1709280001250 (milliseconds)" in raised.value.detail
    assert _counts(workspace)["events"] == 0
    assert _counts(workspace)["ingest_reports"] == 0


def test_epoch_unit_set_rejects_other_unit(workspace):
    report = ingest_file(workspace, FIXTURES / "epoch_mixed.csv",
                         IngestOptions("events", epoch_unit="s"))
    rejected = _rows(workspace, "SELECT line, reason FROM quarantine")
    assert report.rows_stored == 1
    assert list(rejected["line"]) == [3]
    assert list(rejected["reason"]) == ["epoch value outside 1990-2100 in seconds"]


def test_epoch_outside_plausible_range_raises(workspace, tmp_path):
    path = _write(tmp_path, "small.csv", "ts,src,dst\n12,A,B\n13,A,B\n")
    expected = "invalid epoch times in column ts: outside 1990-2100"
    with pytest.raises(IngestError, match=expected):
        ingest_file(workspace, path, IngestOptions("events"))


def test_day_first_decided_for_whole_column(workspace):
    report = ingest_file(workspace, FIXTURES / "swat_dayfirst.csv",
                         IngestOptions("measurements", layout="wide"))
    stored = _rows(workspace, "SELECT t FROM measurements ORDER BY line")
    assert _instants(stored["t"]) == [
        "2015-12-31T23:59:59+00:00",
        "2016-01-01T00:00:00+00:00",
        "2016-01-02T07:00:00+00:00",
        "2016-01-02T07:00:01+00:00",
    ]
    assert ("day-first dates in column Timestamp (line 2 has "
            "'31/12/2015 11:59:59 PM'); read as %d/%m/%Y %I:%M:%S %p") in report.notes


def test_day_month_ambiguous_asks_for_format(workspace):
    with pytest.raises(IngestError) as raised:
        ingest_file(workspace, FIXTURES / "swat_dayfirst_ambiguous.csv",
                    IngestOptions("measurements", layout="wide"))
    assert raised.value.headline == (
        "ambiguous day/month order in column Timestamp; pass an explicit format "
        "such as --time-format '%d/%m/%Y %I:%M:%S %p'"
    )
    assert _counts(workspace)["measurements"] == 0


def test_explicit_format_settles_ambiguous_file(workspace):
    options = IngestOptions("measurements", layout="wide",
                            time_format="%d/%m/%Y %I:%M:%S %p")
    ingest_file(workspace, FIXTURES / "swat_dayfirst_ambiguous.csv", options)
    stored = _rows(workspace, "SELECT t FROM measurements ORDER BY line")
    assert _instants(stored["t"]) == [
        "2016-01-01T00:00:00+00:00",
        "2016-01-02T07:00:00+00:00",
        "2016-01-02T07:00:01+00:00",
    ]


def test_time_format_mismatch_quarantined(workspace, tmp_path):
    path = _write(tmp_path, "fmt.csv", "ts,src,dst\n01.03.2024 08:00,A,B\n"
                  "2024-03-01 08:01,A,B\n")
    report = ingest_file(workspace, path,
                         IngestOptions("events", time_format="%d.%m.%Y %H:%M"))
    rejected = _rows(workspace, "SELECT line, reason FROM quarantine")
    assert report.rows_stored == 1
    assert list(rejected["line"]) == [3]
    assert list(rejected["reason"]) == ["time does not match format %d.%m.%Y %H:%M"]


def test_unrecognised_time_names_line_and_fix(workspace, tmp_path):
    path = _write(tmp_path, "words.csv", "ts,src,dst\nyesterday,A,B\n")
    with pytest.raises(IngestError) as raised:
        ingest_file(workspace, path, IngestOptions("events"))
    assert raised.value.headline == "unrecognised time format in column ts"
    assert "Line 2 has 'yesterday'" in raised.value.detail
    assert "time_format" in raised.value.detail


# Columns, labels and types.


def test_headers_trimmed_labels_normalised(workspace):
    report = ingest_file(workspace, FIXTURES / "swat_whitespace.csv",
                         IngestOptions("measurements", layout="wide"))
    stored = _rows(workspace, "SELECT * FROM measurements ORDER BY sensor, t")
    truth = _rows(workspace, "SELECT * FROM ground_truth")
    assert sorted(set(stored["sensor"])) == ["FIT101", "LIT101", "MV101"]
    assert _instants(stored["t"][:4]) == [
        "2015-12-28T10:00:00+00:00",
        "2015-12-28T10:00:01+00:00",
        "2015-12-28T10:00:02+00:00",
        "2015-12-28T10:00:03+00:00",
    ]
    assert report.notes[:3] == [
        "3 header names trimmed",
        "column Normal/Attack read as the label: 2 of 4 rows attack",
        "1 label value 'A ttack' read as attack",
    ]
    assert list(truth["kind"]) == ["label"]
    assert _instants(truth["start"]) == ["2015-12-28T10:00:02+00:00"]
    assert _instants(truth["end"]) == ["2015-12-28T10:00:04+00:00"]


def test_label_vector_values():
    notes: list[str] = []
    frame = pd.read_csv(FIXTURES / "swat_whitespace.csv", dtype=str)
    flags = ingest_module._parse_labels(
        frame["Normal/Attack"], "Normal/Attack", pd.Series([2, 3, 4, 5]), notes
    )
    assert list(flags) == [0, 0, 1, 1]


def test_unknown_label_names_value_column_line(workspace, tmp_path):
    text = (FIXTURES / "swat_whitespace.csv").read_text()
    path = _write(tmp_path, "bad_label.csv",
                  text + " 28/12/2015 10:00:04 AM,2.5,522.9,1,Atack\n")
    with pytest.raises(IngestError) as raised:
        ingest_file(workspace, path, IngestOptions("measurements", layout="wide"))
    assert raised.value.headline == (
        "unknown label value 'Atack' in column Normal/Attack, line 6"
    )
    assert _counts(workspace)["measurements"] == 0


def test_cic_headers_mapped_infinity_null(workspace):
    report = ingest_file(workspace, FIXTURES / "cic_like_flows.csv",
                         IngestOptions("events"))
    events = _rows(workspace, "SELECT * FROM events ORDER BY t")
    pairs = events.groupby(["src", "dst"]).size().to_dict()
    assert _instants(events["t"]) == [
        "2017-07-03T08:55:10+00:00",
        "2017-07-03T08:55:11+00:00",
        "2017-07-03T08:56:02+00:00",
    ]
    assert pairs == {("10.0.0.5", "10.0.0.9"): 2, ("10.0.0.7", "10.0.0.9"): 1}
    assert list(events["weight"]) == [1.0, 1.0, 1.0]
    assert list(events["protocol"]) == ["6", "6", "6"]
    assert report.notes[:2] == [
        "9 header names trimmed",
        "column Label read as the label: 1 of 3 rows attack",
    ]
    flags = ingest_module._parse_labels(
        pd.Series(["BENIGN", "BENIGN", "PortScan"]), "Label", pd.Series([2, 3, 4]), []
    )
    assert list(flags) == [0, 0, 1]


def test_cic_attributes_sentinel_and_label_stored(workspace):
    options = IngestOptions("events", sentinels={"Init_Win_bytes_forward": -1})
    report = ingest_file(workspace, FIXTURES / "cic_like_flows.csv", options)
    events = _rows(workspace, "SELECT src, dst, label, line FROM events ORDER BY t")
    attributes = _rows(
        workspace,
        "SELECT a.line, a.name, a.value FROM event_attributes a "
        "JOIN events e USING (report_id, line) ORDER BY e.t, a.name",
    ).pivot(index="line", columns="name", values="value")

    assert list(zip(events["src"], events["dst"])) == [
        ("10.0.0.5", "10.0.0.9"), ("10.0.0.5", "10.0.0.9"), ("10.0.0.7", "10.0.0.9")]
    assert events["label"].tolist() == [0, 0, 1]
    assert sorted(attributes.columns) == [
        "Destination Port", "Flow Bytes/s", "Flow Duration", "Flow Packets/s",
        "Init_Win_bytes_forward", "Source Port"]
    assert attributes["Init_Win_bytes_forward"].isna().tolist() == [True, False, False]
    assert attributes["Init_Win_bytes_forward"].tolist()[1:] == [8192.0, 29200.0]
    assert attributes["Flow Bytes/s"].isna().tolist() == [True, True, False]
    assert attributes["Flow Bytes/s"].iloc[2] == 4800.0
    assert attributes["Flow Packets/s"].isna().tolist() == [True, False, False]
    assert attributes["Flow Packets/s"].tolist()[1:] == [16666.67, 8000.0]
    assert attributes["Flow Duration"].tolist() == [0.0, 120.0, 250.0]
    assert "3 non-finite attribute cells (NaN, Infinity) stored as NULL" in report.notes
    assert ("1 cell of Init_Win_bytes_forward equal to the sentinel -1 stored as NULL"
            in report.notes)
    assert "1 text column not stored: Flow ID" in report.notes
    _assert_counts_add_up(report)


def test_cic_model_features_finite(workspace):
    from core.snapshots import build_snapshots

    ingest_file(workspace, FIXTURES / "cic_like_flows.csv", IngestOptions("events"))
    snapshots = build_snapshots(workspace.store_path, 60)

    assert snapshots.pair_events.sum() == 3
    assert np.isfinite(snapshots.comm).all()
    assert np.isfinite(snapshots.pair_bytes).all()


def test_sentinel_on_unknown_column_names_it(workspace):
    options = IngestOptions("events", sentinels={"Init_Win": -1})
    with pytest.raises(IngestError) as raised:
        ingest_file(workspace, FIXTURES / "cic_like_flows.csv", options)
    assert raised.value.headline == (
        "sentinel column 'Init_Win' not found in cic_like_flows.csv")
    assert _counts(workspace)["events"] == 0


def test_sentinel_must_be_finite_number():
    with pytest.raises(IngestError) as raised:
        IngestOptions("events", sentinels={"Init_Win_bytes_forward": "none"})
    assert raised.value.headline == (
        "invalid sentinel 'none' for column 'Init_Win_bytes_forward'")


def test_wide_sentinel_stored_as_null(workspace, tmp_path):
    path = _write(tmp_path, "wide_sentinel.csv", "time,A,B\n"
                  "2024-05-01T00:00:00Z,-9999,1\n2024-05-01T00:00:01Z,2.5,-9999\n")
    options = IngestOptions("measurements", layout="wide", sentinels={"A": -9999})
    report = ingest_file(workspace, path, options)
    stored = _rows(workspace, "SELECT sensor, value FROM measurements ORDER BY sensor, t")

    assert stored["value"].isna().tolist() == [True, False, False, False]
    assert stored["value"].tolist()[1:] == [2.5, 1.0, -9999.0]
    assert "1 cell of A equal to the sentinel -9999 stored as NULL" in report.notes


def test_cic_feature_cells_read_as_null():
    values, non_finite, non_numeric = ingest_module._numbers(
        pd.Series(["Infinity", "NaN", "4800", "-", ""], dtype=str)
    )
    assert values.isna().tolist() == [True, True, False, True, True]
    assert values[2] == 4800.0
    assert non_finite.tolist() == [True, True, False, True, True]
    assert not non_numeric.any()


def test_column_mapping_and_missing_column(workspace, tmp_path):
    path = _write(tmp_path, "mapped.csv", " When , From ,To,Octets\n"
                  "2024-03-01T08:00:00Z,A,B,10\n")
    options = IngestOptions("events", columns={"time": "When", "src": "From",
                                               "dst": "to"})
    ingest_file(workspace, path, options)
    events = _rows(workspace, "SELECT src, dst, weight FROM events")
    assert events.to_dict("records") == [{"src": "A", "dst": "B", "weight": 10.0}]

    # A fresh store: in the first one the file is already loaded, so not read.
    fresh = Workspace.create(tmp_path / "fresh")
    with pytest.raises(IngestError) as raised:
        ingest_file(fresh, path, IngestOptions("events", columns={"time": "Stamp"}))
    assert raised.value.headline == (
        "column 'Stamp' (mapped to time) not found in mapped.csv"
    )
    assert "When, From, To, Octets" in raised.value.detail


def test_missing_required_column_suggests_mapping(workspace, tmp_path):
    path = _write(tmp_path, "nodst.csv", "ts,src,peer\n2024-03-01T08:00:00Z,A,B\n")
    with pytest.raises(IngestError) as raised:
        ingest_file(workspace, path, IngestOptions("events"))
    assert raised.value.headline == "no dst column found for events in nodst.csv"
    assert "--column dst=COLUMN (in Python, columns={'dst': 'COLUMN'})" in (
        raised.value.detail)


def test_late_text_ids_and_decimals_stay_exact(workspace, tmp_path):
    path = tmp_path / "late_types.csv"
    with path.open("w") as handle:
        handle.write("ts,device_id,value\n")
        for i in range(30000):
            handle.write(
                f"2024-03-01T08:{i // 600:02d}:{i % 60:02d}Z,{1000 + i % 50},{i % 7}\n"
            )
        handle.write("2024-03-01T09:00:00Z,D1000263,7\n")
        handle.write("2024-03-01T09:00:01Z,1001,12.5\n")
    report = ingest_file(workspace, path,
                         IngestOptions("measurements", duplicate_policy="keep"))
    stored = _rows(workspace, "SELECT * FROM measurements ORDER BY line")
    kinds = _rows(workspace, "DESCRIBE measurements").set_index("column_name")
    assert report.rows_read == 30002
    assert report.rows_stored == 30002
    assert report.rows_rejected == 0
    assert stored["device"].nunique() == 51
    assert "D1000263" in set(stored["device"])
    assert kinds["column_type"]["device"] == "VARCHAR"
    assert stored["value"].iloc[-1] == 12.5
    assert stored["device"].iloc[-1] == "1001"


def test_late_types_default_rule_counts_conflicts(workspace, tmp_path):
    rows = ["ts,device_id,value"]
    for i in range(600):
        rows.append(f"2024-03-01T08:00:{i % 60:02d}Z,{1000 + i % 50},{i % 7}")
    path = _write(tmp_path, "late600.csv", "\n".join(rows) + "\n")
    report = ingest_file(workspace, path, IngestOptions("measurements"))
    assert report.rows_read == 600
    assert report.rows_stored == 300
    assert report.rows_deduplicated == 300
    assert report.rows_rejected == 0


# Measurements.


def test_wide_with_sensor_map_and_empty_columns(workspace):
    options = IngestOptions("measurements", layout="wide",
                            sensor_map={"1_AIT_001_PV": "plc-1"})
    report = ingest_file(workspace, FIXTURES / "wadi_like_gaps.csv", options)
    stored = _rows(workspace, "SELECT * FROM measurements ORDER BY sensor, t")
    assert report.rows_read == 4
    assert report.rows_stored == 4
    assert len(stored) == 8
    assert sorted(set(zip(stored["device"], stored["sensor"]))) == [
        ("1_FIT_001_PV", "1_FIT_001_PV"), ("plc-1", "1_AIT_001_PV")
    ]
    assert _instants(stored["t"][:4]) == [
        "2017-10-09T18:00:00+00:00",
        "2017-10-09T18:00:01+00:00",
        "2017-10-09T18:00:02+00:00",
        "2017-10-09T18:00:03+00:00",
    ]
    assert int(stored["value"].isna().sum()) == 2
    assert stored["value"].isna().tolist()[2] is True
    assert stored["value"].isna().tolist()[5] is True
    assert report.notes == [
        "columns Date and Time merged into one time",
        "column Row read as a row number, not a sensor",
        "2 entirely empty columns dropped: 2_P_001_STATUS, 2_LS_001_AL",
        "2 missing or non-finite cells stored as NULL",
        "1 sensor column not in the sensor map, each its own device: 1_FIT_001_PV",
        "4 rows x 2 sensors = 8 measurements",
    ]


def test_wide_non_numeric_cell_null_and_listed(workspace, tmp_path):
    path = _write(tmp_path, "wide_bad.csv", "time,A,B\n"
                  "2024-05-01T00:00:00Z,1.5,x\n2024-05-01T00:00:01Z,2.5,3\n")
    report = ingest_file(workspace, path, IngestOptions("measurements",
                                                        layout="wide"))
    stored = _rows(workspace, "SELECT sensor, value FROM measurements ORDER BY "
                   "sensor, t")
    listed = _rows(workspace, "SELECT line, \"column\", value, reason FROM quarantine")
    assert report.rows_stored == 2
    assert stored["value"].isna().tolist() == [False, False, True, False]
    assert listed.to_dict("records") == [{
        "line": 2, "column": "B", "value": "x",
        "reason": "non-numeric value stored as NULL",
    }]


def test_long_duplicates_exact_and_conflicting(workspace):
    report = ingest_file(workspace, FIXTURES / "long_duplicates.csv",
                         IngestOptions("measurements"))
    stored = _rows(workspace, "SELECT * FROM measurements ORDER BY device, t")
    wide = stored.pivot(index="t", columns="device", values="value")
    assert report.rows_read == 6
    assert report.rows_stored == 4
    assert report.rows_deduplicated == 2
    assert report.notes == [
        "1 exact duplicate removed; 1 conflicting duplicate (rtu-3/pressure at "
        "2024-05-01T00:00:01Z) resolved: last"
    ]
    assert wide.shape == (3, 2)
    assert list(wide["rtu-3"]) == [4.10, 4.30, 4.11]
    assert wide["rtu-4"].isna().tolist() == [True, True, False]
    assert wide["rtu-4"].iloc[2] == 3.90


def test_long_without_device_sensor_is_device(workspace):
    report = ingest_file(workspace, FIXTURES / "mixed_rates_long.csv",
                         IngestOptions("measurements"))
    stored = _rows(workspace, "SELECT * FROM measurements ORDER BY line")
    assert report.rows_stored == 7
    assert list(stored["device"]) == list(stored["sensor"])
    assert list(stored["value"]) == [2.40, 2.43, 2.46, 2.49, 520.0, 521.0, 2.52]
    assert report.notes == ["no device column: each sensor is its own device"]


def test_long_non_numeric_value_quarantined(workspace, tmp_path):
    path = _write(tmp_path, "long_bad.csv", "time,device,sensor,value\n"
                  "2024-05-01T00:00:00Z,d,s,1\n2024-05-01T00:00:01Z,d,s,high\n"
                  "2024-05-01T00:00:02Z,d,s,inf\n")
    report = ingest_file(workspace, path, IngestOptions("measurements"))
    stored = _rows(workspace, "SELECT value FROM measurements ORDER BY t")
    rejected = _rows(workspace, "SELECT line, value, reason FROM quarantine")
    assert report.rows_stored == 2
    assert report.rows_rejected == 1
    assert stored["value"].isna().tolist() == [False, True]
    assert rejected.to_dict("records") == [
        {"line": 3, "value": "high", "reason": "non-numeric value"}
    ]


# Events.


def test_bad_weights_quarantined_with_reasons(workspace):
    report = ingest_file(workspace, FIXTURES / "bad_weights.csv",
                         IngestOptions("events"))
    events = _rows(workspace, "SELECT src, dst, weight FROM events")
    rejected = _rows(workspace, "SELECT * FROM quarantine ORDER BY line")
    assert events.to_dict("records") == [{"src": "A", "dst": "B", "weight": 120.0}]
    assert report.rows_rejected == 4
    assert list(rejected["line"]) == [3, 4, 5, 6]
    assert list(rejected["reason"]) == [
        "negative byte count", "missing weight", "non-finite weight",
        "non-finite weight",
    ]
    assert set(rejected["column"]) == {"bytes"}
    assert list(rejected["value"]) == ["-5", "", "inf", "NaN"]
    assert set(rejected["file"]) == {str(FIXTURES / "bad_weights.csv")}
    _assert_counts_add_up(report)


def test_count_policy_gives_weight_one(workspace):
    report = ingest_file(workspace, FIXTURES / "bad_weights.csv",
                         IngestOptions("events", weight_policy="count"))
    events = _rows(workspace, "SELECT weight FROM events")
    assert report.rows_stored == 5
    assert list(events["weight"]) == [1.0] * 5


def test_unsorted_events_sorted_stably(workspace):
    report = ingest_file(workspace, FIXTURES / "unsorted_events.csv",
                         IngestOptions("events"))
    events = _rows(workspace, "SELECT * FROM events")
    assert report.notes == ["4 events, 3 out of order, max lag 120 s; sorted"]
    assert list(zip(events["src"], events["dst"])) == [
        ("B", "C"), ("C", "A"), ("A", "C"), ("A", "B")
    ]
    assert list(events["line"]) == [3, 5, 4, 2]


def test_loopback_self_loops_dropped_and_counted(workspace):
    report = ingest_file(workspace, FIXTURES / "self_loops.csv",
                         IngestOptions("events"))
    events = _rows(workspace, "SELECT src, dst FROM events ORDER BY t")
    rejected = _rows(workspace, "SELECT line, reason FROM quarantine")
    assert report.notes == [
        "3 self-loop events; 2 on loopback addresses dropped (127.0.0.0/8, ::1)"
    ]
    assert list(zip(events["src"], events["dst"])) == [
        ("10.0.0.5", "10.0.0.5"), ("10.0.0.5", "10.0.0.9")
    ]
    assert list(rejected["line"]) == [3, 5]
    assert set(rejected["reason"]) == {"self-loop on a loopback address"}


def test_loopback_kept_when_disabled(workspace):
    report = ingest_file(workspace, FIXTURES / "self_loops.csv",
                         IngestOptions("events", drop_loopback=False))
    assert report.rows_stored == 4
    assert report.notes == [
        "3 self-loop events; 2 on loopback addresses kept (127.0.0.0/8, ::1)"
    ]


def test_addresses_canonical_and_ports_split(workspace, tmp_path):
    ingest_file(workspace, FIXTURES / "ipv6_mixed.csv", IngestOptions("events"))
    events = _rows(workspace, "SELECT src, dst, weight FROM events")
    weights = events.groupby(["src", "dst"])["weight"].size().to_dict()
    nodes = set(events["src"]) | set(events["dst"])
    assert nodes == {"10.0.0.5", "10.0.0.9", "2001:db8::5", "2001:db8::9"}
    assert weights == {("10.0.0.5", "10.0.0.9"): 2, ("2001:db8::5", "2001:db8::9"): 2}

    text = (FIXTURES / "ipv6_mixed.csv").read_text()
    path = _write(tmp_path, "bad_v6.csv",
                  text + "2024-03-01T08:00:04Z,10.0.0.1,10.0.0.2,1\n"
                  "2024-03-01T08:00:05Z,2001:db8::zz,10.0.0.9,1\n")
    report = ingest_file(workspace, path, IngestOptions("events"))
    rejected = _rows(workspace, "SELECT line, \"column\", value, reason FROM "
                     "quarantine")
    assert report.rows_rejected == 1
    assert rejected.to_dict("records") == [{
        "line": 7, "column": "src", "value": "2001:db8::zz",
        "reason": "unparseable address in column src",
    }]


def test_host_names_and_macs_kept_verbatim():
    names = ["plc-1", "hmi:502", "00:1b:44:11:3a:b7", "<b>pump</b>", "1E1"]
    assert [ingest_module._canonical_address(n) for n in names] == names


def test_zeek_tsv_and_json_give_same_events(workspace):
    tsv = ingest_file(workspace, FIXTURES / "conn.log", IngestOptions("events"))
    json = ingest_file(workspace, FIXTURES / "conn.json.log", IngestOptions("events"))
    stored = _rows(workspace, "SELECT * FROM events ORDER BY report_id, t")
    columns = ["t", "src", "dst", "weight", "protocol"]
    first = stored[stored["report_id"] == tsv.report_id][columns]
    second = stored[stored["report_id"] == json.report_id][columns]
    assert _instants(first["t"]) == [
        "2024-03-01T08:00:00.123456+00:00",
        "2024-03-01T08:00:01.500000+00:00",
        "2024-03-01T08:00:02+00:00",
    ]
    pd.testing.assert_frame_equal(first.reset_index(drop=True),
                                  second.reset_index(drop=True))
    assert {"fe80::1", "ff02::fb"} <= set(first["src"]) | set(first["dst"])
    assert list(stored.loc[stored["report_id"] == tsv.report_id, "line"]) == [8, 9, 10]


def test_zeek_missing_fields_stored_null(workspace):
    tsv = ingest_file(workspace, FIXTURES / "conn.log", IngestOptions("events"))
    json = ingest_file(workspace, FIXTURES / "conn.json.log", IngestOptions("events"))
    attributes = _rows(
        workspace,
        "SELECT e.report_id, e.t, a.name, a.value FROM event_attributes a "
        "JOIN events e USING (report_id, line) ORDER BY e.t, a.name",
    )

    def by_time(report_id: int) -> pd.DataFrame:
        rows = attributes[attributes["report_id"] == report_id]
        return rows.pivot(index="t", columns="name", values="value")

    first, second = by_time(tsv.report_id), by_time(json.report_id)
    # The TSV writes "-" for an unset field, and the JSON log leaves the key out.
    pd.testing.assert_frame_equal(first, second)
    assert first["duration"].isna().tolist() == [False, True, True]
    assert first["orig_bytes"].isna().tolist() == [False, True, False]
    assert first["resp_bytes"].isna().tolist() == [False, True, False]
    assert first["orig_bytes"].iloc[2] == 0.0
    assert first["duration"].iloc[0] == 0.002104


def test_zeek_unset_field_reads_as_missing():
    frame, lines, _ = ingest_module._read_source(FIXTURES / "conn.log")
    values, non_finite, _ = ingest_module._numbers(frame["orig_bytes"])
    assert list(lines) == [8, 9, 10]
    assert frame["service"].tolist() == ["modbus", "", "dns"]
    assert values.isna().tolist() == [False, True, False]
    assert non_finite.tolist() == [False, True, False]


# Devices and links.


def test_devices_and_links_upserted(workspace, tmp_path):
    devices = _write(tmp_path, "devices.csv", "device,kind,zone,criticality,label\n"
                     "plc-1,plc,north,0.9,Main PLC\nhmi-1,hmi,north,,\n"
                     "plc-1,plc,south,1.0,Main PLC\n")
    report = ingest_file(workspace, devices, IngestOptions("devices"))
    stored = _rows(workspace, "SELECT * FROM devices ORDER BY device")
    assert report.rows_deduplicated == 1
    assert list(stored["zone"]) == ["north", "south"]
    assert np.isnan(stored["criticality"][0])
    assert stored["criticality"][1] == 1.0

    links = _write(tmp_path, "links.csv", "src,dst,weight\nplc-1,hmi-1,3\n"
                   "hmi-1,plc-1,\n")
    report = ingest_file(workspace, links, IngestOptions("links"))
    again = ingest_file(workspace, links, IngestOptions("links"))
    stored = _rows(workspace, "SELECT src, dst, weight FROM links")
    assert report.rows_rejected == 1
    assert stored.to_dict("records") == [{"src": "plc-1", "dst": "hmi-1",
                                          "weight": 3.0}]
    assert again.already_loaded == report.report_id
    assert (again.rows_read, again.rows_stored) == (0, 0)
    assert again.notes == [f"already loaded: same content as report "
                           f"{report.report_id}; nothing stored"]


# Store behaviour.


def test_failed_write_leaves_store_unchanged(workspace, monkeypatch):
    ingest_file(workspace, FIXTURES / "mixed_iso.csv", IngestOptions("events"))
    before = _counts(workspace)
    original = store.insert_frame

    # The quarantine is written after the events, so the failure comes mid-write.
    def failing_insert(con, table, frame):
        if table == "quarantine":
            raise RuntimeError("disk full")
        return original(con, table, frame)

    monkeypatch.setattr(store, "insert_frame", failing_insert)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_file(workspace, FIXTURES / "bad_weights.csv", IngestOptions("events"))
    monkeypatch.undo()
    assert _counts(workspace) == before


def test_parse_error_leaves_store_unchanged(workspace):
    ingest_file(workspace, FIXTURES / "bad_weights.csv", IngestOptions("events"))
    before = _counts(workspace)
    with pytest.raises(IngestError):
        ingest_file(workspace, FIXTURES / "epoch_mixed.csv", IngestOptions("events"))
    assert _counts(workspace) == before


def test_report_ids_increase_and_row(workspace):
    first = ingest_file(workspace, FIXTURES / "mixed_iso.csv", IngestOptions("events"))
    second = ingest_file(workspace, FIXTURES / "bad_weights.csv",
                         IngestOptions("events"))
    stored = _rows(workspace, "SELECT * FROM ingest_reports ORDER BY report_id")
    assert (first.report_id, second.report_id) == (1, 2)
    assert list(stored["rows_read"]) == [3, 5]
    assert list(stored["rows_rejected"]) == [0, 4]
    assert len(stored["checksum"][0]) == 64
    assert second.summary().splitlines()[0].endswith(
        "5 rows read, 1 stored, 4 rejected, 0 deduplicated"
    )


def test_counts_add_up_on_every_fixture(workspace):
    cases = {
        "mixed_iso.csv": IngestOptions("events"),
        "bad_weights.csv": IngestOptions("events"),
        "self_loops.csv": IngestOptions("events"),
        "long_duplicates.csv": IngestOptions("measurements"),
        "wadi_like_gaps.csv": IngestOptions("measurements", layout="wide"),
        "ipv6_mixed.csv": IngestOptions("events"),
    }
    for name, options in cases.items():
        _assert_counts_add_up(ingest_file(workspace, FIXTURES / name, options))


def test_invalid_options_raise():
    with pytest.raises(IngestError, match="invalid ingest option target='edges'"):
        IngestOptions("edges")
    with pytest.raises(IngestError, match="unknown time zone 'Mars/Base'"):
        IngestOptions("events", timezone="Mars/Base")


def test_missing_file_raises(workspace, tmp_path):
    with pytest.raises(IngestError, match="file not found"):
        ingest_file(workspace, tmp_path / "absent.csv", IngestOptions("events"))


def test_parquet_1000_rows_typed_columns(workspace, tmp_path):
    count = 1000
    start = pd.Timestamp("2024-03-01T08:00:00Z")
    frame = pd.DataFrame({
        "timestamp": start + pd.to_timedelta(np.arange(count), unit="s"),
        "source": np.arange(count) % 7 + 100,
        "destination": [f"hmi-{i % 3}" for i in range(count)],
        "bytes": np.arange(count, dtype=float) + 0.5,
    })
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    report = ingest_file(workspace, path, IngestOptions("events"))
    stored = _rows(workspace, "SELECT * FROM events ORDER BY t")
    assert report.rows_stored == 1000
    assert stored["src"].iloc[:3].tolist() == ["100", "101", "102"]
    assert stored["t"].iloc[-1].isoformat() == "2024-03-01T08:16:39+00:00"
    assert stored["weight"].sum() == pytest.approx(count * (count - 1) / 2 + 500)


def test_ingest_frame_matches_file(workspace):
    frame = pd.read_csv(FIXTURES / "unsorted_events.csv", dtype=str)
    report = ingest_frame(workspace, frame, IngestOptions("events"), "memory")
    stored = _rows(workspace, "SELECT src, line FROM events")
    assert report.file == "memory"
    assert report.notes == ["4 events, 3 out of order, max lag 120 s; sorted"]
    assert list(stored["line"]) == [3, 5, 4, 2]


def test_epoch_numbers_from_frame(workspace):
    frame = pd.DataFrame({"ts": [1709280000, 1709280001], "src": ["A", "B"],
                          "dst": ["B", "A"]})
    ingest_frame(workspace, frame, IngestOptions("events"), "memory")
    stored = _rows(workspace, "SELECT t FROM events ORDER BY t")
    assert _instants(stored["t"]) == [
        "2024-03-01T08:00:00+00:00", "2024-03-01T08:00:01+00:00"
    ]


@pytest.mark.slow
def test_million_events_ingest_fast(workspace, tmp_path):
    count = 1_000_000
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2024-03-01T00:00:00Z")
    offsets = np.sort(rng.integers(0, 86_400_000, count))
    frame = pd.DataFrame({
        "ts": (start + pd.to_timedelta(offsets, unit="ms")).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"),
        "src": pd.Series(rng.integers(1, 250, count)).map("10.0.0.{}".format),
        "dst": pd.Series(rng.integers(1, 250, count)).map("10.0.1.{}".format),
        "bytes": rng.integers(40, 1500, count),
    })
    csv_path = tmp_path / "big.csv"
    frame.to_csv(csv_path, index=False)
    began = time.perf_counter()
    report = ingest_file(workspace, csv_path, IngestOptions("events"))
    seconds = time.perf_counter() - began
    assert report.rows_stored == count
    assert seconds < 30


# BATADAL.


@pytest.mark.data
def test_batadal_import(workspace):
    root = _data_folder()
    folder = root / "batadal" if root else None
    if folder is None or not (folder / "BATADAL_dataset03.csv").is_file():
        pytest.skip("BATADAL data not found; set TGLOC_DATA to the data folder")
    reports = ingest_batadal(workspace, folder)
    measured = [r for r in reports if r.target == "measurements"]
    devices = _rows(workspace, "SELECT * FROM devices ORDER BY device")
    links = _rows(workspace, "SELECT * FROM links")
    truth = _rows(workspace, "SELECT * FROM ground_truth ORDER BY start")
    counts = _rows(workspace, "SELECT count(*) AS n, count(DISTINCT sensor) AS s, "
                   "count(DISTINCT device) AS d FROM measurements")
    assert [r.rows_read for r in measured] == [8761, 4177, 2089]
    assert [r.rows_stored for r in measured] == [8761, 4177, 2089]
    assert int(counts["n"][0]) == (8761 + 4177 + 2089) * 43
    assert int(counts["s"][0]) == 43
    assert int(counts["d"][0]) == 9
    assert len(devices) == 10
    assert devices.set_index("device")["kind"]["SCADA"] == "scada"
    assert set(devices.loc[devices["device"] != "SCADA", "kind"]) == {"plc"}
    assert len(links) == 14
    assert links.set_index(["src", "dst"])["weight"][("PLC3", "SCADA")] == 12.0
    assert len(truth) == 14
    first = truth.iloc[0]
    assert first["anomaly_id"] == "attack-1"
    assert first["start"].isoformat() == "2016-09-13T23:00:00+00:00"
    assert first["end"].isoformat() == "2016-09-16T01:00:00+00:00"
    assert list(first["devices"]) == ["PLC9", "PLC5"]
    assert list(first["sensors"]) == ["L_T7", "F_PU10", "S_PU10", "F_PU11", "S_PU11"]
    assert first["description"].startswith("L_T7 thresholds controlling PU10/PU11")
    first_time = _rows(workspace, "SELECT min(t) AS t FROM measurements")["t"][0]
    assert first_time.isoformat() == "2014-01-06T00:00:00+00:00"


def test_sensor_map_splits_columns(tmp_path):
    path = _write(tmp_path, "tags.csv", "plc,tag,cols\nPLC1,PU1,F_PU1 S_PU1\n"
                  "PLC1,F_PU1,F_PU1\nPLC2,P_T1,L_T1\n")
    mapping = load_sensor_map(path, device_column="plc", columns_column="cols")
    assert mapping == {"F_PU1": "PLC1", "S_PU1": "PLC1", "L_T1": "PLC2"}

    clash = _write(tmp_path, "clash.csv", "plc,cols\nPLC1,F_PU1\nPLC2,F_PU1\n")
    with pytest.raises(IngestError, match="sensor 'F_PU1' maps to two devices"):
        load_sensor_map(clash, device_column="plc", columns_column="cols")
