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
from core.cli import build_parser, sanitize_cell
from core.store import Workspace

ROOT = Path(__file__).resolve().parent.parent


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

    assert set(commands) == {"demo", "ingest", "run", "incidents"}


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
