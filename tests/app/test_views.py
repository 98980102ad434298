"""Dashboard queries in core.views, checked against the run file read directly."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pytest
from fixture_run import INCIDENTS, LOST_PAIRS, NUM_BINS, SENSOR_FLAGS

from core import plots, views
from core.errors import RunNotFoundError, StoreBusyError, TglocError
from core.store import Workspace

# Holds a write connection on a DuckDB file until killed.
HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def _read(workspace, run_id, sql, params=()):
    with duckdb.connect(str(workspace.run_path(run_id)), read_only=True) as con:
        return con.execute(sql, list(params)).df()


def test_run_summary_counts(workspace, run_id):
    summary = views.run_summary(workspace, run_id)
    incidents = _read(workspace, run_id, "SELECT count(*) AS n FROM incidents")
    assert summary["incidents"] == int(incidents["n"].iloc[0])
    assert summary["devices"] == 12
    assert summary["bins"] == NUM_BINS
    assert summary["scales"] == [1, 4]
    assert summary["end"] - summary["start"] == pd.Timedelta(minutes=NUM_BINS)


def test_heatmap_rows_sorted_by_peak(workspace, run_id):
    matrix = views.heatmap_matrix(workspace, run_id, 1)
    peaks = np.nanmax(matrix.evidence, axis=1)
    assert matrix.evidence.shape == (12, NUM_BINS)
    assert matrix.factor == 1
    assert list(peaks) == sorted(peaks, reverse=True)
    np.testing.assert_allclose(peaks, matrix.peaks)


def test_heatmap_rebins_with_max(workspace, run_id):
    full = views.heatmap_matrix(workspace, run_id, 1)
    coarse = views.heatmap_matrix(workspace, run_id, 1, max_cols=7)
    assert coarse.factor == 18
    assert coarse.evidence.shape == (12, 7)
    assert coarse.devices == full.devices
    for column in range(7):
        block = full.evidence[:, column * 18:(column + 1) * 18]
        np.testing.assert_allclose(coarse.evidence[:, column], block.max(axis=1))


def test_heatmap_pages_rows(workspace, run_id):
    full = views.heatmap_matrix(workspace, run_id, 1)
    page = views.heatmap_matrix(workspace, run_id, 1, max_rows=5, offset=5)
    assert page.total_rows == 12
    assert page.devices == full.devices[5:10]
    assert views.page_count(12, 5) == 3


def test_heatmap_time_window_and_filter(workspace, run_id):
    start = pd.Timestamp("2026-03-01T01:00:00Z")
    end = pd.Timestamp("2026-03-01T01:30:00Z")
    matrix = views.heatmap_matrix(workspace, run_id, 4, start, end, kinds=["plc"])
    assert matrix.starts[0] == start
    assert matrix.ends[-1] == pd.Timestamp("2026-03-01T01:32:00Z")
    assert len(matrix.starts) == 8
    kinds = _read(workspace, run_id, "SELECT device FROM devices WHERE kind = 'plc'")
    assert sorted(matrix.devices) == sorted(kinds["device"])


def test_incident_members_match_run_file(workspace, run_id):
    for planted in INCIDENTS:
        incident_id = planted["incident_id"]
        members = views.incident_members(workspace, run_id, incident_id)
        stored = _read(workspace, run_id,
                       "SELECT * FROM incident_members WHERE incident_id = ?",
                       [incident_id])
        assert len(members) == len(stored)
        devices = members.loc[members["role"] == "device", "device"]
        assert sorted(devices) == sorted(planted["devices"])


def _expected_sensor_flags() -> list[tuple]:
    """Count each member sensor's flagged bins inside its incident, from the
    fixture's definitions."""
    rows = []
    for incident in INCIDENTS:
        for device, sensor, flag, first, last in SENSOR_FLAGS:
            if (device, sensor) not in incident["sensors"]:
                continue
            bins = min(last, incident["last"]) - max(first, incident["first"]) + 1
            if bins > 0:
                rows.append((incident["incident_id"], device, sensor, flag, bins))
    return sorted(rows)


