"""Fitting the auto-encoder on the reference period, and checkpoints.

`prepare` turns snapshots into standardized tensors whose statistics come from the
training bins only. `fit` trains with early stopping on the last part of the training
bins. Robustness to the few anomalies a reference period contains comes from the
Huber loss: residuals beyond `huber_delta` standard deviations weigh linearly.

Checkpoints hold tensors, numbers and strings only and load with
`torch.load(weights_only=True)`, so opening a model file never unpickles arbitrary
objects.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from core.config import ModelConfig
from core.errors import DataError
from core.model import SPATIAL_HOPS, TemporalGraphAutoEncoder
from core.snapshots import COMM_FEATURES, SENSOR_FEATURES, Snapshots

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
MAX_PAIR_ROWS = 200_000
VALIDATION_SHARE = 0.15
MIN_HELD_OUT_BINS = 8
MAX_LOGGED_SNAPSHOTS = 3
STD_FLOOR = 1e-6
INPUT_CLIP = 6.0
ENCODE_CHUNK_BINS = 512


@dataclass
class Prepared:
    """Standardized model inputs for every bin of a run.

    Attributes:
        x: shape [T, N, F], standardized, 0 where masked.
        mask: shape [T, N, F], 1.0 where observed.
        kind: shape [N] long, device kind ids.
        kinds: the kind vocabulary.
        edge_index: shape [2, E] long, symmetric structural graph, no self-loops.
        edge_weight: shape [E], finite and > 0.
        slots: max sensors per device, S; F = 6 + 6 * S.
        center, scale: shape [N, F], the standardization (x = (raw - center) / scale).
        constant: (device, sensor) pairs constant in the training bins.
        reference_pairs: shape [P, 2], pairs with an event in a training bin.
        segments: (start, stop) bin ranges encoded independently (gaps split them).
    """

    x: Tensor
    mask: Tensor
    kind: Tensor
    kinds: list[str]
    edge_index: Tensor
    edge_weight: Tensor
    slots: int
    center: np.ndarray
    scale: np.ndarray
    constant: list[tuple[str, str]]
    reference_pairs: np.ndarray
    segments: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_features(self) -> int:
        return self.x.shape[-1]


def feature_names(slots: int) -> list[str]:
    names = [f"comm.{name}" for name in COMM_FEATURES]
    for slot in range(slots):
        names += [f"sensor{slot}.{name}" for name in SENSOR_FEATURES]
    return names


def prepare(
    snapshots: Snapshots, train_bins: np.ndarray, segments: list[tuple[int, int]],
    kinds: list[str] | None = None,
) -> Prepared:
    """Build standardized tensors, with statistics from `train_bins` only.

    Args:
        snapshots: the binned run.
        train_bins: shape [B] long, bins whose statistics standardize every bin.
        segments: bin ranges to encode separately, such as the files of a data set
            that are months apart.
        kinds: a fixed kind vocabulary (from a checkpoint); built from the run if None.
    """
    require_devices(snapshots)
    num_bins = snapshots.num_bins
    sensors = snapshots.sensors
    slots = int(sensors.groupby("device_idx").size().max()) if len(sensors) else 0
    raw, mask = raw_inputs(snapshots, slots)
    columns = _sensor_columns(sensors)

    center, scale, constant = _standardization(raw, mask, train_bins, sensors, columns)
    # Clipped, so one wild sensor cannot drive its neighbours' reconstruction far
    # outside anything seen in training.
    x = np.where(mask > 0, np.clip((raw - center) / scale, -INPUT_CLIP, INPUT_CLIP), 0.0)
    if not np.isfinite(x).all():
        raise DataError("non-finite model input after standardization",
                        "Check the sensor values of the training bins.")

    if kinds is None:
        kinds = sorted(snapshots.devices["kind"].astype(str).unique())
    lookup = {name: position for position, name in enumerate(kinds)}
    unknown = len(kinds)
    kind = np.array([lookup.get(k, unknown) for k in snapshots.devices["kind"].astype(str)])
    if (kind == unknown).any():
        kinds = kinds + ["unknown-kind"]

    in_train = np.zeros(num_bins, dtype=bool)
    in_train[train_bins] = True
    reference = snapshots.pair_events[in_train].sum(axis=0) > 0
    reference_pairs = snapshots.pairs[reference]
    edge_index, edge_weight = _structural_graph(snapshots, reference, in_train)

    return Prepared(
        x=torch.tensor(x, dtype=torch.float32), mask=torch.tensor(mask),
        kind=torch.tensor(kind, dtype=torch.long), kinds=list(kinds),
        edge_index=edge_index, edge_weight=edge_weight, slots=slots,
        center=center.astype(np.float32), scale=scale.astype(np.float32),
        constant=constant, reference_pairs=reference_pairs, segments=list(segments),
    )


def raw_inputs(snapshots: Snapshots, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the unstandardized model inputs and their mask, shape [T, N, F]."""
    width = len(COMM_FEATURES) + len(SENSOR_FEATURES) * slots
    raw = np.zeros((snapshots.num_bins, snapshots.num_devices, width), dtype=np.float64)
    mask = np.zeros_like(raw, dtype=np.float32)
    raw[..., : len(COMM_FEATURES)] = snapshots.comm
    mask[..., : len(COMM_FEATURES)] = 1.0
    values = snapshots.sensor_values.astype(np.float64)
    for row, (device_idx, start) in enumerate(_sensor_columns(snapshots.sensors)):
        block = values[:, row, :]
        observed = ~np.isnan(block)
        raw[:, device_idx, start : start + len(SENSOR_FEATURES)] = np.where(observed, block, 0.0)
        mask[:, device_idx, start : start + len(SENSOR_FEATURES)] = observed
    return raw, mask


