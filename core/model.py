"""The temporal graph auto-encoder (an `nn.Module` only; training lives in train.py).

Encoder: two rounds of message passing over each snapshot's structural graph, then a
causal temporal convolution along time, giving one latent vector per (device, bin).
The latent of a sub-temporal-graph is the subset of vectors of its devices and bins.

Masked reconstruction: a device's features at bin t are reconstructed from its
neighbours at t and earlier and from its own features up to t - own_lag, never from
its own recent features. The lag keeps the model from copying a spike into the next
bin or following a slow drift, while the device's older values still tell it how its
sensors relate to its neighbours' (a gain of either sign, an offset). The first round computes, for each device p, a pre-activation from p's
own features and the weighted mean of its neighbours' messages. The second round sends
p's pre-activation to each neighbour n with n's own message taken out again (a
leave-one-out mean), so two hops never carry n's current value back to n. The
temporal layer reads the neighbour context up to t and the device's own inputs up to
t - own_lag.

Decoders: one MLP reconstructs each device's bin features; one MLP scores each ordered
pair (logit of "a link exists in this bin" and its log1p event count). Non-edges are
sampled in training, so an expected link that is missing gets a residual.

The encoder is inductive: its inputs are the device's kind, features and neighbours,
never a per-device id embedding, so a device never seen in training still gets a
latent.

Known weaknesses: a drift slower than `own_lag` bins per standard deviation is partly
followed through the device's own past; a device with no neighbours is reconstructed
from its own lagged past alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing


# A device's latent reads the inputs of devices at most this many links away,
# because the second round of message passing reads its neighbours' first-round sums.
SPATIAL_HOPS = 2


class NeighbourMean(MessagePassing):
    """Weighted mean of neighbour messages, over the node dimension of [T, N, H]."""

    def __init__(self) -> None:
        super().__init__(aggr="add", node_dim=-2)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
        """Sum `edge_weight * x[src]` into each destination.

        Args:
            x: shape [T, N, H].
            edge_index: shape [2, E], long.
            edge_weight: shape [E], finite and > 0.

        Returns:
            shape [T, N, H].
        """
        return self.propagate(edge_index, x=x, edge_weight=edge_weight)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return x_j * edge_weight.view(1, -1, 1)


class LeaveOneOut(MessagePassing):
    """Second round: messages from p to n with n's own first-round message removed."""

    def __init__(self) -> None:
        super().__init__(aggr="add", node_dim=-2)

    def forward(
        self, own: Tensor, total: Tensor, degree: Tensor, message: Tensor,
        edge_index: Tensor, edge_weight: Tensor,
    ) -> Tensor:
        return self.propagate(
            edge_index, own=own, total=total, degree=degree, message=message,
            edge_weight=edge_weight,
        )

    def message(
        self, own_j: Tensor, total_j: Tensor, degree_j: Tensor, message_i: Tensor,
        edge_weight: Tensor,
    ) -> Tensor:
        weight = edge_weight.view(1, -1, 1)
        rest = degree_j - weight
        others = (total_j - weight * message_i) / rest.clamp_min(1e-6)
        others = torch.where(rest > 1e-6, others, torch.zeros_like(others))
        return torch.relu(own_j + others) * weight


class ChannelEncoder(nn.Module):
    """Message passing and causal convolutions over one group of features."""

    def __init__(self, num_features: int, num_kinds: int, hidden: int,
                 dilations: tuple[int, ...], own_lag: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_kinds = num_kinds
        self.own_lag = own_lag
        width = 2 * num_features + num_kinds
        self.own = nn.Linear(width, hidden)
        self.neighbour = nn.Linear(width, hidden)
        self.neighbour_mean = NeighbourMean()
        self.leave_one_out = LeaveOneOut()
        self.second = nn.Linear(hidden, hidden)
        self.temporal_in = nn.Linear(2 * hidden + width, hidden)
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden, hidden, kernel_size=3, dilation=d) for d in dilations
        )
        self.dilations = tuple(dilations)

    def forward(self, x: Tensor, mask: Tensor, kinds: Tensor, edge_index: Tensor,
                edge_weight: Tensor) -> Tensor:
        return self.temporal(self.spatial(x, mask, kinds, edge_index, edge_weight))

    def spatial(self, x: Tensor, mask: Tensor, kinds: Tensor, edge_index: Tensor,
                edge_weight: Tensor) -> Tensor:
        """Return the input of the temporal layers, shape [T, N, H]. Bin t reads the
        bin's snapshot and the device's own inputs `own_lag` bins earlier, so its
        value needs only bins t - own_lag .. t."""
        num_bins, num_devices, _ = x.shape
        u = torch.cat([x * mask, mask, kinds.expand(num_bins, -1, -1)], dim=-1)

        own = self.own(u)
        message = self.neighbour(u)
        ones = torch.ones(num_bins, num_devices, 1, dtype=x.dtype, device=x.device)
        total = self.neighbour_mean(message, edge_index, edge_weight)
        degree = self.neighbour_mean(ones, edge_index, edge_weight)

        # p's pre-activation without n's own message, averaged over n's neighbours p.
        second = self.leave_one_out(own, total, degree, message, edge_index, edge_weight)
        second = second / degree.clamp_min(1e-6)
        context = torch.relu(self.second(second))

        # Neighbour context of the device itself at t (own features excluded).
        neighbours = total / degree.clamp_min(1e-6)
        past = torch.zeros_like(u)
        if self.own_lag < num_bins:
            past[self.own_lag:] = u[: num_bins - self.own_lag]
        past[..., -self.num_kinds:] = kinds
        return torch.relu(self.temporal_in(torch.cat([context, torch.relu(neighbours), past], -1)))

    def temporal(self, h: Tensor) -> Tensor:
        """Apply the causal convolutions along time to `spatial`'s output; bin t of
        the result reads bins t - 2 * sum(dilations) .. t."""
        # Causal convolutions along time: [N, H, T].
        h = h.permute(1, 2, 0)
        for conv, dilation in zip(self.convs, self.dilations):
            padded = nn.functional.pad(h, (2 * dilation, 0))
            h = h + torch.relu(conv(padded))
        return h.permute(2, 0, 1)


