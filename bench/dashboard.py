"""Heatmap render time and bytes sent for a run of 2,000 devices x 10,080 bins.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python -m bench.dashboard

Publishes a run whose device evidence is a 2,000 x 10,080 score matrix (a week of
one-minute bins, `core.score_runs`), serves the dashboard with `streamlit run` on a
free loopback port, and opens the Heatmap page in headless Chromium (Playwright,
/usr/bin/chromium) with a browser profile on disk, as an analyst's browser has. One
load warms Streamlit's data cache and the browser's caches, then each measured load
opens the page in a new tab and times it until the Plotly heatmap has drawn its
image. The times are the browser's own, from the start of the navigation: a script
added to every page notes when the page title appeared (the frontend has started
and the script's first output arrived), when the largest websocket message, the one
that carries the figure, arrived, and when the heatmap's image entered the page.
These times split a load into the frontend's start, the server's part and the
browser's drawing. The same script counts the websocket bytes, and the browser's
resource timing the HTTP bytes (headers included, 0 for a file from its cache).
Prints one row per load and the median.

The bench also times a floor in the same way: a page of a title and a 2 x 2 Plotly
heatmap, served with the repository's Streamlit settings. Any page built on
Streamlit and Plotly takes at least that long in a new tab.

A second table times the Heatmap page opened from the sidebar of a dashboard that is
already open in the tab, as an analyst moves between pages. This table and the
third take their times in Python and count bytes through the Chrome DevTools
Protocol. Each measured switch goes to the home page, then clicks "Heatmap" and
waits for the drawn heatmap. The tab keeps the frontend and Plotly loaded, so this
time is Streamlit's page run, the transfer and the drawing. The figure is the one the tab received on its first visit,
so Streamlit's message cache in the tab replaces most of the transfer. A third table
therefore times new figures in the open tab: the next device pages (200 other
devices each), from the change of the page number until the new rows are drawn. The
Heatmap page loads the next device page into Streamlit's cache after sending its
figure, and each change waits for the script run before it to end, so these times
include no query on the run file.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from core.score_runs import RUN_ID, device_names, planted_scores, publish_scores

REPOSITORY = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
HOST = "127.0.0.1"
DEVICES = 2000
BINS = 10080
LOADS = 5
TARGET_SECONDS = 2.0
SERVER_START_SECONDS = 90
PAGE_TIMEOUT_MS = 120_000
VIEWPORT = {"width": 1400, "height": 1000}
# The heatmap trace draws its cells into one <image> inside the plot's heatmap layer.
TITLE_SHOWN = "() => !!document.querySelector(\"[data-testid='stHeading'] h1\")"
HEATMAP_DRAWN = (
    "() => !!document.querySelector("
    "\"[data-testid='stPlotlyChart'] .js-plotly-plot .heatmaplayer image\")"
)

# A script for every page: the milliseconds from the start of the navigation until
# the page title and the heatmap's image were first in the page, and the websocket's
# bytes with the arrival of its largest message.
MARKS = f"""(() => {{
  const marks = {{}};
  window.tglocMarks = marks;
  const note = () => {{
    const now = performance.now();
    if (marks.title === undefined && ({TITLE_SHOWN})()) marks.title = now;
    if (marks.drawn === undefined && ({HEATMAP_DRAWN})()) marks.drawn = now;
  }};
  new MutationObserver(note).observe(document, {{subtree: true, childList: true,
                                                 attributes: true}});
  // Streamlit's websocket: the bytes of each message and when the largest came.
  marks.websocket = 0;
  marks.largest = 0;
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {{
    constructor(...args) {{
      super(...args);
      this.addEventListener("message", (event) => {{
        const data = event.data;
        const size = data.byteLength ?? data.size ?? data.length;
        marks.websocket += size;
        if (size > marks.largest) {{
          marks.largest = size;
          marks.figure = performance.now();
        }}
      }});
    }}
  }};
}})();"""

# Bytes of the page and the files it loaded over HTTP, headers included. A file
# from the browser's cache counts 0.
HTTP_BYTES = (
    "() => performance.getEntriesByType('navigation').concat("
    "performance.getEntriesByType('resource'))"
    ".reduce((sum, entry) => sum + entry.transferSize, 0)"
)

# The floor of any page built on Streamlit and Plotly: its frontend and the Plotly
# chunk start in the new tab as they do for the Heatmap page.
FLOOR_PAGE = """import plotly.graph_objects as go
import streamlit as st

