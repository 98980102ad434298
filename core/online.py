"""Online scoring: each bin is scored when it closes, and incidents grow in place.

`OnlineModel.load` rebuilds what a published run learned: the model, the training
statistics of the residuals (`scoring.TrainingStats`), each element's calibration
pool at every scale, the null mapping of `scoring.recalibrate` and the scan's null
thresholds. It scores the run's reference period once for that, and never again.

`OnlineScorer.close_bin` then does a bounded amount of work per bin:

1. bin the new bin's events and readings in SQL (`core.snapshots`), onto the run's
   device index, and append them to a window of the last `window` bins (the model's
   temporal context plus the largest scale);
2. run the model over that window and build the residual families of its bins;
3. for every scale whose coarse bin ends with this bin, aggregate the last bins of
   that scale and compute p-values against the stored calibration pools;
4. at every scale whose bin closed, scan the intervals that end with this bin
   (`localize.detect` with `min_stop`) and match what it finds to the incidents
   already open: an incident that is found again keeps its id and grows, one that
   matches none is new.

The scan state of each scale (`LiveScale`) lives from bin to bin, and each closed
coarse bin is added to it. What `detect` takes out of it stays out, also in the
coarse bins that close later, as the batch scan takes an incident's elements out of
every scale. An interval is scanned in the bin it ends with and in no later bin. The state
keeps at most `horizon + period` base bins, enough for the longest interval and for
`detect` to refine an interval backwards. The intervals lie on the grid of the batch
scan, counted from the first bin the scorer closed rounded down to a whole bin of
every scale (`scan_anchor_bin` in the online file).

An incident gets a new version when devices join it or its interval doubles since
its last version. `core.alerts` sends one alert per (incident id, version).

Known limits: devices and sensors that the run's reference period never saw are not
scored online (their events and readings are counted and reported), and the time
since a sensor's value last changed is counted from the first bin the scorer read.
The online scan takes incidents out in the order their bins close, but the batch
scan takes the strongest first. So when an anomaly is found first at a fine scale,
its elements are taken out of the coarse bins that close later, and the coarse scale
does not widen its interval as it may in the batch run.

NOTE: a run with `SearchConfig.calibrate_on_scored` ranks each element among its
scores in the whole scored stretch; the online path has no such stretch yet and
calibrates against the reference alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from core import binning, localize, pipeline, scoring, store, train
from core.config import RunConfig
from core.errors import DataError
from core.snapshots import (COMM_FEATURES, EVENT_BINS_SQL, MICROS, PLACES_COLUMNS,
                            SENSOR_FEATURES, Snapshots, _communication, _positions,
                            _sensor_values, build_snapshots, measurement_bins, no_rounding)

log = logging.getLogger(__name__)

ONLINE_DIR = "online"
EVIDENCE_BINS = 720
# Bins of input kept beyond the model's window, over which the devices of a process
# incident are checked with their sensor inputs hidden (`pipeline.explain_away`).
EXPLAIN_BINS = 60
MIN_HORIZON_BINS = 64


def recorded_places(info: dict) -> pd.DataFrame:
    """Return the sensors a run read at a coarser resolution (`rounded_readings`
    of its report), as `core.snapshots.reading_places` gives them."""
    rows = info.get("rounded_readings") or []
    if not rows:
        return no_rounding()
    return pd.DataFrame(rows, columns=list(PLACES_COLUMNS))


def micros(text: str) -> int:
    stamp = pd.Timestamp(text)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1000)


# --------------------------------------------------------------------------- model


@dataclass
class Calibrator:
    """The calibration of one family at one scale, fitted once, applied per bin.

    It computes what `scoring.calibrate` computes for a target bin, with the pools
    taken from the run's calibration bins. An element's pool is its own reference
    scores when it has `min_reference` of them, else its kind's, else the family's.
    Novel pairs get the novelty rate of their sender kind. The result goes through
    the null mapping of `scoring.recalibrate`.
    """

    kind: str
    scale: int
    keys: pd.Series
    own: np.ndarray
    own_count: np.ndarray
    group_pools: dict[str, np.ndarray]
    whole: np.ndarray
    novelty: dict[str, float]
    min_reference: int
    mapping: Any
    laws: dict[int, scoring.CountLaw]
    # The fitted tails of the pools (`scoring.PoolTail`), by pool, filled as
    # elements need them. The pools do not change after `fit`.
    tails: dict[tuple[str, Any], scoring.PoolTail] = field(
        default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, scaled: scoring.ScaledFamily, reference_bins: np.ndarray,
            min_reference: int, null_p: np.ndarray) -> "Calibrator":
        score, exists = scaled.score, scaled.exists
        reference = score[reference_bins]
        reference_exists = exists[reference_bins]
        groups = scaled.ids["group"].astype(str).to_numpy()
        novel = scaled.ids["novel"].to_numpy() if "novel" in scaled.ids \
            else np.zeros(len(groups), bool)
        novelty = scoring._novelty_rates(scaled, reference_bins, groups, novel)
        pools = {}
        for group in np.unique(groups):
            chosen = groups == group
            pools[str(group)] = np.sort(reference[:, chosen][reference_exists[:, chosen]])
        whole = np.sort(reference[reference_exists])
        width = max(len(reference_bins), 1)
        own = np.full((score.shape[1], width), np.nan)
        counts = np.zeros(score.shape[1], dtype=np.int64)
        for column in range(score.shape[1]):
            values = np.sort(reference[reference_exists[:, column], column])
            own[column, : len(values)] = values
            counts[column] = len(values)
        keys = pd.Series(np.arange(len(scaled.ids)), index=element_keys(scaled.ids))
        keys = keys[~keys.index.duplicated()]
        # The count law of each pair with a pool of its own, as `scoring.calibrate`
        # fits it.
        laws = {}
        if scaled.kind == "pair":
            for column in np.flatnonzero((counts >= min_reference) & ~novel):
                law = scoring.CountLaw.of_column(scaled, reference_bins, column)
                if law is not None:
                    laws[int(column)] = law
        return cls(scaled.kind, scaled.scale, keys, own, counts, pools, whole,
                   {str(k): v for k, v in novelty.items()}, min_reference,
                   scoring.null_mapping(null_p), laws)

    def pvalues(self, scaled: scoring.ScaledFamily, coarse_bin: int, seed: int) -> np.ndarray:
        """Return the p-values of the single bin of `scaled`, shape [J], NaN where
        an element does not exist. `coarse_bin` is the bin's index at its scale
        from the run's origin, which with `seed` breaks ties as the batch run does
        (`scoring.tie_uniforms`)."""
        score = scaled.score[0]
        exists = scaled.exists[0] & np.isfinite(score)
        p = np.full(len(score), np.nan)
        groups = scaled.ids["group"].astype(str).to_numpy()
        novel = scaled.ids["novel"].to_numpy() if "novel" in scaled.ids \
            else np.zeros(len(groups), bool)
        names = element_keys(scaled.ids)
        rows = self._rows(scaled.ids, names)
        columns = np.flatnonzero(exists)
        values = score[columns]
        group_of = groups[columns]
        # Each element's pool is its own reference scores (a row of `own`) when it has
        # `min_reference` of them, else its kind's, else the family's, as in
        # `scoring.calibrate`.
        has_own = np.zeros(len(columns), bool)
        known = rows[columns] >= 0
        has_own[known] = self.own_count[rows[columns][known]] >= self.min_reference
        size = np.zeros(len(columns), np.int64)
        greater = np.zeros(len(columns), np.int64)
        equal = np.zeros(len(columns), np.int64)
        pool_max = np.full(len(columns), np.inf)
        # A bin's scores here are summed over a short window and the pools' over the
        # whole run. A score equal to a pool's usual one can then lie a rounding
        # error above it. `scoring.tie_bounds` makes them tie, as in the batch run.
        low, high = scoring.tie_bounds(values)
        if has_own.any():
            own_rows = rows[columns][has_own]
            pools = self.own[own_rows]
            below = (pools < low[has_own, None]).sum(axis=1)
            at_most = (pools <= high[has_own, None]).sum(axis=1)
            size[has_own] = self.own_count[own_rows]
            greater[has_own] = size[has_own] - at_most
            equal[has_own] = at_most - below
            pool_max[has_own] = pools[np.arange(len(pools)), size[has_own] - 1]
        for group in np.unique(group_of[~has_own]):
            chosen = ~has_own & (group_of == group)
            pool = self._pool(str(group))
            left = np.searchsorted(pool, low[chosen], side="left")
            right = np.searchsorted(pool, high[chosen], side="right")
            size[chosen] = len(pool)
            greater[chosen] = len(pool) - right
            equal[chosen] = right - left
            pool_max[chosen] = pool[-1] if len(pool) else np.inf
        novel_here = novel[columns]
        uniform = scoring.tie_uniforms(scaled.ids.iloc[columns], self.kind, self.scale,
                                       np.array([coarse_bin]), seed, names[columns])[0]
        value = np.ones(len(columns))
        empirical = ~novel_here & (size > 0)
        value[empirical] = np.clip(
            (greater[empirical] + uniform[empirical] * (equal[empirical] + 1))
            / (size[empirical] + 1), scoring.P_FLOOR, 1.0)
        # A score of exactly 0 is no evidence, so its p-value is 1 (`tail_pvalues`).
        value[empirical & (values == 0)] = 1.0
        for position in np.flatnonzero(empirical & (low > pool_max)):
            # Beyond the pool's max, `tail_pvalues` uses its fitted tail.
            column = columns[position]
            group = str(group_of[position])
            pool = self.own[rows[column], : size[position]] if has_own[position] \
                else self._pool(group)
            pool_group = self.group_pools.get(group, np.zeros(0))
            tail = pool_group if len(pool_group) >= self.min_reference else self.whole
            law = self.laws.get(int(rows[column])) if has_own[position] else None
            events = scaled.observed[0, column:column + 1] * scaled.scale
            key = ("own", int(rows[column])) if has_own[position] else ("group", group)
            own_tail = self._tail(key, pool, scoring.PoolTail.own)
            pooled_tail = self._tail(("pooled", group), tail, scoring.PoolTail.pooled) \
                if len(tail) >= scoring.MIN_TAIL else None
            value[position] = scoring.tail_pvalues(pool, values[position:position + 1],
                                                   uniform[position:position + 1], tail,
                                                   law, events, own_tail, pooled_tail)[0]
        if novel_here.any():
            rates = np.array([self.novelty.get(str(g), 1.0) for g in group_of[novel_here]])
            value[novel_here] = rates * uniform[novel_here]
        p[columns] = value
        if self.kind in scoring.COUNT_KINDS:
            chosen = exists & ~novel
            p[chosen] = np.maximum(p[chosen], scoring.count_pvalues(
                scaled.observed[0, chosen] * scaled.scale,
                scaled.expected[0, chosen] * scaled.scale))
        if self.mapping is not None:
            p = self.mapping(p)
        return p


    def _tail(self, key: tuple[str, Any], pool: np.ndarray, fit) -> scoring.PoolTail:
        """Return `fit(pool)`, the tail of the pool stored under `key`, fitting it on
        first use."""
        tail = self.tails.get(key)
        if tail is None:
            tail = self.tails[key] = fit(pool)
        return tail

    def _pool(self, group: str) -> np.ndarray:
        """Return the pool of an element with too few reference scores of its own."""
        pool_group = self.group_pools.get(group, np.zeros(0))
        return pool_group if len(pool_group) >= self.min_reference else self.whole

    def _rows(self, ids: pd.DataFrame, names: pd.Index | None = None) -> np.ndarray:
        """Return the calibration row of each element of `ids` (whose `element_keys`
        are `names` where given), or -1 for elements the calibration bins never had."""
        if names is None:
            names = element_keys(ids)
        return self.keys.reindex(names).fillna(-1).to_numpy(dtype=np.int64)


element_keys = scoring.element_keys


@dataclass
class OnlineModel:
    """The model, calibration and thresholds of a published run, for scoring the
    bins after it."""

    run_id: str
    info: dict
    config: RunConfig
    model: Any
    reference: Snapshots
    prepared: train.Prepared
    stats: scoring.TrainingStats
    calibrators: dict[tuple[int, str], Calibrator]
    thresholds: dict[int, dict[int, float]]
    singleton: dict[int, dict[str, float]]
    # Per scale, the device weights of the run's scan (`localize.device_weights`);
    # none for runs that did not keep them.
    weights: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def origin_us(self) -> int:
        return int(self.info["origin_us"])

    @property
    def bin_seconds(self) -> int:
        return int(self.info["bin_seconds"])

    @property
    def receptive(self) -> int:
        """Base bins of past input the model reads, as in `pipeline.localize_run`."""
        return 2 * sum(self.config.model.dilations) + self.config.model.own_lag

    @classmethod
    def load(cls, workspace: store.Workspace, run_id: str | None = None) -> "OnlineModel":
        """Rebuild the model and calibration of a run from its file and the store.

        Raises:
            DataError: the run has no model, no calibration period, or the store
                no longer holds its reference data.
        """
        run_id = workspace.resolve_run(run_id)
        path = workspace.run_path(run_id)
        info = store.read_run_info(workspace, run_id)
        config = RunConfig.from_dict(info["config"])
        blobs = store.query(path, "SELECT data FROM model_checkpoint WHERE name = 'model'")
        if blobs.empty:
            raise DataError(f"run {run_id} has no model checkpoint",
                            "Run `tgloc run` to train a model, then start again.")
        spans = info.get("periods", {})
        if "train" not in spans or "calibration" not in spans:
            raise DataError(f"run {run_id} has no training or calibration period",
                            "Run `tgloc run` with a reference period, then start again.")
        model, payload = train.load_checkpoint(bytes(blobs["data"].iloc[0]))
        started = time.perf_counter()
        places = recorded_places(info)
        reference = build_snapshots(workspace.store_path, int(info["bin_seconds"]),
                                    int(info["origin_us"]),
                                    micros(spans["calibration"]["end"]), places=places)
        reference_config = dataclasses.replace(
            config, reference_start=spans["train"]["start"],
            reference_end=spans["calibration"]["end"], score_start=None, score_end=None)
        periods, segments = pipeline.assign_periods(reference, reference_config)
        train_bins = np.flatnonzero(periods == "train")
        with train.deterministic():
            prepared = train.prepare(reference, train_bins, segments, kinds=payload["kinds"])
            if prepared.num_features != int(payload["num_features"]):
                raise DataError(
                    f"the store gives {prepared.num_features} model inputs per device, "
                    f"the model of run {run_id} reads {int(payload['num_features'])}",
                    "The store changed since the run; run `tgloc run` again.")
            x_hat, pair_hat, candidates, _ = scoring.reconstruct(model, prepared, reference)
            families, stats = scoring.families_with_stats(
                reference, prepared, x_hat, pair_hat, candidates, train_bins)
        calibrators = {}
        for scale in config.stream.scales:
            coarse = scoring.coarse_periods(periods, scale)
            calibration = np.flatnonzero(coarse == "calibration")
            folds = np.array_split(calibration, pipeline.NULL_FOLDS)
            for family in families:
                scaled = scoring.aggregate(family, scale)
                null_p = np.full(scaled.score.shape, np.nan)
                for fold in folds:
                    if len(fold) == 0:
                        continue
                    rest = np.setdiff1d(calibration, fold)
                    fold_p, _, _ = scoring.calibrate(
                        scaled, rest, fold, config.search.min_reference, config.model.seed)
                    null_p[fold] = fold_p[fold]
                calibrators[(scale, family.kind)] = Calibrator.fit(
                    scaled, calibration, config.search.min_reference, null_p)
        thresholds, singleton, weights = {}, {}, {}
        for scale, value in info.get("thresholds", {}).items():
            if "weights" in value:
                weights[int(scale)] = np.asarray(value["weights"], dtype=np.float64)
            # A threshold of 0 comes from null windows without any evidence (a
            # calibration period of one or two bins at a coarse scale), and would
            # make every interval a hit, so that length is not scanned online.
            # NOTE: the batch scan still uses such a threshold.
            thresholds[int(scale)] = {int(k): float(v) for k, v in value["by_length"].items()
                                      if float(v) > 0}
            singleton[int(scale)] = {k: float(v) for k, v in value["singleton_p"].items()}
        log.info("online model of run %s ready in %.1f s: %d devices, %d sensors, %d pairs",
                 run_id, time.perf_counter() - started, reference.num_devices,
                 len(reference.sensors), len(reference.pairs))
        return cls(run_id, info, config, model, reference, prepared, stats, calibrators,
                   thresholds, singleton, weights)

    def horizon(self) -> int:
        """Base bins the online scan looks back: the longest interval any scale's
        null thresholds cover, rounded up to whole bins of the largest scale."""
        largest = max(self.config.stream.scales)
        longest = max((scale * max(lengths, default=1)
                       for scale, lengths in self.thresholds.items()), default=1)
        longest = max(longest, MIN_HORIZON_BINS)
        return int(-(-longest // largest) * largest)


def scan_period(online: OnlineModel) -> int:
    """Return the base bins by which the online scan's kept bins move.

    It is a multiple of every scale and of the step between the longest intervals
    of each scale, so moving the kept bins leaves the grid of intervals in place.
    """
    search = online.config.search
    period = 1
    for scale in online.config.stream.scales:
        period = math.lcm(period, scale)
        lengths = online.thresholds.get(scale, {})
        longest = min(search.max_interval_bins, max(lengths, default=1))
        length = 1 << (max(longest, 1).bit_length() - 1)
        period = math.lcm(period, scale * max(length // 2, 1))
    return period


# --------------------------------------------------------------------------- bins


@dataclass
class BinRows:
    """One base bin on the run's device index."""

    comm: np.ndarray
    sensor_values: np.ndarray
    pair_columns: np.ndarray
    pair_events: np.ndarray
    pair_bytes: np.ndarray
    x: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    spatial: list[torch.Tensor] | None = None
    x_hat: np.ndarray | None = None
    pair_hat: np.ndarray | None = None


