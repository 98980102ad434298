"""The dashboard in headless Chromium: what it shows and where a click leads.

Starts `streamlit run app.py` on a free loopback port against the fixture workspace,
then drives Debian's Chromium with Playwright. Screenshots go to
test-artifacts/screenshots/. Run with `pytest -m browser tests/app`.
"""

from __future__ import annotations

import os
import shutil
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
from conftest import REPOSITORY

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
HOST = "127.0.0.1"
SERVER_START_SECONDS = 60
PAGE_TIMEOUT_MS = 30_000
SCREENSHOTS = REPOSITORY / "test-artifacts" / "screenshots"


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


@pytest.fixture(scope="module")
def server(workspace, tmp_path_factory) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    environment = {**os.environ, "TGLOC_WORKSPACE": str(workspace.root)}
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
def browser() -> Iterator:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    yield tab
    context.close()


def _stored_incident_ids(workspace, run_id) -> list[str]:
    with duckdb.connect(str(workspace.run_path(run_id)), read_only=True) as con:
        rows = con.execute("SELECT incident_id FROM incidents ORDER BY rank").fetchall()
    return [incident_id for (incident_id,) in rows]


def _screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _metric_value(page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(has_text=label).first
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


def _wait_idle(page) -> None:
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached")


def test_home_lists_stored_incidents(server, page, workspace, run_id):
    page.goto(server)
    page.get_by_test_id("stMetric").filter(has_text="Incidents").wait_for()
    _wait_idle(page)
    stored = _stored_incident_ids(workspace, run_id)
    assert _metric_value(page, "Incidents") == str(len(stored))

    grid = page.get_by_test_id("stDataFrame")
    grid.wait_for()
    # The grid draws on a canvas; its accessible table carries the cell text.
    header = grid.locator("table th[role='columnheader']").all_text_contents()
    column = header.index("incident_id") + 1
    shown = grid.locator(
        f"table td[role='gridcell'][aria-colindex='{column}']"
    ).all_text_contents()
    _screenshot(page, "home")
    assert shown == stored
    assert not page.get_by_test_id("stException").count()


def test_heatmap_outlines_incidents_and_opens_one(server, page, workspace, run_id):
    stored = _stored_incident_ids(workspace, run_id)
    page.goto(f"{server}/Heatmap?run={run_id}")
    page.locator(".js-plotly-plot").first.wait_for()
    _wait_idle(page)
    assert _metric_value(page, "Incidents") == str(len(stored))
    labels = page.locator(".js-plotly-plot .annotation-text").all_text_contents()
    _screenshot(page, "heatmap")
    assert sorted(labels) == sorted(stored)

    target = stored[0]
    index = page.evaluate(
        "(id) => document.querySelector('.js-plotly-plot').data[1].customdata"
        ".findIndex((row) => row[3] === id)",
        target,
    )
    assert index >= 0
    point = page.locator(".js-plotly-plot .scatterlayer path.point").nth(index)
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_url("**/Incident?**")
    _wait_idle(page)
    page.get_by_test_id("stDataFrame").wait_for()
    # The app scrolls inside its own container, so a tall window shows the whole page.
    page.set_viewport_size({"width": 1400, "height": 3200})
    page.locator(".js-plotly-plot").last.wait_for()
    _wait_idle(page)
    _screenshot(page, "incident")
    query = parse_qs(urlparse(page.url).query)
    assert query["incident"] == [target]
    assert query["run"] == [run_id]
    assert not page.get_by_test_id("stException").count()