class TemporalGraphAutoEncoder(nn.Module):
    """Masked temporal graph auto-encoder over a fixed device index.

    The communication features and the sensor features are encoded as two
    channels, each with its own message passing and temporal layers, and each is
    reconstructed from its own channel's latent. A surge of traffic at a PLC thus
    does not move the expected readings of the field devices it polls, and a faulty
    sensor does not move its PLC's expected traffic.

    Args:
        num_features: node features per (device, bin), F; the first
            `comm_features` are communication features, the rest sensor features.
        num_kinds: size of the device-kind vocabulary, K.
        hidden: width H of every layer of each channel.
        dilations: dilations of the causal convolutions (kernel 3).
        own_lag: bins between a device's newest own input and the bin reconstructed.
        comm_features: how many leading features are communication features.

    Shapes:
        x: [T, N, F] standardized features, 0 where masked.
        mask: [T, N, F], 1.0 where a feature is observed.
        kind: [N] long, device kind ids.
        edge_index: [2, E] long, symmetric structural graph without self-loops.
        edge_weight: [E], finite and > 0.
        z: [T, N, C * H] latent per (device, bin), C channels.
    """

    def __init__(
        self, num_features: int, num_kinds: int, hidden: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 8), own_lag: int = 30,
        comm_features: int = 6,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_kinds = num_kinds
        self.hidden = hidden
        self.own_lag = own_lag
        comm = min(comm_features, num_features)
        self.slices = [(0, comm)] + ([(comm, num_features)] if num_features > comm else [])
        self.encoders = nn.ModuleList(
            ChannelEncoder(stop - start, num_kinds, hidden, dilations, own_lag)
            for start, stop in self.slices
        )
        self.node_decoders = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, stop - start))
            for start, stop in self.slices
        )
        self.pair_decoder = nn.Sequential(
            nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
        )

    def encode(
        self, x: Tensor, mask: Tensor, kind: Tensor, edge_index: Tensor,
        edge_weight: Tensor,
    ) -> Tensor:
        """Return the latent z, shape [T, N, C * H].

        Raises:
            ValueError: an edge weight is not finite or not > 0 (GCN-style
                normalisation would turn it into NaN), or an edge index is out of
                range.
        """
        if edge_weight.numel() and not bool(
                (torch.isfinite(edge_weight) & (edge_weight > 0)).all()):
            raise ValueError("invalid edge_weight: every weight must be finite and > 0")
        if edge_index.numel() and int(edge_index.max()) >= x.shape[1]:
            raise ValueError(
                f"invalid edge_index: max index {int(edge_index.max())} >= "
                f"{x.shape[1]} devices")
        return self.encode_temporal(self.encode_spatial(x, mask, kind, edge_index, edge_weight))

    def encode_spatial(
        self, x: Tensor, mask: Tensor, kind: Tensor, edge_index: Tensor,
        edge_weight: Tensor,
    ) -> list[Tensor]:
        """Return each channel's input to its temporal layers, shape [T, N, H] each."""
        kinds = nn.functional.one_hot(kind, self.num_kinds).to(x.dtype)
        return [
            encoder.spatial(x[..., start:stop], mask[..., start:stop], kinds, edge_index,
                            edge_weight)
            for encoder, (start, stop) in zip(self.encoders, self.slices)
        ]

    def encode_temporal(self, parts: list[Tensor]) -> Tensor:
        """Return z, shape [T, N, C * H], from `encode_spatial`'s output."""
        return torch.cat([encoder.temporal(h) for encoder, h in zip(self.encoders, parts)],
                         dim=-1)

    def decode_nodes(self, z: Tensor) -> Tensor:
        """Return x_hat, shape [T, N, F], in standardized units."""
        parts = [
            decoder(z[..., i * self.hidden : (i + 1) * self.hidden])
            for i, decoder in enumerate(self.node_decoders)
        ]
        return torch.cat(parts, dim=-1)

    def decode_pairs(self, z: Tensor, bins: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """Score ordered pairs from the communication channel.

        Args:
            z: shape [T, N, C * H].
            bins, src, dst: shape [P] long each.

        Returns:
            shape [P, 2]: logit of "the pair has an event in the bin" and the
            predicted log1p event count when it does.
        """
        z_src = z[bins, src, : self.hidden]
        z_dst = z[bins, dst, : self.hidden]
        return self.pair_decoder(torch.cat([z_src, z_dst, z_src * z_dst], dim=-1))