def test_member_sensor_flags_inside_incident(workspace, run_id):
    flags = views.member_sensor_flags(workspace, run_id)
    first_only = views.member_sensor_flags(workspace, run_id,
                                           INCIDENTS[0]["incident_id"])
    expected = _expected_sensor_flags()

    assert list(flags.itertuples(index=False, name=None)) == expected
    assert len(expected) == 2
    assert set(first_only["incident_id"]) == {INCIDENTS[0]["incident_id"]}
    assert len(first_only) == 2


def test_unknown_incident_raises(workspace, run_id):
    with pytest.raises(RunNotFoundError):
        views.incident(workspace, run_id, "no-such-incident")


def test_series_cover_incident(workspace, run_id):
    planted = INCIDENTS[1]
    src, dst = planted["pairs"][0]
    series = views.pair_series(workspace, run_id, src, dst, 1)
    assert len(series) == NUM_BINS
    inside = series.iloc[planted["first"]:planted["last"] + 1]
    assert (inside["p_value"] < 1e-3).all()
    sensor = views.sensor_series(workspace, run_id, "pump-04", "temperature", 4)
    assert len(sensor) == NUM_BINS // 4


def test_context_edges_mark_lost_link_missing(workspace, run_id):
    planted = INCIDENTS[2]
    edges = views.context_edges(workspace, run_id, planted["incident_id"])
    lost = set(zip(edges.loc[edges["missing"], "src"], edges.loc[edges["missing"], "dst"]))
    assert lost == set(LOST_PAIRS)
    # Its other pair still carries events above its expected level.
    carrying = edges.set_index(["src", "dst"]).loc[("ws-11", "gateway-06")]
    assert not carrying["missing"]
    assert carrying["weight"] > carrying["expected"]


def test_subgraph_draws_missing_link_dashed(workspace, run_id):
    planted = INCIDENTS[2]
    members = views.incident_members(workspace, run_id, planted["incident_id"])
    edges = views.context_edges(workspace, run_id, planted["incident_id"])
    figure = plots.subgraph_figure(members, edges)
    dashed = [trace for trace in figure.data if trace.mode == "lines"]
    assert [trace.line.dash for trace in dashed] == ["dash"]
    assert dashed[0].name == "missing link (abnormal)"
    nodes = {text: (x, y) for trace in figure.data if trace.mode == "markers+text"
             for text, x, y in zip(trace.text, trace.x, trace.y)}
    src, dst = LOST_PAIRS[0]
    assert list(zip(dashed[0].x, dashed[0].y))[:2] == [nodes[src], nodes[dst]]
    # The lost link gets no arrow, and the pair that still carries events keeps one.
    arrows = {(a.ax, a.ay, a.x, a.y) for a in figure.layout.annotations}
    assert (*nodes[src], *nodes[dst]) not in arrows
    assert (*nodes["ws-11"], *nodes["gateway-06"]) in arrows


def test_subgraph_names_both_lost_directions():
    members = pd.DataFrame({"incident_id": "i", "role": ["device", "device", "pair"],
                            "device": ["scada-1", "plc-<7>", "scada-1"],
                            "peer": [None, None, "plc-<7>"]})
    edges = pd.DataFrame({"src": ["scada-1", "plc-<7>"], "dst": ["plc-<7>", "scada-1"],
                          "evidence": [12.0, 9.0], "weight": [0.0, 0.0],
                          "expected": [4.1, 3.4], "missing": [True, True]})
    figure = plots.subgraph_figure(members, edges)
    marks = [trace for trace in figure.data if trace.mode == "markers"]
    assert len(marks) == 1
    assert list(marks[0].hovertext) == [
        "scada-1 to plc-&lt;7&gt;: no events, 4.1 a bin expected<br>"
        "plc-&lt;7&gt; to scada-1: no events, 3.4 a bin expected"]
    lines = [trace for trace in figure.data if trace.mode == "lines"]
    assert len(lines) == 1
    assert len(lines[0].x) == 6