class BinFeed:
    """Bins the store one base bin at a time onto the run's index.

    Pairs the reference never saw get new columns after the reference pairs. Events
    and readings of devices or sensors outside the run's index are counted in
    `unknown_rows` and left out.
    """

    def __init__(self, online: OnlineModel, store_path: Path) -> None:
        self.online = online
        self.store_path = store_path
        reference = online.reference
        names = reference.devices["device"].astype(str).to_numpy()
        self.index = pd.Series(np.arange(len(names)), index=names)
        self.sensors = reference.sensors
        self.sensor_keys = set(zip(reference.sensors["device"].astype(str),
                                   reference.sensors["sensor"].astype(str)))
        self.pair_columns = {(int(a), int(b)): i for i, (a, b) in enumerate(reference.pairs)}
        self.pairs = [tuple(int(v) for v in pair) for pair in reference.pairs]
        self.last_change = np.full(len(reference.sensors), np.nan)
        self.unknown_rows = 0

    def read(self, bin_index: int) -> BinRows:
        online = self.online
        width = online.bin_seconds * MICROS
        start = online.origin_us + bin_index * width
        with store.connect(self.store_path, read_only=True) as con:
            events = con.execute(EVENT_BINS_SQL, {
                "origin": online.origin_us, "width": width, "start": start,
                "stop": start + width}).df()
            # One bin of look-back, so a reading's change is judged against the
            # previous reading even across the bin edge.
            # NOTE: forward fill reaches back one bin here, where the batch run
            # fills from any earlier reading.
            stream = online.config.stream
            readings = measurement_bins(con, binning.measurement_parameters(
                online.origin_us, online.bin_seconds, start - width, start + width,
                stream.gap_fill == "ffill", stream.gap_fill_limit), online.reference.rounded)
        readings = readings[readings["bin"] == bin_index]

        known = events["src"].isin(self.index.index) & events["dst"].isin(self.index.index)
        keys = list(zip(readings["device"].astype(str), readings["sensor"].astype(str)))
        known_readings = np.array([key in self.sensor_keys for key in keys], dtype=bool)
        self.unknown_rows += int((~known).sum()) + int((~known_readings).sum())
        events = events[known].assign(bin=0)
        readings = readings[known_readings].assign(bin=0)

        names = pd.Index(self.index.index)
        comm, local_pairs, local_events, local_bytes = _communication(
            events, _positions(names, events["src"]), _positions(names, events["dst"]),
            len(self.index), 1)
        columns = []
        for src, dst in local_pairs:
            key = (int(src), int(dst))
            if key not in self.pair_columns:
                self.pair_columns[key] = len(self.pairs)
                self.pairs.append(key)
            columns.append(self.pair_columns[key])
        values = _sensor_values(readings, self.sensors, 1, start, online.bin_seconds)
        self._carry_staleness(values, readings, start + width)
        return BinRows(comm[0], values[0], np.asarray(columns, dtype=np.int64),
                       local_events[0] if len(columns) else np.zeros(0, np.float32),
                       local_bytes[0] if len(columns) else np.zeros(0, np.float32))

    def _carry_staleness(self, values: np.ndarray, readings: pd.DataFrame, end_us: int) -> None:
        """Set the stale feature from the last change carried across bins."""
        if len(self.sensors) == 0:
            return
        if len(readings):
            key = pd.Series(np.arange(len(self.sensors)), index=pd.MultiIndex.from_frame(
                self.sensors[["device", "sensor"]].astype(str)))
            rows = key[pd.MultiIndex.from_frame(
                readings[["device", "sensor"]].astype(str))].to_numpy()
            changed = readings["last_change_us"].to_numpy(dtype=np.float64)
            fresh = ~np.isnan(changed)
            self.last_change[rows[fresh]] = changed[fresh]
        width = self.online.bin_seconds * MICROS
        stale = (end_us - self.last_change) / width
        stale = np.where(np.isnan(stale), 0.0, np.clip(stale, 0.0, None))
        reported = values[0, :, SENSOR_FEATURES.index("count")] > 0
        values[0, :, SENSOR_FEATURES.index("stale")] = np.where(reported, np.log1p(stale), np.nan)


