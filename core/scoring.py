"""Residuals per element, aggregated to every scale, and their p-values.

An element is one scored unit at one scale: a (device, bin) for its communication
features, a (device, sensor, bin), or a (pair, bin). Its residual is observed minus
expected; its score is the largest absolute standardized residual among its features
(higher is more anomalous), so a one-sample spike that moves only the bin minimum is
not averaged away by the other features. At a coarse scale of k base bins an element's residual is the mean of
its base residuals, so a small but steady deviation (a drift) adds up while noise
averages out.

A p-value says where a score falls among the same element's scores on held-out
reference bins (the calibration bins): the body of that distribution is empirical,
ties broken by a hash of the element, bin and seed (`tie_uniforms`). A score of
exactly 0, no evidence at all, gets p-value 1. Above its 90th
percentile the tail is a generalized Pareto fit
(method of moments), so a score far beyond anything seen gets a p-value far below
1/(n+1). Elements with fewer than `min_reference` reference scores fall back to the
pool of their device kind, then to the whole family; the run records which.

Known weaknesses: calibration assumes the reference period is mostly normal and
stationary; regimes (time of day, operating modes) widen the reference distribution
and cost power.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from core.model import TemporalGraphAutoEncoder
from core.snapshots import COMM_FEATURES, SENSOR_FEATURES, Snapshots
from core.train import INPUT_CLIP, STD_FLOOR, Prepared, encode_segments

log = logging.getLogger(__name__)

NO_TRAFFIC = "no traffic"
CONSTANT_IN_TRAINING = "constant in training"
OUTSIDE_TRAINING_RANGE = "outside training range"
TAIL_QUANTILE = 0.9
BODY_SCALE = 0.5
BALANCE_QUANTILE = 0.99
# Families whose observed and expected values are event counts per bin.
COUNT_KINDS = ("device", "pair")
MIN_TAIL = 15
P_FLOOR = 1e-12
# Scores this close tie: the same score summed in another order (a window of a few
# bins online against the whole run in batch) differs in its last float32 digits.
TIE_RELATIVE = 1e-5
TIE_ABSOLUTE = 1e-6
PAIR_DECODE_ROWS = 65_536


@dataclass
class Family:
    """Base-bin residuals of one kind of element.

    Attributes:
        kind: "device", "sensor" or "pair".
        ids: one row per element column: device, peer, sensor, device_idx, peer_idx
            (-1 where not a pair) and group (the kind used for fallback pooling).
        residual: shape [T, J, D], standardized residuals, 0 where unobserved.
        weight: shape [T, J, D], 1.0 where the feature is observed.
        exists: shape [T, J], bool, the element exists in the bin.
        observed, expected: shape [T, J], display values in the element's units.
    """

    kind: str
    ids: pd.DataFrame
    residual: np.ndarray
    weight: np.ndarray
    exists: np.ndarray
    observed: np.ndarray
    expected: np.ndarray


@dataclass
class ScaledFamily:
    """A family aggregated to one scale, with scores and (later) p-values."""

    kind: str
    scale: int
    ids: pd.DataFrame
    score: np.ndarray
    exists: np.ndarray
    observed: np.ndarray
    expected: np.ndarray
    p_value: np.ndarray | None = None
    calibration: np.ndarray | None = None


def reconstruct(
    model: TemporalGraphAutoEncoder, prepared: Prepared, snapshots: Snapshots,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray]:
    """Run the trained model over every bin.

    Returns:
        x_hat: shape [T, N, F], standardized reconstruction.
        pair_hat: shape [T, P, 2], (link probability, predicted log1p events) of
            every candidate pair.
        candidates: the candidate pairs (src_idx, dst_idx, reference flag, column of
            `snapshots.pairs` or -1).
        z: shape [T, N, H], the latent.
    """
    num_devices = snapshots.num_devices
    candidates = candidate_pairs(snapshots, prepared)
    with torch.no_grad():
        z = encode_segments(model, prepared)
        x_hat = model.decode_nodes(z).numpy()
        num_bins = z.shape[0]
        pair_hat = np.zeros((num_bins, len(candidates), 2), dtype=np.float32)
        src = torch.tensor(candidates["src_idx"].to_numpy(), dtype=torch.long)
        dst = torch.tensor(candidates["dst_idx"].to_numpy(), dtype=torch.long)
        # Several bins per decoder call: one call per bin costs more in call
        # overhead than in arithmetic on streams of many short bins.
        step = max(1, PAIR_DECODE_ROWS // max(1, len(candidates)))
        for first in range(0, num_bins if len(candidates) else 0, step):
            bins = torch.arange(first, min(first + step, num_bins))
            out = model.decode_pairs(z, bins.repeat_interleave(len(src)),
                                     src.repeat(len(bins)), dst.repeat(len(bins)))
            out = out.reshape(len(bins), len(src), 2)
            rows = slice(first, first + len(bins))
            pair_hat[rows, :, 0] = torch.sigmoid(out[..., 0]).numpy()
            pair_hat[rows, :, 1] = out[..., 1].clamp_min(0).numpy()
    log.info("reconstructed %d bins x %d devices, %d candidate pairs",
             x_hat.shape[0], num_devices, len(candidates))
    return x_hat, pair_hat, candidates, z.numpy()


def candidate_pairs(snapshots: Snapshots, prepared: Prepared) -> pd.DataFrame:
    """Return every pair with an event in some bin, flagged when it is a reference
    pair."""
    num_devices = snapshots.num_devices
    codes = snapshots.pairs[:, 0] * num_devices + snapshots.pairs[:, 1]
    reference = set((prepared.reference_pairs[:, 0] * num_devices
                     + prepared.reference_pairs[:, 1]).tolist())
    return pd.DataFrame({
        "src_idx": snapshots.pairs[:, 0],
        "dst_idx": snapshots.pairs[:, 1],
        "reference": [int(c) in reference for c in codes],
        "column": np.arange(len(codes)),
    })


@dataclass
class TrainingStats:
    """What the families read from the training bins, so that bins scored later
    (online, without the training bins at hand) get the same residual scales.

    Attributes:
        talked: shape [N], bool, the device sent or received in a training bin.
        device_scales: shape [6], `balance` divisors of the communication features.
        reported: shape [S], bool, the sensor reported in a training bin.
        sensor_scales: shape [7], `balance` divisors of the sensor residuals.
        typical_range: shape [S], median within-bin range in the training bins.
        pair_median: shape [P], median events per training bin of each candidate
            pair, in the order of the candidates.
    """

    talked: np.ndarray
    device_scales: np.ndarray | None
    reported: np.ndarray
    sensor_scales: np.ndarray | None
    typical_range: np.ndarray
    pair_median: np.ndarray


def families(
    snapshots: Snapshots, prepared: Prepared, x_hat: np.ndarray,
    pair_hat: np.ndarray, candidates: pd.DataFrame, train_bins: np.ndarray,
    pair_expectation: str = "median",
) -> list[Family]:
    """Build the device, sensor and pair families of base-bin residuals.

    `pair_expectation` sets what a reference pair's count is compared with:
    "median", its median count in the training bins (polling links, whose
    count per bin is steady), or "model", the pair decoder's expectation in that
    bin (sporadic links such as contacts, whose median count is 0).
    """
    return families_with_stats(snapshots, prepared, x_hat, pair_hat, candidates,
                               train_bins, pair_expectation=pair_expectation)[0]


def families_with_stats(
    snapshots: Snapshots, prepared: Prepared, x_hat: np.ndarray,
    pair_hat: np.ndarray, candidates: pd.DataFrame, train_bins: np.ndarray,
    stats: TrainingStats | None = None, pair_expectation: str = "median",
) -> tuple[list[Family], TrainingStats]:
    """Build the families and return the training statistics they used.

    With `stats` given, the statistics come from it and `train_bins` is not read,
    so `snapshots` may hold a short window of bins after the training period.
    Every device that talked in training keeps its device element then.
    `pair_expectation` is as in `families`.
    """
    x = prepared.x.numpy()
    mask = prepared.mask.numpy()
    devices = snapshots.devices
    kinds = devices["kind"].astype(str).to_numpy()
    names = devices["device"].astype(str).to_numpy()
    in_train = np.zeros(snapshots.num_bins, dtype=bool)
    in_train[train_bins] = True
    # A device that appears later is absent before its first bin: its elements do
    # not exist there, so their scores stay NaN instead of 0.
    first = snapshots.devices["first_bin"].to_numpy()
    present = np.arange(snapshots.num_bins)[:, None] >= np.where(first < 0, 0, first)[None, :]
    result = []

    # Devices: communication features, for devices that ever send or receive.
    comm = slice(0, len(COMM_FEATURES))
    talks = snapshots.comm[..., 0:2].sum(axis=-1) > 0
    has_traffic = talks.any(axis=0)
    if stats is None:
        talked_in_train = talks[in_train].any(axis=0)
    else:
        talked_in_train = stats.talked
        has_traffic = has_traffic | talked_in_train
    columns = np.flatnonzero(has_traffic)
    device_scales = stats.device_scales if stats is not None else None
    if len(columns):
        exists = (talks[:, columns] | talked_in_train[columns][None, :]) & present[:, columns]
        center = prepared.center[columns, comm][None]
        scale = prepared.scale[columns, comm][None]
        observed_raw = np.expm1(snapshots.comm[:, columns, 0:2]).sum(-1)
        expected_log = x_hat[:, columns, comm] * scale + center
        expected_raw = np.expm1(np.clip(expected_log[..., 0:2], 0, 30)).sum(-1)
        raw_residual = (x[:, columns, comm] - x_hat[:, columns, comm]) * exists[..., None]
        raw_observed = exists[..., None] & np.ones(len(COMM_FEATURES), bool)
        if device_scales is None:
            device_scales = balance_scales(raw_residual, raw_observed, in_train)
        result.append(Family(
            kind="device",
            ids=pd.DataFrame({"device": names[columns], "peer": None, "sensor": None,
                              "device_idx": columns, "peer_idx": -1,
                              "group": kinds[columns]}),
            residual=balance(raw_residual, raw_observed, in_train, device_scales),
            weight=np.broadcast_to(exists[..., None], exists.shape + (len(COMM_FEATURES),)).astype(np.float32),
            exists=exists,
            observed=observed_raw,
            expected=expected_raw,
        ))

    # Sensors: each sensor's six features, where it reported in training or now.
    sensors = snapshots.sensors
    if len(sensors):
        width = len(SENSOR_FEATURES)
        starts = len(COMM_FEATURES) + width * sensors["slot"].to_numpy()
        device_idx = sensors["device_idx"].to_numpy()
        gather = starts[:, None] + np.arange(width)[None, :]
        xs = x[:, device_idx[:, None], gather]
        hats = x_hat[:, device_idx[:, None], gather]
        ms = mask[:, device_idx[:, None], gather]
        reported = snapshots.sensor_values[..., 4] > 0
        reported_in_train = reported[in_train].any(axis=0) if stats is None else stats.reported
        exists = (reported | reported_in_train[None, :]) & present[:, device_idx]
        ms = ms * exists[..., None]
        # The time since the value last changed and the count of readings describe
        # the sampling, not the value. A stuck sensor's time since change grows for
        # as long as it is stuck, and a sensor that always reported two readings a
        # bin and now reports none lies far below its usual count. The input clip
        # caps both at INPUT_CLIP: a freeze of an hour would score as one of a few
        # minutes, and a sensor that stopped reporting as one that reports a little
        # less. The model reads them clipped; their residuals read them unclipped.
        for name in ("stale", "count"):
            column = SENSOR_FEATURES.index(name)
            unclipped = ((snapshots.sensor_values[..., column]
                          - prepared.center[device_idx, starts + column])
                         / prepared.scale[device_idx, starts + column])
            keep = (ms[..., column] > 0) & np.isfinite(unclipped)
            xs[..., column] = np.where(keep, unclipped, xs[..., column])
        # A sensor constant in training is expected to keep its constant, which is
        # 0 once standardized. The model's output for it only echoes its
        # neighbours. Its time since change grew through all of training, so it
        # adds nothing to the value residual. Its standardized value is in the
        # sensor's own units, so a departure is scored at the input clip instead.
        # NOTE: a sensor that is constant in training but for a few spikes is still
        # scored against the model's output, so the echo of drifting neighbours can
        # rank it first while it stays at its usual level.
        constant = set(prepared.constant)
        fixed = np.array([(str(device), str(name)) in constant
                          for device, name in zip(sensors["device"], sensors["sensor"])],
                         dtype=bool)
        if fixed.any():
            for name in ("mean", "min", "max"):
                column = SENSOR_FEATURES.index(name)
                hats[:, fixed, column] = 0.0
                xs[:, fixed, column] = constant_departure(xs[:, fixed, column])
            ms[:, fixed, SENSOR_FEATURES.index("stale")] = 0.0
        # The score reads the value features (mean, min, max, time since change).
        # It reads the count only where a bin has no reading, and never the
        # within-bin standard deviation of two or three samples, whose noise would
        # swamp the others.
        ms[..., SENSOR_FEATURES.index("std")] = 0.0
        ms[..., SENSOR_FEATURES.index("count")] *= ~reported
        mean_scale = prepared.scale[device_idx, starts]
        mean_center = prepared.center[device_idx, starts]
        # The within-bin range residual, (max - min) observed minus expected, shows a
        # one-sample spike even while the model misjudges the level of the whole bin.
        # A bin with one reading has a range of 0 by construction, so its residual
        # would be the model's own expected range. It counts only with 2 readings.
        at_min, at_max = SENSOR_FEATURES.index("min"), SENSOR_FEATURES.index("max")
        spread = (xs[..., at_max] - xs[..., at_min]) - (hats[..., at_max] - hats[..., at_min])
        several = snapshots.sensor_values[..., 4] >= 2
        spread_weight = ms[..., at_max] * ms[..., at_min] * several
        residual = np.concatenate([(xs - hats) * ms, (spread * spread_weight)[..., None]], -1)
        weight = np.concatenate([ms, spread_weight[..., None]], -1)
        sensor_scales = stats.sensor_scales if stats is not None else \
            balance_scales(residual, weight > 0, in_train)
        result.append(Family(
            kind="sensor",
            ids=pd.DataFrame({"device": sensors["device"].astype(str).to_numpy(),
                              "peer": None,
                              "sensor": sensors["sensor"].astype(str).to_numpy(),
                              "device_idx": device_idx, "peer_idx": -1,
                              "group": kinds[device_idx]}),
            residual=balance(residual, weight > 0, in_train, sensor_scales),
            weight=weight,
            exists=exists,
            # A bin without a reading has no observed value (a silent sensor is
            # not a sensor reading 0).
            observed=np.where(reported, snapshots.sensor_values[..., 0], np.nan),
            expected=hats[..., 0] * mean_scale[None] + mean_center[None],
        ))

        # The within-bin range of each sensor, against its median range in the
        # training bins: a one-sample spike widens it whatever the model expects of
        # the bin's level, while a slow excursion of the whole process does not.
        ranges = (snapshots.sensor_values[..., at_max] - snapshots.sensor_values[..., at_min])
        ranges = ranges / mean_scale[None]
        enough = (snapshots.sensor_values[..., 4] >= 2) & exists
        if stats is None:
            train_ranges = np.where(enough[train_bins], ranges[train_bins], np.nan)
            typical = _column_medians(train_ranges, len(sensors))
        else:
            typical = stats.typical_range
        widening = np.where(enough, np.clip(np.nan_to_num(ranges) - typical, 0, None), 0.0)
        result.append(Family(
            kind="sensor_range",
            ids=result[-1].ids.copy(),
            residual=widening[..., None].astype(np.float32),
            weight=enough[..., None].astype(np.float32),
            exists=enough,
            observed=np.where(enough, ranges, np.nan) * mean_scale[None],
            expected=np.broadcast_to(typical * mean_scale, ranges.shape).copy(),
        ))

    # Pairs: reference pairs in every bin after both ends appeared, other pairs in
    # the bins where they carry events. A polling link's count per bin is discrete
    # (2 or 3 events a minute), and a continuous model expectation would rank equal
    # counts by the model's own noise. So a reference pair is scored against its
    # median count in the training bins. The pair decoder gives the expectation of
    # every other pair (how likely a link that the reference never saw is).
    if len(candidates):
        columns = candidates["column"].to_numpy()
        events = snapshots.pair_events[:, columns]
        observed_log = np.log1p(events)
        model_log = pair_hat[..., 0] * pair_hat[..., 1]
        is_reference = candidates["reference"].to_numpy()
        if stats is None:
            median = np.median(events[train_bins], axis=0) if len(train_bins) else 0 * columns
        else:
            median = stats.pair_median
        if pair_expectation == "model":
            expected_log = model_log
        else:
            expected_log = np.where(is_reference[None, :], np.log1p(median)[None, :],
                                    model_log)
        src = candidates["src_idx"].to_numpy()
        dst = candidates["dst_idx"].to_numpy()
        started = np.arange(snapshots.num_bins)[:, None] >= np.maximum(first[src], first[dst])[None, :]
        exists = (events > 0) | (is_reference[None, :] & started)
        residual = (observed_log - expected_log) * exists
        result.append(Family(
            kind="pair",
            ids=pd.DataFrame({"device": names[src], "peer": names[dst], "sensor": None,
                              "device_idx": src, "peer_idx": dst,
                              "group": kinds[src], "novel": ~is_reference}),
            residual=residual[..., None].astype(np.float32),
            weight=exists[..., None].astype(np.float32),
            exists=exists,
            observed=events,
            expected=np.expm1(expected_log),
        ))
    if stats is None:
        empty = np.zeros(0)
        stats = TrainingStats(
            talked=talked_in_train,
            device_scales=device_scales,
            reported=reported_in_train if len(sensors) else np.zeros(0, bool),
            sensor_scales=sensor_scales if len(sensors) else None,
            typical_range=np.asarray(typical) if len(sensors) else empty,
            pair_median=np.asarray(median) if len(candidates) else empty,
        )
    return result, stats


def balance(residual: np.ndarray, observed: np.ndarray, in_train: np.ndarray,
            scales: np.ndarray | None = None) -> np.ndarray:
    """Divide each feature's residuals by its `BALANCE_QUANTILE` absolute residual
    over the training bins, pooled over the family's elements, or by `scales`
    when given (see `balance_scales`).

    An element's score is its largest feature residual. Without this, a feature with
    heavy tails would set the scale for all of them: the time since a reading last
    changed jumps whenever a slow signal moves. A spike in the mean would then have
    to beat that feature's normal extremes.

    Args:
        residual: shape [T, J, D]. observed: bool, broadcastable to it.
        in_train: shape [T], bool.
    """
    if scales is None:
        scales = balance_scales(residual, observed, in_train)
    return (residual / scales).astype(np.float32)


def balance_scales(residual: np.ndarray, observed: np.ndarray, in_train: np.ndarray) -> np.ndarray:
    """Return the per-feature divisors of `balance`, shape [D]."""
    observed = np.broadcast_to(observed, residual.shape)
    scales = np.ones(residual.shape[-1], dtype=np.float64)
    for feature in range(residual.shape[-1]):
        values = np.abs(residual[in_train, :, feature][observed[in_train, :, feature]])
        if len(values):
            scales[feature] = max(float(np.quantile(values, BALANCE_QUANTILE)), 1e-6)
    return scales


def aggregate(family: Family, scale: int) -> ScaledFamily:
    """Aggregate base-bin residuals to bins of `scale` base bins and score them.

    The score of a coarse element is the largest absolute mean residual among its
    observed features; higher is more anomalous. It is NaN where the element does
    not exist (a device before its first bin), never 0.
    """
    num_bins = family.residual.shape[0]
    coarse = -(-num_bins // scale)
    pad = coarse * scale - num_bins

    def fold(array: np.ndarray) -> np.ndarray:
        if pad:
            widths = [(0, pad)] + [(0, 0)] * (array.ndim - 1)
            array = np.pad(array, widths)
        return array.reshape((coarse, scale) + array.shape[1:]).sum(axis=1)

    weight = fold(family.weight.astype(np.float64))
    mean_residual = fold(family.residual.astype(np.float64) * family.weight) / np.maximum(weight, 1)
    observed_features = weight > 0
    counts = observed_features.sum(-1)
    score = (np.abs(mean_residual) * observed_features).max(-1)
    exists = fold(family.exists.astype(np.int64)) > 0
    exists &= counts > 0
    score = np.where(exists, score, np.nan)
    bins_in = np.maximum(fold(family.exists.astype(np.float64)), 1)
    # The observed value is the mean over the bins that have one.
    seen = family.exists & np.isfinite(family.observed)
    seen_bins = fold(seen.astype(np.float64))
    observed = fold(np.where(seen, family.observed, 0.0).astype(np.float64)) / np.maximum(seen_bins, 1)
    observed = np.where(seen_bins > 0, observed, np.nan)
    expected = fold(np.nan_to_num(family.expected.astype(np.float64)) * family.exists) / bins_in
    return ScaledFamily(family.kind, scale, family.ids, score, exists, observed, expected)


def coarse_periods(periods: np.ndarray, scale: int) -> np.ndarray:
    """Return the period of each coarse bin: the shared period of its base bins,
    or "mixed" where they differ."""
    num_bins = len(periods)
    coarse = -(-num_bins // scale)
    padded = np.concatenate([periods, np.repeat(periods[-1:], coarse * scale - num_bins)])
    blocks = padded.reshape(coarse, scale)
    same = (blocks == blocks[:, :1]).all(axis=1)
    return np.where(same, blocks[:, 0], "mixed")


def calibrate(
    scaled: ScaledFamily, reference_bins: np.ndarray, target_bins: np.ndarray,
    min_reference: int, seed: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Compute p-values of the elements in `target_bins` against `reference_bins`.

    Ties are broken by `tie_uniforms` with `seed`, so an element's p-value in a bin
    does not depend on which other bins or elements are calibrated with it.

    Returns:
        p_value: shape [T_scale, J], NaN outside `target_bins` or where the element
            does not exist.
        level: shape [J], "element", "kind" or "graph": the calibration used.
        counts: elements per calibration level.
    """
    score, exists = scaled.score, scaled.exists
    p_value = np.full(score.shape, np.nan)
    level = np.empty(score.shape[1], dtype=object)
    reference = score[reference_bins]
    reference_exists = exists[reference_bins]

    groups = scaled.ids["group"].to_numpy()
    novel = scaled.ids["novel"].to_numpy() if "novel" in scaled.ids else np.zeros(len(groups), bool)
    novelty = _novelty_rates(scaled, reference_bins, groups, novel)
    own_values = [reference[reference_exists[:, j], j] for j in range(score.shape[1])]
    uniform = tie_uniforms(scaled.ids, scaled.kind, scaled.scale, target_bins, seed)
    pools: dict[str, np.ndarray] = {}
    whole = np.sort(reference[reference_exists])
    for column in range(score.shape[1]):
        group = groups[column]
        if group not in pools:
            chosen = groups == group
            pools[group] = np.sort(reference[:, chosen][reference_exists[:, chosen]])
        own = own_values[column]
        if len(own) >= min_reference:
            pool, level[column] = np.sort(own), "element"
        elif len(pools[group]) >= min_reference:
            pool, level[column] = pools[group], "kind"
        else:
            pool, level[column] = whole, "graph"
        tail = pools[group] if len(pools[group]) >= min_reference else whole
        present = exists[target_bins, column]
        targets = target_bins[present]
        if len(targets) == 0:
            continue
        if novel[column]:
            # A pair the training bins never saw: as surprising as novelty was in
            # the reference bins for senders of this kind (randomized, so exact).
            level[column] = "novelty"
            p_value[targets, column] = novelty[groups[column]] * uniform[present, column]
            continue
        law = events = None
        if scaled.kind == "pair" and level[column] == "element":
            law = CountLaw.of_column(scaled, reference_bins, column)
            events = scaled.observed[targets, column] * scaled.scale
        p_value[targets, column] = tail_pvalues(pool, score[targets, column],
                                                uniform[present, column], tail, law, events)
        if scaled.kind in COUNT_KINDS:
            p_value[targets, column] = np.maximum(p_value[targets, column], count_pvalues(
                scaled.observed[targets, column] * scaled.scale,
                scaled.expected[targets, column] * scaled.scale))
    counts = {name: int((level == name).sum())
              for name in ("element", "kind", "graph", "novelty")}
    return p_value, level, counts