def test_context_edges_nan_expected_not_missing():
    con = duckdb.connect()
    con.execute("CREATE TABLE bins AS SELECT 1 AS scale, 0 AS bin, "
                "TIMESTAMPTZ '2026-03-01 00:00:00+00' AS start, "
                "TIMESTAMPTZ '2026-03-01 00:01:00+00' AS \"end\"")
    con.execute("CREATE TABLE elements (kind TEXT, device TEXT, peer TEXT, scale INT, "
                "bin INT, observed DOUBLE, expected DOUBLE, p_value DOUBLE)")
    con.execute("INSERT INTO elements VALUES ('pair', 'a', 'b', 1, 0, 0, 'NaN', 1e-6), "
                "('pair', 'b', 'a', 1, 0, 0, 5, 1e-6), ('pair', 'a', 'c', 1, 0, 0, 1, 1e-6)")
    params = {"scale": 1, "devices": ["a"], "start": pd.Timestamp("2026-03-01", tz="UTC"),
              "end": pd.Timestamp("2026-03-01 00:01", tz="UTC"), "limit": 10,
              "missing_expected": views.MISSING_EXPECTED_EVENTS}
    edges = con.execute(views.CONTEXT_EDGES_SQL, params).df()
    missing = dict(zip(zip(edges["src"], edges["dst"]), edges["missing"]))
    assert missing == {("a", "b"): False, ("b", "a"): True, ("a", "c"): False}


def test_subgraph_draws_lost_self_loop():
    members = pd.DataFrame({"incident_id": "i", "role": ["device"], "device": ["scada"],
                            "peer": [None]})
    edges = pd.DataFrame({"src": ["scada"], "dst": ["scada"], "evidence": [5.0],
                          "weight": [0.0], "expected": [4.0], "missing": [True]})
    figure = plots.subgraph_figure(members, edges)
    marks = [trace for trace in figure.data if trace.mode == "markers"]
    node = next(trace for trace in figure.data if trace.mode == "markers+text")
    assert (marks[0].x[0], marks[0].y[0]) == (node.x[0], node.y[0])
    assert list(marks[0].hovertext) == ["scada to scada: no events, 4.0 a bin expected"]


def test_bound_parameters_take_text_literally(workspace, run_id):
    hostile = "x' OR 1=1 --"
    assert views.incident_members(workspace, run_id, hostile).empty
    assert views.sensor_series(workspace, run_id, hostile, hostile).empty


def test_read_progress_takes_last_valid_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    assert views.read_progress(path) is None
    lines = [json.dumps({"stage": "binning", "fraction": 0.2}),
             json.dumps({"stage": "training", "fraction": 0.55}), '{"stage": "sc']
    path.write_text("\n".join(lines))
    assert views.read_progress(path) == {"stage": "training", "fraction": 0.55}


def test_heatmap_figure_click_layer(workspace, run_id):
    matrix = views.heatmap_matrix(workspace, run_id, 1)
    cells = views.member_cells(workspace, run_id)
    figure = plots.heatmap_figure(matrix, cells, views.incidents(workspace, run_id))
    heatmap, markers = figure.data
    assert heatmap.type == "heatmap"
    assert markers.type == "scatter"
    assert len(markers.customdata) == 12 * NUM_BINS
    clicked = [plots.clicked_cell(matrix, cells, {"customdata": int(key)})
               for key in markers.customdata]
    flagged = {cell.incident_id for cell in clicked if cell.incident_id}
    assert flagged == {planted["incident_id"] for planted in INCIDENTS}
    # Each marker names its own cell: the device of its row and its column.
    assert {(cell.device, cell.start) for cell in clicked} == {
        (device, start) for device in matrix.devices for start in matrix.starts}
    assert "&lt;b&gt;plc-07&lt;/b&gt;" in figure.layout.yaxis.categoryarray
    assert len(figure.layout.shapes) >= len(INCIDENTS)


def test_busy_run_file_raises_store_busy(workspace, run_id):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(workspace.run_path(run_id))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreBusyError) as caught:
            views.run_summary(workspace, run_id)
        assert "busy" in caught.value.headline
    finally:
        holder.kill()
        holder.wait()


