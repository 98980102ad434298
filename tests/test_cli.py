"""Tests for core.cli: error output of real subprocesses, cell sanitizing, the parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import cli, store
from core.cli import build_parser, main, sanitize_cell
from core.store import Workspace

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "ingest"


def _tgloc(*arguments: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *arguments], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=120,
    )


def test_incidents_without_run_exits_two(tmp_path):
    Workspace.create(tmp_path / "empty")
    result = _tgloc("incidents", "--workspace", str(tmp_path / "empty"))

    assert result.returncode == 2
    assert "error: no published run" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_run_single_device_exits_two(tmp_path):
    workspace = Workspace.create(tmp_path / "ws")
    start = pd.Timestamp("2024-03-01 00:00:00", tz="UTC")
    seconds = np.arange(0, 60 * 60, 20)
    measurements = pd.DataFrame({
        "t": pd.Series(start + pd.to_timedelta(seconds, unit="s")).astype(
            "datetime64[us, UTC]"),
        "device": "A",
        "sensor": "LIT101",
        "value": 500.0 + np.sin(seconds / 300.0),
    })
    with store.connect(workspace.store_path) as con:
        store.insert_frame(con, "measurements", measurements)

    result = _tgloc("run", "--workspace", str(workspace.root), "--bin-seconds", "60",
                    "--epochs", "1")

    assert result.returncode == 2
    assert ("error: need at least 2 devices to train a graph model (found 1: A)"
            in result.stderr)
    assert "Traceback" not in result.stderr
    assert workspace.list_runs() == []


@pytest.mark.parametrize("value", ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)",
                                   "\tx", "\rx"])
def test_sanitize_cell_quotes_formula(value):
    assert sanitize_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["P1 drift", "", "a=b", 3, -2.5, None])
def test_sanitize_cell_keeps_plain_value(value):
    assert sanitize_cell(value) == value


def _subcommands(parser) -> dict:
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_build_parser_commands():
    commands = _subcommands(build_parser())

    assert set(commands) == {"demo", "ingest", "run", "incidents", "suppressions",
                             "evaluate", "snapshots", "bench", "watch",
                             "replay", "plant"}


def test_build_parser_bench_scale_options():
    parser = build_parser()

    args = parser.parse_args(["bench", "scale", "--quick", "--epochs", "2"])

    assert args.benchmark == "scale"
    assert args.quick is True
    assert args.epochs == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["bench"])


def test_bench_real_missing_data_folder(tmp_path, capsys):
    code = main(["bench", "real", "--data", str(tmp_path / "absent")])

    assert code == 2
    assert "data folder not found" in capsys.readouterr().err


def test_bench_real_invalid_only(tmp_path, capsys):
    code = main(["bench", "real", "--data", str(tmp_path), "--only", "nope"])

    assert code == 2
    assert "invalid --only 'nope'" in capsys.readouterr().err


def test_bench_real_only_batadal_without_folder(tmp_path, capsys):
    code = main(["bench", "real", "--data", str(tmp_path), "--only", "batadal"])
    output = capsys.readouterr()

    assert code == 2
    assert f"batadal: skipped, {tmp_path / 'batadal'} not found" in output.out
    assert "mad:" not in output.out


def test_bench_localization_passes_its_options(capsys):
    code = main(["bench", "localization", "--seeds", "0"])

    assert code == 2
    assert "invalid --seeds 0" in capsys.readouterr().err


def test_unknown_option_rejected_outside_bench(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["incidents", "--seeds", "3"])

    assert raised.value.code == 2
    assert "unrecognized arguments: --seeds 3" in capsys.readouterr().err


def test_build_parser_demo_options():
    parser = build_parser()

    defaults = parser.parse_args(["demo"])
    args = parser.parse_args(["demo", "--no-serve", "--workspace", "/tmp/ws"])

    assert defaults.no_serve is False
    assert defaults.workspace == "workspace"
    assert args.no_serve is True
    assert args.workspace == "/tmp/ws"


def test_build_parser_rejects_unknown_command():
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["serve"])

    assert caught.value.code == 2


def test_ingest_prints_types_and_rejected_rows(tmp_path):
    text = (FIXTURES / "ipv6_mixed.csv").read_text()
    path = tmp_path / "bad_v6.csv"
    path.write_text(text + "2024-03-01T08:00:04Z,10.0.0.1,10.0.0.2,1\n"
                    "2024-03-01T08:00:05Z,2001:db8::zz,10.0.0.9,1\n")

    result = _tgloc("ingest", "--workspace", str(tmp_path / "ws"), str(path))

    assert result.returncode == 0
    assert ("line 7 (row 6), column src, value '2001:db8::zz': unparseable address "
            "in column src") in result.stdout
    assert "  1 row rejected" in result.stdout
    assert "Traceback" not in result.stderr


def test_ingest_late_types_reports_zero_rejected(tmp_path):
    path = tmp_path / "late_types.csv"
    with path.open("w") as handle:
        handle.write("ts,device_id,value\n")
        for i in range(30000):
            handle.write(
                f"2024-03-01T08:{i // 600:02d}:{i % 60:02d}Z,{1000 + i % 50},{i % 7}\n")
        handle.write("2024-03-01T09:00:00Z,D1000263,7\n")
        handle.write("2024-03-01T09:00:01Z,1001,12.5\n")

    result = _tgloc("ingest", "--workspace", str(tmp_path / "ws"), str(path),
                    "--target", "measurements")

    assert result.returncode == 0
    assert "30002 rows read" in result.stdout
    assert "  0 rows rejected" in result.stdout
    assert ("column types: t TIMESTAMP WITH TIME ZONE, device VARCHAR, sensor VARCHAR, "
            "value DOUBLE") in result.stdout


def test_run_single_device_file_exits_two(tmp_path):
    workspace = str(tmp_path / "ws")
    ingested = _tgloc("ingest", "--workspace", workspace,
                      str(FIXTURES / "single_device.csv"))

    result = _tgloc("run", "--workspace", workspace, "--epochs", "1")

    assert ingested.returncode == 0
    assert result.returncode == 2
    assert ("error: need at least 2 devices to train a graph model (found 1: A)"
            in result.stderr)
    assert "Traceback" not in result.stderr
    assert "nan" not in result.stderr.lower()


def test_ingest_all_rows_rejected_exits_two(tmp_path):
    data = tmp_path / "dates.csv"
    data.write_text("ts,src,dst\n2024-03-01 08:00:00,a,b\n2024-03-01 08:00:01,a,b\n")

    result = _tgloc("ingest", "--workspace", str(tmp_path / "ws"), "--time-format",
                    "%Y-%m-%d", str(data))

    assert result.returncode == 2
    assert "0 stored, 2 rejected" in result.stdout
    assert "time does not match format %Y-%m-%d" in result.stdout
    assert "nothing stored from" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_reference_end_names_setting(tmp_path):
    result = _tgloc("run", "--workspace", str(tmp_path / "ws"), "--reference-end",
                    "yesterday")

    assert result.returncode == 2
    assert "invalid setting reference_end='yesterday'" in result.stderr
    assert "unexpected failure" not in result.stderr


def test_bad_time_format_names_directive(tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("ts,src,dst\n2024-03-01 08:00:00,a,b\n")

    result = _tgloc("ingest", "--workspace", str(tmp_path / "ws"), "--time-format",
                    "%Q%Q", str(data))

    assert result.returncode == 2
    assert "invalid time format '%Q%Q'" in result.stderr
    assert "unexpected failure" not in result.stderr


def test_run_reports_imputed_cells(tmp_path):
    rows = ["time,A,B,C"]
    start = pd.Timestamp("2024-05-01T00:00:00Z")
    for i in range(120):
        a = "" if i % 17 == 5 else f"{10 + np.sin(i / 7):.3f}"
        b = "" if i % 23 == 9 else f"{20 + np.cos(i / 5):.3f}"
        rows.append(f"{(start + pd.Timedelta(seconds=10 * i)).isoformat()},{a},{b},"
                    f"{i % 3}")
    data = tmp_path / "wide.csv"
    data.write_text("\n".join(rows) + "\n")
    workspace = str(tmp_path / "ws")
    ingested = _tgloc("ingest", "--workspace", workspace, "--target", "measurements",
                      "--layout", "wide", str(data))
    nulls = store.query(Path(workspace) / "store.duckdb",
                        "SELECT count(*) AS n FROM measurements WHERE value IS NULL")
    missing = int(nulls["n"][0])

    result = _tgloc("run", "--workspace", workspace, "--bin-seconds", "10",
                    "--epochs", "1", "--gap-fill", "ffill")

    assert ingested.returncode == 0
    assert missing == 7 + 5
    assert result.returncode == 0, result.stderr
    assert f"  {missing} cells imputed (ffill)\n" in result.stdout


def test_ingest_sentinel_option_stores_null(tmp_path):
    workspace = tmp_path / "ws"
    result = _tgloc("ingest", "--workspace", str(workspace), "--sentinel",
                    "Init_Win_bytes_forward=-1", str(FIXTURES / "cic_like_flows.csv"))
    stored = store.query(
        workspace / "store.duckdb",
        "SELECT a.value FROM event_attributes a JOIN events e USING (report_id, line) "
        "WHERE a.name = 'Init_Win_bytes_forward' ORDER BY e.t")

    assert result.returncode == 0, result.stderr
    assert stored["value"].isna().tolist() == [True, False, False]
    assert "equal to the sentinel -1 stored as NULL" in result.stdout


@pytest.mark.parametrize("command", [
    ("run", "--epochs", "1"), ("incidents",), ("suppressions",),
    ("ingest", "--withdraw", "1"),
])
def test_mistyped_workspace_not_created(tmp_path, command):
    missing = tmp_path / "wrokspace"
    result = _tgloc(command[0], "--workspace", str(missing), *command[1:])

    assert result.returncode == 2
    assert f"error: workspace '{missing}' not found (folder not found)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()


def test_ingest_withdraw_then_reload(tmp_path):
    workspace = str(tmp_path / "ws")
    data = str(FIXTURES / "mixed_iso.csv")
    first = _tgloc("ingest", "--workspace", workspace, data)
    withdrawn = _tgloc("ingest", "--workspace", workspace, "--withdraw", "1")
    again = _tgloc("ingest", "--workspace", workspace, "--withdraw", "1")
    reloaded = _tgloc("ingest", "--workspace", workspace, data)
    events = store.query(Path(workspace) / "store.duckdb",
                         "SELECT DISTINCT report_id FROM events")

    assert first.returncode == 0
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert withdrawn.stdout.startswith("report 1 (")
    assert "withdrawn: 3 events rows removed" in withdrawn.stdout
    assert again.returncode == 2
    assert "error: ingest report 1 was already withdrawn" in again.stderr
    assert reloaded.returncode == 0
    assert events["report_id"].tolist() == [2]


def test_suppressions_listed_and_deleted(tmp_path):
    from core import feedback

    workspace = Workspace.create(tmp_path / "ws")
    rule = feedback.add_suppression(workspace, "inc-1", ["plc-1", "hmi-1"], "process")

    listed = _tgloc("suppressions", "--workspace", str(workspace.root))
    deleted = _tgloc("suppressions", "--workspace", str(workspace.root), "--delete",
                     str(rule))
    missing = _tgloc("suppressions", "--workspace", str(workspace.root), "--delete",
                     str(rule))

    assert listed.stdout == f"{rule}\tprocess\thmi-1 plc-1\tactive\tfrom inc-1\n"
    assert deleted.stdout == f"suppression rule {rule} deleted\n"
    assert missing.returncode == 2
    assert f"error: suppression rule {rule} not found" in missing.stderr
    assert feedback.list_suppressions(workspace).empty


def test_multi_file_ingest_goes_on_after_bad_file(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("ts,src,dst\n2024-03-01T08:00:00Z,a,b\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,peer\n2024-03-01T08:00:00Z,a\n")
    later = tmp_path / "later.csv"
    later.write_text("ts,src,dst\n2024-03-01T08:00:01Z,a,c\n")
    workspace = tmp_path / "ws"

    result = _tgloc("ingest", "--workspace", str(workspace), str(good), str(bad),
                    str(tmp_path / "missing.csv"), str(later))
    stored = store.query(workspace / "store.duckdb", "SELECT dst FROM events ORDER BY t")

    assert result.returncode == 2
    assert stored["dst"].tolist() == ["b", "c"]
    assert f"error: {bad}: no src column found for events in bad.csv" in result.stderr
    assert "Map one of them with --column src=COLUMN" in result.stderr
    assert f"error: {tmp_path / 'missing.csv'}: file not found" in result.stderr
    assert (f"2 of 4 files loaded; 2 failed: {bad}, {tmp_path / 'missing.csv'}"
            in result.stderr)
    assert "1 row read, 1 stored" in result.stdout
    assert "Traceback" not in result.stderr


def test_reader_rejected_line_has_no_column_none(tmp_path):
    data = tmp_path / "fields.csv"
    data.write_text("ts,src,dst\n2024-03-01T08:00:00Z,a,b\n2024-03-01T08:00:01Z,a\n"
                    "2024-03-01T08:00:02Z,a,b\n")

    result = _tgloc("ingest", "--workspace", str(tmp_path / "ws"), str(data))

    assert result.returncode == 0
    assert "column None" not in result.stdout
    assert "  1 row rejected\n  line 3 (row 2), line '2024-03-01T08:00:01Z,a': " in (
        result.stdout)


def test_single_rejected_row_message_singular(tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("ts,src,dst\n2024-03-01 08:00:00,a,b\n")

    result = _tgloc("ingest", "--workspace", str(tmp_path / "ws"), "--time-format",
                    "%Y-%m-%d", str(data))

    assert result.returncode == 2
    assert "1 row read, 0 stored, 1 rejected" in result.stdout
    assert "the only row was rejected" in result.stderr
    assert "1 rows" not in result.stdout + result.stderr


def test_run_reports_collection_gap_unscored(tmp_path):
    rows = ["time,A,B,C"]
    start = pd.Timestamp("2024-05-01T00:00:00Z")
    silent = {150, 151, 152}
    for step in range(180 * 3):
        if step // 3 in silent:
            continue
        t = start + pd.Timedelta(seconds=20 * step)
        rows.append(f"{t.isoformat()},{10 + np.sin(step / 9):.4f},"
                    f"{5 + np.cos(step / 7):.4f},{step % 4}")
    data = tmp_path / "plant.csv"
    data.write_text("\n".join(rows) + "\n")
    workspace = tmp_path / "ws"
    _tgloc("ingest", "--workspace", str(workspace), "--target", "measurements",
           "--layout", "wide", str(data))

    result = _tgloc("run", "--workspace", str(workspace), "--bin-seconds", "60",
                    "--epochs", "1", "--run-id", "gaps")
    run_file = workspace / "runs" / "gaps.duckdb"
    bins = store.query(run_file, "SELECT bin, period, note FROM bins WHERE scale = 1 "
                                 "AND bin BETWEEN 149 AND 153 ORDER BY bin")
    scored = store.query(run_file, "SELECT count(*) AS n FROM elements "
                                   "WHERE scale = 1 AND bin BETWEEN 150 AND 152")
    coarse = store.query(run_file, "SELECT period, note FROM bins "
                                   "WHERE scale = 4 AND bin = 37")

    assert result.returncode == 0, result.stderr
    assert ("  3 bins without data from any device (1 collection gap, the first "
            "2024-05-01T02:30:00+00:00 to 2024-05-01T02:33:00+00:00) excluded from "
            "training and scoring\n") in result.stdout
    assert bins["period"].tolist() == ["score", "gap", "gap", "gap", "score"]
    assert bins["note"].tolist()[1:4] == [
        "collection gap: no data from any device; not scored"] * 3
    assert int(scored["n"][0]) == 0
    assert coarse["period"].tolist() == ["mixed"]
    assert coarse["note"].str.startswith("collection gap").all()


def test_run_calibrate_on_scored_option(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text('{"search": {"level": 0.01}}', encoding="utf-8")
    parser = build_parser()

    plain = cli.run_config(parser.parse_args(["run", "--config", str(settings)]))
    chosen = cli.run_config(parser.parse_args(
        ["run", "--config", str(settings), "--calibrate-on-scored"]))

    assert plain.search.calibrate_on_scored is False
    assert chosen.search.calibrate_on_scored is True
    assert chosen.search.level == 0.01