def require_devices(snapshots: Snapshots) -> None:
    """Raise `DataError` unless the run has the 2 devices a graph model needs."""
    num_devices = snapshots.num_devices
    if num_devices < 2:
        names = ", ".join(snapshots.devices["device"].astype(str)) or "none"
        raise DataError(
            f"need at least 2 devices to train a graph model (found {num_devices}: {names})",
            "Load events or measurements of two or more devices.",
        )


def _sensor_columns(sensors) -> list[tuple[int, int]]:
    return [
        (int(d), len(COMM_FEATURES) + len(SENSOR_FEATURES) * int(s))
        for d, s in zip(sensors["device_idx"], sensors["slot"])
    ]


def _standardization(raw, mask, train_bins, sensors, columns):
    """Centre and scale per feature column: communication features share one scale
    per feature across devices; each sensor is scaled by its own training spread."""
    num_devices, width = raw.shape[1], raw.shape[2]
    center = np.zeros((num_devices, width))
    scale = np.ones((num_devices, width))
    train = raw[train_bins]
    train_mask = mask[train_bins] > 0

    for feature in range(len(COMM_FEATURES)):
        values = train[..., feature]
        center[:, feature] = values.mean()
        scale[:, feature] = max(values.std(), STD_FLOOR)

    constant = []
    for row, (device_idx, start) in enumerate(columns):
        block = train[:, device_idx, start : start + len(SENSOR_FEATURES)]
        seen = train_mask[:, device_idx, start]
        means = block[seen, 0]
        if len(means) == 0 or means.std() < STD_FLOOR:
            constant.append((str(sensors["device"].iloc[row]), str(sensors["sensor"].iloc[row])))
            level = means.mean() if len(means) else 0.0
            spread = 1.0
        else:
            level, spread = means.mean(), means.std()
        for offset, name in enumerate(SENSOR_FEATURES):
            column = start + offset
            if name in ("mean", "min", "max"):
                center[device_idx, column], scale[device_idx, column] = level, spread
            elif name == "std":
                center[device_idx, column], scale[device_idx, column] = 0.0, spread
            else:
                values = block[seen, offset] if name == "stale" else block[:, offset]
                center[device_idx, column] = values.mean() if len(values) else 0.0
                scale[device_idx, column] = max(values.std() if len(values) else 1.0, 0.1)
    return center, scale, constant


