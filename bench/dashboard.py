"""Heatmap render time and bytes sent for a run of 2,000 devices x 10,080 bins.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python -m bench.dashboard

Publishes a run whose device evidence is a 2,000 x 10,080 score matrix (a week of
one-minute bins, `core.score_runs`), serves the dashboard with `streamlit run` on a
free loopback port, and opens the Heatmap page in headless Chromium (Playwright,
/usr/bin/chromium). One load warms Streamlit's data cache, then each measured load
opens the page in a new tab and times it until the Plotly heatmap has drawn its
image. The Chrome DevTools Protocol counts the bytes the browser receives: HTTP
response bodies as sent (`encodedDataLength`) and websocket frames from the server.
It also notes when the page title appeared (the frontend has started and the script's
first output arrived) and when the largest frame, the one that carries the figure,
arrived. These two times split a load into the frontend's start, the server's part
and the browser's drawing. Prints one row per load and the median.

A second table times the Heatmap page opened from the sidebar of a dashboard that is
already open in the tab, as an analyst moves between pages. Each measured switch goes
to the home page, then clicks "Heatmap" and waits for the drawn heatmap. The tab
keeps the frontend and Plotly loaded, so this time is Streamlit's page run, the
transfer and the drawing. The figure is the one the tab received on its first visit,
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
        load_before = os.getloadavg()
        with _dashboard(workspace.root, Path(folder) / "server.log") as url:
            rows, switches, pages = _measure(url, args.loads)
        load_after = os.getloadavg()

    print("Heatmap page opened in a new tab:")
    _print_table(rows)
    print("Heatmap page opened from the sidebar of the open dashboard:")
    _print_table(switches)
    print("Next device page in the open Heatmap page (a new figure):")
    _print_table(pages)
    print(f"load average (1 min) before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f}, on {os.cpu_count()} CPUs; "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    return 0


def _measure(url: str, loads: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Time `loads` new-tab loads, sidebar switches and device pages of the Heatmap
    page."""
    from playwright.sync_api import sync_playwright

    heatmap_url = f"{url}/Heatmap?run={RUN_ID}"
    rows, switches, pages = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )
        context = browser.new_context(viewport=VIEWPORT)
        try:
            _load(context, heatmap_url)  # warms Streamlit's cache and the browser's
            for number in range(1, loads + 1):
                rows.append({"load": number, **_load(context, heatmap_url)})
            switches, pages = _switch(context, url, loads)
        finally:
            context.close()
            browser.close()
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

    Returns:
        seconds (until drawn), title_seconds (until the page title showed),
        figure_seconds (until the largest websocket frame arrived), http and
        websocket (bytes received).
    """
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    session = context.new_cdp_session(page)
    counts = _count_bytes(session)
    try:
        began = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_function(TITLE_SHOWN, polling="raf")
        title_seconds = time.perf_counter() - began
        page.wait_for_function(HEATMAP_DRAWN, polling="raf")
        seconds = time.perf_counter() - began
        # Frames still arriving after the draw belong to this load too.
        _settle(page)
    finally:
        session.detach()
        page.close()
    # CDP events reach Python only while Playwright waits, so an arrival time is
    # when the event was handled: an upper bound, at most one animation frame late.
    return {"seconds": seconds, "title_seconds": title_seconds,
            "figure_seconds": counts["largest_at"] - began,
            "http": counts["http"], "websocket": counts["websocket"]}


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
def _dashboard(root: Path, log_path: Path) -> Iterator[str]:
    """Serve `app.py` on `root` from a free loopback port; yield its base URL."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "TGLOC_WORKSPACE": str(root)}
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py",
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
