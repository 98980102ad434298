"""Source x destination matrix on the Device pairs page, and the pair a cell opens.

The fixture run gets extra pair elements in bins 100 to 109 (01:40 to 01:50) between
devices whose names look like numbers ("007", "7", "7.0") or carry HTML, and the
store gets the raw events of one of them.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import REPOSITORY
from fixture_run import ORIGIN, PAIRS, RUN_ID, build_fixture_workspace
from streamlit.testing.v1 import AppTest

from core import pair_views, plots
from core.store import connect

TIMEOUT = 60
WINDOW = ("2026-03-01T01:40", "2026-03-01T01:50")
# (source, destination, events per bin, p-value) added in each bin of the window.
ADDED = [
    ("007", "7", 200.0, 1e-6),
    ("7", "<b>plc-07</b>", 3.0, 0.5),
    ("7.0", "007", 1.0, 0.2),
]
STORED_EVENTS = 25


@pytest.fixture(scope="module")
def matrix_workspace(tmp_path_factory):
    workspace = build_fixture_workspace(tmp_path_factory.mktemp("matrix") / "ws")
    with duckdb.connect(str(workspace.run_path(RUN_ID))) as con:
        for src, dst, events, p_value in ADDED:
            for index in range(100, 110):
                con.execute(
                    "INSERT INTO elements VALUES ('pair', ?, ?, NULL, 1, ?, ?, 1.0, "
                    "?, ?, ?, 'element')",
                    [src, dst, index, events, events - 1.0, 1.0, p_value])
    times = ORIGIN + pd.Timedelta(minutes=100) + pd.to_timedelta(
        np.arange(STORED_EVENTS), unit="s")
    events = pd.DataFrame({"t": times, "src": "007", "dst": "7", "weight": 1.0,
                           "protocol": "modbus"})
    with connect(workspace.store_path) as con:
        con.register("frame", events)
        con.execute("INSERT INTO events BY NAME SELECT * FROM frame")
    return workspace


def _window() -> tuple[pd.Timestamp, pd.Timestamp]:
    start, end = (pd.Timestamp(t, tz="UTC") for t in WINDOW)
    return start, end


def _expected_cells(workspace) -> pd.DataFrame:
    """Sum the window's pair elements in pandas, a second route to the matrix."""
    with duckdb.connect(str(workspace.run_path(RUN_ID)), read_only=True) as con:
        frame = con.execute(
            "SELECT device AS src, peer AS dst, observed, p_value FROM elements "
            "WHERE kind = 'pair' AND scale = 1 AND bin BETWEEN 100 AND 109").df()
    frame["evidence"] = -np.log10(frame["p_value"])
    return frame.groupby(["src", "dst"]).agg(events=("observed", "sum"),
                                             evidence=("evidence", "max"))


def test_matrix_cells_match_elements(matrix_workspace):
    matrix = pair_views.pair_matrix(matrix_workspace, RUN_ID, 1, *_window())
    expected = _expected_cells(matrix_workspace)
    sources = expected.index.get_level_values("src").unique()
    destinations = expected.index.get_level_values("dst").unique()

    assert matrix.total_sources == len(sources)
    assert matrix.total_destinations == len(destinations)
    assert None not in matrix.sources
    assert sorted(matrix.sources) == sorted(sources)
    assert matrix.sources[0] == "007"
    assert int(np.nansum(matrix.pairs)) == len(expected)
    for (src, dst), row in expected.iterrows():
        r, c = matrix.sources.index(src), matrix.destinations.index(dst)
        assert matrix.events[r, c] == pytest.approx(row["events"])
        assert matrix.evidence[r, c] == pytest.approx(row["evidence"])
    r, c = matrix.sources.index("007"), matrix.destinations.index("7")
    assert matrix.events[r, c] == pytest.approx(2000.0)
    assert matrix.evidence[r, c] == pytest.approx(6.0)


def test_matrix_groups_other(matrix_workspace):
    full = pair_views.pair_matrix(matrix_workspace, RUN_ID, 1, *_window())
    small = pair_views.pair_matrix(matrix_workspace, RUN_ID, 1, *_window(),
                                   max_devices=3)

    assert len(small.sources) == 4
    assert small.sources[:3] == full.sources[:3]
    assert small.sources[3] is None
    assert small.destinations[3] is None
    assert small.grouped_sources == full.total_sources - 3
    assert small.grouped_destinations == full.total_destinations - 3
    assert np.nansum(small.events) == pytest.approx(np.nansum(full.events))
    assert small.pairs.sum() == full.pairs.sum()
    kept = [full.sources.index(name) for name in small.sources[:3]]
    other_rows = [i for i in range(len(full.sources)) if i not in kept]
    assert np.nanmax(small.evidence[3]) == pytest.approx(
        np.nanmax(full.evidence[other_rows]))


