"""One MAD hospital setting end to end on the real file (needs TGLOC_DATA)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import real_mad
from tests.conftest import data_folder


@pytest.mark.data
@pytest.mark.slow
def test_mad_edge_densification_end_to_end():
    folder = data_folder(real_mad.FOLDER)
    setting = real_mad.SETTINGS[0]
    truth = pd.read_csv(folder / f"{setting.stem}_gt.txt", header=None)
    scored_rows = int((truth[2] >= real_mad.FIRST_SCORED_SLOT).sum())
    anomalous_rows = int(truth.loc[truth[2] >= real_mad.FIRST_SCORED_SLOT, 3].sum())

    outcome = real_mad.measure(folder, setting)

    assert setting.name == "edge densif"
    assert outcome.rows == scored_rows
    assert outcome.anomalous == anomalous_rows
    assert 0 < outcome.anomalous < outcome.rows
    assert outcome.auc > 0.5
    assert outcome.seconds > 0


def write_lines(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(",".join(str(v) for v in row) + "\n" for row in rows))


@pytest.fixture
def small_mad_folder(tmp_path, monkeypatch):
    """A MAD-layout folder of one generated stream with every setting's files."""
    rng = np.random.default_rng(0)
    stream = sorted({(int(u), int(v), int(t)) for u, v, t in zip(
        rng.integers(0, 8, 900), rng.integers(0, 8, 900), rng.integers(0, 420, 900))
        if u != v}, key=lambda row: row[2])
    folder = tmp_path / real_mad.FOLDER
    for setting in real_mad.SETTINGS:
        write_lines(folder / f"{setting.stem}_data.txt", stream)
        if setting.level == "edge":
            truth = [(u, v, t, int(t % 7 == 0)) for u, v, t in stream]
        elif setting.level == "node":
            truth = [(n, t, int(t % 50 == 0)) for n in (1, 2) for t in range(420)]
        else:
            truth = [(t, int(t % 40 == 0)) for t in range(420)]
        write_lines(folder / f"{setting.stem}_gt.txt", truth)
    tiny = real_mad.RunConfig(
        stream=real_mad.StreamConfig(bin_seconds=real_mad.SLOT_SECONDS, scales=(1, 4)),
        model=real_mad.ModelConfig(hidden=4, dilations=(1,), own_lag=1, epochs=1,
                                   windows_per_epoch=1),
    )
    monkeypatch.setattr(real_mad, "CONFIG", tiny)
    return tmp_path


def test_mad_bench_rows_on_generated_files(small_mad_folder):
    result = real_mad.run(small_mad_folder, quick=False)
    lines = result["table"].splitlines()
    headline = result["headline"]
    assert len(lines) == 2 + len(real_mad.SETTINGS) + 1
    # Edge rows: the events with t >= 300; node rows: 2 nodes x 120 slots.
    edge_rows = int(lines[2].split("|")[3])
    node_rows = int(lines[3].split("|")[3])
    graph_rows = int(lines[6].split("|")[3])
    assert node_rows == 2 * 120
    assert graph_rows == 120
    assert 0 < edge_rows < 900
    assert set(headline) >= {"mad_edge_densif_auc", "mad_graph_rewiring_auc",
                             "mad_tgloc_seconds_total"}
    assert all(0 <= headline[k] <= 1 for k in headline if k.endswith("_auc"))
    assert result["caveats"].startswith("caveats:")
