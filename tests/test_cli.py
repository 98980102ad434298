"""Tests for core.cli: error output of real subprocesses, cell sanitizing, the parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import store
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

    assert set(commands) == {"demo", "ingest", "run", "incidents", "evaluate", "bench"}


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