def _structural_graph(
    snapshots: Snapshots, reference: np.ndarray, in_train: np.ndarray,
) -> tuple[Tensor, Tensor]:
    """Symmetric graph of the training pairs and static links, weighted by the mean
    log1p event count of the pair in the training bins (static links count 1)."""
    num_devices = snapshots.num_devices
    mean_events = snapshots.pair_events[in_train].mean(axis=0) if in_train.any() else 0
    weights: dict[tuple[int, int], float] = {}
    for (src, dst), weight in zip(snapshots.pairs[reference],
                                  np.log1p(np.asarray(mean_events)[reference] if np.ndim(mean_events) else [])):
        if src == dst:
            continue
        key = (min(src, dst), max(src, dst))
        weights[key] = weights.get(key, 0.0) + float(weight)
    for src, dst in snapshots.links:
        if src != dst:
            key = (min(src, dst), max(src, dst))
            weights[key] = max(weights.get(key, 0.0), 1.0)
    if not weights:
        return torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
    keys = np.array(list(weights), dtype=np.int64)
    values = np.array(list(weights.values()), dtype=np.float32)
    values = np.clip(values, 0.05, None)
    src = np.concatenate([keys[:, 0], keys[:, 1]])
    dst = np.concatenate([keys[:, 1], keys[:, 0]])
    edge_index = torch.tensor(np.stack([src, dst]), dtype=torch.long)
    edge_weight = torch.tensor(np.concatenate([values, values]))
    assert torch.isfinite(edge_weight).all()
    assert (edge_weight > 0).all()
    assert int(edge_index.max()) < num_devices
    return edge_index, edge_weight


def build_model(prepared: Prepared, config: ModelConfig) -> TemporalGraphAutoEncoder:
    return TemporalGraphAutoEncoder(
        prepared.num_features, len(prepared.kinds), config.hidden, config.dilations,
        config.own_lag,
    )


