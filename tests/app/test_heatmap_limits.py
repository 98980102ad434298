"""The heatmap on large and oddly named runs: what the database sends and the page draws.

Each test publishes a run file whose `device_evidence` is a generated score matrix
(`core.score_runs`), so the sizes are exact and no model is needed.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import plotly.io
import pytest
import streamlit as st
from conftest import REPOSITORY
from streamlit.runtime.caching import get_data_cache_stats_provider
from streamlit.testing.v1 import AppTest

from core import plots, store, views
from core.ingest import IngestOptions, ingest_file
from core.score_runs import ORIGIN, device_names, planted_scores, publish_scores
from core.store import Workspace

FIXTURES = REPOSITORY / "tests" / "fixtures" / "ingest"
TIMEOUT = 120
# Streamlit 1.67 rejects a message above server.maxMessageSize, 200 MB by default.
MESSAGE_LIMIT_BYTES = 200 * 2**20


def _check_capped_heatmap(workspace, scores, incident_row, incident_bins) -> None:
    names = device_names(scores.shape[0])
    matrix = views.heatmap_matrix(workspace, "big", 1)
    rows = views.MAX_HEATMAP_ROWS
    top = [names[i] for i in np.argsort(-scores.max(axis=1), kind="stable")[:rows]]
    row = matrix.devices.index(names[incident_row])
    covering = np.flatnonzero((matrix.ends > ORIGIN + pd.Timedelta(
        minutes=incident_bins[0])) & (matrix.starts < ORIGIN + pd.Timedelta(
            minutes=incident_bins[1])))

    assert len(matrix.devices) == rows <= 500
    assert matrix.evidence.shape[1] <= 1000
    assert matrix.evidence.size <= rows * 1000
    assert matrix.total_rows == scores.shape[0]
    assert set(matrix.devices) == set(top)
    assert row == 0
    ranked = [names[i] for i in np.argsort(-scores.max(axis=1), kind="stable")]
    second = views.heatmap_matrix(workspace, "big", 1, offset=rows)
    assert set(second.devices) == set(ranked[rows:2 * rows])
    np.testing.assert_allclose(matrix.evidence[row, covering], 5.0)
    # Each column is the maximum of the bins it covers.
    factor = matrix.factor
    expected = scores[incident_row, :factor * 3].reshape(3, factor).max(axis=1)
    np.testing.assert_allclose(matrix.evidence[row, :3], expected, rtol=1e-6)

    start = ORIGIN + pd.Timedelta(minutes=incident_bins[0] - 10)
    end = ORIGIN + pd.Timedelta(minutes=incident_bins[1] + 10)
    zoom = views.heatmap_matrix(workspace, "big", 1, start, end,
                                devices=[names[incident_row], names[0]])
    assert zoom.factor == 1
    assert zoom.evidence.shape == (2, incident_bins[1] - incident_bins[0] + 20)
    np.testing.assert_allclose(
        zoom.evidence[zoom.devices.index(names[incident_row])],
        scores[incident_row, incident_bins[0] - 10:incident_bins[1] + 10], rtol=1e-6)


def _z_shape(heatmap: dict) -> tuple[int, int]:
    """Return the shape of a heatmap's z, which Plotly sends as a typed array."""
    rows, columns = heatmap["z"]["shape"].split(",")
    return int(rows), int(columns)


def _render_heatmap_page(workspace, monkeypatch) -> dict:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    monkeypatch.chdir(REPOSITORY)
    app = AppTest.from_file(str(REPOSITORY / "pages" / "1_Heatmap.py"),
                            default_timeout=TIMEOUT)
    app.run()
    assert not app.exception
    assert not app.error
    charts = app.get("plotly_chart")
    assert len(charts) == 1
    spec = charts[0].proto.spec
    assert len(spec.encode()) < MESSAGE_LIMIT_BYTES
    return json.loads(spec)


def test_heatmap_caps_cells_and_zooms(tmp_path, monkeypatch):
    scores = planted_scores(600, 3000, 234, 1500, 1530)
    workspace = publish_scores(tmp_path / "ws", scores, device_names(600))

    _check_capped_heatmap(workspace, scores, 234, (1500, 1530))
    figure = _render_heatmap_page(workspace, monkeypatch)
    heatmap = figure["data"][0]

    assert heatmap["type"] == "heatmap"
    assert _z_shape(heatmap) == (views.MAX_HEATMAP_ROWS, 1000)
    assert heatmap["y"][0] == "dev-0234"


@pytest.mark.slow
def test_heatmap_week_of_minutes_capped(tmp_path, monkeypatch):
    """2,000 devices x 10,080 one-minute bins (a week), one incident at row 1234."""
    scores = planted_scores(2000, 10080, 1234, 5000, 5030)
    workspace = publish_scores(tmp_path / "ws", scores, device_names(2000))

    _check_capped_heatmap(workspace, scores, 1234, (5000, 5030))
    figure = _render_heatmap_page(workspace, monkeypatch)
    heatmap = figure["data"][0]

    assert _z_shape(heatmap)[0] == views.MAX_HEATMAP_ROWS
    assert _z_shape(heatmap)[1] <= 1000
    assert heatmap["y"][0] == "dev-1234"


def test_numeric_like_ids_stay_text(tmp_path):
    frame = pd.read_csv(FIXTURES / "numeric_like_ids.csv", dtype=str)
    events = tmp_path / "events.csv"
    events.write_text("ts,src,dst\n" + "".join(
        f"2024-03-01T08:00:0{i}Z,{device},hmi-1\n"
        for i, device in enumerate(frame["device"])))
    workspace = Workspace.create(tmp_path / "ws")
    ingest_file(workspace, events, IngestOptions("events"))
    stored = store.query(workspace.store_path, "SELECT src FROM events ORDER BY t")
    kinds = store.query(workspace.store_path, "DESCRIBE events").set_index("column_name")

    assert stored["src"].tolist() == ["10", "2", "1", "1E1"]
    assert kinds.loc["src", "column_type"] == "VARCHAR"


