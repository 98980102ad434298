"""Tests for bench.null_runs on one small plant: each null period is its own scored
run, the table counts runs with an incident, and a rerun reads the stored results."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench import null_runs
from core import synth

SMALL = ["--seeds", "1", "--periods", "2", "--field-devices", "8", "--epochs", "2"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple:
    cache = tmp_path_factory.mktemp("null-runs")
    return cache, null_runs.main(SMALL + ["--cache", str(cache)])


def test_null_report_matches_records(first_run, capsys):
    cache, code = first_run
    assert code == 0
    records = list(cache.glob("seed*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert len(record["incidents"]) == 2
    assert [len(lines) for lines in record["summaries"]] == record["incidents"]

    # The rerun trains nothing: it reads the stored result and prints the same figures.
    assert null_runs.main(SMALL + ["--cache", str(cache)]) == 0
    output = capsys.readouterr().out
    headline = json.loads(output.strip().splitlines()[-1])
    assert headline["null_runs"] == 2
    alarms = sum(count > 0 for count in record["incidents"])
    assert headline["null_runs_with_incident"] == alarms
    low, high = headline["null_share_ci95"]
    assert low <= alarms / 2 <= high
    assert f"| 2 | {alarms} | {alarms / 2:.3f} |" in output


def test_null_periods_scored_alone(first_run):
    cache, _ = first_run
    record = json.loads(next(cache.glob("seed*.json")).read_text())
    start = pd.Timestamp(synth.PlantConfig().start)
    hours = [null_runs.REFERENCE_HOURS, null_runs.REFERENCE_HOURS + null_runs.PERIOD_HOURS,
             null_runs.REFERENCE_HOURS + 2 * null_runs.PERIOD_HOURS]
    bounds = [start + pd.Timedelta(hours=h) for h in hours]
    # Each run scores its own 9.6 hours after the reference and nothing else.
    assert [[pd.Timestamp(a), pd.Timestamp(b)] for a, b in record["scored"]] == [
        [bounds[0], bounds[1]], [bounds[1], bounds[2]]]


def test_null_runs_reject_zero_seeds(capsys):
    assert null_runs.main(["--seeds", "0"]) == 2
    assert "invalid --seeds 0" in capsys.readouterr().err