@contextmanager
def deterministic() -> Iterator[None]:
    """Run torch with deterministic algorithms, so a run repeats bit for bit.

    Summing messages into a device on several threads otherwise adds them in a
    varying order, and the rounding differences grow over training until two runs
    of one plant stop at different epochs and publish different incidents.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def encode_segments(model: TemporalGraphAutoEncoder, prepared: Prepared) -> Tensor:
    """Encode every segment separately and return z, shape [T, N, H].

    Raises:
        DataError: `prepared` has no segment (every bin is a gap).
    """
    if not prepared.segments:
        raise DataError("no bins to encode: every bin lies in a gap of the data",
                        "Load data covering the reference and scored periods.")
    num_bins = prepared.x.shape[0]
    reach = 2 * sum(model.encoders[0].dilations) + model.own_lag
    z = None
    for start, stop in prepared.segments:
        # In chunks, each encoded with the `reach` bins before it that the
        # temporal layers read: the result equals one pass over the segment, and
        # the messages of a chunk ([bins, edges, hidden]) stay small in memory.
        for first in range(start, stop, ENCODE_CHUNK_BINS):
            context = max(start, first - reach)
            last = min(stop, first + ENCODE_CHUNK_BINS)
            piece = model.encode(
                prepared.x[context:last], prepared.mask[context:last], prepared.kind,
                prepared.edge_index, prepared.edge_weight,
            )
            if z is None:
                z = torch.zeros(num_bins, prepared.x.shape[1], piece.shape[-1])
            z[first:last] = piece[first - context :]
    return z


@dataclass
class TrainResult:
    model: TemporalGraphAutoEncoder
    history: list[dict[str, float]]
    best_epoch: int


def fit(
    prepared: Prepared,
    snapshots: Snapshots,
    train_bins: np.ndarray,
    config: ModelConfig,
    progress: Progress | None = None,
) -> TrainResult:
    """Train on `train_bins`, stopping early on the last share of them.

    With fewer than `MIN_HELD_OUT_BINS` training bins none can be spared, so early
    stopping validates on the training bins themselves (logged as a warning). Each
    epoch steps once per window of `WINDOW_BINS` bins. A window is encoded with
    the bins before it that the temporal layers reach, so its first bins get the
    same context as in scoring. Logs one line per epoch (epoch, loss, validation
    loss, seconds).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    train_bins = np.sort(np.asarray(train_bins))
    if len(train_bins) == 0:
        raise DataError(
            "too few training bins (0); at least 1 is needed",
            "Lengthen the reference period or shorten the bin.",
        )
    if len(train_bins) < MIN_HELD_OUT_BINS:
        log.warning("only %d training bins; early stopping validates on the training "
                    "bins themselves", len(train_bins))
        fit_bins = validation_bins = train_bins
    else:
        split = int(len(train_bins) * (1 - VALIDATION_SHARE))
        fit_bins, validation_bins = train_bins[:split], train_bins[split:]
    reach = 2 * sum(config.dilations) + config.own_lag
    windows = _windows(fit_bins, prepared.segments, reach)
    validation_windows = _windows(validation_bins, prepared.segments, reach, size=10**9)

    model = build_model(prepared, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=1e-5)
    pair_rows = _pair_rows(prepared, snapshots, train_bins, config, rng)

    history: list[dict[str, float]] = []
    best, best_state, best_epoch, waited = float("inf"), None, 0, 0
    for epoch in range(1, config.epochs + 1):
        began = time.perf_counter()
        model.train()
        losses = []
        order = rng.permutation(len(windows))
        if config.windows_per_epoch is not None:
            order = order[: config.windows_per_epoch]
        for position in order:
            optimizer.zero_grad()
            hidden = hide_mask(prepared, windows[position], config.hide_share, rng)
            loss = _window_loss(model, prepared, windows[position], pair_rows, config, hidden)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(float(loss.item()))

        model.eval()
        with torch.no_grad():
            validation = float(np.mean([
                _window_loss(model, prepared, window, pair_rows, config).item()
                for window in validation_windows
            ]))
        seconds = time.perf_counter() - began
        mean_loss = float(np.mean(losses))
        history.append({"epoch": epoch, "loss": mean_loss,
                        "validation_loss": validation, "seconds": seconds})
        log.info("epoch %d loss %.4f validation %.4f %.2fs", epoch, mean_loss,
                 validation, seconds)
        if not np.isfinite(mean_loss):
            raise DataError(f"training loss is not finite at epoch {epoch}",
                            "Check the input features for extreme values.")
        if progress is not None:
            progress("training", epoch / config.epochs)
        if validation < best - 1e-4:
            best, best_epoch, waited = validation, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, history=history, best_epoch=best_epoch)


WINDOW_BINS = 128


def _windows(
    bins: np.ndarray, segments: list[tuple[int, int]], reach: int, size: int = WINDOW_BINS,
) -> list[tuple[int, int, int]]:
    """Split sorted `bins` into (context start, first bin, stop) windows that stay
    inside one segment; the context reaches `reach` bins back where available."""
    windows = []
    for seg_start, seg_stop in segments:
        inside = bins[(bins >= seg_start) & (bins < seg_stop)]
        if len(inside) == 0:
            continue
        breaks = np.flatnonzero(np.diff(inside) > 1) + 1
        for run in np.split(inside, breaks):
            for first in range(int(run[0]), int(run[-1]) + 1, size):
                stop = min(first + size, int(run[-1]) + 1)
                windows.append((max(seg_start, first - reach), first, stop))
    return windows