def test_damaged_run_file_raises_data_error(tmp_path):
    workspace = Workspace.create(tmp_path / "damaged")
    workspace.run_path("broken").write_bytes(b"not a database")
    with pytest.raises(TglocError) as caught:
        views.run_summary(workspace, "broken")
    assert "broken" in caught.value.headline


def test_pipeline_command_appends_run_args(tmp_path, monkeypatch):
    workspace = Workspace.create(tmp_path / "ws")
    monkeypatch.delenv(views.RUN_ARGS_ENV, raising=False)
    plain = views.pipeline_command(workspace)
    assert plain[1:4] == ["-m", "core.cli", "run"]
    monkeypatch.setenv(views.RUN_ARGS_ENV, "--epochs 5 --run-id 'quick run'")
    extended = views.pipeline_command(workspace)
    assert extended[:len(plain)] == plain
    assert extended[len(plain):] == ["--epochs", "5", "--run-id", "quick run"]


def test_periods_are_base_bin_intervals(workspace, run_id):
    frame = views.periods(workspace, run_id)
    assert list(frame["period"]) == ["train", "calibration", "score"]
    assert frame["start"].iloc[0] == _read(
        workspace, run_id, "SELECT min(start) AS s FROM bins")["s"].iloc[0]
    assert (frame["end"].iloc[:-1].to_numpy() == frame["start"].iloc[1:].to_numpy()).all()


def test_click_layer_groups_many_columns():
    columns = 600
    origin = pd.Timestamp("2026-01-01", tz="UTC")
    starts = pd.DatetimeIndex([origin + pd.Timedelta(minutes=i) for i in range(columns)])
    evidence = np.ones((2, columns))
    evidence[1, :300] = np.nan
    matrix = views.HeatmapMatrix(
        devices=["a", "b"], peaks=np.array([1.0, 1.0]), evidence=evidence,
        starts=starts, ends=starts + pd.Timedelta(minutes=1), factor=1,
        total_rows=2, offset=0,
    )
    cells = pd.DataFrame([{"rank": 1, "incident_id": "inc-1", "device": "b",
                           "start": origin + pd.Timedelta(minutes=400),
                           "end": origin + pd.Timedelta(minutes=410)}])
    incidents = pd.DataFrame([{"incident_id": "inc-1", "start": cells["start"][0],
                               "end": cells["end"][0]}])
    figure = plots.heatmap_figure(matrix, cells, incidents, max_click_columns=120)
    markers = figure.data[1]
    # Row a has 120 groups of 5 columns; row b only the 60 groups with evidence.
    assert len(markers.customdata) == 120 + 60
    clicked = [plots.clicked_cell(matrix, cells, {"customdata": int(key)},
                                  max_click_columns=120)
               for key in markers.customdata]
    flagged = [cell for cell in clicked if cell.incident_id == "inc-1"]
    assert {(cell.device, cell.start, cell.end) for cell in flagged} == {
        ("b", origin + pd.Timedelta(minutes=m), origin + pd.Timedelta(minutes=m + 5))
        for m in (400, 405)}
    # Incident markers are drawn last, so they win a click between markers.
    assert clicked[-1].incident_id == "inc-1"
    assert markers.marker.size == plots.CLICK_MARKER_SIZE
    # One integer a marker, which Plotly sends as packed binary.
    assert np.asarray(markers.customdata).dtype.kind == "i"

    last = int(markers.customdata[-1])
    assert plots.clicked_cell(matrix, cells, {"customdata": last, "y": "b"},
                              max_click_columns=120) == clicked[-1]
    # A selection left over from another figure names another row label.
    assert plots.clicked_cell(matrix, cells, {"customdata": last, "y": "a"},
                              max_click_columns=120) is None
    for point in ({}, {"customdata": -1}, {"customdata": "b"},
                  {"customdata": 2 * 120}):
        assert plots.clicked_cell(matrix, cells, point, max_click_columns=120) is None
