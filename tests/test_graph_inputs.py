"""Hard input files carried past ingest: snapshots, model inputs, training and scores.

Each test ingests a small fixture from tests/fixtures/ingest (or a file it writes)
into a real store, bins it and, where the case needs it, trains the real model on it
with a tiny configuration.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core import scoring, store, train
from core.config import ModelConfig
from core.errors import DataError
from core.ingest import IngestOptions, ingest_file
from core.snapshots import COMM_FEATURES, SENSOR_FEATURES, bin_events, build_snapshots
from core.store import Workspace

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
TINY = ModelConfig(hidden=4, dilations=(1,), own_lag=1, epochs=2, patience=2, seed=0)
MEAN = SENSOR_FEATURES.index("mean")
COUNT = SENSOR_FEATURES.index("count")
OUT_DEGREE = COMM_FEATURES.index("out_degree")


def _ingest(tmp_path: Path, name: str, *files: Path, options=None) -> Workspace:
    workspace = Workspace.create(tmp_path / name)
    for path in files:
        ingest_file(workspace, path, options or IngestOptions("events"))
    return workspace


def _index(snapshots) -> dict[str, int]:
    return dict(zip(snapshots.devices["device"], snapshots.devices["idx"]))


def _names(snapshots, mask: np.ndarray) -> set[str]:
    return set(snapshots.devices["device"].to_numpy()[mask])


def _prepare(snapshots, train_bins=None):
    bins = np.arange(snapshots.num_bins) if train_bins is None else train_bins
    return train.prepare(snapshots, bins, [(0, snapshots.num_bins)])


def _scaled_scores(snapshots, prepared, config=TINY) -> dict[str, scoring.ScaledFamily]:
    """Train on every bin, then score every bin at the base scale."""
    bins = np.arange(snapshots.num_bins)
    model = train.fit(prepared, snapshots, bins, config).model
    x_hat, pair_hat, candidates, _ = scoring.reconstruct(model, prepared, snapshots)
    families = scoring.families(snapshots, prepared, x_hat, pair_hat, candidates, bins)
    return {family.kind: scoring.aggregate(family, 1) for family in families}


def _device_scores(scaled: scoring.ScaledFamily) -> pd.DataFrame:
    return pd.DataFrame(scaled.score, columns=scaled.ids["device"])


# Timestamps reach the bins.


def test_mixed_iso_one_event_per_minute(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "mixed_iso.csv")
    origin = pd.Timestamp("2024-03-01T08:00:00Z").value // 1000
    binned = bin_events(workspace.store_path, origin, 60, origin, origin + 3 * 60 * 10**6)

    assert sorted(binned["bin"]) == [0, 1, 2]
    assert list(binned.sort_values("bin")["events"]) == [1, 1, 1]


def test_utc_bins_same_in_any_host_zone(tmp_path, monkeypatch):
    options = IngestOptions("measurements")
    utc = _ingest(tmp_path, "utc", FIXTURES / "utc_across_dst.csv", options=options)
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        berlin = _ingest(tmp_path, "berlin", FIXTURES / "utc_across_dst.csv",
                         options=IngestOptions("measurements", timezone="Europe/Berlin"))
        berlin_snapshots = build_snapshots(berlin.store_path, 3600)
    finally:
        monkeypatch.undo()
        time.tzset()
    utc_snapshots = build_snapshots(utc.store_path, 3600)

    for snapshots in (utc_snapshots, berlin_snapshots):
        starts = snapshots.bin_start(np.arange(snapshots.num_bins))
        assert [t.isoformat() for t in starts] == [
            "2025-03-30T00:00:00+00:00",
            "2025-03-30T01:00:00+00:00",
            "2025-03-30T02:00:00+00:00",
        ]
        assert [gap.total_seconds() for gap in np.diff(starts)] == [3600.0, 3600.0]
        assert snapshots.active.all()
    np.testing.assert_array_equal(berlin_snapshots.sensor_values,
                                  utc_snapshots.sensor_values)


def test_mixed_rates_binned_means_and_mask(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "mixed_rates_long.csv",
                        options=IngestOptions("measurements"))
    snapshots = build_snapshots(workspace.store_path, 10)
    row = {sensor: i for i, sensor in enumerate(snapshots.sensors["sensor"])}
    starts = snapshots.bin_start(np.arange(snapshots.num_bins))

    assert snapshots.num_bins == 2
    assert [t.isoformat() for t in starts] == [
        "2024-05-01T00:00:00+00:00", "2024-05-01T00:00:10+00:00"]
    means = snapshots.sensor_values[..., MEAN]
    assert means[0, row["FIT101"]] == pytest.approx(2.445)
    assert means[0, row["LIT101"]] == pytest.approx(520.0)
    assert means[1, row["FIT101"]] == pytest.approx(2.52)
    assert means[1, row["LIT101"]] == pytest.approx(521.0)
    assert snapshots.sensor_values[0, row["FIT101"], COUNT] == 4


def test_missing_reading_null_and_masked(tmp_path):
    text = (FIXTURES / "mixed_rates_long.csv").read_text()
    dropped = text.replace("2024-05-01 00:00:10,LIT101,521.0\n", "")
    path = tmp_path / "dropped.csv"
    path.write_text(dropped)
    workspace = _ingest(tmp_path, "ws", path, options=IngestOptions("measurements"))
    snapshots = build_snapshots(workspace.store_path, 10)
    prepared = _prepare(snapshots)
    lit = int(snapshots.sensors.set_index("sensor").loc["LIT101", "device_idx"])
    mean_column = len(COMM_FEATURES) + MEAN

    assert np.isnan(snapshots.sensor_values[1, :, MEAN][
        list(snapshots.sensors["sensor"]).index("LIT101")])
    assert prepared.mask[1, lit, mean_column] == 0.0
    assert prepared.mask[0, lit, mean_column] == 1.0
    assert prepared.x[1, lit, mean_column] == 0.0


def test_zeek_events_give_finite_features(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "conn.log")
    snapshots = build_snapshots(workspace.store_path, 1)
    prepared = _prepare(snapshots)

    assert {"fe80::1", "ff02::fb"} <= set(snapshots.devices["device"])
    assert torch.isfinite(prepared.x).all()
    assert torch.isfinite(prepared.edge_weight).all()


# Devices that appear later, and empty bins.


def test_late_device_one_index_every_bin(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "late_device.csv")
    snapshots = build_snapshots(workspace.store_path, 60)
    prepared = _prepare(snapshots)

    assert _index(snapshots) == {"A": 0, "B": 1, "C": 2, "D": 3}
    assert snapshots.num_bins == 3
    assert snapshots.comm.shape == (3, 4, len(COMM_FEATURES))
    assert tuple(prepared.x.shape[:2]) == (3, 4)
    for bin_index in range(3):
        edge_index, _ = snapshots.snapshot_edges(bin_index)
        assert edge_index.dtype == np.int64
        assert edge_index.max() < 4
    assert _names(snapshots, snapshots.active[0]) == {"A", "B"}
    assert _names(snapshots, snapshots.active[1]) == {"B", "C"}
    assert _names(snapshots, snapshots.active[2]) == {"A", "B", "D"}
    assert int(prepared.edge_index.max()) < 4


def test_late_device_scores_null_before_it_appears(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "late_device.csv")
    snapshots = build_snapshots(workspace.store_path, 60)
    scaled = _scaled_scores(snapshots, _prepare(snapshots))["device"]
    scores = _device_scores(scaled)

    assert scores["D"].isna().tolist() == [True, True, False]
    assert scores["C"].isna().tolist() == [True, False, False]
    assert scores["A"].notna().all()
    assert scores["B"].notna().all()
    assert np.isfinite(scores.to_numpy()[scaled.exists]).all()


def test_sparse_traffic_empty_snapshots(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "sparse_traffic.csv")
    snapshots = build_snapshots(workspace.store_path, 60)
    starts = snapshots.bin_start(np.arange(snapshots.num_bins))

    assert [f"{t:%H:%M}" for t in starts] == ["08:00", "08:01", "08:02", "08:03"]
    for bin_index in (1, 2):
        edge_index, edge_weight = snapshots.snapshot_edges(bin_index)
        assert edge_index.dtype == np.int64
        assert edge_index.shape == (2, 0)
        assert edge_weight.shape == (0,)
    assert snapshots.snapshot_edges(0)[0].tolist() == [[0], [1]]


def test_empty_snapshot_forward_backward_finite(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "sparse_traffic.csv")
    snapshots = build_snapshots(workspace.store_path, 60)
    prepared = _prepare(snapshots)
    torch.manual_seed(0)
    model = train.build_model(prepared, TINY)
    edge_index, edge_weight = snapshots.snapshot_edges(1)

    z = model.encode(prepared.x[1:3], prepared.mask[1:3], prepared.kind,
                     torch.from_numpy(edge_index), torch.from_numpy(edge_weight))
    x_hat = model.decode_nodes(z)
    loss = ((x_hat - prepared.x[1:3]) ** 2).mean()
    loss.backward()

    assert torch.isfinite(z).all()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


def test_empty_snapshots_scored_and_flagged(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "sparse_traffic.csv")
    snapshots = build_snapshots(workspace.store_path, 60)
    scaled = _scaled_scores(snapshots, _prepare(snapshots))
    events = snapshots.pair_events.sum(axis=1)

    windows = scoring.window_scores(list(scaled.values()), events)

    assert list(windows["events"]) == [1, 0, 0, 1]
    assert list(windows["note"]) == ["", "no traffic", "no traffic", ""]
    assert np.isfinite(windows["score"]).all()


def test_single_device_stops_before_training(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "single_device.csv")
    snapshots = build_snapshots(workspace.store_path, 60)

    with pytest.raises(DataError) as caught:
        train.require_devices(snapshots)

    assert caught.value.headline == (
        "need at least 2 devices to train a graph model (found 1: A)")


# Self-loops, port sweeps, weights.


def test_self_loop_once_never_negative(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "self_loops.csv")
    snapshots = build_snapshots(workspace.store_path, 60)
    index = _index(snapshots)
    host, peer = index["10.0.0.5"], index["10.0.0.9"]
    prepared = _prepare(snapshots)
    config = ModelConfig(hidden=4, dilations=(1,), own_lag=1, negatives_per_edge=20)

    rows = train._pair_rows(prepared, snapshots, np.arange(snapshots.num_bins), config,
                            np.random.default_rng(0))
    negative = rows["target"] == 0
    edges = [tuple(e) for e in snapshots.snapshot_edges(0)[0].T.tolist()]
    adjacency = [tuple(e) for e in prepared.edge_index.T.tolist()]

    assert set(index) == {"10.0.0.5", "10.0.0.9"}
    assert sorted(edges) == sorted([(host, peer), (host, host)])
    assert adjacency.count((host, host)) <= 1
    assert all(src != dst for src, dst in adjacency)
    assert int(negative.sum()) > 0
    assert (rows["src"][negative] != rows["dst"][negative]).all()


def _write_scan(path: Path) -> None:
    rows = ["ts,src,dst,dst_port"]
    for s in range(0, 3600, 5):
        for a, b in [("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.3"),
                     ("10.0.0.4", "10.0.0.5")]:
            rows.append(f"2024-03-01T08:{s // 60:02d}:{s % 60:02d}Z,{a},{b},502")
    for i in range(1, 255):
        rows.append(f"2024-03-01T08:30:{i % 60:02d}Z,10.9.9.9,10.0.1.{i},502")
    path.write_text("\n".join(rows) + "\n")


def test_port_sweep_out_degree_in_one_bin(tmp_path):
    path = tmp_path / "scan.csv"
    _write_scan(path)
    workspace = _ingest(tmp_path, "ws", path)
    stored = store.query(workspace.store_path, "SELECT count(*) AS n FROM events")
    snapshots = build_snapshots(workspace.store_path, 60)
    sweep = _index(snapshots)["10.9.9.9"]
    out_degree = np.expm1(snapshots.comm[..., OUT_DEGREE])
    prepared = _prepare(snapshots, np.arange(20))

    assert int(stored["n"][0]) == 2414
    assert snapshots.num_bins == 60
    assert np.flatnonzero(snapshots.active[:, sweep]).tolist() == [30]
    assert snapshots.devices.set_index("device").loc["10.9.9.9", "first_bin"] == 30
    assert out_degree[30, sweep] == pytest.approx(254.0)
    assert np.isfinite(snapshots.comm).all()
    assert torch.isfinite(prepared.x).all()
    assert torch.isfinite(prepared.edge_weight).all()
    assert (prepared.edge_weight > 0).all()


def test_bad_weights_never_reach_encoder(tmp_path):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "bad_weights.csv")
    snapshots = build_snapshots(workspace.store_path, 60)
    prepared = _prepare(snapshots)
    edge_index, edge_weight = snapshots.snapshot_edges(0)
    torch.manual_seed(0)
    model = train.build_model(prepared, TINY)

    with torch.no_grad():
        z = model.encode(prepared.x, prepared.mask, prepared.kind,
                         torch.from_numpy(edge_index), torch.from_numpy(edge_weight))
        x_hat = model.decode_nodes(z)

    assert edge_index.tolist() == [[0], [1]]
    assert edge_weight.tolist() == [120.0]
    assert torch.isfinite(prepared.edge_weight).all()
    assert (prepared.edge_weight > 0).all()
    assert torch.isfinite(x_hat).all()
    with pytest.raises(ValueError, match="every weight must be finite and > 0"):
        model.encode(prepared.x, prepared.mask, prepared.kind,
                     torch.from_numpy(edge_index), torch.tensor([-5.0]))


# Constant sensors, tiny graphs, unsorted input.


def test_constant_sensor_scaled_and_flagged(tmp_path):
    options = IngestOptions("measurements", layout="wide")
    workspace = _ingest(tmp_path, "ws", FIXTURES / "constant_sensor_train.csv",
                        FIXTURES / "constant_sensor_test.csv", options=options)
    snapshots = build_snapshots(workspace.store_path, 1)
    train_bins = np.arange(4)
    test_bin = snapshots.num_bins - 1
    prepared = train.prepare(snapshots, train_bins,
                             [(0, 4), (test_bin, snapshots.num_bins)])

    training = scoring.sensor_deviations(snapshots, prepared, train_bins, train_bins)
    constant = training[training["sensor"] == "P102"]
    history = train.fit(prepared, snapshots, train_bins,
                        ModelConfig(hidden=4, dilations=(1,), own_lag=1, epochs=1)).history
    tested = scoring.sensor_deviations(snapshots, prepared, train_bins, [test_bin])
    first = tested.iloc[0]

    assert snapshots.bin_start(test_bin)[0].isoformat() == "2024-05-01T00:10:00+00:00"
    assert prepared.constant == [("P102", "P102")]
    assert constant["scaled"].tolist() == [0.0] * 4
    assert all(flags == ["constant in training"] for flags in constant["flags"])
    assert np.isfinite(history[0]["loss"])
    assert (first["device"], first["sensor"]) == ("P102", "P102")
    assert first["value"] == 2.0
    assert first["scaled"] == pytest.approx(1.0)
    assert first["flags"] == ["constant in training", "outside training range"]
    assert tested.iloc[1:]["flags"].map(len).eq(0).all()


def test_two_devices_skip_negative_term(tmp_path, caplog):
    workspace = _ingest(tmp_path, "ws", FIXTURES / "two_devices.csv")
    snapshots = build_snapshots(workspace.store_path, 60)
    prepared = _prepare(snapshots)

    with caplog.at_level(logging.WARNING, logger="core.train"):
        result = train.fit(prepared, snapshots, np.arange(1), TINY)

    assert snapshots.num_devices == 2
    assert sorted(map(tuple, snapshots.snapshot_edges(0)[0].T.tolist())) == [(0, 1), (1, 0)]
    assert ("0 negative pairs available in snapshot 08:00; negative term skipped"
            in caplog.messages)
    assert all(np.isfinite(row["loss"]) for row in result.history)


def test_unsorted_input_same_snapshots_and_scores(tmp_path):
    shuffled = FIXTURES / "unsorted_events.csv"
    lines = shuffled.read_text().splitlines()
    ordered = tmp_path / "sorted.csv"
    ordered.write_text("\n".join([lines[0], *sorted(lines[1:], key=lambda r: r[:20])])
                       + "\n")
    results = []
    for name, path in (("shuffled", shuffled), ("sorted", ordered)):
        workspace = _ingest(tmp_path, name, path)
        snapshots = build_snapshots(workspace.store_path, 60)
        scores = _scaled_scores(snapshots, _prepare(snapshots))
        results.append((snapshots, scores))
    (first, first_scores), (second, second_scores) = results
    names = first.devices["device"].to_numpy()

    def edges(snapshots, bin_index):
        edge_index, _ = snapshots.snapshot_edges(bin_index)
        return sorted((names[s], names[d]) for s, d in edge_index.T)

    assert edges(first, 0) == [("B", "C"), ("C", "A")]
    assert edges(first, 1) == [("A", "C")]
    assert edges(first, 2) == [("A", "B")]
    for bin_index in range(3):
        assert edges(second, bin_index) == edges(first, bin_index)
    for kind, scaled in first_scores.items():
        np.testing.assert_array_equal(second_scores[kind].score, scaled.score)


# Gaps in a wide export and the gap-fill policy.


def _wide_gaps(tmp_path: Path) -> tuple[Workspace, object]:
    workspace = _ingest(tmp_path, "ws", FIXTURES / "wadi_like_gaps.csv",
                        options=IngestOptions("measurements", layout="wide"))
    report = store.query(workspace.store_path, "SELECT * FROM ingest_reports")
    return workspace, report


def _cell(snapshots, sensor: str, bin_index: int, feature: int) -> float:
    row = list(snapshots.sensors["sensor"]).index(sensor)
    return float(snapshots.sensor_values[bin_index, row, feature])


def test_wide_gaps_stored_null_and_masked(tmp_path):
    workspace, report = _wide_gaps(tmp_path)
    stored = store.query(workspace.store_path,
                         "SELECT sensor, t, value FROM measurements ORDER BY sensor, t")
    snapshots = build_snapshots(workspace.store_path, 1)

    assert sorted(stored["sensor"].unique()) == ["1_AIT_001_PV", "1_FIT_001_PV"]
    assert "2 entirely empty columns dropped: 2_P_001_STATUS, 2_LS_001_AL" in (
        report["notes"][0])
    assert stored["value"].isna().tolist() == [
        False, False, True, False, False, True, False, False]
    assert snapshots.num_bins == 4
    assert np.isnan(_cell(snapshots, "1_AIT_001_PV", 2, MEAN))
    assert _cell(snapshots, "1_AIT_001_PV", 2, COUNT) == 0
    assert np.isnan(_cell(snapshots, "1_FIT_001_PV", 1, MEAN))
    assert snapshots.imputed_cells == 0


def test_wide_gaps_forward_filled_for_model(tmp_path):
    workspace, _ = _wide_gaps(tmp_path)
    snapshots = build_snapshots(workspace.store_path, 1, gap_fill="ffill")
    prepared = _prepare(snapshots)
    nulls = store.query(workspace.store_path,
                        "SELECT count(*) AS n FROM measurements WHERE value IS NULL")

    assert _cell(snapshots, "1_AIT_001_PV", 2, MEAN) == pytest.approx(171.3)
    assert _cell(snapshots, "1_FIT_001_PV", 1, MEAN) == pytest.approx(0.0012)
    assert _cell(snapshots, "1_AIT_001_PV", 3, MEAN) == pytest.approx(171.1)
    assert snapshots.imputed_cells == 2
    assert int(nulls["n"][0]) == 2
    assert torch.isfinite(prepared.x).all()
    assert bool(prepared.mask[..., len(COMM_FEATURES) + MEAN].all())


def test_gap_fill_limit_stops_long_runs(tmp_path):
    path = tmp_path / "long_gap.csv"
    path.write_text("time,A,B\n"
                    "2024-05-01T00:00:00Z,1.0,5\n"
                    "2024-05-01T00:00:01Z,,5\n"
                    "2024-05-01T00:00:02Z,,5\n"
                    "2024-05-01T00:00:03Z,,5\n"
                    "2024-05-01T00:00:04Z,2.0,5\n")
    workspace = _ingest(tmp_path, "ws", path,
                        options=IngestOptions("measurements", layout="wide"))

    limited = build_snapshots(workspace.store_path, 1, gap_fill="ffill",
                              gap_fill_limit=2)
    unlimited = build_snapshots(workspace.store_path, 1, gap_fill="ffill")

    assert [_cell(limited, "A", b, MEAN) for b in (1, 2)] == [1.0, 1.0]
    assert np.isnan(_cell(limited, "A", 3, MEAN))
    assert _cell(limited, "A", 4, MEAN) == 2.0
    assert limited.imputed_cells == 2
    assert _cell(unlimited, "A", 3, MEAN) == 1.0
    assert unlimited.imputed_cells == 3


def test_gap_fill_standardized_on_training_bins_only(tmp_path):
    workspace, _ = _wide_gaps(tmp_path)
    snapshots = build_snapshots(workspace.store_path, 1, gap_fill="ffill")
    prepared = _prepare(snapshots, train_bins=np.array([0, 1]))
    ait = int(snapshots.sensors.set_index("sensor").loc["1_AIT_001_PV", "device_idx"])
    mean_column = len(COMM_FEATURES) + MEAN

    # Bins 0 and 1 read 171.2 and 171.3; the filled bin 2 and bin 3 are not training.
    assert prepared.center[ait, mean_column] == pytest.approx(171.25, rel=1e-6)


# Bins in which the whole plant is silent.


def _plant_with_gaps(tmp_path: Path, silent: set[int], bins: int = 180) -> Workspace:
    """Three sensors read every 20 s, except in the minutes listed in `silent`."""
    rows = ["time,A,B,C"]
    start = pd.Timestamp("2024-05-01T00:00:00Z")
    for step in range(bins * 3):
        if step // 3 in silent:
            continue
        t = start + pd.Timedelta(seconds=20 * step)
        rows.append(f"{t.isoformat()},{10 + np.sin(step / 9):.4f},"
                    f"{5 + np.cos(step / 7):.4f},{step % 4}")
    path = tmp_path / "plant.csv"
    path.write_text("\n".join(rows) + "\n")
    return _ingest(tmp_path, "ws", path,
                   options=IngestOptions("measurements", layout="wide"))


def test_plant_wide_silence_is_gap_not_scored(tmp_path):
    from core.config import RunConfig
    from core.pipeline import assign_periods

    silent = {40, 41, 150, 151, 152}
    workspace = _plant_with_gaps(tmp_path, silent)
    snapshots = build_snapshots(workspace.store_path, 60)
    periods, segments = assign_periods(snapshots, RunConfig())

    assert snapshots.num_bins == 180
    assert set(np.flatnonzero(periods == "gap")) == silent
    assert segments == [(0, 180)]
    assert (periods[sorted(silent)] == "gap").all()
    assert "train" in set(periods[:40])
    assert set(periods[153:]) == {"score"}


def test_long_silence_also_splits_segments(tmp_path):
    from core.config import RunConfig, StreamConfig
    from core.pipeline import assign_periods

    silent = set(range(100, 110))
    workspace = _plant_with_gaps(tmp_path, silent)
    snapshots = build_snapshots(workspace.store_path, 60)
    config = RunConfig(stream=StreamConfig(max_empty_bins=5))
    periods, segments = assign_periods(snapshots, config)

    assert set(np.flatnonzero(periods == "gap")) == silent
    assert segments == [(0, 100), (110, 180)]


def _contact_stream(tmp_path: Path, bins: int = 240) -> Workspace:
    """Twenty people with a contact in about a third of the minutes: quiet
    minutes are part of such a stream."""
    rng = np.random.default_rng(5)
    start = pd.Timestamp("2024-05-01T00:00:00Z")
    rows = ["src,dst,time"]
    for minute in np.flatnonzero(rng.random(bins) < 0.35):
        a, b = rng.choice(20, size=2, replace=False)
        t = start + pd.Timedelta(seconds=60 * int(minute) + 10)
        rows.append(f"p{a},p{b},{t.isoformat()}")
    # The first and last minutes carry a contact, so the stream spans all bins.
    rows += [f"p0,p1,{start.isoformat()}",
             f"p2,p3,{(start + pd.Timedelta(seconds=60 * bins - 5)).isoformat()}"]
    path = tmp_path / "contacts.csv"
    path.write_text("\n".join(rows) + "\n")
    return _ingest(tmp_path, "ws", path, options=IngestOptions("events"))


def test_quiet_minutes_of_a_contact_stream_are_scored(tmp_path):
    from core.config import RunConfig, StreamConfig
    from core.pipeline import assign_periods

    snapshots = build_snapshots(_contact_stream(tmp_path).store_path, 60)
    empty = ~snapshots.active.any(axis=1)
    assert empty.sum() > 100

    periods, segments = assign_periods(snapshots, RunConfig())
    assert "gap" not in set(periods)
    assert segments == [(0, snapshots.num_bins)]
    assert (periods[empty] == "score").sum() > 40

    forced, _ = assign_periods(snapshots, RunConfig(stream=StreamConfig(empty_bins="gap")))
    assert (forced[empty] == "gap").all()
    assert "gap" not in set(forced[~empty])


def test_silence_is_gap_weighs_each_devices_activity():
    from core.pipeline import silence_is_gap

    polling = np.ones((1000, 3), dtype=bool)
    polling[500] = False
    assert silence_is_gap(polling, "auto")
    assert not silence_is_gap(polling, "score")

    # Three devices each active in half of the busy bins: an empty bin has chance
    # 1/8, expected 125 times in 1,000 bins.
    rng = np.random.default_rng(0)
    sparse = rng.random((1000, 3)) < 0.5
    assert not silence_is_gap(sparse, "auto")
    assert silence_is_gap(sparse, "gap")


def test_polling_plant_silence_scored_when_asked(tmp_path):
    from core.config import RunConfig, StreamConfig
    from core.pipeline import assign_periods

    workspace = _plant_with_gaps(tmp_path, {150, 151, 152})
    snapshots = build_snapshots(workspace.store_path, 60)
    config = RunConfig(stream=StreamConfig(empty_bins="score"))
    periods, _ = assign_periods(snapshots, config)
    assert set(periods[150:153]) == {"score"}