def hide_mask(
    prepared: Prepared, window: tuple[int, int, int], share: float,
    rng: np.random.Generator,
) -> Tensor | None:
    """Input mask of `window` with the sensor features of a random `share` of the
    devices hidden over a random stretch of it, or None when nothing is hidden."""
    context, _, stop = window
    mask = prepared.mask[context:stop]
    if share <= 0 or mask.shape[-1] <= len(COMM_FEATURES):
        return None
    length, num_devices = stop - context, mask.shape[1]
    chosen = np.flatnonzero(rng.random(num_devices) < share)
    if len(chosen) == 0:
        return None
    hidden = mask.clone()
    starts = rng.integers(0, length, size=len(chosen))
    spans = rng.integers(1, length + 1, size=len(chosen))
    for device, begin, span in zip(chosen, starts, spans):
        hidden[begin : begin + span, device, len(COMM_FEATURES):] = 0.0
    return hidden


def hidden_reconstruction(
    model: TemporalGraphAutoEncoder, prepared: Prepared, devices: list[int],
    start: int, stop: int,
) -> Tensor:
    """Reconstruct bins [start, stop) with the sensor inputs of `devices` hidden there.

    The encoder reads the bins before `start` that its temporal layers reach, from the
    same segment. Returns x_hat, shape [stop - start, N, F], standardized.
    """
    context, stop = _hidden_window(model, prepared, start, stop)
    mask = prepared.mask[context:stop].clone()
    mask[start - context :, devices, len(COMM_FEATURES):] = 0.0
    with torch.no_grad():
        z = model.encode(prepared.x[context:stop], mask, prepared.kind,
                         prepared.edge_index, prepared.edge_weight)
        return model.decode_nodes(z[start - context :])


def hidden_reconstruction_of(
    model: TemporalGraphAutoEncoder, prepared: Prepared, devices: list[int],
    start: int, stop: int,
) -> Tensor:
    """Return the rows of `devices` of `hidden_reconstruction`, shape
    [stop - start, len(devices), F], computed on their neighbourhood only.

    A device's latent reads the inputs of the devices at most `SPATIAL_HOPS` links
    away, and its first-round sums read every link into it and into its
    neighbours. The encoder therefore runs on the devices within `SPATIAL_HOPS`
    links of `devices`, with every link into the devices within `SPATIAL_HOPS - 1`
    links. Each sum over links keeps its order, so the rows are those of the whole
    plant's reconstruction, at a cost that follows the neighbourhood, not the plant.

    NOTE: equal bit for bit to `hidden_reconstruction` in every call of a 40-bin
    online replay of the 1,133-device plant of `bench/online.py --timing-devices
    1000` (torch 2.13.0+cpu, x86-64, one thread). A matrix library that chose its
    kernel by the number of rows could round the last bit differently.
    """
    context, stop = _hidden_window(model, prepared, start, stop)
    nodes, edge_index, edge_weight = _neighbourhood(prepared, devices)
    position = torch.full((prepared.x.shape[1],), -1, dtype=torch.long)
    position[nodes] = torch.arange(len(nodes))
    rows = position[torch.as_tensor(devices, dtype=torch.long)]
    mask = prepared.mask[context:stop, nodes].clone()
    mask[start - context :, rows, len(COMM_FEATURES):] = 0.0
    with torch.no_grad():
        z = model.encode(prepared.x[context:stop, nodes], mask, prepared.kind[nodes],
                         position[edge_index], edge_weight)
        return model.decode_nodes(z[start - context :, rows])


def _hidden_window(model: TemporalGraphAutoEncoder, prepared: Prepared, start: int,
                   stop: int) -> tuple[int, int]:
    """Return the bins [context, stop) that the encoder reads to reconstruct
    [start, stop): back as far as its temporal layers reach, within the segment."""
    segment = next(((a, b) for a, b in prepared.segments if a <= start < b), (0, stop))
    reach = 2 * sum(model.encoders[0].dilations) + model.own_lag
    return max(segment[0], start - reach), min(stop, segment[1])


