"""Tests for core.model on 4 to 5 device hand-built graphs."""

from __future__ import annotations

import pytest
import torch

from core.model import TemporalGraphAutoEncoder

NUM_BINS = 12
NUM_DEVICES = 5
NUM_FEATURES = 12  # 6 communication features, then one sensor's 6 features
NUM_KINDS = 3
HIDDEN = 8
OWN_LAG = 3
COMM = 6


def _model() -> TemporalGraphAutoEncoder:
    torch.manual_seed(0)
    model = TemporalGraphAutoEncoder(NUM_FEATURES, NUM_KINDS, hidden=HIDDEN,
                                     dilations=(1, 2), own_lag=OWN_LAG)
    model.eval()
    return model


def _inputs() -> dict[str, torch.Tensor]:
    """A path 0-1-2-3 plus the isolated device 4, every feature observed."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(NUM_BINS, NUM_DEVICES, NUM_FEATURES, generator=generator)
    edges = [(0, 1), (1, 2), (2, 3)]
    src = [a for a, b in edges] + [b for a, b in edges]
    dst = [b for a, b in edges] + [a for a, b in edges]
    return {
        "x": x,
        "mask": torch.ones_like(x),
        "kind": torch.tensor([0, 1, 2, 1, 0]),
        "edge_index": torch.tensor([src, dst], dtype=torch.long),
        "edge_weight": torch.tensor([1.0, 2.0, 0.5, 1.0, 2.0, 0.5]),
    }


def _encode(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(inputs["x"], inputs["mask"], inputs["kind"],
                            inputs["edge_index"], inputs["edge_weight"])


def test_encode_and_decode_shapes():
    model = _model()
    inputs = _inputs()

    z = _encode(model, inputs)
    x_hat = model.decode_nodes(z)
    bins = torch.tensor([0, 5, 11])
    out = model.decode_pairs(z, bins, torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]))

    assert z.shape == (NUM_BINS, NUM_DEVICES, 2 * HIDDEN)
    assert x_hat.shape == (NUM_BINS, NUM_DEVICES, NUM_FEATURES)
    assert out.shape == (3, 2)
    assert len(model.encoders) == 2


def test_encode_comm_only_has_one_channel():
    torch.manual_seed(0)
    model = TemporalGraphAutoEncoder(COMM, NUM_KINDS, hidden=HIDDEN, dilations=(1,),
                                     own_lag=OWN_LAG)
    inputs = _inputs()
    inputs["x"] = inputs["x"][..., :COMM]
    inputs["mask"] = inputs["mask"][..., :COMM]

    z = _encode(model, inputs)

    assert z.shape == (NUM_BINS, NUM_DEVICES, HIDDEN)
    assert model.decode_nodes(z).shape == (NUM_BINS, NUM_DEVICES, COMM)


@pytest.mark.parametrize("channel", [slice(0, COMM), slice(COMM, NUM_FEATURES)])
def test_own_features_masked_at_same_bin(channel):
    model = _model()
    inputs = _inputs()
    changed = {**inputs, "x": inputs["x"].clone()}
    device, t = 1, 6
    changed["x"][t, device, channel] += 5.0

    z = _encode(model, inputs)
    z_changed = _encode(model, changed)

    # The device's own latent at t and before is blind to its features at t.
    torch.testing.assert_close(z_changed[: t + 1, device], z[: t + 1, device],
                               atol=1e-5, rtol=0)
    # Its neighbour 2 reads them through message passing.
    assert not torch.allclose(z_changed[t, 2], z[t, 2], atol=1e-4)
    # Its own lagged past reaches it `own_lag` bins later.
    assert not torch.allclose(z_changed[t + OWN_LAG, device], z[t + OWN_LAG, device],
                              atol=1e-4)


def test_isolated_device_unaffected_by_graph():
    model = _model()
    inputs = _inputs()
    changed = {**inputs, "x": inputs["x"].clone()}
    changed["x"][:, 1] += 5.0

    z = _encode(model, inputs)
    z_changed = _encode(model, changed)

    torch.testing.assert_close(z_changed[:, 4], z[:, 4], atol=1e-5, rtol=0)


def test_comm_change_leaves_sensor_channel():
    model = _model()
    inputs = _inputs()
    changed = {**inputs, "x": inputs["x"].clone()}
    changed["x"][:, 1, :COMM] += 5.0

    z = _encode(model, inputs)
    z_changed = _encode(model, changed)
    neighbour = 2

    torch.testing.assert_close(z_changed[:, neighbour, HIDDEN:], z[:, neighbour, HIDDEN:],
                               atol=1e-5, rtol=0)
    assert not torch.allclose(z_changed[:, neighbour, :HIDDEN], z[:, neighbour, :HIDDEN],
                              atol=1e-4)

    x_hat = model.decode_nodes(z)
    x_hat_changed = model.decode_nodes(z_changed)
    torch.testing.assert_close(x_hat_changed[:, neighbour, COMM:], x_hat[:, neighbour, COMM:],
                               atol=1e-5, rtol=0)


def test_sensor_change_leaves_comm_channel():
    model = _model()
    inputs = _inputs()
    changed = {**inputs, "x": inputs["x"].clone()}
    changed["x"][:, 1, COMM:] += 5.0

    z = _encode(model, inputs)
    z_changed = _encode(model, changed)

    torch.testing.assert_close(z_changed[..., :HIDDEN], z[..., :HIDDEN], atol=1e-5, rtol=0)
    assert not torch.allclose(z_changed[:, 2, HIDDEN:], z[:, 2, HIDDEN:], atol=1e-4)


def test_masked_features_ignored():
    model = _model()
    inputs = _inputs()
    inputs["mask"][:, 3, COMM:] = 0.0
    changed = {**inputs, "x": inputs["x"].clone()}
    changed["x"][:, 3, COMM:] = 100.0

    z = _encode(model, inputs)
    z_changed = _encode(model, changed)

    torch.testing.assert_close(z_changed, z, atol=1e-5, rtol=0)


def test_empty_edge_index_forward_backward():
    model = _model()
    model.train()
    inputs = _inputs()
    edge_index = torch.zeros((2, 0), dtype=torch.int64)
    edge_weight = torch.zeros(0)

    z = model.encode(inputs["x"], inputs["mask"], inputs["kind"], edge_index, edge_weight)
    x_hat = model.decode_nodes(z)
    pairs = model.decode_pairs(z, torch.tensor([2, 3]), torch.tensor([0, 1]),
                               torch.tensor([1, 0]))
    loss = ((x_hat - inputs["x"]) ** 2).mean() + pairs.pow(2).mean()
    loss.backward()

    assert z.shape == (NUM_BINS, NUM_DEVICES, 2 * HIDDEN)
    assert torch.isfinite(z).all()
    assert torch.isfinite(x_hat).all()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