def count_pvalues(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Two-sided p-values of event counts under a Poisson law with the expected count.

    Polling jitter moves a count by an event now and then (one reply in a minute
    instead of two), and a reference period that never saw it would make it look
    impossible. Polling is more regular than Poisson, so this is a lower bound on
    how rare a count change is that a calibrated p-value is never allowed to beat.
    A flood or a silence is still far in the Poisson tail.
    """
    observed = np.round(np.nan_to_num(observed))
    rate = np.maximum(np.nan_to_num(expected), 1e-3)
    lower = stats.poisson.cdf(observed, rate)
    upper = stats.poisson.sf(observed - 1, rate)
    return np.clip(2 * np.minimum(lower, upper), P_FLOOR, 1.0)


def _novelty_rates(scaled, reference_bins, groups, novel) -> dict[str, float]:
    """Per sender kind: (novel pair occurrences + 1) / (bins x senders + 1) in the
    reference bins, the chance that a sender of that kind uses a pair the training
    bins never saw."""
    rates = {}
    senders = scaled.ids.groupby("group")["device_idx"].nunique()
    for group in np.unique(groups):
        chosen = novel & (groups == group)
        occurrences = int(scaled.exists[np.ix_(reference_bins, np.flatnonzero(chosen))].sum()) \
            if chosen.any() and len(reference_bins) else 0
        opportunities = len(reference_bins) * int(senders.get(group, 1))
        rates[group] = (occurrences + 1) / (opportunities + 1)
    return rates


def _gpd_fit(excess: np.ndarray, min_scale: float) -> tuple[float, float] | None:
    """Fit a generalized Pareto to `excess` by the method of moments and return its
    (shape, scale), or None when the excesses cannot support a fit. The scale is at
    least `min_scale`."""
    if len(excess) < MIN_TAIL:
        return None
    mean, variance = excess.mean(), excess.var()
    if not (variance > 0 and mean > 0):
        return None
    # A negative shape bounds the tail and would give p = 0 beyond the fitted
    # endpoint; clipping at 0 keeps at least an exponential tail.
    shape = float(np.clip(0.5 * (1 - mean ** 2 / variance), 0.0, 0.5))
    sigma = max(0.5 * mean * (mean ** 2 / variance + 1), min_scale)
    return shape, sigma


def _gpd_apply(fit: tuple[float, float], y: np.ndarray) -> np.ndarray:
    """Return the survival at `y` >= 0 of a generalized Pareto with `fit` (shape,
    scale)."""
    shape, sigma = fit
    scaled = np.maximum(y, 0) / sigma
    if shape < 1e-6:
        return np.exp(-scaled)
    return (1 + shape * scaled) ** (-1 / shape)


@dataclass(frozen=True)
class PoolTail:
    """The generalized Pareto tail of a sorted pool of scores beyond its 90th
    percentile, as `tail_pvalues` and `_pooled_ratio` fit it.

    It depends on the pool alone, so a caller that scores against the same pool
    many times can fit it once (`own` for the pool of the scores themselves,
    `pooled` for a kind's pooled scores).
    """

    threshold: float
    exceedances: int
    # (shape, scale), or None where the exceedances cannot support a fit.
    fit: tuple[float, float] | None

    @classmethod
    def own(cls, reference: np.ndarray) -> PoolTail:
        """Fit the tail of `tail_pvalues` to a non-empty sorted `reference`, with a
        scale of at least `BODY_SCALE` times the distance from its median to its
        90th percentile."""
        n = len(reference)
        threshold = reference[int(TAIL_QUANTILE * (n - 1))]
        excess = reference[reference > threshold] - threshold
        body = BODY_SCALE * (threshold - reference[(n - 1) // 2])
        return cls(threshold, len(excess), _gpd_fit(excess, body))

    @classmethod
    def pooled(cls, pooled: np.ndarray) -> PoolTail:
        """Fit the tail of `_pooled_ratio` to a non-empty sorted `pooled`."""
        threshold = pooled[int(TAIL_QUANTILE * (len(pooled) - 1))]
        excess = pooled[pooled > threshold] - threshold
        return cls(threshold, len(excess), _gpd_fit(excess, 0.0))

    def survival(self, y: np.ndarray) -> np.ndarray | None:
        """Return the fitted survival at distances `y` >= 0 above the threshold, or
        None without a fit."""
        return None if self.fit is None else _gpd_apply(self.fit, y)


def _column_medians(values: np.ndarray, width: int) -> np.ndarray:
    """Median of each column of `values` over its finite entries; 0 for a column
    without any (a sensor read once per bin has no within-bin range)."""
    medians = np.zeros(width)
    if values.size:
        has = np.isfinite(values).any(axis=0)
        medians[has] = np.nanmedian(values[:, has], axis=0)
    return medians


@dataclass
class CountLaw:
    """The law of one element's event count per bin, fitted to its reference bins.

    A polling link reads 3, 4 or 5 events a minute for hours, so its reference has
    too few distinct values for a fitted tail, and its kind's pooled scores mix it
    with bursty links. Its own counts give a better tail: Poisson with their mean,
    or negative binomial with their mean and variance where they vary more than
    Poisson. Polling varies less, so Poisson is the cautious choice for it.
    """

    mean: float
    variance: float
    low: float
    high: float

    @classmethod
    def fit(cls, counts: np.ndarray) -> CountLaw | None:
        """Fit the law to reference counts; None without any."""
        counts = counts[np.isfinite(counts)]
        if len(counts) == 0:
            return None
        return cls(float(counts.mean()), float(counts.var()),
                   float(counts.min()), float(counts.max()))

    @classmethod
    def of_column(cls, scaled: ScaledFamily, reference_bins: np.ndarray,
                  column: int) -> CountLaw | None:
        """Fit the law to one element's event counts in the reference bins where it
        exists. Return None when it has none there."""
        seen = reference_bins[scaled.exists[reference_bins, column]]
        return cls.fit(scaled.observed[seen, column] * scaled.scale)

    def ratio(self, counts: np.ndarray) -> np.ndarray:
        """Return how much rarer each count is than the reference's extreme on its
        side: P(X >= count) / P(X >= high) above the reference's counts,
        P(X <= count) / P(X <= low) below them, and 1 within them."""
        counts = np.round(np.asarray(counts, dtype=np.float64))
        mean = max(self.mean, 1e-3)
        if self.variance > mean:
            size = mean ** 2 / (self.variance - mean)
            law = stats.nbinom(size, size / (size + mean))
        else:
            law = stats.poisson(mean)
        result = np.ones(len(counts))
        up = counts > self.high
        down = counts < self.low
        with np.errstate(divide="ignore", invalid="ignore"):
            result[up] = law.sf(counts[up] - 1) / max(law.sf(self.high - 1), 1e-300)
            result[down] = law.cdf(counts[down]) / max(law.cdf(self.low), 1e-300)
        return np.clip(np.nan_to_num(result, nan=1.0), 0.0, 1.0)


def tail_pvalues(
    reference: np.ndarray, scores: np.ndarray, uniform: np.ndarray,
    pooled: np.ndarray | None = None, law: CountLaw | None = None,
    counts: np.ndarray | None = None, own_tail: PoolTail | None = None,
    pooled_tail: PoolTail | None = None,
) -> np.ndarray:
    """Upper-tail p-values of `scores` among sorted `reference` scores.

    The body is empirical, (greater + U * (equal + 1)) / (n + 1) with U from
    `uniform` (one per score, uniform on [0, 1)), so ties (empty bins, constant
    signals) give uniform p-values, except that a score of exactly 0 (no evidence
    at all) gets p-value 1, as in `core.online.Calibrator.pvalues`. Beyond the largest
    reference score the tail is a generalized Pareto fit to the exceedances over the
    90th percentile, with a scale of at least `BODY_SCALE` times the distance from
    the median to the 90th percentile: a recurring pattern can put a tight cluster of
    nearly equal scores at the top of the reference, and an exceedance fit to that
    cluster alone would call a score just beyond it impossible. An element with too few distinct exceedances (a polling count
    that only ever reads 5, 6 or 7) borrows the tail of its kind's pooled scores
    (`pooled`, sorted): its p-value beyond its own maximum is 1 / (n + 1) times how
    much rarer the score is than that maximum among the pooled scores. An event
    count with its own count law (`law`, with the `counts` behind `scores`) uses
    that law instead of the pool (see `CountLaw`). `own_tail` and `pooled_tail` are
    `PoolTail.own(reference)` and `PoolTail.pooled(pooled)`, fitted here when not
    given.
    """
    n = len(reference)
    if n == 0:
        return np.ones_like(scores, dtype=np.float64)
    low, high = tie_bounds(scores)
    left = np.searchsorted(reference, low, side="left")
    right = np.searchsorted(reference, high, side="right")
    greater = n - right
    equal = right - left
    p = (greater + np.asarray(uniform, dtype=np.float64) * (equal + 1)) / (n + 1)

    # A score of exactly 0 is no evidence, however many reference scores it ties
    # with, so its p-value is 1 rather than a tie-broken one.
    p = np.where(np.asarray(scores) == 0, 1.0, p)
    beyond = low > reference[-1]
    if not beyond.any():
        return np.clip(p, P_FLOOR, 1.0)
    own = own_tail if own_tail is not None else PoolTail.own(reference)
    survival = own.survival(scores[beyond] - own.threshold)
    if survival is not None:
        p[beyond] = own.exceedances / (n + 1) * survival
    elif law is not None and counts is not None:
        p[beyond] = law.ratio(counts[beyond]) / (n + 1)
    elif pooled is not None and len(pooled) >= MIN_TAIL:
        p[beyond] = _pooled_ratio(pooled, reference[-1], scores[beyond],
                                  pooled_tail) / (n + 1)
    return np.clip(p, P_FLOOR, 1.0)


def element_keys(ids: pd.DataFrame) -> pd.Index:
    """Return the identity of each element across windows: device, peer and sensor."""
    # pandas' string dtype keeps a missing peer or sensor missing through astype(str),
    # and one missing part makes the whole key missing, so they become "" first.
    parts = [ids[column].astype(object).fillna("").astype(str)
             for column in ("device", "peer", "sensor")]
    text = parts[0] + "\x1f" + parts[1] + "\x1f" + parts[2]
    return pd.Index(text.to_numpy(dtype=object))


def tie_uniforms(ids: pd.DataFrame, kind: str, scale: int, bins: np.ndarray,
                 seed: int, names: pd.Index | None = None) -> np.ndarray:
    """Return numbers uniform on [0, 1), shape [len(bins), J], one per coarse bin of
    `bins` and element of `ids`, for breaking ties among scores.

    Each number is a hash of the element's kind and names (`element_keys`, or
    `names` where the caller has them), the bin, the scale and `seed`. So an
    element gets the same number in a bin whether the batch run calibrates the
    whole day or the online path one bin, and a run gives the same p-values again.
    """
    if names is None:
        names = element_keys(ids)
    keys = np.fromiter((zlib.crc32(f"{kind}\x1f{name}".encode()) for name in names),
                       dtype=np.uint64, count=len(names))
    bins = np.asarray(bins, dtype=np.int64).astype(np.uint64)
    state = (keys[None, :] << np.uint64(32)) ^ (bins[:, None] * np.uint64(0x9E3779B97F4A7C15))
    state = state ^ np.uint64((int(scale) * 0x94D049BB133111EB + int(seed)) % (1 << 64))
    # The finalizer of splitmix64 spreads every input bit over the output.
    state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    state = state ^ (state >> np.uint64(31))
    return (state >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def tie_bounds(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the lowest and highest score that ties with each of `scores`, within
    `TIE_RELATIVE` of it or `TIE_ABSOLUTE`, whichever is larger."""
    scores = np.asarray(scores, dtype=np.float64)
    slack = np.maximum(TIE_ABSOLUTE, TIE_RELATIVE * np.abs(scores))
    return scores - slack, scores + slack


def _pooled_ratio(pooled: np.ndarray, own_max: float, scores: np.ndarray,
                  tail: PoolTail | None = None) -> np.ndarray:
    """P(pooled > score) / P(pooled > own_max): empirical inside the pool, with a
    generalized Pareto tail beyond its 90th percentile (`tail`, which is
    `PoolTail.pooled(pooled)`, fitted here when not given)."""
    m = len(pooled)
    if tail is None:
        tail = PoolTail.pooled(pooled)

    def survival(values: np.ndarray) -> np.ndarray:
        empirical = (m - np.searchsorted(pooled, values, side="right") + 0.5) / (m + 1)
        above = values > tail.threshold
        fitted = tail.survival(values[above] - tail.threshold)
        if fitted is not None:
            empirical[above] = tail.exceedances / (m + 1) * fitted
        return np.maximum(empirical, 1e-300)

    at_max = survival(np.array([own_max]))[0]
    return np.clip(survival(scores) / at_max, 0.0, 1.0)


def stretch_pvalues(score: np.ndarray, p_value: np.ndarray, target: np.ndarray,
                    guard: int, min_outside: int) -> np.ndarray:
    """Return `p_value` raised, where needed, to each element's p-value among its
    own scores in the stretch of `target` bins it belongs to.

    A stretch is a run of consecutive bins of `target`. An element's p-value in a
    bin is (k + 1) / (n + 1), with n its scores in the stretch outside the `guard`
    bins on either side and k of them at least as large as the bin's own. So a
    change that lasts longer than the guard raises its own reference, and an
    anomaly shorter than it does not. Where fewer than `min_outside` scores lie
    outside, or the element has no p-value (NaN), the p-value is kept.
    """
    result = p_value.copy()
    if len(target) == 0:
        return result
    width = 2 * guard + 1
    for stretch in np.split(target, np.flatnonzero(np.diff(target) > 1) + 1):
        finite = ~np.isnan(p_value[stretch])
        for column in np.flatnonzero(finite.any(axis=0)):
            present = finite[:, column]
            rows = stretch[present]
            values = score[rows, column].astype(np.float64)
            ordered = np.sort(values)
            at_least = len(values) - np.searchsorted(ordered, values, side="left")
            # Scores of the bins within the guard, in stretch positions (absent
            # elements count as -inf, so they are never at least as large).
            padded = np.full(len(stretch) + 2 * guard, -np.inf)
            padded[guard:guard + len(stretch)][present] = values
            near = np.lib.stride_tricks.sliding_window_view(padded, width)[present]
            inside = (near >= values[:, None]).sum(axis=1)
            running = np.concatenate([[0], np.cumsum(present)])
            positions = np.flatnonzero(present)
            counted = (running[np.minimum(positions + guard + 1, len(stretch))]
                       - running[np.maximum(positions - guard, 0)])
            outside = len(values) - counted
            own = (at_least - inside + 1) / (outside + 1)
            keep = outside < min_outside
            raised = np.maximum(result[rows, column], own)
            result[rows, column] = np.where(keep, result[rows, column], raised)
    return result


def recalibrate(p_value: np.ndarray, null_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map p-values through the distribution of held-out null p-values of the same
    family and scale.

    Element calibration assumes each element's reference is exchangeable with its
    future. A process excursion beyond the reference range breaks that, and then the
    element p-values of normal bins reach 1e-7 far more often than 1e-7 of the time.
    The null p-values (calibration bins scored out of sample) show how often:
    a p-value p becomes the share of null p-values at most p. Beyond the smallest
    null p-value the share is extrapolated (see `null_mapping`). On the null itself
    the result is uniform by construction.

    Returns:
        The recalibrated score-period and null p-values (NaN stays NaN).
    """
    mapped = null_mapping(null_p)
    if mapped is None:
        return p_value, null_p
    return mapped(p_value), mapped(null_p)


# Fewer held-out null p-values than this give no recalibration map.
MIN_NULL = 100


def null_mapping(null_p: np.ndarray):
    """Return the map of `recalibrate` fitted to `null_p` (a function from an array
    of p-values to recalibrated ones, NaN kept), or None with fewer than 100 null
    p-values.

    Beyond the smallest null p-value, -log10(p) has an exponential tail whose mean
    excess is fitted to the deepest null p-values. Element p-values that are off by
    a power, p ** k, have such a tail. An element tail fitted too light or too heavy
    makes that error. The shape of a generalized Pareto is not fitted: from a few
    hundred exceedances it swings between about -0.4 and 0.35 with their number,
    and a positive shape maps an 8-sigma spike's p = 1e-12 to about 1e-6. The
    extrapolated share is never smaller than the p-value itself. So a null that
    looks conservative deep in its tail does not make an unseen p-value stronger.

    NOTE: a sensor whose readings later go further beyond its reference than the
    calibration bins showed now gives single-reading incidents. On 100 null runs of
    sample plants, 30 had an incident against 23 with the fitted shape.
    """
    null = null_p[~np.isnan(null_p)]
    if len(null) < MIN_NULL:
        return None
    depth = np.sort(-np.log10(np.clip(null, 1e-300, 1.0)))
    count = len(depth)
    top = max(MIN_TAIL, min(500, count // 20))
    base = depth[count - top - 1]
    mean_excess = float((depth[count - top:] - base).mean())

    def mapped(values: np.ndarray) -> np.ndarray:
        result = values.copy()
        finite = ~np.isnan(values)
        y = -np.log10(np.clip(values[finite], 1e-300, 1.0))
        # A count law's p-value is one value for many null bins. The same p-value
        # computed from an expected count a rounding error away must count them all.
        low, _ = tie_bounds(y)
        deeper = count - np.searchsorted(depth, low, side="left")
        share = (deeper + 1) / (count + 1)
        beyond = low > depth[-1]
        if beyond.any() and mean_excess > 0:
            fitted = top / (count + 1) * np.exp(-(y[beyond] - base) / mean_excess)
            own = 10.0 ** -y[beyond]
            share[beyond] = np.minimum(share[beyond], np.maximum(fitted, own))
        result[finite] = np.clip(np.minimum(share, 1.0), P_FLOOR, 1.0)
        return result

    return mapped


def window_scores(
    families: list[ScaledFamily], events: np.ndarray,
) -> pd.DataFrame:
    """Score each bin of one scale as a whole window.

    Args:
        families: the scaled families of one scale.
        events: shape [T_scale], events in each bin of that scale.

    Returns:
        Columns bin, score (the largest element score in the bin, higher is more
        anomalous, 0.0 where no element exists), events, and note: "no traffic"
        for a bin without events, so a quiet window is not read as a normal one.
    """
    num_bins = len(events)
    score = np.zeros(num_bins)
    for family in families:
        if family.score.size:
            peak = np.nanmax(np.where(family.exists, family.score, -np.inf), axis=1)
            score = np.maximum(score, np.where(np.isfinite(peak), peak, 0.0))
    return pd.DataFrame({
        "bin": np.arange(num_bins),
        "score": score,
        "events": np.asarray(events, dtype=np.int64),
        "note": np.where(np.asarray(events) == 0, NO_TRAFFIC, ""),
    })


def sensor_deviations(
    snapshots: Snapshots, prepared: Prepared, train_bins: np.ndarray,
    bins: np.ndarray,
) -> pd.DataFrame:
    """List each sensor's bin mean in `bins` against the training bins, with flags.

    `scaled` is the standardized bin mean the model reads (clipped at
    `INPUT_CLIP`), so it is finite even for a sensor that was constant in training
    (that sensor is scaled by 1 around its constant value). Flags: "constant in
    training", and "outside training range" when the bin mean lies below the
    smallest or above the largest training bin mean.

    Returns:
        Columns bin, start, device, sensor, value, scaled, flags (a list of
        str). Per bin, flagged sensors come first, then larger |scaled|, so the
        first row names the sensor that deviates most.
    """
    sensors = snapshots.sensors
    columns = ["bin", "start", "device", "sensor", "value", "scaled", "flags"]
    if len(sensors) == 0 or len(bins) == 0:
        return pd.DataFrame(columns=columns)
    mean = SENSOR_FEATURES.index("mean")
    device_idx = sensors["device_idx"].to_numpy()
    starts = len(COMM_FEATURES) + len(SENSOR_FEATURES) * sensors["slot"].to_numpy() + mean
    training = snapshots.sensor_values[np.asarray(train_bins), :, mean]
    low = np.where(np.isnan(training), np.inf, training).min(axis=0, initial=np.inf)
    high = np.where(np.isnan(training), -np.inf, training).max(axis=0, initial=-np.inf)
    constant = set(prepared.constant)
    x = prepared.x.numpy()
    rows = []
    for bin_index in np.asarray(bins):
        values = snapshots.sensor_values[bin_index, :, mean]
        scaled = x[bin_index, device_idx, starts]
        start = snapshots.bin_start(int(bin_index))[0]
        for row, (device, sensor) in enumerate(zip(sensors["device"], sensors["sensor"])):
            if np.isnan(values[row]):
                continue
            flags = []
            if (str(device), str(sensor)) in constant:
                flags.append(CONSTANT_IN_TRAINING)
            if values[row] < low[row] or values[row] > high[row]:
                flags.append(OUTSIDE_TRAINING_RANGE)
            rows.append({"bin": int(bin_index), "start": start, "device": str(device),
                         "sensor": str(sensor), "value": float(values[row]),
                         "scaled": float(scaled[row]), "flags": flags})
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    frame["_flagged"] = frame["flags"].map(lambda f: OUTSIDE_TRAINING_RANGE in f)
    frame["_size"] = frame["scaled"].abs()
    frame = frame.sort_values(["bin", "_flagged", "_size"], ascending=[True, False, False],
                              kind="stable")
    return frame[columns].reset_index(drop=True)


def constant_departure(x: np.ndarray) -> np.ndarray:
    """Map standardized values of sensors constant in training to their scored size.

    Training gives such a sensor no spread, so `core.train` scales it by 1 in its
    own units, and its standardized value is a distance in whatever unit the
    sensor reports. A pump status stepping from 1 to 2 would then count no more
    than one standard deviation of a noisy sensor. Any departure from the training
    constant is instead scored as `INPUT_CLIP`, the largest standardized size the
    model input carries, because training never saw the sensor move.

    NOTE: the size of the departure is lost, so a setpoint nudged by a harmless
    fraction scores as high as a pump switched on.

    Args:
        x: standardized values of constant sensors, any shape.

    Returns:
        Same shape and dtype: 0 where |x| is at most `STD_FLOOR` (the tolerance
        under which training calls a sensor constant), else sign(x) * `INPUT_CLIP`.
    """
    moved = np.abs(x) > STD_FLOOR
    return np.where(moved, np.sign(x) * INPUT_CLIP, 0.0).astype(x.dtype)
