"""The CICFlowMeter flow-CSV importer on generated files, and its command line."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from core import flows, store
from core.cli import main
from core.errors import IngestError
from core.ingest import IngestOptions

# The CIC-IDS2017 header: cells padded with a space, and Fwd Header Length twice.
HEADER_2017 = [
    "Flow ID", " Source IP", " Source Port", " Destination IP", " Destination Port",
    " Protocol", " Timestamp", " Flow Duration", " Total Fwd Packets",
    " Total Backward Packets", "Total Length of Fwd Packets",
    " Total Length of Bwd Packets", " Fwd Header Length", " Fwd Header Length",
    "Flow Bytes/s", " Label",
]
# The CSE-CIC-IDS2018 names of the same columns.
HEADER_2018 = [
    "Flow ID", "Src IP", "Src Port", "Dst IP", "Dst Port", "Protocol", "Timestamp",
    "Flow Duration", "Tot Fwd Pkts", "Tot Bwd Pkts", "TotLen Fwd Pkts",
    "TotLen Bwd Pkts", "Fwd Header Len", "Bwd Header Len", "Flow Byts/s", "Label",
]


@dataclass
class Flow:
    src: str
    dst: str
    time: pd.Timestamp
    fwd_packets: int
    bwd_packets: int
    fwd_bytes: object
    bwd_bytes: object
    label: str


FLOWS = [
    Flow("192.168.10.5", "8.8.8.8", pd.Timestamp("2017-07-12 08:55:58"), 2, 1, 120,
         300, "BENIGN"),
    Flow("192.168.10.5", "192.168.10.50", pd.Timestamp("2017-07-12 09:01:07"), 10,
         8, 1500, 9000, "DDoS"),
    Flow("172.16.0.1", "192.168.10.50", pd.Timestamp("2017-07-13 14:30:00"), 4, 0,
         0, 0, "PortScan"),
    Flow("192.168.10.8", "192.168.10.3", pd.Timestamp("2017-07-13 15:02:41"), 3, 3,
         64, 64, "BENIGN"),
]


def write_flows(path, flows_: list[Flow], time_format: str,
                header: list[str] = HEADER_2017, unpadded: bool = False) -> str:
    """Write flows as CICFlowMeter does; `unpadded` drops leading zeros of times."""
    lines = [",".join(header)]
    for i, flow in enumerate(flows_):
        stamp = flow.time.strftime(time_format)
        if unpadded:
            stamp = _unpad(stamp)
        rate = "Infinity" if i == 0 else "12.5"
        cells = [f"{flow.src}-{flow.dst}-5000-80-6", flow.src, "5000", flow.dst, "80",
                 "6", stamp, "1000", flow.fwd_packets, flow.bwd_packets,
                 flow.fwd_bytes, flow.bwd_bytes, 40, 40, rate, flow.label]
        lines.append(",".join(str(cell) for cell in cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _unpad(stamp: str) -> str:
    """Turn 07/13/2017 08:05 into 7/13/2017 8:05."""
    date, clock = stamp.split(" ")
    date = "/".join(str(int(part)) for part in date.split("/"))
    hour, rest = clock.split(":", 1)
    return f"{date} {int(hour)}:{rest}"


def early_flows() -> list[Flow]:
    """Return FLOWS moved to the 3rd, so no date has a day above 12."""
    return [Flow(f.src, f.dst, f.time.replace(day=3), f.fwd_packets, f.bwd_packets,
                 f.fwd_bytes, f.bwd_bytes, f.label) for f in FLOWS]


def events_of(workspace: store.Workspace) -> pd.DataFrame:
    return store.query(workspace.store_path,
                       "SELECT t, src, dst, weight, protocol, line, label, attack "
                       "FROM events ORDER BY line")


def expected_times(flows_: list[Flow], seconds: bool = True) -> list[pd.Timestamp]:
    return [(f.time if seconds else f.time.floor("min")).tz_localize("UTC")
            for f in flows_]


def test_flows_padded_header_day_first(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write_flows(tmp_path / "f.csv", FLOWS, "%d/%m/%Y %H:%M:%S")

    report = flows.ingest_flows(workspace, path)
    events = events_of(workspace)

    assert report.rows_stored == len(FLOWS)
    assert list(events["t"]) == expected_times(FLOWS)
    assert list(events["src"]) == [f.src for f in FLOWS]
    assert list(events["dst"]) == [f.dst for f in FLOWS]
    assert list(events["protocol"]) == ["6"] * len(FLOWS)
    assert any("header names trimmed" in note for note in report.notes)
    assert any(note.startswith("day-first dates in column Timestamp")
               for note in report.notes)


def test_flows_month_first_unpadded(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write_flows(tmp_path / "f.csv", FLOWS, "%m/%d/%Y %H:%M", unpadded=True)
    assert "7/13/2017 14:30" in (tmp_path / "f.csv").read_text()

    report = flows.ingest_flows(workspace, path)

    assert list(events_of(workspace)["t"]) == expected_times(FLOWS, seconds=False)
    assert any(note.startswith("month-first dates in column Timestamp")
               for note in report.notes)


def test_flows_ambiguous_date_error(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    early = early_flows()
    path = write_flows(tmp_path / "f.csv", early, "%d/%m/%Y %H:%M", unpadded=True)

    with pytest.raises(IngestError) as raised:
        flows.ingest_flows(workspace, path)

    assert "ambiguous day/month order in column Timestamp" in raised.value.headline
    assert "--date-order day-first" in raised.value.detail
    assert "'3/7/2017 8:55'" in raised.value.detail
    assert len(events_of(workspace)) == 0
    reports = store.query(workspace.store_path, "SELECT count(*) AS n FROM "
                          "ingest_reports")
    assert int(reports["n"][0]) == 0


def test_flows_declared_order_settles(tmp_path):
    early = early_flows()
    path = write_flows(tmp_path / "f.csv", early, "%d/%m/%Y %H:%M", unpadded=True)
    day_first = store.Workspace.create(tmp_path / "day")
    month_first = store.Workspace.create(tmp_path / "month")

    report = flows.ingest_flows(day_first, path,
                                options=IngestOptions("events", date_order="day-first"))
    flows.ingest_flows(month_first, path,
                       options=IngestOptions("events", date_order="month-first"))

    assert events_of(day_first)["t"][0] == pd.Timestamp("2017-07-03 08:55Z")
    assert events_of(month_first)["t"][0] == pd.Timestamp("2017-03-07 08:55Z")
    assert any("day-first dates in column Timestamp as declared" in note
               for note in report.notes)


def test_flows_declared_order_rejects_other(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write_flows(tmp_path / "f.csv", FLOWS, "%d/%m/%Y %H:%M:%S")

    report = flows.ingest_flows(
        workspace, path, options=IngestOptions("events", date_order="month-first"))
    quarantine = store.query(workspace.store_path,
                             'SELECT line, "column", value, reason FROM quarantine '
                             "ORDER BY line")

    # Read month first, lines 2 and 3 have month 12 and lines 4 and 5 month 13.
    assert report.rows_stored == 2
    assert list(quarantine["line"]) == [4, 5]
    assert set(quarantine["column"]) == {"Timestamp"}
    assert set(quarantine["reason"]) == {"invalid date or time"}


def test_flows_weight_bytes_packets_count(tmp_path):
    path = write_flows(tmp_path / "f.csv", FLOWS, "%d/%m/%Y %H:%M:%S")
    expected = {
        "bytes": [f.fwd_bytes + f.bwd_bytes for f in FLOWS],
        "packets": [f.fwd_packets + f.bwd_packets for f in FLOWS],
        "count": [1] * len(FLOWS),
    }
    for weight, values in expected.items():
        workspace = store.Workspace.create(tmp_path / weight)
        report = flows.ingest_flows(workspace, path, weight=weight)
        assert list(events_of(workspace)["weight"]) == values, weight
        assert report.rows_stored == len(FLOWS)


def test_flows_bad_weight_quarantined(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    broken = list(FLOWS)
    second, third = FLOWS[1], FLOWS[2]
    broken[1] = Flow(second.src, second.dst, second.time, 1, 1, 10, "x", "BENIGN")
    broken[2] = Flow(third.src, third.dst, third.time, 1, 1, -5, 3, "BENIGN")
    path = write_flows(tmp_path / "f.csv", broken, "%d/%m/%Y %H:%M:%S")

    report = flows.ingest_flows(workspace, path)
    quarantine = store.query(workspace.store_path,
                             'SELECT line, "column", value, reason FROM quarantine '
                             "ORDER BY line")

    assert report.rows_read == len(FLOWS)
    assert report.rows_stored == len(FLOWS) - 2
    assert list(events_of(workspace)["line"]) == [2, 5]
    assert list(quarantine["line"]) == [3, 4]
    assert list(quarantine["column"]) == ["Total Length of Bwd Packets",
                                          "Total Length of Fwd Packets"]
    assert list(quarantine["value"]) == ["x", "-5"]
    assert list(quarantine["reason"]) == [
        "Total Length of Bwd Packets is not a number",
        "negative Total Length of Fwd Packets",
    ]


def test_flows_labels_and_attributes(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write_flows(tmp_path / "f.csv", FLOWS, "%d/%m/%Y %H:%M:%S")

    report = flows.ingest_flows(workspace, path)
    events = events_of(workspace)
    attributes = store.query(
        workspace.store_path,
        "SELECT line, name, value FROM event_attributes ORDER BY line, name")

    assert list(events["label"]) == [0, 1, 1, 0]
    assert [a if isinstance(a, str) else None for a in events["attack"]] == [
        None, "DDoS", "PortScan", None]
    names = set(attributes["name"])
    assert {"Fwd Header Length", "Fwd Header Length.1", "Flow Bytes/s"} <= names
    rate = attributes[attributes["name"] == "Flow Bytes/s"].set_index("line")["value"]
    assert pd.isna(rate[2])
    assert rate[3] == 12.5
    assert any("'Fwd Header Length' appears 2 times" in note
               for note in report.notes)


def test_flows_2018_names(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write_flows(tmp_path / "f.csv", FLOWS, "%d/%m/%Y %H:%M:%S",
                       header=HEADER_2018)

    flows.ingest_flows(workspace, path, weight="packets")
    events = events_of(workspace)

    assert list(events["src"]) == [f.src for f in FLOWS]
    assert list(events["weight"]) == [f.fwd_packets + f.bwd_packets for f in FLOWS]


def test_flows_missing_column_error(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    header = [name for name in HEADER_2017 if name.strip() != "Source IP"]
    path = tmp_path / "f.csv"
    path.write_text(",".join(header) + "\n" + ",".join(["1"] * len(header)) + "\n")

    with pytest.raises(IngestError) as raised:
        flows.ingest_flows(workspace, path)

    assert raised.value.headline == "no src column found in f.csv for --format flows"
    assert "--column src=COLUMN" in raised.value.detail


def test_cli_flows_date_order(tmp_path, capsys):
    early = early_flows()
    path = write_flows(tmp_path / "f.csv", early, "%d/%m/%Y %H:%M", unpadded=True)
    workspace = str(tmp_path / "ws")

    failed = main(["ingest", "--workspace", workspace, "--format", "flows", path])
    error = capsys.readouterr().err
    status = main(["ingest", "--workspace", workspace, "--format", "flows",
                   "--date-order", "day-first", "--flow-weight", "packets", path])
    output = capsys.readouterr().out

    assert failed == 2
    assert "ambiguous day/month order in column Timestamp" in error
    assert "--date-order day-first" in error
    assert "Traceback" not in error
    assert status == 0
    assert "4 rows read, 4 stored, 0 rejected" in output
    assert "weight: total_packets = Total Fwd Packets + Total Backward Packets" in (
        output)


def test_cli_flow_weight_needs_flows(tmp_path, capsys):
    path = write_flows(tmp_path / "f.csv", FLOWS, "%d/%m/%Y %H:%M:%S")
    status = main(["ingest", "--workspace", str(tmp_path / "ws"), "--flow-weight",
                   "packets", path])
    error = capsys.readouterr().err
    assert status == 2
    assert "--flow-weight needs --format flows" in error
    assert len(events_of(store.Workspace.create(tmp_path / "ws"))) == 0