def test_numeric_like_ids_categorical_rows(tmp_path):
    frame = pd.read_csv(FIXTURES / "numeric_like_ids.csv", dtype=str)
    scores = frame["score"].astype(float).to_numpy()[:, None]
    workspace = publish_scores(tmp_path / "ws", scores, frame["device"].tolist())

    matrix = views.heatmap_matrix(workspace, "big", 1)
    figure = plots.heatmap_figure(matrix, pd.DataFrame(columns=[
        "rank", "incident_id", "start", "end", "device"]), pd.DataFrame(columns=[
            "incident_id", "start", "end"]))
    heatmap = figure.data[0]

    assert matrix.devices == ["10", "2", "1E1", "1"]
    assert figure.layout.yaxis.type == "category"
    assert list(figure.layout.yaxis.categoryarray) == ["10", "2", "1E1", "1"]
    assert list(heatmap.y) == ["10", "2", "1E1", "1"]
    assert [row[0] for row in heatmap.z] == [0.9, 0.5, 0.3, 0.1]
    assert sorted(figure.data[1].y) == sorted(["10", "2", "1E1", "1"])


def _decode_typed_array(array: dict) -> np.ndarray:
    """Decode a typed array as Plotly.js reads it: little-endian base64 bytes."""
    shape = [int(size) for size in str(array["shape"]).split(",")]
    values = np.frombuffer(base64.b64decode(array["bdata"]), dtype="<" + array["dtype"])
    return values.reshape(shape)


def test_heatmap_sends_evidence_on_even_columns(tmp_path):
    """20 one-minute bins in 7 columns of 3 bins, the last of 2: the edges sent are
    evenly spaced, so Plotly.js draws one pixel per cell, and z decodes to the
    column maxima."""
    scores = planted_scores(3, 20, 1, 18, 20)
    workspace = publish_scores(tmp_path / "ws", scores, device_names(3))
    matrix = views.heatmap_matrix(workspace, "big", 1, max_cols=7)
    empty_cells = pd.DataFrame(columns=["rank", "incident_id", "start", "end", "device"])
    no_incidents = pd.DataFrame(columns=["incident_id", "start", "end"])
    figure = plots.heatmap_figure(matrix, empty_cells, no_incidents)
    sent = json.loads(plotly.io.to_json(figure, validate=False))
    heatmap = sent["data"][0]

    order = [device_names(3).index(device) for device in heatmap["y"]]
    padded = np.concatenate([scores, np.full((3, 1), -np.inf)], axis=1)
    expected = padded[order].reshape(3, 7, 3).max(axis=2)
    z = _decode_typed_array(heatmap["z"])
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z, expected.astype(np.float32))

    edges = pd.DatetimeIndex(heatmap["x"])
    assert set(edges[1:] - edges[:-1]) == {pd.Timedelta(minutes=3)}
    assert edges[0] == ORIGIN
    assert edges[-1] == ORIGIN + pd.Timedelta(minutes=21)
    window = pd.DatetimeIndex(sent["layout"]["xaxis"]["range"])
    assert list(window) == [ORIGIN, ORIGIN + pd.Timedelta(minutes=20)]
    assert heatmap["hovertemplate"].startswith("%{y}<br>%{x}<br>evidence %{z:.2f}")


def test_column_edges_widen_touching_columns():
    """A short last column is widened to a full step only when the columns before it
    are even and touch. After a gap every column keeps its own edges, so Plotly.js
    fills each cell at its time, which is slower."""
    touching = plots.column_edges(ORIGIN + pd.to_timedelta([0, 3, 6], unit="min"),
                                  ORIGIN + pd.to_timedelta([3, 6, 7], unit="min"))
    starts = ORIGIN + pd.to_timedelta([0, 3, 9], unit="min")
    gap = plots.column_edges(starts, ORIGIN + pd.to_timedelta([3, 6, 10], unit="min"))

    assert touching == list(ORIGIN + pd.to_timedelta([0, 3, 6, 9], unit="min"))
    assert gap == [*starts, ORIGIN + pd.Timedelta(minutes=10)]


def _cached_view_bytes() -> int:
    """Return the bytes held by the dashboard's cache of `core.views` calls."""
    stats = get_data_cache_stats_provider().get_stats()
    return sum(stat.byte_length for family in stats.values() for stat in family
               if stat.cache_name.endswith("_cached_view"))


def test_heatmap_loads_next_page_ahead(tmp_path, monkeypatch):
    """600 devices make 3 pages: opening page 1 also loads page 2, so moving to
    page 2 caches page 3 ahead, and moving to page 3 caches nothing new."""
    scores = planted_scores(600, 120, 234, 60, 70)
    workspace = publish_scores(tmp_path / "ws", scores, device_names(600))
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    monkeypatch.chdir(REPOSITORY)
    st.cache_data.clear()
    app = AppTest.from_file(str(REPOSITORY / "pages" / "1_Heatmap.py"),
                            default_timeout=TIMEOUT)
    app.run()
    first = _cached_view_bytes()

    app.number_input(key="heatmap_page").set_value(2).run()
    second = _cached_view_bytes()
    app.number_input(key="heatmap_page").set_value(3).run()
    third = _cached_view_bytes()

    assert not app.exception
    assert app.get("plotly_chart")[0].proto.spec
    assert second > first
    assert third == second
