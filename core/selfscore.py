"""Element p-values of a stream calibrated against the stream itself.

`core.pipeline` trains on a reference period and scores what follows it. Some
streams have no clean reference: the anomalies are a small share of one recording,
and every slot of it needs a score (link-stream benchmarks such as MAD's). Here the
model trains on the whole stream, and each element's scores are calibrated against
the same element's scores over the whole stream: a p-value measures how rare a (device,
bin) or (pair, bin) is within its own history. The anomalies are part of that
history, so they cost some power, as a few anomalies in a reference period do.

Three scores per slot come out of the element p-values, each higher is more
anomalous and each combines the scales with a Bonferroni factor (the number of
scales):

- pair: -log10 of the pair element's p-value in the bin.
- device: -log10 of the smallest p-value among the device's own element and the
  pairs it takes part in (a pair counts for both ends, as in the scan), times the
  number of those elements.
- graph: the Berk-Jones statistic of all element p-values in the bin, maximized
  over the search's significance levels (the scan's statistic with every device in
  the set).

Known weaknesses: a slow change that spans most of the stream is part of every
element's own history and scores as normal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from core import scoring, train
from core.config import RunConfig
from core.errors import DataError
from core.scan import berk_jones
from core.snapshots import Snapshots

log = logging.getLogger(__name__)

P_MIN = 1e-300


@dataclass
class StreamScores:
    """Per-bin scores of one stream; every array has one row per base bin.

    Attributes:
        devices: device names, in the order of the device columns.
        pairs: shape [P, 2], device indices of each pair column.
        pair: shape [T, P], pair score, NaN where the pair element does not exist.
        device: shape [T, N], device score, 0 where the device has no element.
        graph: shape [T], graph score.
        epochs: training epochs run.
    """

    devices: list[str]
    pairs: np.ndarray
    pair: np.ndarray
    device: np.ndarray
    graph: np.ndarray
    epochs: int


def score_stream(
    snapshots: Snapshots, config: RunConfig, pair_expectation: str = "model",
) -> StreamScores:
    """Train on every bin of `snapshots`, calibrate each element on its own bins,
    and return the pair, device and graph scores of every base bin.

    Every bin is used, empty ones included, whatever `max_empty_bins` is set to,
    because this is for streams whose empty slots are part of the recording.

    Raises:
        DataError: the stream has fewer than 2 devices or fewer than 16 bins.
    """
    train.require_devices(snapshots)
    num_bins = snapshots.num_bins
    if num_bins < 16:
        raise DataError(f"the stream has {num_bins} bins; at least 16 are needed",
                        "Use a shorter bin or a longer stream.")
    bins = np.arange(num_bins)
    with train.deterministic():
        prepared = train.prepare(snapshots, bins, [(0, num_bins)])
        fitted = train.fit(prepared, snapshots, bins, config.model)
        x_hat, pair_hat, candidates, _ = scoring.reconstruct(fitted.model, prepared,
                                                             snapshots)
    families = scoring.families(snapshots, prepared, x_hat, pair_hat, candidates, bins,
                                pair_expectation=pair_expectation)
    del x_hat, pair_hat

    scales = config.stream.scales
    num_devices = snapshots.num_devices
    pair_score = device_score = graph_score = None
    for scale in scales:
        pair_p, device_p, all_p = None, np.ones((num_bins, num_devices)), []
        element_count = np.zeros((num_bins, num_devices))
        for family in families:
            scaled = scoring.aggregate(family, scale)
            coarse = np.arange(scaled.score.shape[0])
            p, _, _ = scoring.calibrate(scaled, coarse, coarse,
                                        config.search.min_reference, config.model.seed)
            base = np.repeat(p, scale, axis=0)[:num_bins]
            all_p.append(base)
            exists = ~np.isnan(base)
            filled = np.where(exists, base, 1.0)
            ends = [scaled.ids["device_idx"].to_numpy()]
            if family.kind == "pair":
                pair_p = base
                ends.append(scaled.ids["peer_idx"].to_numpy())
            for end in ends:
                for column, device in enumerate(end):
                    device_p[:, device] = np.minimum(device_p[:, device],
                                                     filled[:, column])
                    element_count[:, device] += exists[:, column]
        corrected = np.minimum(device_p * np.maximum(element_count, 1), 1.0)
        device_now = -np.log10(np.maximum(corrected * len(scales), P_MIN).clip(max=1.0))
        device_score = device_now if device_score is None else np.maximum(device_score,
                                                                         device_now)
        if pair_p is not None:
            pair_now = -np.log10(np.clip(pair_p * len(scales), P_MIN, 1.0))
            if pair_score is None:
                pair_score = pair_now
            else:
                pair_score = np.fmax(pair_score, pair_now)
        graph_now = _graph_statistic(np.concatenate(all_p, axis=1),
                                     config.search.alphas)
        graph_score = graph_now if graph_score is None else np.maximum(graph_score,
                                                                      graph_now)
    if pair_score is None:
        pair_score = np.full((num_bins, 0), np.nan)
    pair_columns = candidates["column"].to_numpy()
    return StreamScores(
        devices=snapshots.devices["device"].astype(str).tolist(),
        pairs=snapshots.pairs[pair_columns], pair=pair_score, device=device_score,
        graph=graph_score, epochs=len(fitted.history),
    )


def _graph_statistic(p_values: np.ndarray, alphas: tuple[float, ...]) -> np.ndarray:
    """Berk-Jones statistic of each row's finite p-values, maximized over `alphas`.

    Args:
        p_values: shape [T, J], NaN where an element does not exist.
    """
    exists = ~np.isnan(p_values)
    total = exists.sum(axis=1)
    best = np.zeros(len(p_values))
    for alpha in alphas:
        count = (np.where(exists, p_values, 1.0) <= alpha).sum(axis=1)
        best = np.maximum(best, berk_jones(count, total, alpha))
    return best