def _neighbourhood(prepared: Prepared, devices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Return the devices within `SPATIAL_HOPS` links of `devices` (ascending), and
    the links, in their order in `prepared`, into the devices within
    `SPATIAL_HOPS - 1` links."""
    source, target = prepared.edge_index
    reached = torch.zeros(prepared.x.shape[1], dtype=torch.bool)
    reached[torch.as_tensor(devices, dtype=torch.long)] = True
    inner = reached
    for _ in range(SPATIAL_HOPS):
        inner = reached
        reached = reached.clone()
        reached[source[reached[target]]] = True
    into_inner = inner[target]
    return (torch.nonzero(reached).flatten(), prepared.edge_index[:, into_inner],
            prepared.edge_weight[into_inner])


def _window_loss(model, prepared, window, pair_rows, config, hidden=None) -> Tensor:
    context, first, stop = window
    z = model.encode(
        prepared.x[context:stop],
        prepared.mask[context:stop] if hidden is None else hidden,
        prepared.kind, prepared.edge_index, prepared.edge_weight,
    )
    return _loss(model, z, prepared, np.arange(first, stop) - context, pair_rows,
                 context, config)


def _pair_rows(prepared, snapshots, train_bins, config, rng) -> dict[str, Tensor]:
    """Candidate pairs of the training bins: every reference pair in every bin, plus
    sampled non-edges (pairs with no event in that bin and not in the reference)."""
    num_devices = snapshots.num_devices
    reference_codes = set((prepared.reference_pairs[:, 0] * num_devices
                           + prepared.reference_pairs[:, 1]).tolist())
    pair_position = {int(s) * num_devices + int(d): i
                     for i, (s, d) in enumerate(snapshots.pairs)}
    reference = prepared.reference_pairs
    bins = np.repeat(train_bins, len(reference))
    src = np.tile(reference[:, 0], len(train_bins))
    dst = np.tile(reference[:, 1], len(train_bins))
    columns = np.array([pair_position[int(s) * num_devices + int(d)] for s, d in reference],
                       dtype=np.int64)
    counts = snapshots.pair_events[train_bins][:, columns].reshape(-1) if len(columns) else np.zeros(0)

    available = _available_negatives(snapshots, reference_codes, train_bins)
    _log_missing_negatives(snapshots, train_bins[available == 0])
    sampled_bins = train_bins[available > 0]
    wanted = int(config.negatives_per_edge * max(1, (counts > 0).sum()))
    if len(sampled_bins) == 0 or wanted == 0:
        negative = (np.zeros(0, np.int64),) * 3
    else:
        draw = min(wanted, MAX_PAIR_ROWS)
        nb = rng.choice(sampled_bins, size=draw)
        ns = rng.integers(0, num_devices, size=draw)
        nd = rng.integers(0, num_devices, size=draw)
        codes = ns * num_devices + nd
        keep = (ns != nd) & ~np.isin(codes, list(reference_codes))
        observed = np.zeros(draw, dtype=bool)
        for i in np.flatnonzero(keep):
            position = pair_position.get(int(codes[i]))
            observed[i] = position is not None and snapshots.pair_events[nb[i], position] > 0
        keep &= ~observed
        negative = (nb[keep], ns[keep], nd[keep])

    all_bins = np.concatenate([bins, negative[0]])
    all_src = np.concatenate([src, negative[1]])
    all_dst = np.concatenate([dst, negative[2]])
    all_counts = np.concatenate([counts, np.zeros(len(negative[0]))])
    if len(all_bins) > MAX_PAIR_ROWS:
        pick = rng.choice(len(all_bins), MAX_PAIR_ROWS, replace=False)
        all_bins, all_src, all_dst, all_counts = (a[pick] for a in
                                                  (all_bins, all_src, all_dst, all_counts))
    return {
        "bins": torch.tensor(all_bins, dtype=torch.long),
        "src": torch.tensor(all_src, dtype=torch.long),
        "dst": torch.tensor(all_dst, dtype=torch.long),
        "target": torch.tensor(np.log1p(all_counts), dtype=torch.float32),
    }


def _available_negatives(snapshots, reference_codes: set[int], bins: np.ndarray) -> np.ndarray:
    """Count, per bin, the ordered pairs of two different devices that may be drawn
    as negatives: neither a reference pair nor carrying an event in the bin.
    Self-pairs are never negatives."""
    num_devices = snapshots.num_devices
    reference_count = sum(1 for code in reference_codes
                          if code // num_devices != code % num_devices)
    codes = snapshots.pairs[:, 0] * num_devices + snapshots.pairs[:, 1]
    extra = (snapshots.pairs[:, 0] != snapshots.pairs[:, 1]) & ~np.isin(
        codes, list(reference_codes))
    busy = (snapshots.pair_events[bins][:, extra] > 0).sum(axis=1)
    return num_devices * (num_devices - 1) - reference_count - busy


def _log_missing_negatives(snapshots, bins: np.ndarray) -> None:
    """Warn about snapshots without negative pairs, naming the first few."""
    for bin_index in bins[:MAX_LOGGED_SNAPSHOTS]:
        start = snapshots.bin_start(int(bin_index))[0]
        label = f"{start:%H:%M}" if start.second == 0 else f"{start:%H:%M:%S}"
        log.warning("0 negative pairs available in snapshot %s; negative term skipped",
                    label)
    if len(bins) > MAX_LOGGED_SNAPSHOTS:
        log.warning("%d more snapshots without negative pairs; negative term skipped",
                    len(bins) - MAX_LOGGED_SNAPSHOTS)


def _loss(model, z, prepared, local_bins, pair_rows, offset, config) -> Tensor:
    local = torch.as_tensor(local_bins, dtype=torch.long)
    x_hat = model.decode_nodes(z[local])
    x = prepared.x[local + offset]
    mask = prepared.mask[local + offset]
    node = nn.functional.huber_loss(x_hat * mask, x * mask, reduction="sum",
                                    delta=config.huber_delta)
    node = node / mask.sum().clamp_min(1.0)

    bins = pair_rows["bins"] - offset
    chosen = torch.isin(bins, local)
    if not bool(chosen.any()):
        return node
    out = model.decode_pairs(z, bins[chosen], pair_rows["src"][chosen], pair_rows["dst"][chosen])
    target = pair_rows["target"][chosen]
    exists = (target > 0).float()
    link = nn.functional.binary_cross_entropy_with_logits(out[:, 0], exists)
    weight = nn.functional.huber_loss(out[:, 1] * exists, target * exists, reduction="sum",
                                      delta=config.huber_delta) / exists.sum().clamp_min(1.0)
    return node + 0.5 * link + 0.5 * weight


def checkpoint_bytes(model: TemporalGraphAutoEncoder, prepared: Prepared,
                     config: ModelConfig) -> bytes:
    """Serialize weights and the settings needed to rebuild the model."""
    payload = {
        "state": model.state_dict(),
        "num_features": prepared.num_features,
        "kinds": list(prepared.kinds),
        "hidden": config.hidden,
        "dilations": list(config.dilations),
        "own_lag": config.own_lag,
        "center": torch.tensor(prepared.center),
        "scale": torch.tensor(prepared.scale),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(data: bytes) -> tuple[TemporalGraphAutoEncoder, dict]:
    """Rebuild a model from `checkpoint_bytes` output without unpickling objects."""
    payload = torch.load(io.BytesIO(data), weights_only=True)
    model = TemporalGraphAutoEncoder(
        int(payload["num_features"]), len(payload["kinds"]), int(payload["hidden"]),
        tuple(int(d) for d in payload["dilations"]), int(payload["own_lag"]),
    )
    model.load_state_dict(payload["state"])
    model.eval()
    return model, payload


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
