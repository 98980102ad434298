"""Tests for core.evaluate window metrics and the `tgloc evaluate` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.evaluate import evaluate_windows, format_report, point_adjust, read_windows

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "ingest"


def _tgloc(*arguments: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *arguments], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=120,
    )


def _write_point_adjust_file(path: Path) -> None:
    """1,000 windows, anomaly at 400-499, a single alarm at 450."""
    n = 1000
    labels = [1 if 400 <= i < 500 else 0 for i in range(n)]
    predictions = [1 if i == 450 else 0 for i in range(n)]
    path.write_text("t,label,pred\n" + "".join(
        f"{i},{labels[i]},{predictions[i]}\n" for i in range(n)))


def test_all_normal_labels_auc_null():
    windows = read_windows(FIXTURES / "all_normal_scores.csv")
    report = evaluate_windows(windows["label"], scores=windows["score"], threshold=0.5)

    assert report["roc_auc"] is None
    assert report["pr_auc"] is None
    assert report["messages"][0] == (
        "ROC-AUC undefined: labels contain only class 0 (3 windows)")
    assert "PR-AUC undefined: labels contain only class 0 (3 windows)" in (
        report["messages"])
    assert report["point_wise"]["alarms"] == 1
    assert report["point_wise"]["false_alarms"] == 1
    assert report["point_wise"]["precision"] == 0.0


def test_evaluate_command_all_normal_succeeds():
    result = _tgloc("evaluate", str(FIXTURES / "all_normal_scores.csv"),
                    "--threshold", "0.5")

    assert result.returncode == 0
    assert "ROC-AUC: undefined" in result.stdout
    assert "ROC-AUC undefined: labels contain only class 0 (3 windows)" in (
        result.stdout)
    assert "alarms: 1, false alarms: 1" in result.stdout
    assert "Traceback" not in result.stderr


def test_point_adjusted_beside_point_wise(tmp_path):
    path = tmp_path / "pa.csv"
    _write_point_adjust_file(path)
    windows = read_windows(path)
    report = evaluate_windows(windows["label"], predictions=windows["pred"])
    point_wise, adjusted = report["point_wise"], report["point_adjusted"]

    assert point_wise["precision"] == 1.0
    assert point_wise["recall"] == pytest.approx(0.01)
    assert round(point_wise["f1"], 4) == 0.0198
    assert adjusted["precision"] == 1.0
    assert adjusted["recall"] == 1.0
    assert adjusted["f1"] == 1.0
    text = format_report(report)
    assert "point-wise F1: 0.0198; point-adjusted F1: 1" in text
    assert text.count("point-adjusted") == text.count("point-wise")


def test_evaluate_command_prints_both_f1(tmp_path):
    path = tmp_path / "pa.csv"
    _write_point_adjust_file(path)

    result = _tgloc("evaluate", str(path), "--format", "json")
    report = json.loads(result.stdout)

    assert result.returncode == 0
    assert round(report["point_wise"]["f1"], 4) == 0.0198
    assert report["point_adjusted"]["f1"] == 1.0


def test_point_adjust_fills_detected_segment_only():
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0])
    predictions = np.array([0, 0, 1, 0, 0, 0, 0, 1])

    adjusted = point_adjust(labels, predictions)

    assert adjusted.astype(int).tolist() == [0, 1, 1, 1, 0, 0, 0, 1]


def test_window_file_bad_label_names_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("t,label,score\n0,0,0.1\n1,maybe,0.2\n")

    result = _tgloc("evaluate", str(path), "--threshold", "0.5")

    assert result.returncode == 2
    assert "error: invalid value 'maybe' in column label, line 3" in result.stderr
    assert "Traceback" not in result.stderr


def _incidents(rows):
    import pandas as pd

    incidents = pd.DataFrame([{"incident_id": i, "start": pd.Timestamp(a, tz="UTC"),
                               "end": pd.Timestamp(b, tz="UTC")} for i, a, b, _ in rows])
    members = pd.DataFrame([{"incident_id": i, "role": "device", "device": d}
                            for i, _, _, devices in rows for d in devices])
    return incidents, members


def test_match_counts_second_piece_as_repeat():
    import pandas as pd

    from core.evaluate import match_incidents

    truth = pd.DataFrame([{"anomaly_id": "a1", "kind": "drift",
                           "start": pd.Timestamp("2024-03-01 10:00", tz="UTC"),
                           "end": pd.Timestamp("2024-03-01 11:00", tz="UTC"),
                           "devices": ["ft-1"]}])
    incidents, members = _incidents([
        ("whole", "2024-03-01 10:05", "2024-03-01 10:50", ["ft-1"]),
        ("piece", "2024-03-01 10:52", "2024-03-01 10:58", ["ft-1"]),
        ("wide", "2024-03-01 10:00", "2024-03-01 10:30", ["ft-1", "ft-2", "ft-3"]),
        ("elsewhere", "2024-03-01 12:00", "2024-03-01 12:10", ["ft-1"]),
    ])

    match = match_incidents(incidents, members, truth)

    assert match.truth["incident_id"].tolist() == ["whole"]
    assert match.repeats == ["piece"]
    assert match.unmatched == ["wide", "elsewhere"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_evaluate_rejects_non_finite_threshold(value):
    # The = form, because argparse reads a bare "-inf" as an option name.
    result = _tgloc("evaluate", str(FIXTURES / "all_normal_scores.csv"),
                    f"--threshold={value}")

    assert result.returncode == 2
    assert (f"argument --threshold: invalid value '{value}': give a finite number "
            "such as 0.5") in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("value", "side"), [
    ("5", "no window would alarm"), ("0.12", "every window would alarm"),
    ("-3", "every window would alarm"),
])
def test_evaluate_rejects_threshold_outside_scores(value, side):
    result = _tgloc("evaluate", str(FIXTURES / "all_normal_scores.csv"),
                    f"--threshold={value}")

    assert result.returncode == 2
    assert (f"error: invalid --threshold {float(value):g}: outside the scores of "
            f"{FIXTURES / 'all_normal_scores.csv'} (0.12 to 0.91), so {side}"
            in result.stderr)
    assert "Give a threshold above 0.12 and at most 0.91." in result.stderr
    assert result.stdout == ""
