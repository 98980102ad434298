"""Model page: loss curve, reference p-value histogram and configuration."""

from __future__ import annotations

import json

import pytest
from conftest import REPOSITORY
from fixture_run import BIN_SECONDS, CALIBRATION_END, DEVICES, TRAIN_END
from streamlit.testing.v1 import AppTest

from core import model_views

TIMEOUT = 60
# Per calibration bin at scale 1: one device element and two sensor elements per
# device, and ten pairs.
ELEMENTS_PER_BIN = 3 * len(DEVICES) + 10


@pytest.fixture
def app(workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    monkeypatch.chdir(REPOSITORY)
    return AppTest.from_file(str(REPOSITORY / "app.py"), default_timeout=TIMEOUT)


def test_reference_histogram_counts(workspace, run_id):
    histogram = model_views.reference_p_values(workspace, run_id)
    calibration_bins = CALIBRATION_END - TRAIN_END
    assert histogram["elements"].sum() == calibration_bins * ELEMENTS_PER_BIN
    assert sorted(histogram["kind"].unique()) == ["device", "pair", "sensor"]
    assert len(histogram) == 3 * model_views.P_VALUE_BUCKETS
    assert histogram["lower"].min() == 0.0
    assert histogram["upper"].max() == 1.0


def test_reference_histogram_flat(workspace, run_id):
    # The fixture draws background p-values uniformly from [0.01, 1].
    histogram = model_views.reference_p_values(workspace, run_id, buckets=4)
    totals = histogram.groupby("bucket")["elements"].sum()
    expected = totals.sum() / 4
    assert (abs(totals - expected) < 0.2 * expected).all()


def test_reference_histogram_invalid_buckets(workspace, run_id):
    with pytest.raises(ValueError, match="buckets=1"):
        model_views.reference_p_values(workspace, run_id, buckets=1)


def test_model_page_shows_run(app, workspace, run_id):
    app.query_params["run"] = run_id
    app.run()
    app.switch_page("pages/5_Model.py").run()
    assert not app.exception
    assert not app.error
    assert any("20 epochs" in caption.value for caption in app.caption)
    metric = [m.value for m in app.metric if m.label == "Reference elements"]
    assert metric == [f"{(CALIBRATION_END - TRAIN_END) * ELEMENTS_PER_BIN:,}"]
    charts = app.get("plotly_chart")
    loss = json.loads(charts[0].proto.spec)
    assert [trace["name"] for trace in loss["data"]] == ["training", "validation"]
    histogram = json.loads(charts[1].proto.spec)
    kinds = [trace["name"] for trace in histogram["data"]]
    assert kinds == ["device", "pair", "sensor"]
    config = json.loads(app.json[0].proto.body)
    assert config["stream"]["bin_seconds"] == BIN_SECONDS


def test_model_page_coarse_scale(app, run_id):
    app.query_params["run"] = run_id
    app.query_params["scale"] = "4"
    app.run()
    app.switch_page("pages/5_Model.py").run()
    assert not app.exception
    metric = [m.value for m in app.metric if m.label == "Reference elements"]
    assert metric == [f"{(CALIBRATION_END - TRAIN_END) // 4 * ELEMENTS_PER_BIN:,}"]


def test_model_page_lists_rounded_sensors(app, run_id):
    app.query_params["run"] = run_id
    app.run()
    app.switch_page("pages/5_Model.py").run()

    assert not app.exception
    notes = " ".join(block.value for block in app.markdown)
    assert "1 sensor read at different resolutions" in notes
    assert "pump-04/pressure to 2 decimal places" in notes
    table = app.dataframe[0].value
    assert table["device"].tolist() == ["pump-04"]
    assert table["sensor"].tolist() == ["pressure"]
    assert table["decimal places"].tolist() == [2]
    assert table["sources read finer"].tolist() == [1]
