"""The heatmap benchmark on a small run: every table, with times and bytes the
browser noted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import dashboard

pytestmark = pytest.mark.browser


@pytest.mark.skipif(not Path(dashboard.CHROMIUM).exists(),
                    reason="Debian's chromium is not installed at /usr/bin/chromium")
def test_dashboard_bench_small_run(capsys):
    pytest.importorskip("playwright.sync_api")
    # 450 devices make three device pages, so the next-page table has a page to open.
    code = dashboard.main(["--devices", "450", "--bins", "240", "--loads", "1"])
    output = capsys.readouterr().out
    assert code == 0
    medians = re.findall(r"^median +([\d.]+) +([\d.]+) +([\d.]+) +([\d,]+) +([\d,]+)",
                         output, flags=re.MULTILINE)
    # New tab, floor, sidebar and next page.
    assert len(medians) == 4
    heatmap, floor = medians[0], medians[1]
    seconds, title, figure = (float(value) for value in heatmap[:3])
    assert 0 < title <= seconds
    assert 0 < figure <= seconds
    # The figure of 200 rows x 240 bins takes more than 10 kB of websocket
    # messages, and the floor's 2 x 2 heatmap fewer.
    heatmap_bytes = int(heatmap[4].replace(",", ""))
    floor_bytes = int(floor[4].replace(",", ""))
    assert heatmap_bytes > 10_000
    assert floor_bytes < heatmap_bytes
    assert output.count("target: heatmap drawn") == 4
