"""Device names carrying HTML, script and Markdown, from the file to the browser.

The names are stored verbatim, and every page shows them as literal text: the
dashboard in headless Chromium must show the text `<img src=x onerror=alert(1)>`,
create no such image and open no dialog.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPOSITORY, incident_page
from test_browser import _grid_column, _streamlit, _wait_idle, browser, page  # noqa: F401

from core import store, views
from core.config import ModelConfig, RunConfig, SearchConfig, StreamConfig
from core.ingest import IngestOptions, ingest_file
from core.pipeline import run_pipeline
from core.store import Workspace

FIXTURES = REPOSITORY / "tests" / "fixtures" / "ingest"
SCRIPT = "<img src=x onerror=alert(1)>"
MARKDOWN = "plc-**bold**"
BOLD = "<b>pump</b>"
HOSTILE = [SCRIPT, MARKDOWN, BOLD]
TIMEOUT = 60


def _write_hostile_traffic(path: Path) -> None:
    """Each hostile name polls hmi-1 for 40 minutes; the script name floods it at 08:30."""
    rows = ["ts,src,dst,bytes"]
    for s in range(0, 2400, 10):
        stamp = f"2024-03-01T08:{s // 60:02d}:{s % 60:02d}Z"
        rows += [f'{stamp},"{name}",hmi-1,64' for name in HOSTILE]
    for i in range(300):
        rows.append(f'2024-03-01T08:30:{i % 60:02d}Z,"{SCRIPT}",hmi-1,1500')
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def hostile_workspace(tmp_path_factory) -> Workspace:
    folder = tmp_path_factory.mktemp("hostile")
    _write_hostile_traffic(folder / "traffic.csv")
    workspace = Workspace.create(folder / "ws")
    ingest_file(workspace, folder / "traffic.csv", IngestOptions("events"))
    config = RunConfig(
        stream=StreamConfig(bin_seconds=60, scales=(1,)),
        model=ModelConfig(hidden=8, dilations=(1, 2), own_lag=2, epochs=5, patience=3),
        search=SearchConfig(null_shifts=2),
        reference_end="2024-03-01T08:20:00Z",
    )
    run_pipeline(workspace, config, run_id="run")
    return workspace


def test_hostile_names_stored_verbatim(tmp_path):
    workspace = Workspace.create(tmp_path / "ws")
    ingest_file(workspace, FIXTURES / "hostile_names.csv", IngestOptions("events"))
    stored = store.query(workspace.store_path, "SELECT src FROM events ORDER BY t")

    assert stored["src"].tolist() == HOSTILE


def test_no_unsafe_html_in_pages():
    sources = [REPOSITORY / "app.py", *sorted((REPOSITORY / "pages").rglob("*.py"))]
    for path in sources:
        text = path.read_text()
        assert "unsafe_allow_html" not in text, path
        assert not re.search(r"\bst\.html\(", text), path
        assert "components.html" not in text, path


def test_hostile_incident_found(hostile_workspace):
    incidents = views.incidents(hostile_workspace, "run")
    members = views.incident_members(hostile_workspace, "run",
                                     incidents["incident_id"].iloc[0])

    assert SCRIPT in set(members["device"])


def test_drilldown_shows_names_literally(hostile_workspace, monkeypatch):
    incident_id = views.incidents(hostile_workspace, "run")["incident_id"].iloc[0]
    app = incident_page(hostile_workspace, "run", incident_id, monkeypatch, TIMEOUT)
    subgraph = json.loads(app.get("plotly_chart")[0].proto.spec)
    labels = [text for trace in subgraph["data"] for text in trace.get("text", [])]

    assert not app.exception
    assert SCRIPT in set(app.dataframe[0].value["device"])
    assert any(SCRIPT in text.value for text in app.text)
    assert "&lt;img src=x onerror=alert(1)&gt;" in labels
    assert SCRIPT not in labels


def test_heatmap_labels_escaped(hostile_workspace):
    matrix = views.heatmap_matrix(hostile_workspace, "run", 1)
    from core import plots

    figure = plots.heatmap_figure(matrix, views.member_cells(hostile_workspace, "run"),
                                  views.incidents(hostile_workspace, "run"))
    rows = list(figure.layout.yaxis.categoryarray)
    markers = figure.data[1]
    hover = " ".join(list(markers.y) + list(markers.text))

    assert "&lt;b&gt;pump&lt;/b&gt;" in rows
    assert MARKDOWN in rows
    assert BOLD not in rows
    assert "&lt;img src=x onerror=alert(1)&gt;" in hover
    assert SCRIPT not in hover


@pytest.fixture(scope="module")
def hostile_server(hostile_workspace, tmp_path_factory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with _streamlit(hostile_workspace.root, log_path) as url:
        yield url


@pytest.mark.browser
def test_browser_runs_no_script(hostile_server, page, hostile_workspace):  # noqa: F811
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    incident_id = views.incidents(hostile_workspace, "run")["incident_id"].iloc[0]

    page.goto(f"{hostile_server}/Incident?run=run&incident={incident_id}")
    grid = page.get_by_test_id("stDataFrame").first
    grid.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    _wait_idle(page)
    members = _grid_column(grid, "device")
    literal = page.get_by_text(SCRIPT, exact=False).first
    subgraph_labels = page.locator(".js-plotly-plot text").all_text_contents()

    page.goto(f"{hostile_server}/Heatmap?run=run")
    page.locator(".js-plotly-plot").first.wait_for()
    _wait_idle(page)
    ticks = page.locator(".js-plotly-plot .ytick text").all_text_contents()

    assert SCRIPT in members
    assert literal.is_visible()
    assert SCRIPT in subgraph_labels
    assert BOLD in ticks
    assert MARKDOWN in ticks
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("b", has_text="pump").count() == 0
    assert dialogs == []