# --------------------------------------------------------------------------- incidents


@dataclass
class Tracked:
    """An online incident: its identity, current extent and last alerted version."""

    incident_id: str
    version: int
    raised_bin: int
    updated_bin: int
    start_bin: int
    stop_bin: int
    devices: list[str]
    row: dict
    members: pd.DataFrame
    version_devices: int = 0
    version_length: int = 0
    # Devices of its hits that look normal with their sensor inputs hidden
    # (`pipeline.explain_away`): not members, but hits on them still join it.
    explained: list[str] = field(default_factory=list)
    # Whether its interval has been set by the batch search (`OnlineScorer.settle_due`).
    settled: bool = False


INCIDENT_COLUMNS = ["incident_id", "rank", "start", "end", "type", "score", "threshold",
                    "alpha", "scale", "severity", "summary", "version", "raised_bin",
                    "raised_at", "updated_bin", "start_bin", "stop_bin"]


def _overlaps(a: Tracked, start: int, stop: int, gap: int) -> bool:
    return start <= a.stop_bin + gap and a.start_bin <= stop + gap


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def _without(members: pd.DataFrame, devices: set[str]) -> pd.DataFrame:
    """Return `members` without the device and sensor rows of `devices`."""
    if not devices:
        return members
    dropped = members["role"].isin(["device", "sensor"]) & members["device"].astype(str).isin(devices)
    return members[~dropped]


# --------------------------------------------------------------------------- scan state

# `novel`: a pair the reference never saw, or a new device; such an element counts
# in full at its ends whatever the device weights (`localize.end_weights`).
ELEMENT_COLUMNS = {"kind": object, "column": np.int64, "device_idx": np.int64,
                   "peer_idx": np.int64, "bin": np.int64, "p_value": np.float64,
                   "score": np.float64, "novel": bool}