st.set_page_config(page_title="floor", layout="wide")
st.title("Floor")
st.plotly_chart(go.Figure(go.Heatmap(z=[[0, 1], [1, 0]])))
"""

# The label of the heatmap's first row, which changes with the device page, and a
# signature of the image of its cells: Plotly can redraw the axes before the cells, so
# a new page is drawn only when both changed.
FIRST_ROW = (
    "() => { const root = document.querySelector("
    "\"[data-testid='stPlotlyChart'] .js-plotly-plot\"); "
    "const tick = root && root.querySelector('.ytick text'); "
    "const image = root && root.querySelector('.heatmaplayer image'); "
    "const href = image ? (image.getAttribute('href') || "
    "image.getAttribute('xlink:href') || '') : ''; "
    "return tick && href ? tick.textContent + '|' + href.length + '|' + "
    "href.slice(Math.floor(href.length / 2), Math.floor(href.length / 2) + 64) : null; }"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=DEVICES,
                        help="devices (rows of the score matrix)")
    parser.add_argument("--bins", type=int, default=BINS,
                        help="one-minute bins (columns of the score matrix)")
    parser.add_argument("--loads", type=int, default=LOADS,
                        help="measured page loads after the warm-up load")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: Chromium not found at {CHROMIUM}; install Debian's chromium",
              file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="tgloc-bench-") as folder:
        began = time.perf_counter()
        scores = planted_scores(args.devices, args.bins, args.devices // 2,
                                args.bins // 2, args.bins // 2 + 30)
        workspace = publish_scores(Path(folder) / "ws", scores,
                                   device_names(args.devices))
        del scores
        built = time.perf_counter() - began
        print(f"run of {args.devices:,} devices x {args.bins:,} bins published in "
              f"{built:.1f} s")
        floor_script = Path(folder) / "floor.py"
        floor_script.write_text(FLOOR_PAGE, encoding="utf-8")
        load_before = os.getloadavg()
        with _browser(Path(folder) / "profile") as context:
            with _dashboard(workspace.root, Path(folder) / "floor.log",
                            floor_script) as url:
                floors = _new_tabs(context, url, args.loads)
            with _dashboard(workspace.root, Path(folder) / "server.log") as url:
                rows, switches, pages = _measure(context, url, args.loads)
        load_after = os.getloadavg()

    print("Heatmap page opened in a new tab:")
    _print_table(rows)
    print("Floor: a page of a title and a 2 x 2 Plotly heatmap, same server, in a new "
          "tab:")
    _print_table(floors)
    print("Heatmap page opened from the sidebar of the open dashboard:")
    _print_table(switches)
    print("Next device page in the open Heatmap page (a new figure):")
    _print_table(pages)
    print(f"load average (1 min) before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f}, on {os.cpu_count()} CPUs; "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    return 0


@contextlib.contextmanager
def _browser(profile: Path) -> Iterator:
    """Yield a headless Chromium context with a profile on disk, where it keeps
    its caches between tabs as an analyst's browser does."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, viewport=VIEWPORT,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )
        context.add_init_script(MARKS)
        try:
            yield context
        finally:
            context.close()


def _new_tabs(context, url: str, loads: int) -> list[dict]:
    """Time `loads` new-tab loads of `url` after one that warms the caches."""
    _load(context, url)
    return [{"load": number, **_load(context, url)} for number in range(1, loads + 1)]


