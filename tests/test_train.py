"""Tests for core.train: preparation, fitting on tiny stores, and checkpoints."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core import store
from core import train as train_module
from core.config import ModelConfig
from core.errors import ConfigError, DataError
from core.snapshots import COMM_FEATURES, SENSOR_FEATURES, build_snapshots
from core.store import Workspace
from core.train import (
    build_model,
    checkpoint_bytes,
    deterministic,
    encode_segments,
    fit,
    hidden_reconstruction,
    hide_mask,
    load_checkpoint,
    prepare,
)

START = pd.Timestamp("2024-03-01 00:00:00", tz="UTC")
NUM_BINS = 20
TINY = ModelConfig(hidden=4, dilations=(1,), own_lag=1, epochs=2, patience=2, seed=0)


class Smuggled:
    """An arbitrary class, which a weights-only load must not rebuild."""

    def __init__(self) -> None:
        self.note = "not a tensor"


def _stamps(seconds) -> pd.Series:
    return pd.Series(START + pd.to_timedelta(np.asarray(seconds), unit="s")).astype(
        "datetime64[us, UTC]")


def _workspace(tmp_path: Path, events=None, measurements=None) -> Workspace:
    workspace = Workspace.create(tmp_path / "ws")
    with store.connect(workspace.store_path) as con:
        if events is not None:
            store.insert_frame(con, "events", events)
        if measurements is not None:
            store.insert_frame(con, "measurements", measurements)
    return workspace


def _two_way_events() -> pd.DataFrame:
    """A polls B and B replies, twice in every 60 s bin."""
    seconds = np.repeat(np.arange(NUM_BINS) * 60, 2) + np.tile([5, 35], NUM_BINS)
    rows = len(seconds)
    return pd.DataFrame({
        "t": _stamps(np.concatenate([seconds, seconds + 1])),
        "src": ["A"] * rows + ["B"] * rows,
        "dst": ["B"] * rows + ["A"] * rows,
        "weight": np.concatenate([np.full(rows, 120.0), np.full(rows, 64.0)]),
    })


def _sensor_readings(device: str, sensor: str, values: np.ndarray) -> pd.DataFrame:
    seconds = np.arange(len(values)) * 30 + 10
    return pd.DataFrame({"t": _stamps(seconds), "device": device, "sensor": sensor,
                         "value": values})


def _segments(snapshots) -> list[tuple[int, int]]:
    return [(0, snapshots.num_bins)]


def test_prepare_rejects_single_device(tmp_path):
    measurements = _sensor_readings("A", "LIT101", np.linspace(1.0, 2.0, 40))
    workspace = _workspace(tmp_path, measurements=measurements)
    snapshots = build_snapshots(workspace.store_path, 60)

    with pytest.raises(DataError) as caught:
        prepare(snapshots, np.arange(snapshots.num_bins), _segments(snapshots))

    assert caught.value.headline == \
        "need at least 2 devices to train a graph model (found 1: A)"
    assert caught.value.detail


def test_prepare_constant_sensor_scale_one(tmp_path):
    rng = np.random.default_rng(0)
    measurements = pd.concat([
        _sensor_readings("A", "LIT101", np.full(2 * NUM_BINS, 500.0)),
        _sensor_readings("B", "FIT101", 2.0 + 0.1 * rng.standard_normal(2 * NUM_BINS)),
    ])
    workspace = _workspace(tmp_path, _two_way_events(), measurements)
    snapshots = build_snapshots(workspace.store_path, 60)
    train_bins = np.arange(12)

    prepared = prepare(snapshots, train_bins, _segments(snapshots))
    index = dict(zip(snapshots.devices["device"], snapshots.devices["idx"]))
    mean_column = len(COMM_FEATURES) + SENSOR_FEATURES.index("mean")
    a, b = index["A"], index["B"]

    assert prepared.constant == [("A", "LIT101")]
    assert prepared.scale[a, mean_column] == 1.0
    assert prepared.center[a, mean_column] == pytest.approx(500.0)
    assert prepared.scale[b, mean_column] != 1.0
    assert prepared.x.shape == (NUM_BINS, 2, len(COMM_FEATURES) + len(SENSOR_FEATURES))
    assert torch.isfinite(prepared.x).all()
    torch.testing.assert_close(prepared.x[:, a, mean_column], torch.zeros(NUM_BINS),
                               atol=1e-6, rtol=0)


def test_prepare_uses_training_bins_only(tmp_path):
    # The level jumps after the training bins, and the centre must ignore the jump.
    rng = np.random.default_rng(1)
    values = 2.0 + 0.1 * rng.standard_normal(2 * NUM_BINS)
    values[2 * 12:] += 100.0
    measurements = _sensor_readings("B", "FIT101", values)
    workspace = _workspace(tmp_path, _two_way_events(), measurements)
    snapshots = build_snapshots(workspace.store_path, 60)

    prepared = prepare(snapshots, np.arange(12), _segments(snapshots))
    b = int(snapshots.devices.set_index("device").loc["B", "idx"])
    mean_column = len(COMM_FEATURES) + SENSOR_FEATURES.index("mean")

    bin_means = values[: 2 * 12].reshape(12, 2).mean(axis=1)

    assert prepared.constant == []
    assert prepared.center[b, mean_column] == pytest.approx(bin_means.mean(), rel=1e-6)
    assert prepared.scale[b, mean_column] == pytest.approx(bin_means.std(), rel=1e-5)
    # The jump is hundreds of training spreads, so the input is clipped at 6.
    assert prepared.x[15, b, mean_column] == pytest.approx(6.0)


def test_fit_two_devices_no_negatives(tmp_path, caplog):
    workspace = _workspace(tmp_path, _two_way_events())
    snapshots = build_snapshots(workspace.store_path, 60)
    train_bins = np.arange(NUM_BINS)
    prepared = prepare(snapshots, train_bins, _segments(snapshots))

    with caplog.at_level(logging.WARNING, logger="core.train"):
        result = fit(prepared, snapshots, train_bins, TINY)

    assert len(prepared.reference_pairs) == 2
    assert 1 <= len(result.history) <= TINY.epochs
    assert all(np.isfinite(row["loss"]) for row in result.history)
    assert all(np.isfinite(row["validation_loss"]) for row in result.history)
    assert "0 negative pairs available" in caplog.text


def test_fit_rejects_no_training_bins(tmp_path):
    workspace = _workspace(tmp_path, _two_way_events())
    snapshots = build_snapshots(workspace.store_path, 60)
    prepared = prepare(snapshots, np.arange(NUM_BINS), _segments(snapshots))

    with pytest.raises(DataError) as caught:
        fit(prepared, snapshots, np.arange(0), TINY)

    assert caught.value.headline == "too few training bins (0); at least 1 is needed"


def test_fit_few_bins_validates_on_training(tmp_path, caplog):
    workspace = _workspace(tmp_path, _two_way_events())
    snapshots = build_snapshots(workspace.store_path, 60)
    prepared = prepare(snapshots, np.arange(NUM_BINS), _segments(snapshots))

    with caplog.at_level(logging.WARNING, logger="core.train"):
        result = fit(prepared, snapshots, np.arange(5), TINY)

    assert ("only 5 training bins; early stopping validates on the training bins "
            "themselves") in caplog.text
    assert all(np.isfinite(row["validation_loss"]) for row in result.history)


def test_checkpoint_round_trip(tmp_path):
    workspace = _workspace(tmp_path, _two_way_events())
    snapshots = build_snapshots(workspace.store_path, 60)
    train_bins = np.arange(NUM_BINS)
    prepared = prepare(snapshots, train_bins, _segments(snapshots))
    model = fit(prepared, snapshots, train_bins, TINY).model

    data = checkpoint_bytes(model, prepared, TINY)
    loaded, payload = load_checkpoint(data)
    inputs = (prepared.x, prepared.mask, prepared.kind, prepared.edge_index,
              prepared.edge_weight)
    with torch.no_grad():
        z = model.encode(*inputs)
        z_loaded = loaded.encode(*inputs)
        x_hat = model.decode_nodes(z)
        x_hat_loaded = loaded.decode_nodes(z)

    torch.testing.assert_close(z_loaded, z, atol=0, rtol=0)
    torch.testing.assert_close(x_hat_loaded, x_hat, atol=0, rtol=0)
    assert payload["kinds"] == prepared.kinds
    assert payload["num_features"] == prepared.num_features
    np.testing.assert_array_equal(payload["center"].numpy(), prepared.center)


def test_load_checkpoint_rejects_pickled_object():
    buffer = io.BytesIO()
    torch.save({"state": {}, "num_features": 6, "kinds": ["plc"], "hidden": 4,
                "dilations": [1], "own_lag": 1, "extra": Smuggled()}, buffer)
    data = buffer.getvalue()

    # The same bytes load when unpickling is allowed, so the rejection below comes
    # from weights_only and not from a damaged file.
    unsafe = torch.load(io.BytesIO(data), weights_only=False)
    assert isinstance(unsafe["extra"], Smuggled)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(data)


def _sensor_plant(tmp_path: Path):
    """A polls B; A and B each have one sensor, B's a copy of A's, for 2 x NUM_BINS."""
    rng = np.random.default_rng(1)
    level = np.cumsum(rng.standard_normal(2 * NUM_BINS))
    measurements = pd.concat([_sensor_readings("A", "FIT101", level),
                              _sensor_readings("B", "FIT102", level + 1.0)])
    workspace = _workspace(tmp_path, _two_way_events(), measurements)
    snapshots = build_snapshots(workspace.store_path, 60)
    return snapshots, prepare(snapshots, np.arange(12), _segments(snapshots))


def test_hide_mask_hides_sensor_features_only(tmp_path):
    _, prepared = _sensor_plant(tmp_path)
    window = (0, 0, NUM_BINS)
    comm = len(COMM_FEATURES)

    hidden = hide_mask(prepared, window, share=0.99, rng=np.random.default_rng(0))

    assert hide_mask(prepared, window, share=0.0, rng=np.random.default_rng(0)) is None
    torch.testing.assert_close(hidden[..., :comm], prepared.mask[..., :comm])
    assert (hidden[..., comm:] <= prepared.mask[..., comm:]).all()
    # Each device is hidden over one stretch, and all its sensor features with it.
    for device in range(hidden.shape[1]):
        gone = (hidden[:, device, comm:] == 0).all(dim=-1) & (prepared.mask[:, device, comm:] > 0).all(dim=-1)
        assert gone.any()
        bins = torch.nonzero(gone).flatten()
        assert (bins[-1] - bins[0] + 1) == len(bins)


def test_hidden_reconstruction_ignores_hidden_inputs(tmp_path):
    _, prepared = _sensor_plant(tmp_path)
    model = build_model(prepared, TINY)
    model.eval()
    sensors = slice(len(COMM_FEATURES), None)
    before = hidden_reconstruction(model, prepared, [0], 10, NUM_BINS)
    plain_before = model.decode_nodes(encode_segments(model, prepared)).detach()

    prepared.x[10:, 0, sensors] += 3.0
    after = hidden_reconstruction(model, prepared, [0], 10, NUM_BINS)
    plain_after = model.decode_nodes(encode_segments(model, prepared)).detach()

    assert before.shape == (NUM_BINS - 10, 2, prepared.x.shape[-1])
    torch.testing.assert_close(after, before)
    # Without hiding, the change reaches the other device's reconstruction.
    assert not torch.allclose(plain_after[10:, 1], plain_before[10:, 1])


def _quiet_plant_snapshots(tmp_path, hours: float):
    """One-minute snapshots of a 40-device sample plant without anomalies."""
    from core import synth

    plant = synth.generate_plant(synth.PlantConfig(seed=1, field_devices=40, hours=hours,
                                                   anomalies=()))
    workspace = _workspace(tmp_path, plant.events[["t", "src", "dst", "weight", "protocol"]],
                           plant.measurements[["t", "device", "sensor", "value"]])
    return build_snapshots(workspace.store_path, 60)


def test_fit_repeats_bit_for_bit_when_deterministic(tmp_path):
    snapshots = _quiet_plant_snapshots(tmp_path, hours=3.0)
    train_bins = np.arange(120)
    prepared = prepare(snapshots, train_bins, _segments(snapshots))
    config = ModelConfig(epochs=3, patience=5)

    states = []
    for _ in range(2):
        with deterministic():
            states.append(fit(prepared, snapshots, train_bins, config).model.state_dict())

    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name


def test_encode_segments_chunks_match_one_pass(tmp_path, monkeypatch):
    _, prepared = _sensor_plant(tmp_path)
    config = ModelConfig(hidden=4, dilations=(1, 2), own_lag=2, epochs=1, seed=0)
    model = build_model(prepared, config)
    model.eval()
    with torch.no_grad():
        whole = encode_segments(model, prepared)
        monkeypatch.setattr("core.train.ENCODE_CHUNK_BINS", 3)
        chunked = encode_segments(model, prepared)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_fit_windows_per_epoch_budget(tmp_path, monkeypatch):
    snapshots, prepared = _sensor_plant(tmp_path)
    windows = train_module._windows
    monkeypatch.setattr(train_module, "_windows", lambda bins, segments, reach, size=2:
                        windows(bins, segments, reach, size))
    losses = []
    window_loss = train_module._window_loss

    def counted(model, prepared, window, pair_rows, config, hidden=None):
        losses.append(window)
        return window_loss(model, prepared, window, pair_rows, config, hidden)

    monkeypatch.setattr(train_module, "_window_loss", counted)
    config = ModelConfig(hidden=4, dilations=(1,), own_lag=1, epochs=2, patience=2,
                         windows_per_epoch=1, seed=0)
    result = fit(prepared, snapshots, np.arange(12), config)
    # Per epoch: 1 training window of the 5 there are, then 1 validation window
    # (validation is one window of the last training bins).
    assert len(result.history) == 2
    assert len(losses) == 2 * (1 + 1)


def test_windows_per_epoch_rejects_zero():
    with pytest.raises(ConfigError, match="windows_per_epoch"):
        ModelConfig(windows_per_epoch=0)


def test_hidden_reconstruction_of_matches_whole_plant(tmp_path):
    snapshots = _quiet_plant_snapshots(tmp_path, hours=1.0)
    prepared = prepare(snapshots, np.arange(40), _segments(snapshots))
    torch.manual_seed(0)
    model = build_model(prepared, ModelConfig(hidden=8, dilations=(1, 2), own_lag=2))
    model.eval()
    # Three devices with sensors, as in a process incident, out of order.
    owners = np.unique(snapshots.sensors["device_idx"].to_numpy())
    devices = [int(owners[3]), int(owners[0]), int(owners[17])]
    nodes, _, _ = train_module._neighbourhood(prepared, devices)
    assert len(nodes) < snapshots.num_devices

    whole = hidden_reconstruction(model, prepared, devices, 30, 50)
    rows = train_module.hidden_reconstruction_of(model, prepared, devices, 30, 50)

    assert rows.shape == (20, len(devices), prepared.x.shape[-1])
    assert torch.equal(rows, whole[:, devices])
