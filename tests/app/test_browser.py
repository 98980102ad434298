"""The dashboard in headless Chromium: what it shows and where a click leads.

Starts `streamlit run app.py` on a free loopback port against a workspace, then
drives Debian's Chromium with Playwright. The handmade fixture run, a run published
by the real pipeline and a workspace without a run each get their own server.
Screenshots go to test-artifacts/screenshots/. Run with `pytest -m browser tests/app`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import duckdb
import pytest
from conftest import REPOSITORY, ingest_sample_plant

from core import synth
from core.views import RUN_ARGS_ENV

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
HOST = "127.0.0.1"
SERVER_START_SECONDS = 60
PAGE_TIMEOUT_MS = 30_000
PIPELINE_TIMEOUT_MS = 180_000
VIEWPORT = {"width": 1400, "height": 1000}
# The app scrolls inside its own container, so a tall window shows the whole page.
TALL_VIEWPORT = {"width": 1400, "height": 3200}
SCREENSHOTS = REPOSITORY / "test-artifacts" / "screenshots"
TINY_PLANT = synth.PlantConfig(seed=3, field_devices=8, hours=4)
# Fewer epochs than the CLI default of 100 shorten the button test.
TINY_RUN_ARGS = "--epochs 10"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health in time")


@contextlib.contextmanager
def _streamlit(root: Path, log_path: Path, extra_env: dict | None = None) -> Iterator[str]:
    """Serve the dashboard on `root` from a loopback port; yield its base URL."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    port = _free_port()
    environment = {**os.environ, "TGLOC_WORKSPACE": str(root), **(extra_env or {})}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py",
             "--server.headless", "true", "--server.port", str(port),
             "--server.address", HOST, "--browser.gatherUsageStats", "false"],
            cwd=REPOSITORY, env=environment, stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{HOST}:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(workspace, tmp_path_factory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with _streamlit(workspace.root, log_path) as url:
        yield url


@pytest.fixture(scope="module")
def pipeline_server(pipeline_workspace, tmp_path_factory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with _streamlit(pipeline_workspace.root, log_path) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    yield tab
    context.close()


def _run_query(workspace, run_id: str, sql: str, params: list | None = None) -> list:
    with duckdb.connect(str(workspace.run_path(run_id)), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def _stored_incident_ids(workspace, run_id) -> list[str]:
    rows = _run_query(
        workspace, run_id, "SELECT incident_id FROM incidents ORDER BY rank"
    )
    return [incident_id for (incident_id,) in rows]


def _stored_member_devices(workspace, run_id, incident_id) -> list[str]:
    rows = _run_query(
        workspace, run_id,
        "SELECT device FROM incident_members WHERE incident_id = ? AND role = 'device'",
        [incident_id],
    )
    return sorted(device for (device,) in rows)


def _screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _metric_value(page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(has_text=label).first
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


def _wait_idle(page) -> None:
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached")


def _grid_column(grid, name: str) -> list[str]:
    """Return one column's cell text from a dataframe's accessible table.

    The grid draws on a canvas, and its hidden table carries the cell text.
    """
    headers = grid.locator("table th[role='columnheader']")
    headers.filter(has_text=name).first.wait_for(state="attached")
    header = headers.all_text_contents()
    column = header.index(name) + 1
    return grid.locator(
        f"table td[role='gridcell'][aria-colindex='{column}']"
    ).all_text_contents()


def _incident_labels(page) -> list[str]:
    """Return the heatmap's annotation texts other than the training period label."""
    texts = page.locator(".js-plotly-plot .annotation-text").all_text_contents()
    return [text for text in texts if not text.startswith("training period")]


def _heatmap_image_size(page) -> dict:
    """Return the pixel size of the heatmap's drawn image and the trace's cell counts.

    Plotly.js draws a heatmap on evenly spaced columns as one pixel per cell. It
    draws other heatmaps at the plot's size, which for a page of 200 x 917 cells
    took about a second longer in headless Chromium on the development machine.
    """
    return page.evaluate(
        "async () => { const plot = document.querySelector('.js-plotly-plot'); "
        "const node = plot.querySelector('.heatmaplayer image'); "
        "const image = new Image(); image.src = node.getAttribute('href') || "
        "node.getAttribute('xlink:href'); await image.decode(); "
        "const trace = plot.data[0]; return {width: image.naturalWidth, "
        "height: image.naturalHeight, columns: trace.x.length - 1, "
        "rows: trace.y.length}; }"
    )


def _heatmap_margins(page) -> dict:
    """Return the heatmap's margins as the figure sets them and as Plotly.js drew them.

    Plotly.js widens margins too narrow for the labels and then draws the figure
    again, so equal margins mean that the heatmap was drawn once.
    """
    return page.evaluate(
        "() => { const plot = document.querySelector('.js-plotly-plot'); "
        "const given = plot.layout.margin, drawn = plot._fullLayout._size; "
        "return {given: [given.l, given.r, given.t, given.b], "
        "drawn: [drawn.l, drawn.r, drawn.t, drawn.b]}; }"
    )


def _click_incident_marker(page, incident_id: str) -> None:
    """Click the heatmap at a click-layer marker of a cell that `incident_id` covers.

    Plotly.js draws one marker of the click layer, so the click goes to the plot
    area at the marker's position, as an analyst's click on the cell would.
    """
    position = page.evaluate(
        "(id) => { const plot = document.querySelector('.js-plotly-plot'); "
        "const index = plot.data[1].text.findIndex((text) => text.endsWith(`<br>incident ${id}`)); "
        "if (index < 0) return null; "
        "const point = plot.calcdata[1][index], layout = plot._fullLayout; "
        "return {x: layout.xaxis.c2p(point.x), y: layout.yaxis.c2p(point.y)}; }",
        incident_id,
    )
    assert position is not None, f"no heatmap marker carries incident {incident_id}"
    # Playwright scrolls the position into view first, because the incident's row may
    # be below the fold when its device ranks low by peak evidence.
    page.locator(".js-plotly-plot .draglayer .nsewdrag").first.click(position=position)


def _wait_drilldown(page) -> None:
    page.wait_for_url("**/Incident?**")
    _wait_idle(page)
    page.get_by_test_id("stDataFrame").first.wait_for()
    page.set_viewport_size(TALL_VIEWPORT)
    page.locator(".js-plotly-plot").last.wait_for()
    _wait_idle(page)
    # Charts further down draw after the first one, so wait until each has drawn.
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"[data-testid='stPlotlyChart']\")]"
        ".every((chart) => chart.querySelector('.main-svg'))"
    )


def test_home_lists_stored_incidents(server, page, workspace, run_id):
    page.goto(server)
    page.get_by_test_id("stMetric").filter(has_text="Incidents").wait_for()
    _wait_idle(page)
    stored = _stored_incident_ids(workspace, run_id)
    assert _metric_value(page, "Incidents") == str(len(stored))

    grid = page.get_by_test_id("stDataFrame")
    grid.wait_for()
    shown = _grid_column(grid, "incident_id")
    _screenshot(page, "home")
    assert shown == stored
    assert not page.get_by_test_id("stException").count()


def test_heatmap_outlines_incidents_and_opens_one(server, page, workspace, run_id):
    stored = _stored_incident_ids(workspace, run_id)
    page.goto(f"{server}/Heatmap?run={run_id}")
    page.locator(".js-plotly-plot").first.wait_for()
    _wait_idle(page)
    assert _metric_value(page, "Incidents") == str(len(stored))
    labels = _incident_labels(page)
    _screenshot(page, "heatmap")
    image = _heatmap_image_size(page)
    margins = _heatmap_margins(page)
    assert sorted(labels) == sorted(stored)
    assert (image["width"], image["height"]) == (image["columns"], image["rows"])
    assert margins["drawn"] == margins["given"]

    target = stored[0]
    _click_incident_marker(page, target)
    _wait_drilldown(page)
    _screenshot(page, "incident")
    query = parse_qs(urlparse(page.url).query)
    assert query["incident"] == [target]
    assert query["run"] == [run_id]
    assert not page.get_by_test_id("stException").count()


def test_pipeline_run_from_home_to_drilldown(pipeline_server, page, pipeline_workspace):
    run_id = pipeline_workspace.latest_run()
    stored = _stored_incident_ids(pipeline_workspace, run_id)
    page.goto(pipeline_server)
    page.get_by_test_id("stMetric").filter(has_text="Incidents").wait_for()
    _wait_idle(page)
    assert _metric_value(page, "Incidents") == str(len(stored))
    if stored:
        grid = page.get_by_test_id("stDataFrame")
        grid.wait_for()
        assert _grid_column(grid, "incident_id") == stored
    _screenshot(page, "real-run-home")

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Heatmap").click()
    page.wait_for_url("**/Heatmap**")
    page.locator(".js-plotly-plot").first.wait_for()
    _wait_idle(page)
    assert _metric_value(page, "Incidents") == str(len(stored))
    labels = _incident_labels(page)
    _screenshot(page, "real-run-heatmap")
    assert sorted(labels) == sorted(stored)
    if not stored:
        pytest.skip("the pipeline run found no incident, so there is nothing to open")

    target = stored[0]
    _click_incident_marker(page, target)
    _wait_drilldown(page)
    _screenshot(page, "real-run-incident")
    query = parse_qs(urlparse(page.url).query)
    assert query["incident"] == [target]
    assert query["run"] == [run_id]
    members = page.get_by_test_id("stDataFrame").first
    roles = _grid_column(members, "role")
    devices = _grid_column(members, "device")
    # The grid renders only the rows in view, and device rows come first, so a
    # visible row of another role shows that every device row was read.
    stored_rows = _run_query(
        pipeline_workspace, run_id,
        "SELECT count(*) FROM incident_members WHERE incident_id = ?", [target],
    )[0][0]
    assert len(roles) == stored_rows or any(role != "device" for role in roles)
    shown = sorted(d for r, d in zip(roles, devices) if r == "device")
    assert shown == _stored_member_devices(pipeline_workspace, run_id, target)
    assert not page.get_by_test_id("stException").count()


@pytest.mark.slow
def test_run_button_publishes_run(browser, tmp_path):
    workspace = ingest_sample_plant(tmp_path / "workspace", TINY_PLANT)
    assert workspace.latest_run() is None
    log_path = tmp_path / "server.log"
    with _streamlit(workspace.root, log_path, {RUN_ARGS_ENV: TINY_RUN_ARGS}) as url:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(url)
            button = page.get_by_role("button", name="Run the pipeline")
            button.wait_for()
            _wait_idle(page)
            button.click()
            page.get_by_test_id("stProgress").wait_for()
            page.get_by_text("The run finished").wait_for(timeout=PIPELINE_TIMEOUT_MS)
            page.get_by_test_id("stMetric").filter(has_text="Incidents").wait_for()
            _wait_idle(page)
            _screenshot(page, "run-button-finished")

            run_id = workspace.latest_run()
            assert run_id is not None
            chooser = page.get_by_test_id("stSidebar").get_by_role("combobox", name="Run")
            assert chooser.input_value() == run_id
            stored = _stored_incident_ids(workspace, run_id)
            assert _metric_value(page, "Incidents") == str(len(stored))
            assert not page.get_by_test_id("stException").count()
        finally:
            context.close()
