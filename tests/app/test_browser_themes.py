"""Every dashboard page in headless Chromium, in the light and the dark theme.

One server serves the Device pairs fixture run, with a maintenance window over one
incident and another incident accepted as normal. The dashboard follows the
browser's colour scheme (`.streamlit/config.toml` defines a light and a dark
theme), so each theme is a browser context with that `color_scheme`. Each page is
checked for what it shows and saved as
test-artifacts/screenshots/themes/<theme>-<page>.png. A click on a matrix cell is
checked in the light theme. Run with `pytest -m browser tests/app`.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import pytest
from fixture_run import INCIDENTS, RUN_ID
from test_browser import (  # noqa: F401 (browser is a fixture)
    PAGE_TIMEOUT_MS,
    SCREENSHOTS,
    TALL_VIEWPORT,
    _grid_column,
    _incident_labels,
    _metric_value,
    _run_query,
    _streamlit,
    _wait_drilldown,
    _wait_idle,
    browser,
)
from test_pairs_page import (  # noqa: F401 (pairs_workspace is a fixture)
    NEW_PAIR,
    STORED_EVENTS,
    WINDOW,
    pairs_workspace,
)

from core import views
from core.accepted import accept_incident
from core.maintenance import add_maintenance_window

pytestmark = pytest.mark.browser

THEMES = ("light", "dark")
VIEWPORT = {"width": 1400, "height": 1400}
THEME_SHOTS = SCREENSHOTS / "themes"
FIRST, SECOND, THIRD = (incident["incident_id"] for incident in INCIDENTS)
# backgroundColor of each theme in .streamlit/config.toml, as the browser computes it.
BACKGROUNDS = {"light": "rgb(255, 255, 255)", "dark": "rgb(14, 17, 23)"}


@pytest.fixture(scope="module")
def feedback_workspace(pairs_workspace):  # noqa: F811
    add_maintenance_window(pairs_workspace, "2026-03-01T01:50", "2026-03-01T01:52",
                           ["ws-11"], "laptop <b>reimaged</b>")
    row = views.incident(pairs_workspace, RUN_ID, FIRST)
    members = views.incident_members(pairs_workspace, RUN_ID, FIRST)
    accept_incident(pairs_workspace, RUN_ID, FIRST, members, row["start"],
                    row["end"], "ana")
    return pairs_workspace


@pytest.fixture(scope="module")
def server(feedback_workspace, tmp_path_factory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with _streamlit(feedback_workspace.root, log_path) as url:
        yield url


@pytest.fixture(params=THEMES)
def themed(request, server) -> tuple[str, str]:
    return request.param, server


@pytest.fixture
def page(browser, themed):  # noqa: F811
    context = browser.new_context(viewport=VIEWPORT, color_scheme=themed[0])
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    yield tab
    context.close()


def _shot(page, theme: str, name: str) -> None:
    THEME_SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(THEME_SHOTS / f"{theme}-{name}.png"), full_page=True)


def _background(page) -> str:
    return page.evaluate(
        "() => getComputedStyle(document.querySelector(\"[data-testid='stApp']\"))"
        ".backgroundColor")


def _wait_charts(page) -> None:
    _wait_idle(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"[data-testid='stPlotlyChart']\")]"
        ".every((chart) => chart.querySelector('.main-svg'))")


def test_home_themed(themed, page):
    theme, url = themed
    page.goto(f"{url}/?run={RUN_ID}")
    page.get_by_role("heading", name="Incidents, ranked").wait_for()
    grid = page.get_by_test_id("stDataFrame")
    grid.wait_for()
    _wait_idle(page)
    _shot(page, theme, "home")
    assert _background(page) == BACKGROUNDS[theme]
    assert sorted(_grid_column(grid, "incident_id")) == sorted([FIRST, SECOND])
    toggle = page.get_by_text("Show during maintenance (1)")
    assert toggle.count() == 1
    assert not page.get_by_test_id("stException").count()


def test_heatmap_themed(themed, page):
    theme, url = themed
    page.goto(f"{url}/Heatmap?run={RUN_ID}")
    page.locator(".js-plotly-plot").first.wait_for()
    _wait_charts(page)
    _shot(page, theme, "heatmap")
    assert sorted(_incident_labels(page)) == sorted([FIRST, SECOND])
    assert _metric_value(page, "Incidents") == "2"
    assert not page.get_by_test_id("stException").count()


def test_incident_themed(themed, page, feedback_workspace):
    theme, url = themed
    page.goto(f"{url}/Incident?run={RUN_ID}&incident={THIRD}")
    _wait_drilldown(page)
    _shot(page, theme, "incident")
    assert page.get_by_text("During maintenance: window 1").count() == 1
    assert page.get_by_text("laptop <b>reimaged</b>").count() == 1
    members = page.get_by_test_id("stDataFrame").first
    roles = _grid_column(members, "role")
    devices = _grid_column(members, "device")
    shown = sorted(d for r, d in zip(roles, devices) if r == "device")
    assert shown == sorted(INCIDENTS[2]["devices"])
    assert not page.get_by_test_id("stException").count()


def test_suppressions_themed(themed, page):
    theme, url = themed
    page.set_viewport_size(TALL_VIEWPORT)
    page.goto(f"{url}/Suppressions?run={RUN_ID}")
    page.get_by_role("heading", name="Accepted as the new normal").wait_for()
    page.get_by_test_id("stDataFrame").last.wait_for()
    _wait_idle(page)
    _shot(page, theme, "suppressions")
    assert _metric_value(page, "Maintenance windows") == "1"
    grids = page.get_by_test_id("stDataFrame")
    assert _grid_column(grids.first, "reason") == ["laptop <b>reimaged</b>"]
    assert _grid_column(grids.last, "incident_id") == [FIRST]
    assert not page.get_by_test_id("stException").count()


def test_device_pairs_themed(themed, page):
    theme, url = themed
    start, end = WINDOW
    page.goto(f"{url}/Device_pairs?run={RUN_ID}&start={start}&end={end}")
    page.locator(".js-plotly-plot").first.wait_for()
    _wait_charts(page)
    _shot(page, theme, "device-pairs")
    for change in ("New", "Missing", "Surging"):
        assert _metric_value(page, f"{change} pairs") == "1"
    rows = page.evaluate(
        "() => document.querySelector('.js-plotly-plot').layout.yaxis.categoryarray")
    assert NEW_PAIR[0] in rows
    assert not page.get_by_test_id("stException").count()


def test_model_themed(themed, page, feedback_workspace):
    theme, url = themed
    page.goto(f"{url}/Model?run={RUN_ID}")
    page.locator(".js-plotly-plot").nth(1).wait_for()
    _wait_charts(page)
    _shot(page, theme, "model")
    stored = _run_query(
        feedback_workspace, RUN_ID,
        "SELECT count(*) FROM elements e JOIN bins b ON b.scale = e.scale AND "
        "b.bin = e.bin WHERE b.period = 'calibration' AND e.scale = 1 "
        "AND e.p_value IS NOT NULL")[0][0]
    assert _metric_value(page, "Reference elements") == f"{stored:,}"
    assert not page.get_by_test_id("stException").count()


def test_matrix_click_shows_events(themed, page):
    theme, url = themed
    if theme != "light":
        pytest.skip("the click is the same in both themes; checked once")
    start, end = WINDOW
    page.goto(f"{url}/Device_pairs?run={RUN_ID}&start={start}&end={end}")
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for()
    _wait_charts(page)
    index = page.evaluate(
        "(pair) => document.querySelector('.js-plotly-plot').data[1].customdata"
        ".findIndex((row) => row[0] === pair[0] && row[1] === pair[1])",
        list(NEW_PAIR))
    assert index >= 0, f"no matrix marker carries the pair {NEW_PAIR}"
    point = chart.locator(".scatterlayer path.point").nth(index)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_role("heading", name="Stored events").wait_for()
    _wait_idle(page)
    _shot(page, theme, "device-pairs-clicked")
    query = parse_qs(urlparse(page.url).query)
    assert query["src"] == [NEW_PAIR[0]]
    assert query["dst"] == [NEW_PAIR[1]]
    heading = page.get_by_test_id("stText").filter(has_text="→").first
    assert heading.inner_text().startswith(f"{NEW_PAIR[0]} → {NEW_PAIR[1]}, ")
    # The events table can draw after the heading on a busy machine.
    page.get_by_text(f"of {STORED_EVENTS} events").wait_for()
    assert page.get_by_text(f"of {STORED_EVENTS} events").count() == 1