def test_matrix_rejects_zero_devices(matrix_workspace):
    with pytest.raises(ValueError, match="max_devices=0"):
        pair_views.pair_matrix(matrix_workspace, RUN_ID, 1, max_devices=0)


def test_matrix_figure_literal_names(matrix_workspace):
    full = pair_views.pair_matrix(matrix_workspace, RUN_ID, 1, *_window())
    figure = plots.pair_matrix_figure(full, "evidence", ("007", "7"))
    rows = list(figure.layout.yaxis.categoryarray)
    columns = list(figure.layout.xaxis.categoryarray)

    assert figure.layout.yaxis.type == "category"
    assert figure.layout.xaxis.type == "category"
    assert rows[0] == "007"
    assert columns[0] == "7"
    assert {"7", "7.0"} <= set(rows)
    assert "&lt;b&gt;plc-07&lt;/b&gt;" in rows
    assert "&lt;b&gt;plc-07&lt;/b&gt;" in columns
    clicks = figure.data[1]
    cell = list(clicks.customdata).index(["007", "7", 0, 0])
    assert clicks.x[cell] == "7"
    assert clicks.y[cell] == "007"
    assert len(figure.layout.shapes) == 1

    small = pair_views.pair_matrix(matrix_workspace, RUN_ID, 1, *_window(),
                                   max_devices=4)
    grouped = plots.pair_matrix_figure(small, "events")
    assert list(grouped.layout.yaxis.categoryarray)[-1] == (
        f"other ({small.grouped_sources} sources)")
    assert list(grouped.layout.xaxis.categoryarray)[-1] == (
        f"other ({small.grouped_destinations} destinations)")
    assert ["", "", 1, 1] in [list(row) for row in grouped.data[1].customdata]


def test_other_label_avoids_device_names():
    assert plots.other_label(3, ["a", None], "sources") == "other (3 sources)"
    taken = ["other (3 sources)", "other (3 sources)*"]
    assert plots.other_label(3, taken, "sources") == "other (3 sources)**"


@pytest.fixture
def app(matrix_workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(matrix_workspace.root))
    monkeypatch.chdir(REPOSITORY)
    test = AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)
    test.query_params["run"] = RUN_ID
    test.query_params["start"], test.query_params["end"] = WINDOW
    return test


def test_matrix_page_from_url(app, matrix_workspace):
    app.query_params["src"], app.query_params["dst"] = "007", "7"
    app.run()
    app.switch_page("pages/4_Device_pairs.py").run()
    assert not app.exception
    assert not app.error
    expected = _expected_cells(matrix_workspace)
    sources = expected.index.get_level_values("src").nunique()
    destinations = expected.index.get_level_values("dst").nunique()
    assert any(f"{sources} of {sources} sources and {destinations} of "
               f"{destinations} destinations" in c.value for c in app.caption)
    spec = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["yaxis"]["categoryarray"][0] == "007"
    assert spec["data"][0]["colorbar"]["title"]["text"] == "events"

    heading = [t.value for t in app.text if "→" in t.value]
    assert heading == ["007 → 7, 2026-03-01 01:40 to 2026-03-01 01:50 UTC"]
    events = app.dataframe[-1].value
    assert len(events) == STORED_EVENTS
    assert set(events["src"]) == {"007"}
    assert set(events["dst"]) == {"7"}


def test_matrix_page_evidence_colour(app):
    app.run()
    app.switch_page("pages/4_Device_pairs.py").run()
    app.radio(key="matrix_colour").set_value("evidence").run()
    assert not app.exception
    spec = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["colorbar"]["title"]["text"] == "evidence<br>-log10 p"
    assert not [t for t in app.text if "→" in t.value]


def test_matrix_page_change_pick_sets_url(app):
    app.run()
    app.switch_page("pages/4_Device_pairs.py").run()
    table = app.dataframe[0].value
    picker = [box for box in app.selectbox if box.label.startswith("Show the stored")]
    picker[0].set_value(0).run()
    assert app.query_params["src"] == str(table.loc[0, "src"])
    assert app.query_params["dst"] == str(table.loc[0, "dst"])


def test_fixture_pairs_in_matrix(matrix_workspace):
    matrix = pair_views.pair_matrix(matrix_workspace, RUN_ID, 1, *_window())
    for src, dst in PAIRS:
        r, c = matrix.sources.index(src), matrix.destinations.index(dst)
        assert matrix.pairs[r, c] == 1