def _no_elements() -> pd.DataFrame:
    """Return an empty table of scan elements."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in ELEMENT_COLUMNS.items()})


class LiveScale(localize.ScaleState):
    """Scan state of one scale that the online scorer keeps from bin to bin.

    It grows by one coarse bin when a bin of the scale closes, and local bin 0 is the
    first coarse bin it keeps. Elements are appended in bin order, so the elements
    of a range of bins are one slice of rows (`bin_rows`). The element queries of
    `localize.detect` (`dominant`, `is_process`, `targets`, `remove`) therefore read
    only the rows of their interval. What `detect` takes out stays out in later
    bins. The prefix sums (`evidence`) are kept, and only those from the first bin
    that changed are computed again.
    """

    def __init__(self, scale: int, num_devices: int, alphas: tuple[float, ...],
                 thresholds: dict[int, float], singleton_limits: dict[str, float],
                 capacity: int, weights: np.ndarray | None = None) -> None:
        self.alphas = tuple(alphas)
        counted, summed = (np.int32, np.int64) if weights is None else (np.float64, np.float64)
        self.count_buffer = np.zeros((max(capacity, 1), num_devices, len(alphas)), counted)
        self.total_buffer = np.zeros((max(capacity, 1), num_devices), counted)
        self.count_sums = np.zeros((max(capacity, 1) + 1, num_devices, len(alphas)), summed)
        self.total_sums = np.zeros((max(capacity, 1) + 1, num_devices), summed)
        # Rows 0 to `summed` of the prefix sums are up to date.
        self.summed = 0
        self.bin_rows = [0]
        # Take-outs that reach coarse bins not closed yet, as (devices, start, stop)
        # in local base bins. Each such bin has them applied when it closes.
        self.pending: list[tuple[list[int], int, int]] = []
        super().__init__(scale=scale, elements=_no_elements(), active=np.zeros(0, bool),
                         counts=self.count_buffer[:0], totals=self.total_buffer[:0],
                         runs=[(0, 0)], thresholds=thresholds,
                         singleton_limits=singleton_limits, weights=weights)

    @property
    def num_bins(self) -> int:
        return len(self.bin_rows) - 1

    def append(self, frame: pd.DataFrame) -> None:
        """Add the next coarse bin, with its elements (`bin` is overwritten)."""
        position = self.num_bins
        if position == len(self.count_buffer):
            grown = len(self.count_buffer)

            def double(array: np.ndarray) -> np.ndarray:
                return np.concatenate([array, np.zeros_like(array[:grown])])

            self.count_buffer, self.total_buffer = double(self.count_buffer), double(
                self.total_buffer)
            self.count_sums, self.total_sums = double(self.count_sums), double(self.total_sums)
        counts, totals = self.count_buffer[position], self.total_buffer[position]
        counts[:] = 0
        totals[:] = 0
        if len(frame):
            if "novel" not in frame:
                frame = frame.assign(novel=False)
            frame = frame[list(ELEMENT_COLUMNS)].assign(bin=position)
            p = frame["p_value"].to_numpy()
            for column in ("device_idx", "peer_idx"):
                device = frame[column].to_numpy()
                keep = device >= 0
                amount = localize.end_weights(frame, device, self.weights)
                np.add.at(totals, device[keep], amount[keep])
                for a, alpha in enumerate(self.alphas):
                    chosen = keep & (p <= alpha)
                    np.add.at(counts[:, a], device[chosen], amount[chosen])
            self.elements = pd.concat([self.elements, frame], ignore_index=True) \
                if len(self.elements) else frame.reset_index(drop=True)
            self.active = np.concatenate([self.active, np.ones(len(frame), bool)])
        self.bin_rows.append(len(self.elements))
        self._resized()
        self.summed = min(self.summed, position)
        for devices, start, stop in self.pending:
            if start // self.scale <= position < -(-stop // self.scale):
                self.window(position, position + 1).remove(devices, start, stop, self.alphas)
        self.pending = [item for item in self.pending
                        if -(-item[2] // self.scale) > self.num_bins]

    def drop(self, count: int) -> None:
        """Forget the first `count` bins, so that local bin `count` becomes bin 0."""
        count = min(count, self.num_bins)
        if count <= 0:
            return
        first_row = self.bin_rows[count]
        elements = self.elements.iloc[first_row:]
        self.elements = elements.assign(bin=elements["bin"].to_numpy() - count).reset_index(
            drop=True)
        self.active = self.active[first_row:].copy()
        self.bin_rows = [rows - first_row for rows in self.bin_rows[count:]]
        kept = self.num_bins
        self.count_buffer[:kept] = self.count_buffer[count:count + kept].copy()
        self.total_buffer[:kept] = self.total_buffer[count:count + kept].copy()
        shift = count * self.scale
        self.pending = [(devices, start - shift, stop - shift)
                        for devices, start, stop in self.pending]
        self._resized()
        self.summed = 0

    def _resized(self) -> None:
        self.counts = self.count_buffer[: self.num_bins]
        self.totals = self.total_buffer[: self.num_bins]
        self.runs = [(0, self.num_bins)]

    def evidence(self) -> localize.Evidence:
        """Return the prefix sums of `localize.ScaleState.evidence`.

        They are views into this state's arrays, so the next change overwrites them.
        """
        end = self.num_bins
        if self.summed < end:
            begin = self.summed
            self.count_sums[begin + 1 : end + 1] = self.count_sums[begin] + np.cumsum(
                self.counts[begin:end], axis=0, dtype=self.count_sums.dtype)
            self.total_sums[begin + 1 : end + 1] = self.total_sums[begin] + np.cumsum(
                self.totals[begin:end], axis=0, dtype=self.total_sums.dtype)
            self.summed = end
        return localize.Evidence(self.count_sums[: end + 1], self.total_sums[: end + 1])

    def window(self, start: int, stop: int) -> localize.ScaleState:
        """Return a state of the elements of local bins [start, stop) only.

        It shares this state's arrays, so what it takes out is taken out here too.
        """
        start = min(max(start, 0), self.num_bins)
        stop = min(max(stop, start), self.num_bins)
        first, last = self.bin_rows[start], self.bin_rows[stop]
        return localize.ScaleState(self.scale, self.elements.iloc[first:last],
                                   self.active[first:last], self.counts, self.totals,
                                   self.runs, self.thresholds, self.singleton_limits,
                                   self.weights)

    def dominant(self, devices: list[int], start: int, stop: int, alpha: float,
                 share: float) -> list[int]:
        return self.window(start, stop).dominant(devices, start, stop, alpha, share)

    def is_process(self, devices: list[int], start: int, stop: int, alpha: float) -> bool:
        return self.window(start, stop).is_process(devices, start, stop, alpha)

    def targets(self, devices: list[int], start: int, stop: int, alpha: float) -> list[int]:
        return self.window(start, stop).targets(devices, start, stop, alpha)

    def remove(self, devices: list[int], start: int, stop: int, alphas) -> None:
        """Take out the elements touching `devices` in the coarse bins that touch
        base bins [start, stop). Coarse bins not closed yet lose them when they close."""
        lower, upper = start // self.scale, -(-stop // self.scale)
        self.window(lower, upper).remove(devices, start, stop, alphas)
        self.summed = min(self.summed, max(lower, 0))
        if upper > self.num_bins:
            self.pending.append((list(devices), start, stop))


# --------------------------------------------------------------------------- scorer


@dataclass
class BinResult:
    bin: int
    seconds: float
    new: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)


class OnlineScorer:
    """Scores bins as they close and keeps the incidents of the online path."""

    def __init__(self, online: OnlineModel, workspace: store.Workspace,
                 name: str | None = None) -> None:
        self.online = online
        self.workspace = workspace
        self.name = name or online.run_id
        # One bin's tensors are small: extra intra-op threads cost more to wake than
        # they save (a 32-channel convolution over 40 devices took 0.6 ms on one
        # thread and 75 ms on two on a loaded 2-core machine).
        torch.set_num_threads(1)
        self.feed = BinFeed(online, workspace.store_path)
        dilations = online.config.model.dilations
        self.conv_span = 2 * sum(dilations) + 1
        self.window = max(self.conv_span, online.config.model.own_lag + 1,
                          max(online.config.stream.scales))
        self.horizon = online.horizon()
        self.period = scan_period(online)
        # The scan's intervals lie on a grid that starts at base bin `scan_anchor`,
        # as the batch scan's start at its scored period. Local bin 0 of every scale
        # is base bin `scan_origin`, which moves by `period`.
        self.scan_anchor: int | None = None
        self.scan_origin: int | None = None
        self.scan: dict[int, LiveScale] = {}
        self.rows: dict[int, BinRows] = {}
        self.evidence: list[pd.DataFrame] = []
        self.tracked: dict[str, Tracked] = {}
        # The last search of `_window_detect`, with its bin and devices: incidents
        # settled together usually share it.
        self.window_search: tuple | None = None
        self.bins: list[dict] = []
        self.last_bin: int | None = None
        self.late_rows = 0
        self.sensor_ids: pd.DataFrame | None = None
        self.novel_log: dict[int, set[int]] = {}
        reference = online.prepared.reference_pairs
        self.reference_codes = set((reference[:, 0] * online.reference.num_devices
                                    + reference[:, 1]).tolist())
        self.reference_array = np.array(sorted(self.reference_codes), dtype=np.int64)

    @property
    def path(self) -> Path:
        return online_path(self.workspace, self.name)

    def first_bin(self) -> int:
        """Return the next bin to score: the first after the run's data, or after
        the last bin this scorer closed."""
        if self.last_bin is not None:
            return self.last_bin + 1
        return int(self.online.info["num_bins"])

    def bin_end_us(self, bin_index: int) -> int:
        return self.online.origin_us + (bin_index + 1) * self.online.bin_seconds * MICROS

    # ---------------------------------------------------------------- warm-up

    def warm_up(self, first: int) -> None:
        """Read the bins before `first` that the window and the scan need, scoring
        them without raising incidents. The elements of the incidents already
        tracked (from `restore`) are then taken out of the scan."""
        self._start_scan(first)
        begin = max(0, first - self.horizon - self.window)
        for bin_index in range(begin, first):
            self.rows[bin_index] = self.feed.read(bin_index)
            if bin_index >= first - self.horizon:
                self._score_elements(bin_index)
            else:
                self._reconstruct(bin_index)
            self._forget(bin_index)
        self._take_out_tracked()

    def _start_scan(self, first: int) -> None:
        """Set up the scan state for scoring from base bin `first` on."""
        online = self.online
        if self.scan_anchor is None:
            whole = math.lcm(*online.config.stream.scales)
            self.scan_anchor = first // whole * whole
        lag = max(0, -(-(first - self.horizon - self.scan_anchor) // self.period))
        self.scan_origin = self.scan_anchor + lag * self.period
        span = self.horizon + self.period
        self.scan = {
            scale: LiveScale(scale, online.reference.num_devices, online.config.search.alphas,
                             online.thresholds[scale], online.singleton.get(scale, {}),
                             span // scale + 2, online.weights.get(scale))
            for scale in online.config.stream.scales if scale in online.thresholds}

    def _take_out_tracked(self) -> None:
        """Take the elements of the tracked incidents' devices and targets, over
        their intervals, out of the scan, as `localize.detect` took them out when
        it found them."""
        if not self.tracked or not self.scan:
            return
        names = self.feed.index
        alphas = self.online.config.search.alphas
        for tracked in self.tracked.values():
            reached = tracked.members.loc[tracked.members["role"].isin(["device", "target"]),
                                          "device"].astype(str)
            devices = sorted(int(names[d]) for d in set(reached) if d in names.index)
            start = tracked.start_bin - self.scan_origin
            stop = tracked.stop_bin - self.scan_origin
            if devices and stop > 0:
                for state in self.scan.values():
                    state.remove(devices, max(start, 0), stop, alphas)

    def _rebase(self, bin_index: int) -> None:
        """Forget the oldest `period` base bins of the scan once it keeps more than
        the horizon and a period."""
        while bin_index + 1 - self.scan_origin > self.horizon + self.period:
            for scale, state in self.scan.items():
                state.drop(self.period // scale)
            self.scan_origin += self.period

    # ---------------------------------------------------------------- one bin

    def close_bin(self, bin_index: int) -> BinResult:
        """Score base bin `bin_index`, update the incidents and return what changed."""
        started = time.perf_counter()
        if self.scan_origin is None:
            self._start_scan(bin_index)
        self.rows[bin_index] = self.feed.read(bin_index)
        self._score_elements(bin_index)
        self._rebase(bin_index)
        result = BinResult(bin_index, 0.0)
        self._localize(bin_index, result)
        self._forget(bin_index)
        self.last_bin = bin_index
        result.seconds = time.perf_counter() - started
        self.bins.append({"bin": bin_index,
                          "start": pd.Timestamp(self.bin_end_us(bin_index - 1), unit="us", tz="UTC"),
                          "end": pd.Timestamp(self.bin_end_us(bin_index), unit="us", tz="UTC"),
                          "scored_at": pd.Timestamp.now(tz="UTC"),
                          "seconds": result.seconds})
        return result

    def _forget(self, bin_index: int) -> None:
        for old in [b for b in self.rows if b <= bin_index - self.window - EXPLAIN_BINS]:
            del self.rows[old]
        oldest = self.scan_origin if self.scan_origin is not None else bin_index + 1
        for old in [b for b in self.novel_log if b < oldest]:
            del self.novel_log[old]
        oldest = bin_index + 1 - EVIDENCE_BINS
        self.evidence = [f for f in self.evidence if len(f) and f["bin"].iloc[0] >= oldest]

    def _window_snapshots(self, last: int, count: int) -> Snapshots:
        """Snapshots of base bins last - count + 1 .. last on the run's index."""
        online = self.online
        reference = online.reference
        first = last - count + 1
        bins = list(range(first, last + 1))
        rows = [self.rows.get(b) or self._empty_rows() for b in bins]
        num_pairs = len(self.feed.pairs)
        pair_events = np.zeros((len(bins), num_pairs), np.float32)
        pair_bytes = np.zeros((len(bins), num_pairs), np.float32)
        for position, row in enumerate(rows):
            pair_events[position, row.pair_columns] = row.pair_events
            pair_bytes[position, row.pair_columns] = row.pair_bytes
        comm = np.stack([row.comm for row in rows])
        values = np.stack([row.sensor_values for row in rows])
        active = comm[..., 0:2].sum(-1) > 0
        if len(reference.sensors):
            has = values[..., SENSOR_FEATURES.index("count")] > 0
            owners = reference.sensors["device_idx"].to_numpy()
            for position in range(len(bins)):
                active[position, owners[has[position]]] = True
        devices = reference.devices.copy()
        devices["first_bin"] = 0
        return Snapshots(
            origin_us=online.origin_us + first * online.bin_seconds * MICROS,
            bin_seconds=online.bin_seconds, num_bins=len(bins), devices=devices,
            sensors=reference.sensors, comm=comm, sensor_values=values,
            pairs=np.asarray(self.feed.pairs, dtype=np.int64).reshape(-1, 2),
            pair_events=pair_events, pair_bytes=pair_bytes, links=reference.links,
            active=active)

    def _empty_rows(self) -> BinRows:
        reference = self.online.reference
        values = np.full((len(reference.sensors), len(SENSOR_FEATURES)), np.nan, np.float32)
        values[:, SENSOR_FEATURES.index("count")] = 0.0
        return BinRows(np.zeros((reference.num_devices, len(COMM_FEATURES)), np.float32),
                       values, np.zeros(0, np.int64), np.zeros(0, np.float32),
                       np.zeros(0, np.float32))

    def _inputs(self, row: BinRows, bin_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardized model inputs of one bin, shape [N, F], as `train.prepare`
        makes them with the run's training statistics."""
        if row.x is None:
            base = self.online.prepared
            snapshots = self._window_snapshots(bin_index, 1)
            raw, mask = train.raw_inputs(snapshots, base.slots)
            x = np.where(mask > 0, np.clip((raw - base.center) / base.scale,
                                           -train.INPUT_CLIP, train.INPUT_CLIP), 0.0)
            row.x = torch.tensor(x[0], dtype=torch.float32)
            row.mask = torch.tensor(mask[0])
        return row.x, row.mask

    def _reconstruct(self, bin_index: int) -> None:
        """Compute the reconstruction of one bin from cached per-bin model state.

        The spatial layers of bin t read bins t - own_lag .. t, and the causal
        convolutions read t - 2 * sum(dilations) .. t of the spatial output, which
        is kept per bin. So each bin costs one snapshot's message passing (over
        own_lag + 1 bins) and one column of convolutions, whatever the history.
        """
        online = self.online
        model = online.model
        base = online.prepared
        lag = online.config.model.own_lag
        rows = []
        for b in range(bin_index - lag, bin_index + 1):
            row = self.rows.get(b)
            if row is None:
                row = self.rows[b] = self._empty_rows()
            rows.append((row, b))
        xs, masks = zip(*(self._inputs(row, b) for row, b in rows))
        with torch.no_grad():
            parts = model.encode_spatial(torch.stack(xs), torch.stack(masks), base.kind,
                                         base.edge_index, base.edge_weight)
            current = self.rows[bin_index]
            current.spatial = [part[-1] for part in parts]
            history = []
            for channel in range(len(parts)):
                column = []
                for b in range(bin_index - self.conv_span + 1, bin_index + 1):
                    row = self.rows.get(b)
                    if row is not None and row.spatial is not None:
                        column.append(row.spatial[channel])
                    else:
                        column.append(torch.zeros_like(current.spatial[channel]))
                history.append(torch.stack(column))
            z = model.encode_temporal(history)[-1:]
            current.x_hat = model.decode_nodes(z)[0].numpy()
            pairs = np.asarray(self.feed.pairs, dtype=np.int64).reshape(-1, 2)
            pair_hat = np.zeros((len(pairs), 2), dtype=np.float32)
            if len(pairs):
                src = torch.tensor(pairs[:, 0], dtype=torch.long)
                dst = torch.tensor(pairs[:, 1], dtype=torch.long)
                out = model.decode_pairs(z, torch.zeros_like(src), src, dst)
                pair_hat[:, 0] = torch.sigmoid(out[:, 0]).numpy()
                pair_hat[:, 1] = out[:, 1].clamp_min(0).numpy()
            current.pair_hat = pair_hat

    def _score_elements(self, bin_index: int) -> None:
        online = self.online
        self._reconstruct(bin_index)
        closing = [s for s in online.config.stream.scales if (bin_index + 1) % s == 0]
        count = max(closing)
        snapshots = self._window_snapshots(bin_index, count)
        rows = [self.rows.get(b) for b in range(bin_index - count + 1, bin_index + 1)]
        num_pairs = len(snapshots.pairs)
        x_hat = np.zeros((count, snapshots.num_devices, online.prepared.num_features),
                         np.float32)
        pair_hat = np.zeros((count, num_pairs, 2), np.float32)
        xs, masks = [], []
        for position, (row, b) in enumerate(zip(rows, range(bin_index - count + 1,
                                                            bin_index + 1))):
            if row is None:
                row = self.rows[b] = self._empty_rows()
            x, mask = self._inputs(row, b)
            xs.append(x)
            masks.append(mask)
            if row.x_hat is not None:
                x_hat[position] = row.x_hat
                pair_hat[position, : len(row.pair_hat)] = row.pair_hat
        prepared = dataclasses.replace(online.prepared, x=torch.stack(xs),
                                       mask=torch.stack(masks), segments=[(0, count)])
        stats = online.stats
        extra = num_pairs - len(stats.pair_median)
        stats = dataclasses.replace(
            stats, pair_median=np.concatenate([stats.pair_median, np.zeros(max(extra, 0))]))
        candidates = scoring.candidate_pairs(snapshots, prepared)
        families, _ = scoring.families_with_stats(
            snapshots, prepared, x_hat, pair_hat, candidates, np.zeros(0, np.int64), stats)
        evidence_rows = []
        for scale in closing:
            coarse = (bin_index + 1) // scale - 1
            frames = []
            for family in families:
                calibrator = online.calibrators.get((scale, family.kind))
                if calibrator is None:
                    continue
                scaled = scoring.aggregate(_last_bins(family, scale), scale)
                p = calibrator.pvalues(scaled, coarse, online.config.model.seed)
                if family.kind == "sensor":
                    self.sensor_ids = family.ids
                columns = np.flatnonzero(~np.isnan(p))
                if len(columns) == 0:
                    continue
                source = family.ids["device_idx"].to_numpy()[columns]
                target = family.ids["peer_idx"].to_numpy()[columns]
                frames.append(pd.DataFrame({
                    "kind": family.kind, "column": columns,
                    "device_idx": source, "peer_idx": target,
                    "bin": coarse, "p_value": p[columns],
                    "score": scaled.score[0, columns],
                    "novel": self._novel(family.kind, source, target)}))
            frame = pd.concat(frames, ignore_index=True) if frames else _no_elements()
            self._append(scale, coarse, frame)
            if frames:
                evidence_rows.append(_device_evidence(frame, online.reference, scale))
        if evidence_rows:
            self.evidence.append(pd.concat(evidence_rows, ignore_index=True))
        self._novel_activity(bin_index)

    def _novel(self, kind: str, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Return which elements are new: pairs the reference never saw, and new
        devices."""
        if kind == "new_device":
            return np.ones(len(source), dtype=bool)
        if kind != "pair":
            return np.zeros(len(source), dtype=bool)
        codes = source * self.online.reference.num_devices + target
        return ~np.isin(codes, self.reference_array)

    def _novel_activity(self, bin_index: int) -> None:
        """Record the columns of the pairs the reference never saw that carry
        events in `bin_index` (a scan's source opens many of them)."""
        row = self.rows.get(bin_index)
        if row is None:
            return
        num_devices = self.online.reference.num_devices
        self.novel_log[bin_index] = {
            int(c) for c in row.pair_columns
            if self.feed.pairs[c][0] * num_devices + self.feed.pairs[c][1]
            not in self.reference_codes}

    # ---------------------------------------------------------------- scan

    def _append(self, scale: int, coarse: int, frame: pd.DataFrame) -> None:
        """Add coarse bin `coarse` of `scale` (absolute) to the scan.

        Bins skipped since the last one are added empty first. A bin before the
        scan's first bin is left out.
        """
        state = self.scan.get(scale)
        if state is None or self.scan_origin is None:
            return
        local = coarse - self.scan_origin // scale
        if local < state.num_bins:
            return
        while state.num_bins < local:
            state.append(_no_elements())
        state.append(frame)

    def _localize(self, bin_index: int, result: BinResult) -> None:
        """Scan the intervals that end with base bin `bin_index` at every scale whose
        bin closed, and match what they find to the tracked incidents."""
        online = self.online
        config = online.config
        if not self.scan:
            return
        origin = self.scan_origin
        num_base = bin_index + 1 - origin
        states = list(self.scan.values())
        reference = online.reference
        pairs = np.asarray(self.feed.pairs, dtype=np.int64).reshape(-1, 2)
        links = np.concatenate([pairs, reference.links]) if len(reference.links) else pairs
        kinds = reference.devices["kind"].astype(str).to_numpy()
        aftermath = online.receptive
        incidents = localize.detect(states, reference.num_devices, num_base, links, kinds,
                                    config.search, aftermath, min_stop=num_base)
        if not incidents:
            return
        recent = {b: c for b, c in self.novel_log.items() if origin <= b <= bin_index}
        novel_columns = sorted(set().union(*recent.values())) if recent else []
        position = {c: i for i, c in enumerate(novel_columns)}
        active = np.zeros((num_base, len(novel_columns)), dtype=bool)
        for b, columns in recent.items():
            for c in columns:
                active[b - origin, position[c]] = True
        incidents = localize.gather_scans(incidents, pairs[novel_columns].reshape(-1, 2),
                                          active, config.search.scan_fanout)
        incidents = localize.merge_fragments(incidents, aftermath)
        frame = _Frame(reference.devices, online.origin_us + origin * online.bin_seconds
                       * MICROS, online.bin_seconds)
        sensor_family = [_SensorIds(self.sensor_ids)] if self.sensor_ids is not None else []
        by_scale = {scale: state.elements for scale, state in self.scan.items()}
        table, members = pipeline.describe_incidents(
            frame, incidents, by_scale, {s: sensor_family for s in by_scale},
            config.search.scan_fanout)
        starts = {row.incident_id: (inc.start + origin, inc.stop + origin)
                  for row, inc in zip(table.itertuples(), _ordered(incidents, table, frame))}
        self._track(table, members, starts, bin_index, aftermath, result)

    def settle_due(self, bin_index: int) -> int:
        """Settle each incident that the model's reach has passed since its last hit,
        as of base bin `bin_index`, and return how many were settled.

        The caller runs it after `close_bin` has scored the bin and its alerts are
        out. It changes no incident's devices and raises none. It costs a batch
        search over the kept bins, about a second on the 1,133-device timing plant
        of `bench/online.py`.

        The online scan takes an incident's elements out as it finds them, so an
        incident grows only while the bins since its last hit pass on their own. The
        batch search scans the whole interval at once, and its best interval can end
        a little earlier or later (after an anomaly ends, the model reads it for
        `receptive` more bins, and its devices' residuals carry that echo). Once no
        bin can still add to the incident, `localize.detect` runs over the kept
        bins, with all their elements as scored, on its devices, those of the
        incidents that overlap it and the devices linked to them. Where it finds the
        incident's devices, the incident takes that interval (`_settle_one`).
        """
        if not self.scan:
            return 0
        reach = self.online.receptive
        due = [tracked for tracked in self.tracked.values()
               if not tracked.settled and bin_index + 1 >= tracked.stop_bin + reach]
        for tracked in due:
            self._settle_one(tracked, bin_index)
        return len(due)

    def settle_open(self) -> None:
        """Settle every incident not settled yet, with the bins closed so far: the
        stream has ended, so no later bin can add to them."""
        if self.last_bin is None or not self.scan:
            return
        for tracked in self.tracked.values():
            if not tracked.settled:
                self._settle_one(tracked, self.last_bin)

    def _settle_one(self, tracked: Tracked, bin_index: int) -> None:
        """Give the incident the interval of the batch search where that search finds
        the same devices on it, after the hidden-input check of a process incident.
        Otherwise the online interval stays."""
        tracked.settled = True
        found = self._batch_interval(tracked, bin_index)
        if found is None:
            return
        start, stop, names = found
        if tracked.row["type"] == "process" and len(names) > 1:
            names = self._explain_away(names, start, stop)
        if names == set(tracked.devices):
            tracked.start_bin, tracked.stop_bin = start, stop

    def _batch_interval(self, tracked: Tracked,
                        bin_index: int) -> tuple[int, int, set[str]] | None:
        """Return base bins [start, stop) and device names of the incident that
        `localize.detect` finds on the tracked incident's devices, over the kept bins
        up to `bin_index`, or None."""
        online = self.online
        index = self.feed.index
        names = [n for n in dict.fromkeys(tracked.devices + tracked.explained)
                 if n in index.index]
        if not names:
            return None
        own = np.array(sorted(int(index[n]) for n in names), dtype=np.int64)
        # The devices of the incidents that overlap it are scanned too, so that the
        # search separates them as the batch run does. The hubs linked to any of
        # them are scanned because connected field devices join through them.
        reach = online.receptive
        nearby = [n for other in self.tracked.values()
                  if _overlaps(other, tracked.start_bin, tracked.stop_bin, reach)
                  for n in other.devices + other.explained if n in index.index]
        scanned = np.union1d(own, np.array([int(index[n]) for n in nearby], dtype=np.int64))
        pairs = np.asarray(self.feed.pairs, dtype=np.int64).reshape(-1, 2)
        links = np.concatenate([pairs, online.reference.links]) \
            if len(online.reference.links) else pairs
        config = online.config.search
        kinds = online.reference.devices["kind"].astype(str).to_numpy()
        linked = links[np.isin(links, scanned).any(axis=1)].ravel()
        devices = np.union1d(scanned, linked[np.isin(kinds[linked], config.hub_kinds)])
        local = np.full(online.reference.num_devices, -1, dtype=np.int64)
        local[devices] = np.arange(len(devices))
        search_key = (bin_index, tuple(devices.tolist()))
        if self.window_search is None or self.window_search[0] != search_key:
            self.window_search = (search_key, self._window_detect(devices, local, links,
                                                                  kinds, bin_index))
        incidents = self.window_search[1]
        start = tracked.start_bin - self.scan_origin
        stop = tracked.stop_bin - self.scan_origin
        expected = set(local[own].tolist())
        best, best_key = None, (0.0, 0)
        for incident in incidents:
            overlap = min(stop, incident.stop) - max(start, incident.start)
            key = (_jaccard(expected, set(incident.devices)), overlap)
            if overlap > 0 and key > best_key:
                best, best_key = incident, key
        if best is None:
            return None
        names = self.feed.index.index.to_numpy()[devices[best.devices]]
        return (best.start + self.scan_origin, best.stop + self.scan_origin,
                {str(name) for name in names})

    def _window_detect(self, devices: np.ndarray, local: np.ndarray, links: np.ndarray,
                       kinds: np.ndarray, bin_index: int) -> list[localize.Incident]:
        """Run `localize.detect` over the kept bins up to `bin_index` on `devices`
        (whose index there is `local`), with every element as scored."""
        online = self.online
        config = online.config.search
        states = []
        num_base = bin_index + 1 - self.scan_origin
        for scale, live in self.scan.items():
            frame = live.elements
            source = local[frame["device_idx"].to_numpy()]
            peer = frame["peer_idx"].to_numpy()
            target = np.where(peer >= 0, local[np.maximum(peer, 0)], -1)
            keep = (source >= 0) | (target >= 0)
            # An element between a scanned device and one outside counts at the
            # scanned end only, as the other device is not scanned.
            first = np.where(source[keep] >= 0, source[keep], target[keep])
            second = np.where(source[keep] >= 0, target[keep], -1)
            elements = frame[keep].assign(device_idx=first, peer_idx=second)
            bins = live.num_bins
            weights = None if live.weights is None else live.weights[devices]
            states.append(localize.ScaleState.build(
                localize.ScaleElements(scale, bins, elements, [(0, bins)]), len(devices),
                config.alphas, live.thresholds, live.singleton_limits, weights))
        links = local[links]
        links = links[(links >= 0).all(axis=1)]
        aftermath = online.receptive
        incidents = localize.detect(states, len(devices), num_base, links, kinds[devices],
                                    config, aftermath)
        return localize.merge_fragments(incidents, aftermath)

    def _explain_away(self, names: set[str], start: int, stop: int) -> set[str]:
        """Return the devices of a process incident over base bins [start, stop) that
        stay abnormal with their sensor inputs hidden, as the batch run checks them.

        The check reads the kept inputs: the model's window and `EXPLAIN_BINS` more,
        so a longer incident is checked over its last bins."""
        online = self.online
        index = self.feed.index
        devices = sorted(int(index[name]) for name in names if name in index.index)
        if len(devices) <= 1:
            return names
        reach = online.receptive
        begin = max(start, min(self.rows) + reach)
        if begin >= stop:
            return names
        first = begin - reach
        inputs = [self._inputs(self.rows.get(b) or self._empty_rows(), b)
                  for b in range(first, stop)]
        prepared = dataclasses.replace(
            online.prepared, x=torch.stack([x for x, _ in inputs]),
            mask=torch.stack([mask for _, mask in inputs]), segments=[(0, stop - first)])
        snapshots = self._window_snapshots(stop - 1, stop - first)
        abnormal = pipeline.explain_away(online.model, prepared, snapshots, devices,
                                         begin - first, stop - first,
                                         online.config.search.member_min_share)
        device_names = online.reference.devices["device"].astype(str).to_numpy()
        checked = {str(device_names[d]) for d in devices}
        return {str(device_names[d]) for d in abnormal} | (names - checked)

    def _track(self, table: pd.DataFrame, members: pd.DataFrame,
               spans: dict[str, tuple[int, int]], bin_index: int, gap: int,
               result: BinResult) -> None:
        for row in table.to_dict("records"):
            start, stop = spans[row["incident_id"]]
            own = members[members["incident_id"] == row["incident_id"]]
            devices = set(own.loc[own["role"] == "device", "device"].astype(str))
            best, best_share = None, 0.0
            for tracked in self.tracked.values():
                if not _overlaps(tracked, start, stop, gap):
                    continue
                known = set(tracked.devices) | set(tracked.explained)
                share = _jaccard(devices, known)
                if devices <= known or set(tracked.devices) <= devices:
                    share = max(share, 0.5)
                if share >= 0.5 and share > best_share:
                    best, best_share = tracked, share
            if best is None:
                identifier = row["incident_id"]
                if identifier in self.tracked:
                    identifier = f"{identifier}-{bin_index}"
                abnormal = devices
                if row["type"] == "process":
                    abnormal = self._explain_away(devices, start, stop)
                tracked = Tracked(identifier, 1, bin_index, bin_index, start, stop,
                                  sorted(abnormal), row,
                                  _without(own, devices - abnormal).assign(incident_id=identifier),
                                  len(abnormal), stop - start, sorted(devices - abnormal))
                self.tracked[identifier] = tracked
                result.new.append(identifier)
                continue
            before = set(best.devices)
            best.start_bin = min(best.start_bin, start)
            best.stop_bin = max(best.stop_bin, stop)
            joined = before | devices
            if "process" in (row["type"], best.row["type"]):
                # As the batch run checks a process incident over its interval, the
                # devices of all its hits are checked together, so a neighbour that
                # only echoes the faulty device is dropped once both are in.
                # The check runs again at each hit: a fault that reaches more
                # devices later changes which of them stay abnormal.
                candidates = joined | set(best.explained)
                joined = self._explain_away(candidates, best.start_bin, best.stop_bin)
                best.explained = sorted(candidates - joined)
            best.devices = sorted(joined)
            if row["score"] >= best.row["score"]:
                best.row = row
            merged = pd.concat([best.members, own.assign(incident_id=best.incident_id)])
            merged = _without(merged, set(best.explained))
            best.members = merged.sort_values("evidence", ascending=False).drop_duplicates(
                ["role", "device", "peer", "sensor"]).reset_index(drop=True)
            best.updated_bin = bin_index
            length = best.stop_bin - best.start_bin
            if len(best.devices) > best.version_devices or length >= 2 * max(best.version_length, 1):
                best.version += 1
                best.version_devices = len(best.devices)
                best.version_length = length
                if best.incident_id not in result.new:
                    result.grown.append(best.incident_id)

    # ---------------------------------------------------------------- output

    def incident_table(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return the online incidents and their members, strongest first."""
        online = self.online
        width = online.bin_seconds * MICROS
        rows = []
        for tracked in self.tracked.values():
            row = dict(tracked.row)
            row.update({
                "incident_id": tracked.incident_id, "version": tracked.version,
                "raised_bin": tracked.raised_bin,
                "raised_at": pd.Timestamp(self.bin_end_us(tracked.raised_bin), unit="us", tz="UTC"),
                "updated_bin": tracked.updated_bin,
                "start_bin": tracked.start_bin, "stop_bin": tracked.stop_bin,
                "start": pd.Timestamp(online.origin_us + tracked.start_bin * width, unit="us", tz="UTC"),
                "end": pd.Timestamp(online.origin_us + tracked.stop_bin * width, unit="us", tz="UTC"),
                "summary": self._summary(tracked),
            })
            rows.append(row)
        table = pd.DataFrame(rows, columns=[c for c in INCIDENT_COLUMNS if c != "rank"])
        table = table.sort_values(["severity", "score"], ascending=False, kind="stable")
        table.insert(1, "rank", np.arange(1, len(table) + 1))
        members = pd.concat([t.members for t in self.tracked.values()], ignore_index=True) \
            if self.tracked else pd.DataFrame(columns=["incident_id", "role", "device", "peer",
                                                         "sensor", "evidence", "p_value"])
        return table.reset_index(drop=True), members

    def _summary(self, tracked: Tracked) -> str:
        """Return the incident's sentence from `pipeline.summarize`, with its devices,
        targets and sensors over its whole interval, not those of its strongest hit."""
        width = self.online.bin_seconds * MICROS
        origin = self.online.origin_us
        members = tracked.members
        role = members["role"]
        devices = members[role == "device"].sort_values("evidence", ascending=False)
        names = list(dict.fromkeys(devices["device"].astype(str))) or list(tracked.devices)
        targets = members.loc[role == "target", "device"].nunique()
        sensors = len(members.loc[role == "sensor", ["device", "sensor"]].drop_duplicates())
        return pipeline.summarize(
            str(tracked.row["type"]), names, int(targets), int(sensors),
            pd.Timestamp(origin + tracked.start_bin * width, unit="us", tz="UTC"),
            pd.Timestamp(origin + tracked.stop_bin * width, unit="us", tz="UTC"))

    def payload(self, incident_id: str) -> dict:
        """The alert body of an incident's current version."""
        tracked = self.tracked[incident_id]
        row = tracked.row
        width = self.online.bin_seconds * MICROS
        origin = self.online.origin_us
        return {
            "idempotency_key": f"{incident_id}:{tracked.version}",
            "incident_id": incident_id, "version": tracked.version,
            "event": "new" if tracked.version == 1 else "grown",
            "type": row["type"], "severity": float(row["severity"]),
            "score": float(row["score"]),
            "start": pd.Timestamp(origin + tracked.start_bin * width, unit="us", tz="UTC").isoformat(),
            "end": pd.Timestamp(origin + tracked.stop_bin * width, unit="us", tz="UTC").isoformat(),
            "devices": tracked.devices, "summary": self._summary(tracked),
            "run_id": self.online.run_id, "workspace": str(self.workspace.root),
        }

    def publish(self, extra: dict | None = None) -> Path:
        """Write the online results file under a temporary name, then rename it."""
        incidents, members = self.incident_table()
        info = {"base_run": self.online.run_id, "name": self.name,
                "origin_us": self.online.origin_us, "bin_seconds": self.online.bin_seconds,
                "last_bin": self.last_bin, "late_rows": self.late_rows,
                "unknown_rows": self.feed.unknown_rows, "horizon_bins": self.horizon,
                "scan_anchor_bin": self.scan_anchor,
                "window_bins": self.window, "updated": pd.Timestamp.now(tz="UTC").isoformat()}
        info.update(extra or {})
        evidence = pd.concat(self.evidence, ignore_index=True) if self.evidence else \
            pd.DataFrame(columns=["device", "scale", "bin", "evidence", "min_p", "elements"])
        bins = pd.DataFrame(self.bins[-EVIDENCE_BINS:],
                            columns=["bin", "start", "end", "scored_at", "seconds"])
        return write_online(self.workspace, self.name, info, {
            "incidents": incidents, "incident_members": members,
            "device_evidence": evidence, "bins": bins})

    def restore(self) -> bool:
        """Load the incidents and last bin of an earlier online file of this name.

        Returns:
            whether an earlier file was found.
        """
        if not self.path.exists():
            return False
        info = read_online_info(self.path)
        if info.get("base_run") != self.online.run_id:
            raise DataError(
                f"{self.path} contains the online results of run {info.get('base_run')}, "
                f"not of run {self.online.run_id}",
                "Start with --fresh to score from the end of the latest run again.")
        self.last_bin = info.get("last_bin")
        self.scan_anchor = info.get("scan_anchor_bin")
        self.late_rows = int(info.get("late_rows", 0))
        incidents = store.query(self.path, "SELECT * FROM incidents")
        members = store.query(self.path, "SELECT * FROM incident_members")
        for row in incidents.to_dict("records"):
            own = members[members["incident_id"] == row["incident_id"]].reset_index(drop=True)
            devices = sorted(own.loc[own["role"] == "device", "device"].astype(str))
            base = {k: row[k] for k in ("incident_id", "start", "end", "type", "score",
                                        "threshold", "alpha", "scale", "severity", "summary")}
            self.tracked[row["incident_id"]] = Tracked(
                row["incident_id"], int(row["version"]), int(row["raised_bin"]),
                int(row["updated_bin"]), int(row["start_bin"]), int(row["stop_bin"]),
                devices, base, own, len(devices),
                int(row["stop_bin"]) - int(row["start_bin"]),
                settled=self.last_bin is not None
                and self.last_bin + 1 >= int(row["stop_bin"]) + self.online.receptive)
        bins = store.query(self.path, "SELECT * FROM bins ORDER BY bin")
        self.bins = bins.to_dict("records")
        return True


def _last_bins(family: scoring.Family, count: int) -> scoring.Family:
    return scoring.Family(family.kind, family.ids, family.residual[-count:],
                          family.weight[-count:], family.exists[-count:],
                          family.observed[-count:], family.expected[-count:])


def _device_evidence(frame: pd.DataFrame, reference: Snapshots, scale: int) -> pd.DataFrame:
    names = reference.devices["device"].astype(str).to_numpy()
    ends = [frame[["device_idx", "bin", "p_value"]]]
    pairs = frame[frame["peer_idx"] >= 0]
    ends.append(pairs[["peer_idx", "bin", "p_value"]].rename(columns={"peer_idx": "device_idx"}))
    stacked = pd.concat(ends, ignore_index=True)
    table = stacked.groupby(["device_idx", "bin"])["p_value"].agg(
        min_p="min", elements="size").reset_index()
    table["evidence"] = -np.log10(table["min_p"].clip(lower=1e-300))
    table["device"] = names[table["device_idx"].to_numpy()]
    table["scale"] = scale
    return table[["device", "scale", "bin", "evidence", "min_p", "elements"]]


@dataclass
class _Frame:
    """The part of `Snapshots` that `pipeline.describe_incidents` reads."""

    devices: pd.DataFrame
    origin_us: int
    bin_seconds: int

    def bin_start(self, bins) -> pd.DatetimeIndex:
        values = self.origin_us + np.asarray(bins, dtype=np.int64) * self.bin_seconds * MICROS
        return pd.to_datetime(np.atleast_1d(values), unit="us", utc=True)


@dataclass
class _SensorIds:
    """The part of a sensor `ScaledFamily` that `pipeline.member_table` reads."""

    ids: pd.DataFrame
    kind: str = "sensor"


def _ordered(incidents: list[localize.Incident], table: pd.DataFrame,
             frame: _Frame) -> list[localize.Incident]:
    """Return the incidents in the order of `table` (matched by start time and
    devices through the id that `describe_incidents` gives)."""
    by_start: dict[pd.Timestamp, list[localize.Incident]] = {}
    for incident in incidents:
        by_start.setdefault(frame.bin_start(incident.start)[0], []).append(incident)
    ordered = []
    for row in table.itertuples():
        candidates = by_start.get(row.start, [])
        end = [c for c in candidates if frame.bin_start(c.stop)[0] == row.end]
        ordered.append((end or candidates)[0])
    return ordered


# --------------------------------------------------------------------------- files


def online_path(workspace: store.Workspace, name: str) -> Path:
    return workspace.root / ONLINE_DIR / f"{name}.duckdb"


ONLINE_SCHEMA = """
CREATE TABLE online_info (key VARCHAR PRIMARY KEY, value VARCHAR);
"""


def write_online(workspace: store.Workspace, name: str, info: dict,
                 tables: dict[str, pd.DataFrame]) -> Path:
    """Write `online/<name>.duckdb` under a temporary name and publish it by rename,
    so a reader sees the previous file or the new one, never a partial one."""
    final = online_path(workspace, name)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.parent / f".{name}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    try:
        with store.connect(temporary) as con:
            con.execute(ONLINE_SCHEMA)
            rows = pd.DataFrame({"key": list(info),
                                 "value": [json.dumps(v, default=str) for v in info.values()]})
            store.insert_frame(con, "online_info", rows)
            for table, frame in tables.items():
                con.register("_frame", frame)
                try:
                    con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM _frame')
                finally:
                    con.unregister("_frame")
            con.execute("CHECKPOINT")
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
        Path(str(temporary) + ".wal").unlink(missing_ok=True)
    return final


def read_online_info(path: Path) -> dict:
    frame = store.query(path, "SELECT key, value FROM online_info")
    return {k: json.loads(v) for k, v in zip(frame["key"], frame["value"])}


def latest_online(workspace: store.Workspace) -> Path | None:
    """Return the most recently written online results file, or None."""
    folder = workspace.root / ONLINE_DIR
    if not folder.is_dir():
        return None
    files = [p for p in folder.glob("*.duckdb") if not p.name.startswith(".")]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def read_live(workspace: store.Workspace) -> dict | None:
    """Read the newest online results for the dashboard: info, incidents (strongest
    first) and the scoring time of the last bins. Return None without any."""
    path = latest_online(workspace)
    if path is None:
        return None
    info = read_online_info(path)
    incidents = store.query(path, "SELECT incident_id, version, type, severity, start, "
                                  "\"end\", summary FROM incidents ORDER BY severity DESC")
    bins = store.query(path, "SELECT bin, \"end\", seconds FROM bins ORDER BY bin DESC LIMIT 60")
    return {"path": path, "info": info, "incidents": incidents, "bins": bins}
