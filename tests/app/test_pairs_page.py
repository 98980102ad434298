"""Device pairs page: new, missing and surging pairs, and the events behind one.

The fixture run is built and then edited so that, in bins 100 to 109 (01:40 to
01:50), one pair is new, one reference pair is silent but for two events and one
carries five times its expected events. The store gets the raw events of the new
pair.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import REPOSITORY
from fixture_run import ORIGIN, RUN_ID, build_fixture_workspace
from streamlit.testing.v1 import AppTest

from core import pair_views
from core.store import connect

TIMEOUT = 60
WINDOW = ("2026-03-01T01:40", "2026-03-01T01:50")
NEW_PAIR = ("ws-12", "=plc-01")
MISSING_PAIR = ("plc-02", "valve-05")
SURGING_PAIR = ("hmi-03", "plc-01")
NEW_EVENTS_PER_BIN = 7.0
STORED_EVENTS = 600


@pytest.fixture(scope="module")
def pairs_workspace(tmp_path_factory):
    workspace = build_fixture_workspace(tmp_path_factory.mktemp("pairs") / "workspace")
    window = "scale = 1 AND bin BETWEEN 100 AND 109"
    with duckdb.connect(str(workspace.run_path(RUN_ID))) as con:
        # Silent but for two events in the last bin, as at the edge of a window.
        con.execute(f"UPDATE elements SET observed = CASE bin WHEN 109 THEN 2 ELSE 0 "
                    f"END WHERE {window} AND kind = 'pair' AND device = ? AND peer = ?",
                    list(MISSING_PAIR))
        con.execute(f"UPDATE elements SET observed = 5 * expected, p_value = 1e-3 "
                    f"WHERE {window} AND kind = 'pair' AND device = ? AND peer = ?",
                    list(SURGING_PAIR))
        for index in range(100, 110):
            con.execute(
                "INSERT INTO elements VALUES ('pair', ?, ?, NULL, 1, ?, ?, 0.1, ?, ?, "
                "1e-4, 'element')",
                [*NEW_PAIR, index, NEW_EVENTS_PER_BIN, NEW_EVENTS_PER_BIN - 0.1,
                 NEW_EVENTS_PER_BIN - 0.1],
            )
    start = ORIGIN + pd.Timedelta(minutes=100)
    times = start + pd.to_timedelta(np.arange(STORED_EVENTS) * 0.5, unit="s")
    events = pd.DataFrame({"t": times, "src": NEW_PAIR[0], "dst": NEW_PAIR[1],
                           "weight": 64.0, "protocol": "=HYPERLINK(\"x\")"})
    with connect(workspace.store_path) as con:
        con.register("frame", events)
        con.execute("INSERT INTO events BY NAME SELECT * FROM frame")
    return workspace


@pytest.fixture
def app(pairs_workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(pairs_workspace.root))
    monkeypatch.chdir(REPOSITORY)
    test = AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)
    test.query_params["run"] = RUN_ID
    test.query_params["start"], test.query_params["end"] = WINDOW
    return test


def _metric(app: AppTest, label: str) -> str:
    return [m.value for m in app.metric if m.label == label][0]


def test_pair_changes_in_window(pairs_workspace):
    start, end = (pd.Timestamp(t, tz="UTC") for t in WINDOW)
    changes = pair_views.pair_changes(pairs_workspace, RUN_ID, 1, start, end)
    by_change = {row.change: (row.src, row.dst) for row in changes.itertuples()}
    assert by_change == {"new": NEW_PAIR, "missing": MISSING_PAIR,
                         "surging": SURGING_PAIR}
    new = changes[changes["change"] == "new"].iloc[0]
    assert new["observed"] == 10 * NEW_EVENTS_PER_BIN
    assert new["active_bins"] == 10
    missing = changes[changes["change"] == "missing"].iloc[0]
    assert missing["observed"] == 2
    assert missing["active_bins"] == 1
    assert missing["expected"] * pair_views.MISSING_SHARE >= 2


def test_pair_changes_outside_window(pairs_workspace):
    start = pd.Timestamp("2026-03-01T01:00", tz="UTC")
    end = pd.Timestamp("2026-03-01T01:20", tz="UTC")
    assert pair_views.pair_changes(pairs_workspace, RUN_ID, 1, start, end).empty


def test_pairs_page_counts(app):
    app.run()
    app.switch_page("pages/4_Device_pairs.py").run()
    assert not app.exception
    assert not app.error
    assert _metric(app, "New pairs") == "1"
    assert _metric(app, "Missing pairs") == "1"
    assert _metric(app, "Surging pairs") == "1"
    table = app.dataframe[0].value
    assert list(table["change"]) == ["new", "missing", "surging"]
    assert list(table["dst"]) == [NEW_PAIR[1], MISSING_PAIR[1], SURGING_PAIR[1]]


def test_pairs_page_empty_window(app):
    app.query_params["start"], app.query_params["end"] = (
        "2026-03-01T01:00", "2026-03-01T01:20")
    app.run()
    app.switch_page("pages/4_Device_pairs.py").run()
    assert not app.exception
    assert _metric(app, "New pairs") == "0"
    assert any("No pair is new" in info.value for info in app.info)


def test_pair_events_limited(pairs_workspace):
    start, end = (pd.Timestamp(t, tz="UTC") for t in WINDOW)
    rows, total = pair_views.pair_events(pairs_workspace, *NEW_PAIR, start, end)
    assert total == STORED_EVENTS
    assert len(rows) == pair_views.MAX_EVENT_ROWS
    assert rows["t"].is_monotonic_increasing
    assert set(rows["dst"]) == {NEW_PAIR[1]}
    quiet, none = pair_views.pair_events(pairs_workspace, *MISSING_PAIR, start, end)
    assert none == 0
    assert quiet.empty


def test_pairs_page_shows_events(app):
    app.run()
    app.switch_page("pages/4_Device_pairs.py").run()
    picker = [box for box in app.selectbox if box.label.startswith("Show the stored")]
    picker[0].set_value(0).run()
    assert not app.exception
    heading = [t.value for t in app.text if "→" in t.value]
    assert heading == [f"{NEW_PAIR[0]} → {NEW_PAIR[1]}, 2026-03-01 01:40 to "
                       "2026-03-01 01:50 UTC"]
    events = app.dataframe[1].value
    assert len(events) == pair_views.MAX_EVENT_ROWS
    assert set(events["protocol"]) == {"=HYPERLINK(\"x\")"}
    assert any(f"{pair_views.MAX_EVENT_ROWS} of {STORED_EVENTS}" in c.value
               for c in app.caption)


def test_pairs_page_silent_pair(app):
    app.run()
    app.switch_page("pages/4_Device_pairs.py").run()
    picker = [box for box in app.selectbox if box.label.startswith("Show the stored")]
    picker[0].set_value(1).run()
    assert not app.exception
    assert any("no event for this pair" in info.value for info in app.info)