def _measure(context, url: str, loads: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Time `loads` new-tab loads, sidebar switches and device pages of the Heatmap
    page."""
    # The first load warms Streamlit's cache and the browser's.
    rows = _new_tabs(context, f"{url}/Heatmap?run={RUN_ID}", loads)
    switches, pages = _switch(context, url, loads)
    return rows, switches, pages


def _switch(context, url: str, loads: int) -> tuple[list[dict], list[dict]]:
    """Open the dashboard in one tab, then time `loads` switches to the Heatmap page
    from the sidebar, each after a visit to the home page, and then `loads` changes
    to the next device page. The first switch, which loads Plotly into the tab, is
    not measured."""
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    session = context.new_cdp_session(page)
    counts = _count_bytes(session)
    rows = []
    try:
        page.goto(url)
        page.wait_for_function(TITLE_SHOWN, polling="raf")
        for number in range(loads + 1):
            _settle(page)
            page.get_by_test_id("stSidebarNav").get_by_role("link", name="app").click()
            page.wait_for_function(f"() => !({HEATMAP_DRAWN})()", polling="raf")
            _settle(page)
            counts.update(http=0, websocket=0, largest=0, largest_at=0.0)
            began = time.perf_counter()
            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Heatmap").click()
            page.wait_for_function(HEATMAP_DRAWN, polling="raf")
            seconds = time.perf_counter() - began
            _settle(page)
            if number:
                rows.append({"load": number, "seconds": seconds, "title_seconds": 0.0,
                             "figure_seconds": counts["largest_at"] - began,
                             "http": counts["http"], "websocket": counts["websocket"]})
        pages = []
        for number in range(1, loads + 1):
            first_row = page.evaluate(FIRST_ROW)
            counts.update(http=0, websocket=0, largest=0, largest_at=0.0)
            began = time.perf_counter()
            field = page.get_by_label("Device page (sorted by peak evidence)")
            field.fill(str(number + 1))
            field.press("Enter")
            page.wait_for_function(
                f"(before) => {{ const now = ({FIRST_ROW})(); return now !== null && "
                f"now.split('|')[0] !== before.split('|')[0] && "
                f"now.split('|').slice(1).join('|') !== before.split('|').slice(1).join('|'); }}",
                arg=first_row, polling="raf")
            seconds = time.perf_counter() - began
            _settle(page)
            pages.append({"load": number, "seconds": seconds, "title_seconds": 0.0,
                          "figure_seconds": counts["largest_at"] - began,
                          "http": counts["http"], "websocket": counts["websocket"]})
    finally:
        session.detach()
        page.close()
    return rows, pages


def _settle(page) -> None:
    """Wait until the script run ended and its last frames arrived."""
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached")
    page.wait_for_timeout(500)


def _count_bytes(session) -> dict:
    """Count the bytes a tab receives through its DevTools session.

    Returns:
        The running counts: http and websocket (bytes), largest (the largest
        websocket frame) and largest_at (when it arrived, perf_counter seconds).
    """
    counts = {"http": 0, "websocket": 0, "largest": 0, "largest_at": 0.0}

    def finished(event: dict) -> None:
        counts["http"] += int(event.get("encodedDataLength", 0))

    def frame(event: dict) -> None:
        response = event["response"]
        payload = response.get("payloadData", "")
        # Opcode 2 is a binary frame, which the protocol sends base64-encoded.
        if response.get("opcode") == 2:
            size = len(base64.b64decode(payload))
        else:
            size = len(payload.encode("utf-8"))
        counts["websocket"] += size
        if size > counts["largest"]:
            counts["largest"], counts["largest_at"] = size, time.perf_counter()

    session.on("Network.loadingFinished", finished)
    session.on("Network.webSocketFrameReceived", frame)
    session.send("Network.enable")
    return counts


def _load(context, url: str) -> dict:
    """Open `url` in a new tab and time it until the heatmap drew.

    The times are the browser's own, from the start of the navigation, and the
    bytes are counted in the page (`MARKS`, `HTTP_BYTES`). A DevTools session that
    counted them would copy each websocket frame to Playwright, which on two cores
    slows the page it measures.

    Returns:
        seconds (until drawn), title_seconds (until the page title showed),
        figure_seconds (until the largest websocket message arrived), http and
        websocket (bytes received).
    """
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        page.goto(url, wait_until="commit")
        page.wait_for_function(HEATMAP_DRAWN, polling="raf")
        # Messages still arriving after the draw belong to this load too.
        _settle(page)
        marks = page.evaluate("() => window.tglocMarks")
        http = int(page.evaluate(HTTP_BYTES))
    finally:
        page.close()
    return {"seconds": marks["drawn"] / 1000, "title_seconds": marks["title"] / 1000,
            "figure_seconds": marks["figure"] / 1000, "http": http,
            "websocket": int(marks["websocket"])}


def _print_table(rows: list[dict]) -> None:
    print(f"{'load':>6} {'seconds':>8} {'title in (s)':>13} {'figure in (s)':>14} "
          f"{'HTTP bytes':>11} {'websocket bytes':>16} {'total bytes':>12}")
    for row in rows:
        print(f"{row['load']:>6} {row['seconds']:>8.2f} {row['title_seconds']:>13.2f} "
              f"{row['figure_seconds']:>14.2f} "
              f"{row['http']:>11,} {row['websocket']:>16,} "
              f"{row['http'] + row['websocket']:>12,}")
    median = {key: statistics.median(row[key] for row in rows)
              for key in ("seconds", "title_seconds", "figure_seconds", "http",
                          "websocket")}
    seconds = median["seconds"]
    print(f"{'median':>6} {seconds:>8.2f} {median['title_seconds']:>13.2f} "
          f"{median['figure_seconds']:>14.2f} "
          f"{median['http']:>11,.0f} {median['websocket']:>16,.0f} "
          f"{median['http'] + median['websocket']:>12,.0f}")
    verdict = "met" if seconds <= TARGET_SECONDS else "missed"
    print(f"target: heatmap drawn in <= {TARGET_SECONDS:g} s (median): {verdict}")


@contextlib.contextmanager
def _dashboard(root: Path, log_path: Path, script: Path | None = None) -> Iterator[str]:
    """Serve `app.py` (or `script`) on `root` from a free loopback port, with the
    repository's Streamlit settings; yield its base URL."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "TGLOC_WORKSPACE": str(root)}
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script or "app.py"),
             "--server.headless", "true", "--server.port", str(port),
             "--server.address", HOST, "--browser.gatherUsageStats", "false"],
            cwd=REPOSITORY, env=environment, stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{HOST}:{port}"
    try:
        _wait_healthy(url, server, log_path)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_healthy(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode}; "
                               f"its output is in {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not respond at {url}/_stcore/health within "
                       f"{SERVER_START_SECONDS} s")


if __name__ == "__main__":
    sys.exit(main())
