"""The incident workflow in headless Chromium: a status that survives a reload.

Starts `streamlit run app.py` on a free loopback port against a freshly built fixture
run, because these tests write the analyst file. An exported HTML report is opened
from disk with every non-file request aborted, to show it draws offline. Screenshots
go to test-artifacts/screenshots/. Run with `pytest -m browser tests/app`.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import pytest
from fixture_run import INCIDENTS, RUN_ID, build_fixture_workspace
from test_pairs_page import WINDOW, pairs_workspace  # noqa: F401 (a fixture)
from test_browser import (  # noqa: F401 (browser is a fixture)
    PAGE_TIMEOUT_MS,
    SCREENSHOTS,
    TALL_VIEWPORT,
    _screenshot,
    _streamlit,
    _wait_idle,
    browser,
)

from core import plots, report, views
from core.store import incident_statuses

pytestmark = pytest.mark.browser

OWNER = "<i>ana</i> =1+1"


@pytest.fixture(scope="module")
def fresh_workspace(tmp_path_factory):
    return build_fixture_workspace(tmp_path_factory.mktemp("workflow") / "workspace")


@pytest.fixture(scope="module")
def server(fresh_workspace, tmp_path_factory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with _streamlit(fresh_workspace.root, log_path) as url:
        yield url


@pytest.fixture
def page(browser):  # noqa: F811
    context = browser.new_context(viewport=TALL_VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    yield tab
    context.close()


def _status_line(page) -> str:
    line = page.get_by_test_id("stText").filter(has_text="Status: ").first
    line.wait_for()
    return line.inner_text().strip()


def _wait_incident(page, incident_id: str) -> None:
    page.get_by_test_id("stHeading").filter(has_text=incident_id).first.wait_for()
    page.get_by_test_id("stDataFrame").first.wait_for()
    _wait_idle(page)


def test_url_opens_drilldown(server, page):
    planted = INCIDENTS[2]
    incident_id = planted["incident_id"]
    page.goto(f"{server}/Incident?run={RUN_ID}&incident={incident_id}")
    _wait_incident(page, incident_id)
    _screenshot(page, "workflow-drilldown-from-url")
    assert _status_line(page) == "Status: new"
    targets = page.get_by_test_id("stText").filter(has_text=planted["targets"][0])
    assert targets.count() >= 1
    query = parse_qs(urlparse(page.url).query)
    assert query["incident"] == [incident_id]
    assert query["run"] == [RUN_ID]
    assert not page.get_by_test_id("stException").count()


def test_home_url_opens_drilldown(server, page):
    incident_id = INCIDENTS[0]["incident_id"]
    page.goto(f"{server}/?run={RUN_ID}&incident={incident_id}")
    page.wait_for_url("**/Incident?**")
    _wait_incident(page, incident_id)
    query = parse_qs(urlparse(page.url).query)
    assert query["incident"] == [incident_id]

    # The sidebar link leads home and stays there.
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="app").click()
    page.get_by_role("heading", name="Incidents, ranked").wait_for()
    _wait_idle(page)
    assert "/Incident" not in page.url
    assert "incident" not in parse_qs(urlparse(page.url).query)


def test_status_kept_after_reload(server, page, fresh_workspace):
    incident_id = INCIDENTS[1]["incident_id"]
    page.goto(f"{server}/Incident?run={RUN_ID}&incident={incident_id}")
    _wait_incident(page, incident_id)

    form = page.get_by_test_id("stForm")
    form.get_by_role("combobox", name="Status").click()
    page.get_by_role("option", name="acknowledged").click()
    form.get_by_role("textbox", name="Owner").fill(OWNER)
    form.get_by_role("textbox", name="Notes").fill("checked with the line lead")
    form.get_by_role("button", name="Save").click()
    page.get_by_text("Saved.").wait_for()
    _wait_idle(page)
    _screenshot(page, "workflow-status-saved")
    assert _status_line(page) == f"Status: acknowledged  ·  owner: {OWNER}"

    page.reload()
    _wait_incident(page, incident_id)
    _screenshot(page, "workflow-status-after-reload")
    assert _status_line(page) == f"Status: acknowledged  ·  owner: {OWNER}"
    notes = page.get_by_test_id("stForm").get_by_role("textbox", name="Notes")
    assert notes.input_value() == "checked with the line lead"
    stored = incident_statuses(fresh_workspace).set_index("incident_id")
    assert stored.loc[incident_id, "owner"] == OWNER
    assert not page.get_by_test_id("stException").count()


def test_html_report_draws_offline(page, fresh_workspace):
    incident_id = INCIDENTS[1]["incident_id"]
    row = views.incident(fresh_workspace, RUN_ID, incident_id)
    members = views.incident_members(fresh_workspace, RUN_ID, incident_id)
    edges = views.context_edges(fresh_workspace, RUN_ID, incident_id)
    series = views.pair_series(fresh_workspace, RUN_ID, *INCIDENTS[1]["pairs"][0])
    figures = [
        ("Subgraph", plots.subgraph_figure(members, edges)),
        ("Pair", plots.series_figure(series, "pair", "weight", row["start"],
                                     row["end"])),
    ]
    path = SCREENSHOTS.parent / "incident-report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.incident_html(row, "summary", members, figures),
                    encoding="utf-8")

    requested = []
    page.route("**/*", lambda route: (
        route.continue_() if route.request.url.startswith("file:")
        else (requested.append(route.request.url), route.abort())))
    page.goto(path.as_uri())
    page.wait_for_function(
        "() => document.querySelectorAll('.plotly-graph-div .main-svg').length >= 2")
    _screenshot(page, "workflow-html-report")
    assert requested == []
    assert page.get_by_text("<b>plc-07</b>").count() >= 1


@pytest.fixture(scope="module")
def pairs_server(pairs_workspace, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with _streamlit(pairs_workspace.root, log_path) as url:
        yield url


def _metric_value(page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(has_text=label).first
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


def test_pairs_and_model_pages(pairs_server, page):
    start, end = WINDOW
    page.goto(f"{pairs_server}/Device_pairs?run={RUN_ID}&start={start}&end={end}")
    page.get_by_test_id("stDataFrame").first.wait_for()
    _wait_idle(page)
    _screenshot(page, "workflow-device-pairs")
    for change in ("New", "Missing", "Surging"):
        assert _metric_value(page, f"{change} pairs") == "1"
    query = parse_qs(urlparse(page.url).query)
    assert query["start"] == [start]
    assert query["end"] == [end]

    page.goto(f"{pairs_server}/Model?run={RUN_ID}")
    page.locator(".js-plotly-plot").nth(1).wait_for()
    _wait_idle(page)
    _screenshot(page, "workflow-model")
    assert _metric_value(page, "Reference elements") == "1,104"
    assert not page.get_by_test_id("stException").count()
