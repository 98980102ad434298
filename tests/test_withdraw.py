"""Tests for withdrawing an ingest and deleting a suppression rule, on real stores."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core import feedback, store
from core.errors import IngestError, SuppressionNotFoundError
from core.ingest import IngestOptions, ingest_file
from core.store import Workspace
from core.withdraw import withdraw_ingest

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
TABLES = ("events", "event_attributes", "measurements", "quarantine", "ground_truth",
          "devices", "links")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


def _count(workspace: Workspace, table: str, report_id: int | None = None) -> int:
    if report_id is None:
        sql = f"SELECT count(*) AS n FROM {table}"
    else:
        sql = f"SELECT count(*) AS n FROM {table} WHERE report_id = {int(report_id)}"
    return int(store.query(workspace.store_path, sql)["n"][0])


def _counts(workspace: Workspace) -> dict[str, int]:
    return {table: _count(workspace, table) for table in TABLES}


def test_withdraw_removes_only_that_load(workspace, tmp_path):
    keep = ingest_file(workspace, FIXTURES / "mixed_iso.csv", IngestOptions("events"))
    kept = _counts(workspace)
    flows = ingest_file(workspace, FIXTURES / "cic_like_flows.csv",
                        IngestOptions("events"))
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,src,dst\n2024-03-01T08:00:00Z,a,b\nnot a time,a,b\n")
    rejected = ingest_file(workspace, bad, IngestOptions("events"))

    first = withdraw_ingest(workspace, flows.report_id)
    second = withdraw_ingest(workspace, rejected.report_id)
    reports = store.query(workspace.store_path,
                          "SELECT report_id, withdrawn FROM ingest_reports "
                          "ORDER BY report_id")

    assert first.removed["events"] == 3
    assert first.removed["event_attributes"] == 18
    assert first.removed["ground_truth"] == 1
    assert second.removed["quarantine"] == 1
    assert second.removed["events"] == 1
    assert _counts(workspace) == kept
    assert _count(workspace, "events", keep.report_id) == keep.rows_stored
    assert reports["withdrawn"].isna().tolist() == [True, False, False]
    assert first.summary() == (
        f"report {flows.report_id} ({FIXTURES / 'cic_like_flows.csv'}) withdrawn: "
        "3 events rows, 18 event_attributes rows, 1 ground_truth row removed")


def test_withdrawn_file_loads_again(workspace):
    path = FIXTURES / "wadi_like_gaps.csv"
    options = IngestOptions("measurements", layout="wide")
    first = ingest_file(workspace, path, options)
    withdraw_ingest(workspace, first.report_id)
    again = ingest_file(workspace, path, options)

    assert again.already_loaded is None
    assert again.rows_stored == 4
    assert _count(workspace, "measurements") == 8


def test_withdraw_also_marks_already_loaded_reports(workspace):
    path = FIXTURES / "mixed_iso.csv"
    first = ingest_file(workspace, path, IngestOptions("events"))
    repeat = ingest_file(workspace, path, IngestOptions("events"))
    result = withdraw_ingest(workspace, first.report_id)
    reloaded = ingest_file(workspace, path, IngestOptions("events"))

    assert repeat.already_loaded == first.report_id
    assert result.reports == [first.report_id, repeat.report_id]
    assert reloaded.rows_stored == first.rows_stored


def test_withdraw_devices_and_links(workspace, tmp_path):
    devices = tmp_path / "devices.csv"
    devices.write_text("device,kind\nplc-1,plc\nhmi-1,hmi\n")
    later = tmp_path / "more.csv"
    later.write_text("device,kind\nplc-2,plc\n")
    links = tmp_path / "links.csv"
    links.write_text("src,dst,weight\nplc-1,hmi-1,2\n")
    first = ingest_file(workspace, devices, IngestOptions("devices"))
    ingest_file(workspace, later, IngestOptions("devices"))
    topology = ingest_file(workspace, links, IngestOptions("links"))

    result = withdraw_ingest(workspace, first.report_id)
    links_result = withdraw_ingest(workspace, topology.report_id)
    stored = store.query(workspace.store_path, "SELECT device FROM devices")

    assert result.removed["devices"] == 2
    assert stored["device"].tolist() == ["plc-2"]
    assert links_result.removed["links"] == 1
    assert _count(workspace, "links") == 0


def test_withdraw_unknown_report_lists_others(workspace):
    ingest_file(workspace, FIXTURES / "mixed_iso.csv", IngestOptions("events"))

    with pytest.raises(IngestError) as raised:
        withdraw_ingest(workspace, 99)

    assert raised.value.headline == "ingest report 99 not found"
    assert raised.value.detail.endswith("(latest first, at most 10): 1.")


def test_withdraw_twice_rejected(workspace):
    report = ingest_file(workspace, FIXTURES / "mixed_iso.csv", IngestOptions("events"))
    withdraw_ingest(workspace, report.report_id)

    with pytest.raises(IngestError) as raised:
        withdraw_ingest(workspace, report.report_id)

    assert raised.value.headline.startswith(
        f"ingest report {report.report_id} was already withdrawn")


def test_withdraw_grown_file_needs_later_first(workspace, tmp_path):
    path = tmp_path / "growing.csv"
    path.write_text("ts,src,dst\n2024-03-01T08:00:00Z,a,b\n")
    first = ingest_file(workspace, path, IngestOptions("events"))
    with path.open("a") as handle:
        handle.write("2024-03-01T08:00:01Z,a,c\n")
    tail = ingest_file(workspace, path, IngestOptions("events"))
    before = _counts(workspace)

    with pytest.raises(IngestError) as raised:
        withdraw_ingest(workspace, first.report_id)
    after_refusal = _counts(workspace)
    withdraw_ingest(workspace, tail.report_id)
    withdraw_ingest(workspace, first.report_id)

    assert raised.value.headline == (
        f"ingest report {first.report_id} cannot be withdrawn before report "
        f"{tail.report_id}")
    assert after_refusal == before
    assert _count(workspace, "events") == 0


def test_delete_suppression_rule(workspace):
    kept = feedback.add_suppression(workspace, "inc-1", ["a", "b"], "process")
    deleted = feedback.add_suppression(workspace, "inc-2", ["c"], "communication")

    feedback.delete_suppression(workspace, deleted)
    rules = feedback.list_suppressions(workspace)
    with pytest.raises(SuppressionNotFoundError) as raised:
        feedback.delete_suppression(workspace, deleted)

    assert rules["rule_id"].tolist() == [kept]
    assert raised.value.headline == f"suppression rule {deleted} not found"
    assert raised.value.detail == f"Rules in this workspace: {kept}."
    incidents = pd.DataFrame({"member_devices": [["c"]], "type": ["communication"]})
    assert feedback.matching_rules(incidents, rules).isna().all()
