"""Benchmark of the localization engine: tgloc against baselines on synthetic plants,
scan time against the number of devices and against the exact search, and null runs.

    PYTHONPATH=. .venv/bin/python -m bench.localization [--quick]

Plants come from `core.synth` (every anomaly type, one of each per plant) at each
size. Each plant goes through the pipeline's own stages (snapshots, training,
scoring, `pipeline.localize_run`). A trained model is cached per (size, seed, hours,
epochs) in the cache folder. The same plant with nothing planted shares it, because
its reference period is the same. Workspaces are cached too, so a rerun skips
generation, ingest and training.

Every method turns its scores into flags per (device, base bin) and, where it has
them, per (pair, base bin). tgloc flags the devices and pairs of each incident over
the incident's interval, and both ends of each pair as devices. The baselines run
on the same run's data:

- ``threshold``: element p-values of the run (the same calibrated element scores
  tgloc scans), -log10 p, thresholded; a device gets the largest of its elements,
  a pair element counts for both ends and for its pair;
- ``pair_z``: per directed pair, |events - mean| / std over the training bins (std at
  least 0.5); a device gets the largest z of its pairs;
- ``pca``: PCA of all devices' standardized model inputs on the training bins; a
  device's squared reconstruction error over its features, divided by its 99th
  percentile on the training bins;
- ``iforest``: one scikit-learn isolation forest per device on its standardized
  inputs, z-scored against its training bins;
- ``dominant``: PyGOD's DOMINANT, trained on a disjoint union of training snapshots
  (devices with their inputs, the bin's communication pairs as edges) and applied to
  each scored snapshot, z-scored per device against the training snapshots.

Same false-alarm budget: on the validation seeds, tgloc's share of flagged
(device, bin) cells outside every planted anomaly (each anomaly's interval and the
model's input window after it) is measured. Each baseline's threshold is the
quantile of its own scores in those cells that flags the same share. Test seeds are
never used for tuning. Device-level baselines (pca, iforest, dominant) report the
communicating pairs between two flagged devices as their pairs.

Per anomaly, over the bins of its interval: device precision, recall and F1 of the
flagged devices against its devices; pair F1 (undirected) where it has pairs; and
the IoU of its interval with the span of flags on the correctly flagged devices
within one anomaly length on either side. Figures are means over test seeds with a
95% t-interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from core import ingest, localize, pipeline, scoring, store, synth, train
from core.config import ModelConfig, RunConfig, SearchConfig, StreamConfig
from core.errors import ConfigError, TglocError
from core.scan import dyadic_intervals, exact_connected_scan, prefix_scan
from core.snapshots import build_snapshots

log = logging.getLogger(__name__)

METHODS = ("tgloc", "threshold", "pair_z", "pca", "iforest", "dominant")
BASELINES = METHODS[1:]
DEFAULT_CACHE = Path("bench-cache") / "localization"
VALIDATION_SEED_BASE = 1000
NULL_LEVEL = 0.05
TIMING_BINS = 1024


@dataclass(frozen=True)
class Settings:
    """Settings of one benchmark run: plant sizes, seeds, plant length, epochs and the
    timing sizes."""

    sizes: tuple[int, ...] = (50, 200, 1000)
    seeds: int = 10
    validation_seeds: int = 2
    hours: float = 24.0
    epochs: int = 100
    timing_devices: tuple[int, ...] = (100, 200, 500, 1000, 2000, 5000)
    exact_devices: tuple[int, ...] = (12, 16, 20)
    exact_bins: int = 16
    cache: Path = DEFAULT_CACHE


QUICK = Settings(sizes=(50,), seeds=2, validation_seeds=1, hours=12.0, epochs=8,
                 timing_devices=(100, 200, 500, 1000), exact_bins=4)


# --------------------------------------------------------------------------- plants


def field_devices_for(total: int) -> int:
    """Field devices that give a plant of `total` devices (PLCs and eight control and
    DMZ devices come on top), or the nearest below."""
    best = synth.MIN_FIELD_DEVICES
    for field in range(synth.MIN_FIELD_DEVICES, total):
        plcs = max(1, int(round(field / synth.FIELD_PER_PLC)))
        if field + plcs + 8 <= total:
            best = field
    return best


@dataclass
class PlantRun:
    """One plant after the pipeline: what every method is scored on."""

    size: int
    seed: int
    planted: bool
    snapshots: object
    prepared: train.Prepared
    periods: np.ndarray
    scored: list
    incidents: pd.DataFrame
    members: pd.DataFrame
    truth: pd.DataFrame
    windows: list[tuple[int, int]]
    seconds: float


def run_config(settings: Settings) -> RunConfig:
    return RunConfig(stream=StreamConfig(bin_seconds=60),
                     model=ModelConfig(epochs=settings.epochs))


def _workspace(settings: Settings, size: int, seed: int, planted: bool) -> store.Workspace:
    """The plant's workspace, generated and ingested unless the cache contains it."""
    field = field_devices_for(size)
    # A planted workspace is named by its anomaly types too, so a cache made with
    # other types is not reused.
    types = hashlib.sha256(",".join(synth.ANOMALY_TYPES).encode()).hexdigest()[:8]
    kind = f"planted-{types}" if planted else "null"
    name = f"n{size}-f{field}-h{settings.hours:g}-s{seed}-{kind}"
    root = settings.cache / name
    done = root / "ingested"
    workspace = store.Workspace.create(root)
    if done.exists():
        return workspace
    config = synth.PlantConfig(seed=seed, field_devices=field,
                               hours=settings.hours,
                               anomalies=synth.ANOMALY_TYPES if planted else ())
    plant = synth.generate_plant(config)
    files = synth.write_plant(plant, root / "input")
    for target in ("events", "measurements"):
        ingest.ingest_file(workspace, files[target], ingest.IngestOptions(target=target))
    synth.store_plant(workspace, plant)
    for path in files.values():
        if path.suffix == ".parquet":
            path.unlink()
    done.write_text("ok\n", encoding="utf-8")
    return workspace


def run_plant(settings: Settings, size: int, seed: int, planted: bool) -> PlantRun:
    """Run the pipeline's stages on one plant, training only when no model is cached."""
    began = time.perf_counter()
    workspace = _workspace(settings, size, seed, planted)
    config = run_config(settings)
    rng = np.random.default_rng(config.model.seed)
    snapshots = build_snapshots(workspace.store_path, config.stream.bin_seconds)
    periods, segments = pipeline.assign_periods(snapshots, config)
    train_bins = np.flatnonzero(periods == "train")
    model_path = settings.cache / (f"n{size}-f{field_devices_for(size)}-h{settings.hours:g}"
                                   f"-s{seed}-e{settings.epochs}.model")
    with train.deterministic():
        if model_path.exists():
            model, payload = train.load_checkpoint(model_path.read_bytes())
            prepared = train.prepare(snapshots, train_bins, segments, list(payload["kinds"]))
        else:
            prepared = train.prepare(snapshots, train_bins, segments)
            fitted = train.fit(prepared, snapshots, train_bins, config.model)
            model = fitted.model
            partial = model_path.with_suffix(".partial")
            partial.write_bytes(train.checkpoint_bytes(model, prepared, config.model))
            os.replace(partial, model_path)
        x_hat, pair_hat, candidates, _ = scoring.reconstruct(model, prepared, snapshots)
        families = scoring.families(snapshots, prepared, x_hat, pair_hat, candidates,
                                    train_bins)
        scored = pipeline.score_scales(families, periods, config)
        incidents, members, _, _ = pipeline.localize_run(
            snapshots, scored, periods, prepared, config, rng, lambda *_: None, model)
    truth = store.query(workspace.store_path, "SELECT * FROM ground_truth")
    truth["devices"] = truth["devices"].apply(list)
    windows = [(_bin_of(snapshots, row.start), _bin_of(snapshots, row.end, up=True))
               for row in truth.itertuples(index=False)]
    return PlantRun(size, seed, planted, snapshots, prepared, periods, scored, incidents,
                    members, truth, windows, time.perf_counter() - began)


def _bin_of(snapshots, stamp: pd.Timestamp, up: bool = False) -> int:
    micros = int(pd.Timestamp(stamp).value // 1000) - snapshots.origin_us
    width = snapshots.bin_seconds * 1_000_000
    index = -(-micros // width) if up else micros // width
    return int(np.clip(index, 0, snapshots.num_bins))


# ------------------------------------------------------------------------ scores


@dataclass
class Scores:
    """One method's scores (or 0/1 flags) on one plant.

    Attributes:
        device: shape [T, N].
        pair_codes: shape [Q], src * N + dst of the scored pairs; None for methods
            without pair scores.
        pair: shape [T, Q].
        flags_given: the scores are already flags (tgloc), no threshold applies.
    """

    device: np.ndarray
    pair_codes: np.ndarray | None = None
    pair: np.ndarray | None = None
    flags_given: bool = False


def tgloc_scores(run: PlantRun) -> Scores:
    snapshots = run.snapshots
    names = snapshots.devices["device"].astype(str).tolist()
    index = {name: i for i, name in enumerate(names)}
    num_devices = snapshots.num_devices
    device = np.zeros((snapshots.num_bins, num_devices))
    pair_cells: dict[int, list[tuple[int, int]]] = {}
    for incident in run.incidents.itertuples(index=False):
        start, stop = _bin_of(snapshots, incident.start), _bin_of(snapshots, incident.end, up=True)
        rows = run.members[run.members["incident_id"] == incident.incident_id]
        chosen = [index[d] for d in rows.loc[rows["role"] == "device", "device"]]
        pairs = [(index[s], index[d]) for s, d in
                 rows.loc[rows["role"] == "pair", ["device", "peer"]].itertuples(index=False)]
        # The incident's subgraph contains both ends of its pairs, as the threshold and
        # pair_z baselines flag both ends of a pair element.
        ends = sorted({end for pair in pairs for end in pair})
        device[start:stop, chosen + ends] = 1.0
        # A scan's hosts are reported as targets; the pairs to them are its pairs.
        targets = [index[d] for d in rows.loc[rows["role"] == "target", "device"]]
        active = snapshots.pair_events[start:stop].sum(axis=0) > 0
        carried = {(int(s), int(d)) for s, d in snapshots.pairs[active]}
        for source in chosen:
            for target in targets:
                pairs += [p for p in ((source, target), (target, source)) if p in carried]
        for src, dst in pairs:
            pair_cells.setdefault(src * num_devices + dst, []).append((start, stop))
    codes = np.array(sorted(pair_cells), dtype=np.int64)
    pair = np.zeros((snapshots.num_bins, len(codes)))
    for column, code in enumerate(codes):
        for start, stop in pair_cells[int(code)]:
            pair[start:stop, column] = 1.0
    return Scores(device, codes, pair, flags_given=True)


def threshold_scores(run: PlantRun) -> Scores:
    """-log10 of the run's element p-values at the base scale."""
    snapshots = run.snapshots
    num_devices = snapshots.num_devices
    base = next(item for item in run.scored if item.scale == 1)
    device = np.zeros((snapshots.num_bins, num_devices))
    pair_columns: dict[int, np.ndarray] = {}
    for family in base.families:
        p = family.p_value
        evidence = -np.log10(np.clip(np.nan_to_num(p, nan=1.0), 1e-300, 1.0))
        for column_name in ("device_idx", "peer_idx"):
            owners = family.ids[column_name].to_numpy()
            keep = owners >= 0
            for column in np.flatnonzero(keep):
                owner = owners[column]
                device[:, owner] = np.maximum(device[:, owner], evidence[:, column])
        if family.kind == "pair":
            src = family.ids["device_idx"].to_numpy()
            dst = family.ids["peer_idx"].to_numpy()
            for column in range(len(src)):
                code = int(src[column]) * num_devices + int(dst[column])
                previous = pair_columns.get(code)
                value = evidence[:, column]
                pair_columns[code] = value if previous is None else np.maximum(previous, value)
    codes = np.array(sorted(pair_columns), dtype=np.int64)
    pair = (np.stack([pair_columns[int(c)] for c in codes], axis=1) if len(codes)
            else np.zeros((snapshots.num_bins, 0)))
    return Scores(device, codes, pair)


def pair_z_scores(run: PlantRun) -> Scores:
    snapshots = run.snapshots
    num_devices = snapshots.num_devices
    events = snapshots.pair_events.astype(np.float64)
    train_rows = events[run.periods == "train"]
    mean, std = train_rows.mean(axis=0), np.maximum(train_rows.std(axis=0), 0.5)
    z = np.abs(events - mean) / std
    device = np.zeros((snapshots.num_bins, num_devices))
    for end in (0, 1):
        owners = snapshots.pairs[:, end]
        for column, owner in enumerate(owners):
            device[:, owner] = np.maximum(device[:, owner], z[:, column])
    codes = snapshots.pairs[:, 0].astype(np.int64) * num_devices + snapshots.pairs[:, 1]
    return Scores(device, codes, z)


def _inputs(run: PlantRun) -> np.ndarray:
    """Standardized model inputs [T, N, F], 0 where unobserved."""
    return (run.prepared.x * run.prepared.mask).numpy().astype(np.float64)


def pca_scores(run: PlantRun) -> Scores:
    from sklearn.decomposition import PCA

    inputs = _inputs(run)
    num_bins, num_devices, num_features = inputs.shape
    flat = inputs.reshape(num_bins, -1)
    train_rows = run.periods == "train"
    pca = PCA(n_components=0.9, svd_solver="full", random_state=0)
    pca.fit(flat[train_rows])
    rebuilt = pca.inverse_transform(pca.transform(flat))
    error = ((flat - rebuilt) ** 2).reshape(num_bins, num_devices, num_features).sum(axis=2)
    scale = np.percentile(error[train_rows], 99, axis=0) + 1e-9
    return Scores(error / scale)


def iforest_scores(run: PlantRun) -> Scores:
    from sklearn.ensemble import IsolationForest

    inputs = _inputs(run)
    num_bins, num_devices, _ = inputs.shape
    train_rows = run.periods == "train"
    device = np.zeros((num_bins, num_devices))
    for index in range(num_devices):
        features = inputs[:, index, :]
        used = np.abs(features[train_rows]).sum(axis=0) > 0
        if not used.any():
            continue
        forest = IsolationForest(n_estimators=50, max_samples=min(128, int(train_rows.sum())),
                                 random_state=index)
        forest.fit(features[train_rows][:, used])
        score = -forest.score_samples(features[:, used])
        reference = score[train_rows]
        device[:, index] = (score - reference.mean()) / (reference.std() + 1e-9)
    return Scores(device)


DOMINANT_NODES = 6000
DOMINANT_EPOCHS = 20


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def dominant_available() -> str | None:
    """Return None when PyGOD's DOMINANT fits a three-node graph here, else the error."""
    try:
        import torch
        from pygod.detector import DOMINANT
        from torch_geometric.data import Data

        graph = Data(x=torch.eye(3), edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            DOMINANT(epoch=1, hid_dim=4, num_layers=2, verbose=0).fit(graph)
    except Exception as error:  # any failure to import or fit means it cannot run
        return f"{type(error).__name__}: {error}"
    return None


def dominant_scores(run: PlantRun) -> Scores:
    import torch
    from pygod.detector import DOMINANT
    from torch_geometric.data import Data

    inputs = _inputs(run).astype(np.float32)
    snapshots = run.snapshots
    num_bins, num_devices, _ = inputs.shape
    per_batch = max(1, DOMINANT_NODES // num_devices)

    def union(bins: np.ndarray) -> Data:
        edges = []
        for offset, bin_index in enumerate(bins):
            edge_index, _ = snapshots.snapshot_edges(int(bin_index))
            edge_index = np.concatenate([edge_index, edge_index[::-1]], axis=1)
            edges.append(edge_index + offset * num_devices)
        edge_index = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
        x = torch.from_numpy(inputs[bins].reshape(-1, inputs.shape[2]))
        return Data(x=x, edge_index=torch.from_numpy(np.ascontiguousarray(edge_index)))

    train_bins = np.flatnonzero(run.periods == "train")
    rng = np.random.default_rng(0)
    fit_bins = np.sort(rng.choice(train_bins, size=min(per_batch, len(train_bins)),
                                  replace=False))
    torch.manual_seed(0)
    detector = DOMINANT(epoch=DOMINANT_EPOCHS, hid_dim=32, num_layers=3, verbose=0)
    detector.fit(union(fit_bins))
    wanted = np.flatnonzero(np.isin(run.periods, ("train", "score")))
    device = np.zeros((num_bins, num_devices))
    for begin in range(0, len(wanted), per_batch):
        bins = wanted[begin : begin + per_batch]
        score = detector.decision_function(union(bins))
        device[bins] = np.asarray(score, dtype=np.float64).reshape(len(bins), num_devices)
    reference = device[train_bins]
    return Scores((device - reference.mean(axis=0)) / (reference.std(axis=0) + 1e-9))


SCORERS = {
    "tgloc": tgloc_scores, "threshold": threshold_scores, "pair_z": pair_z_scores,
    "pca": pca_scores, "iforest": iforest_scores, "dominant": dominant_scores,
}


# -------------------------------------------------------------------- evaluation


def aftermath_bins(settings: Settings) -> int:
    model = run_config(settings).model
    return 2 * sum(model.dilations) + model.own_lag


def quiet_cells(run: PlantRun, settings: Settings) -> np.ndarray:
    """Bool [T]: scored bins outside every planted anomaly and the model's input
    window after it, where any flag is a false alarm."""
    quiet = run.periods == "score"
    after = aftermath_bins(settings)
    for start, stop in run.windows:
        quiet[max(start, 0) : stop + after] = False
    return quiet


def flags_of(scores: Scores, threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
    if scores.flags_given:
        return scores.device > 0.5, None if scores.pair is None else scores.pair > 0.5
    pair = None if scores.pair is None else scores.pair > threshold
    return scores.device > threshold, pair


def evaluate_run(run: PlantRun, scores: Scores, threshold: float) -> list[dict]:
    """Per planted anomaly: device precision, recall, F1, pair F1 and interval IoU."""
    snapshots = run.snapshots
    num_devices = snapshots.num_devices
    names = snapshots.devices["device"].astype(str).tolist()
    index = {name: i for i, name in enumerate(names)}
    device_flags, pair_flags = flags_of(scores, threshold)
    results = []
    for row, (start, stop) in zip(run.truth.itertuples(index=False), run.windows):
        stop = max(stop, start + 1)
        truth_devices = {index[d] for d in row.devices if d in index}
        flagged = set(np.flatnonzero(device_flags[start:stop].any(axis=0)).tolist())
        hits = flagged & truth_devices
        precision = len(hits) / len(flagged) if flagged else 0.0
        recall = len(hits) / len(truth_devices) if truth_devices else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0

        truth_pairs = {frozenset((index[p["src"]], index[p["dst"]])) for p in row.pairs
                       if p["src"] in index and p["dst"] in index}
        pair_f1 = float("nan")
        if truth_pairs:
            if pair_flags is not None:
                live = pair_flags[start:stop].any(axis=0)
                found = {frozenset((int(c) // num_devices, int(c) % num_devices))
                         for c in scores.pair_codes[live]}
            else:
                active = snapshots.pair_events[start:stop].sum(axis=0) > 0
                found = {frozenset((int(s), int(d))) for s, d in snapshots.pairs[active]
                         if int(s) in flagged and int(d) in flagged}
            found.discard(frozenset())
            both = found & truth_pairs
            pair_precision = len(both) / len(found) if found else 0.0
            pair_recall = len(both) / len(truth_pairs)
            pair_f1 = (2 * pair_precision * pair_recall / (pair_precision + pair_recall)
                       if both else 0.0)

        iou = 0.0
        if hits:
            length = stop - start
            lower, upper = max(start - length, 0), min(stop + length, snapshots.num_bins)
            marked = np.flatnonzero(device_flags[lower:upper, sorted(hits)].any(axis=1))
            first, last = lower + int(marked.min()), lower + int(marked.max()) + 1
            overlap = max(0, min(stop, last) - max(start, first))
            iou = overlap / (max(stop, last) - min(start, first))
        results.append({"kind": row.kind, "device_precision": precision,
                        "device_recall": recall, "device_f1": f1, "pair_f1": pair_f1,
                        "iou": iou})
    return results


def false_flag_share(run: PlantRun, scores: Scores, threshold: float,
                     settings: Settings) -> tuple[int, int]:
    """(flagged, all) device-bin cells in the quiet bins."""
    device_flags, _ = flags_of(scores, threshold)
    quiet = quiet_cells(run, settings)
    return int(device_flags[quiet].sum()), int(quiet.sum()) * device_flags.shape[1]


def tune_threshold(runs: list[PlantRun], scores: list[Scores], budget: float,
                   settings: Settings) -> float:
    """Threshold whose share of flagged quiet cells on the validation runs is at most
    `budget` (the largest quiet score when the budget is 0)."""
    values = np.concatenate([s.device[quiet_cells(r, settings)].ravel()
                             for r, s in zip(runs, scores)])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("inf")
    allowed = int(math.floor(budget * len(values)))
    ordered = np.sort(values)[::-1]
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(ordered[allowed])


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval (nan with fewer than two values)."""
    values = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def cell(values) -> str:
    mean, half = mean_ci(values)
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.2f}" if np.isnan(half) else f"{mean:.2f} ± {half:.2f}"


# ------------------------------------------------------------------------ timing


def plant_graph(num_devices: int) -> tuple[np.ndarray, np.ndarray]:
    """Links and kinds shaped like a plant: a PLC per eight field devices, two SCADA
    hubs polling every PLC, neighbouring PLCs linked."""
    kinds = np.array(["field"] * num_devices, dtype=object)
    kinds[:2] = "scada"
    plcs = list(range(2, num_devices, 9))
    kinds[plcs] = "plc"
    links = []
    for position, plc in enumerate(plcs):
        links += [[0, plc], [1, plc]]
        if position:
            links.append([plcs[position - 1], plc])
        links += [[plc, field] for field in range(plc + 1, min(plc + 9, num_devices))]
    return np.array(links, dtype=np.int64), kinds.astype(str)


def synthetic_evidence(num_devices: int, num_bins: int, alphas, seed: int = 0
                       ) -> localize.Evidence:
    """Prefix sums of uniform p-values, three elements per device and bin, with five
    linked devices pulled towards 0 over 40 bins (fewer in a short series)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((num_bins + 1, num_devices, len(alphas)), dtype=np.int32)
    totals = np.zeros((num_bins + 1, num_devices), dtype=np.int32)
    totals[1:] = 3
    middle = num_bins // 2
    length = min(40, num_bins - middle)
    for a, alpha in enumerate(alphas):
        counts[1:, :, a] = rng.binomial(3, alpha, size=(num_bins, num_devices))
        counts[1 + middle : 1 + middle + length, 2:7, a] = rng.binomial(
            3, min(1.0, alpha ** 0.2), size=(length, 5))
    return localize.Evidence(np.cumsum(counts, axis=0, dtype=np.int32),
                             np.cumsum(totals, axis=0, dtype=np.int32))


def time_scan(num_devices: int, config: SearchConfig, candidates: int = 64) -> dict:
    """Scan every dyadic and half-shifted interval of `TIMING_BINS` bins at one scale
    with the connectivity step on its `candidates` best intervals, as one round of
    `localize.best_hit` does."""
    evidence = synthetic_evidence(num_devices, TIMING_BINS, config.alphas)
    links, kinds = plant_graph(num_devices)
    search = replace(config, max_interval_bins=TIMING_BINS)
    wall, cpu = time.perf_counter(), time.process_time()
    matrix, hubs = localize.adjacency(num_devices, links, kinds, config.hub_kinds)
    linked = localize.linked_devices(matrix, hubs)
    intervals, best, alpha_index, members = localize.scan_intervals(
        evidence, [(0, TIMING_BINS)], search)
    for row in np.argsort(-best)[:candidates]:
        start, stop = intervals[row]
        counts, totals = evidence.interval(np.array([start]), np.array([stop]))
        a = int(alpha_index[row])
        localize.connected_best(counts[0, :, a], totals[0], config.alphas[a], members[row],
                                matrix, hubs, config.statistic, linked)
    return {"devices": num_devices, "intervals": len(intervals),
            "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def time_exact(num_devices: int, num_bins: int, config: SearchConfig) -> dict:
    """Fast (prefix search and connected growth) against the exact connected search
    over every interval of `num_bins` bins and every alpha, on a plant-shaped graph."""
    evidence = synthetic_evidence(num_devices, num_bins, config.alphas, seed=num_devices)
    links, kinds = plant_graph(num_devices)
    matrix, hubs = localize.adjacency(num_devices, links, kinds, config.hub_kinds)
    linked = localize.linked_devices(matrix, hubs)
    intervals = dyadic_intervals(0, num_bins, num_bins)
    counts, totals = evidence.interval(intervals[:, 0], intervals[:, 1])
    counts, totals = counts.astype(np.float64), totals.astype(np.float64)
    began = time.process_time()
    _, size, order = prefix_scan(counts, totals, config.alphas, config.statistic)
    fast = np.zeros((len(intervals), len(config.alphas)))
    for i in range(len(intervals)):
        for a, alpha in enumerate(config.alphas):
            fast[i, a], _ = localize.connected_best(
                counts[i, :, a], totals[i], alpha, order[i, a, : size[i, a]], matrix, hubs,
                config.statistic, linked)
    fast_s = time.process_time() - began
    began = time.process_time()
    exact = np.zeros_like(fast)
    for i in range(len(intervals)):
        for a, alpha in enumerate(config.alphas):
            exact[i, a], _ = exact_connected_scan(counts[i, :, a], totals[i], alpha, linked,
                                                  config.statistic)
    exact_s = time.process_time() - began
    positive = exact > 0
    ratio = float((fast[positive] / exact[positive]).min()) if positive.any() else 1.0
    return {"devices": num_devices, "intervals": len(intervals), "fast_s": fast_s,
            "exact_s": exact_s, "speedup": exact_s / max(fast_s, 1e-9),
            "min_score_ratio": ratio}


# ------------------------------------------------------------------------- report


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def compare(first, second) -> int:
    """+1 when `first` is above `second` beyond both 95% intervals, -1 when below, else 0."""
    a, ha = mean_ci(first)
    b, hb = mean_ci(second)
    if any(np.isnan(v) for v in (a, b, ha, hb)):
        return 0
    if a - ha > b + hb:
        return 1
    if a + ha < b - hb:
        return -1
    return 0


def _test_seed(settings: Settings, size: int, seed: int, methods, thresholds, scores_of,
               per_anomaly, null_any, quiet_share, plant_seconds) -> None:
    """Score one test seed's planted and null plant with every method. The results
    are appended only once both plants are done, so an interrupted seed adds nothing."""
    run = run_plant(settings, size, seed, True)
    scores = scores_of(run)
    rows, quiet = [], {}
    for method in methods:
        for row in evaluate_run(run, scores[method], thresholds[method]):
            rows.append(dict(row, method=method, seed=seed))
        flagged_cells, all_cells = false_flag_share(run, scores[method],
                                                    thresholds[method], settings)
        quiet[method] = flagged_cells / max(all_cells, 1)
    null = run_plant(settings, size, seed, False)
    null_scores = scores_of(null)
    scored_bins = null.periods == "score"
    any_flag = {}
    for method in methods:
        device_flags, _ = flags_of(null_scores[method], thresholds[method])
        any_flag[method] = float(device_flags[scored_bins].any())
    per_anomaly += rows
    plant_seconds.append(run.seconds)
    for method in methods:
        quiet_share[method].append(quiet[method])
        null_any[method].append(any_flag[method])
    print(f"  seed {seed}: plant {run.seconds:.0f} s, null plant {null.seconds:.0f} s, "
          f"tgloc {len(run.incidents)} incidents, null {len(null.incidents)}",
          file=sys.stderr, flush=True)


def run_size(settings: Settings, size: int, methods: tuple[str, ...], out) -> dict:
    """Validation, test and null runs of one plant size; prints its tables."""
    def scores_of(run: PlantRun) -> dict[str, Scores]:
        result = {}
        for method in methods:
            began = time.process_time()
            result[method] = SCORERS[method](run)
            timings.setdefault(method, []).append(time.process_time() - began)
        return result

    timings: dict[str, list[float]] = {}
    validation = [run_plant(settings, size, VALIDATION_SEED_BASE + i, True)
                  for i in range(settings.validation_seeds)]
    validation_scores = [scores_of(run) for run in validation]
    flagged = sum(false_flag_share(r, s["tgloc"], 0.0, settings)[0]
                  for r, s in zip(validation, validation_scores))
    cells = sum(false_flag_share(r, s["tgloc"], 0.0, settings)[1]
                for r, s in zip(validation, validation_scores))
    budget = flagged / max(cells, 1)
    thresholds = {"tgloc": 0.5}
    for method in methods[1:]:
        thresholds[method] = tune_threshold(validation, [s[method] for s in validation_scores],
                                            budget, settings)
    print(f"\n### {size} devices\n", file=out)
    print(f"False-alarm budget from tgloc on validation seeds "
          f"{VALIDATION_SEED_BASE}..{VALIDATION_SEED_BASE + settings.validation_seeds - 1}: "
          f"{flagged} of {cells} quiet device-bins flagged ({budget:.2e}); thresholds "
          + ", ".join(f"{m} {thresholds[m]:.3g}" for m in methods[1:]), file=out)

    per_anomaly: list[dict] = []
    null_any = {method: [] for method in methods}
    quiet_share = {method: [] for method in methods}
    plant_seconds = []
    done = 0
    try:
        for seed in range(settings.seeds):
            _test_seed(settings, size, seed, methods, thresholds, scores_of, per_anomaly,
                       null_any, quiet_share, plant_seconds)
            done += 1
    except KeyboardInterrupt:
        # Ctrl+C (SIGINT) ends the runs early; the tables cover the seeds finished.
        print(f"\nInterrupted: {done} of {settings.seeds} test seeds finished.", file=out)
        if done == 0:
            raise
    settings = replace(settings, seeds=done)

    frame = pd.DataFrame(per_anomaly)
    summary = {"size": size, "seeds": settings.seeds, "budget": budget}
    for metric, title in (("device_f1", "device F1"), ("pair_f1", "pair F1"),
                          ("iou", "interval IoU")):
        rows = []
        for kind in synth.ANOMALY_TYPES:
            part = frame[frame["kind"] == kind]
            values = [part.loc[part["method"] == m, metric].to_numpy() for m in methods]
            if metric == "pair_f1" and all(np.isnan(v).all() for v in values):
                continue
            rows.append([kind] + [cell(v) for v in values])
        seed_means = [frame[frame["method"] == m].groupby("seed")[metric].mean().to_numpy()
                      for m in methods]
        rows.append(["mean over types"] + [cell(v) for v in seed_means])
        print(f"\n{title}, mean ± 95% CI over {settings.seeds} test seeds:\n", file=out)
        print(table(["anomaly"] + list(methods), rows), file=out)
        summary[f"tgloc_{metric}"] = mean_ci(seed_means[0])[0]

    better, worse = {m: 0 for m in methods[1:]}, {m: 0 for m in methods[1:]}
    beats_all = 0
    never_worse = True
    for kind in synth.ANOMALY_TYPES:
        part = frame[frame["kind"] == kind]
        own = part.loc[part["method"] == "tgloc", "device_f1"].to_numpy()
        wins = 0
        for method in methods[1:]:
            outcome = compare(own, part.loc[part["method"] == method, "device_f1"].to_numpy())
            better[method] += outcome > 0
            worse[method] += outcome < 0
            wins += outcome > 0
            never_worse &= outcome >= 0
        beats_all += wins == len(methods) - 1
    print("\nDevice F1, tgloc against each baseline, anomaly types where the 95% "
          "intervals do not overlap:\n", file=out)
    print(table(["baseline", "tgloc better", "tgloc worse"],
                [[m, str(better[m]), str(worse[m])] for m in methods[1:]]), file=out)

    recall_rows = []
    for kind in ("silence", "link_loss"):
        part = frame[(frame["kind"] == kind) & (frame["method"] == "tgloc")]
        recall_rows.append([kind, cell(part["device_recall"]), cell(part["device_precision"])])
    print("\ntgloc device recall and precision:\n", file=out)
    print(table(["anomaly", "recall", "precision"], recall_rows), file=out)

    print(f"\nNull runs (the same plants with nothing planted), share with any flag "
          f"(tgloc: any incident at level {NULL_LEVEL}), and share of quiet device-bins "
          f"flagged on the planted test plants:\n", file=out)
    print(table(["method", "null runs with a flag", "quiet device-bins flagged"],
                [[m, cell(null_any[m]), f"{np.mean(quiet_share[m]):.2e}"] for m in methods]),
          file=out)
    print("\nCPU seconds per plant to score (tgloc: reading its incidents; the pipeline "
          f"itself took {np.mean(plant_seconds):.0f} s wall per plant, cached parts "
          "included):\n", file=out)
    print(table(["method", "CPU s per plant"],
                [[m, f"{np.mean(timings[m]):.2f}"] for m in methods]), file=out)
    silence = frame[(frame["kind"] == "silence") & (frame["method"] == "tgloc")]
    lost = frame[(frame["kind"] == "link_loss") & (frame["method"] == "tgloc")]
    summary.update({
        "types_tgloc_beats_every_baseline": beats_all,
        "tgloc_never_significantly_worse": bool(never_worse),
        "silence_recall": mean_ci(silence["device_recall"])[0],
        "silence_precision": mean_ci(silence["device_precision"])[0],
        "link_loss_recall": mean_ci(lost["device_recall"])[0],
        "link_loss_precision": mean_ci(lost["device_precision"])[0],
        "null_share_with_incident": float(np.mean(null_any["tgloc"])),
    })
    return summary


def timing_section(settings: Settings, out) -> dict:
    config = SearchConfig()
    rows, results = [], []
    for num_devices in settings.timing_devices:
        result = time_scan(num_devices, config)
        results.append(result)
        rows.append([str(num_devices), str(result["intervals"]), f"{result['wall_s']:.2f}",
                     f"{result['cpu_s']:.2f}"])
        print(f"  scan timing {num_devices} devices: {result['cpu_s']:.2f} CPU s",
              file=sys.stderr, flush=True)
    devices = np.array([r["devices"] for r in results], dtype=np.float64)
    cpu = np.array([r["cpu_s"] for r in results])
    wall = np.array([r["wall_s"] for r in results])
    slope = float(np.polyfit(np.log(devices), np.log(cpu), 1)[0]) if len(devices) > 1 else float("nan")
    wall_slope = float(np.polyfit(np.log(devices), np.log(wall), 1)[0]) if len(devices) > 1 else float("nan")
    print(f"\n### Scan time against devices\n\nEvery dyadic and half-shifted interval of "
          f"{TIMING_BINS} bins at one scale, seven alphas, connectivity step on the 64 best "
          f"intervals; synthetic p-values, three elements per device and bin.\n", file=out)
    print(table(["devices", "intervals", "wall s", "CPU s"], rows), file=out)
    print(f"\nlog-log slope of CPU time against devices: {slope:.2f} (wall: {wall_slope:.2f})",
          file=out)

    exact_rows, exact_results = [], []
    for num_devices in settings.exact_devices:
        result = time_exact(num_devices, settings.exact_bins, config)
        exact_results.append(result)
        exact_rows.append([str(num_devices), str(result["intervals"]),
                           f"{result['fast_s']:.2f}", f"{result['exact_s']:.2f}",
                           f"{result['speedup']:.0f}", f"{result['min_score_ratio']:.3f}"])
    print(f"\n### Fast against exact connected search\n\nEvery interval of "
          f"{settings.exact_bins} bins, every alpha; CPU seconds.\n", file=out)
    print(table(["devices", "intervals", "fast s", "exact s", "exact / fast",
                 "lowest fast / exact score"], exact_rows), file=out)
    at_1000 = next((r for r in results if r["devices"] == 1000), None)
    return {
        "scan_cpu_s_1000": None if at_1000 is None else at_1000["cpu_s"],
        "scan_wall_s_1000": None if at_1000 is None else at_1000["wall_s"],
        "scan_slope": slope,
        "exact_speedup": {str(r["devices"]): round(r["speedup"], 1) for r in exact_results},
        "exact_min_ratio": min((r["min_score_ratio"] for r in exact_results), default=None),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tgloc bench localization",
        description="Benchmark tgloc's localization against baselines on synthetic plants.")
    add_arguments(parser)
    return parser.parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: 50-device plants of 12 h, 2 test seeds, "
                             "8 epochs, timing up to 1,000 devices")
    parser.add_argument("--sizes", help="plant sizes in devices, comma-separated "
                                        "(default 50,200,1000)")
    parser.add_argument("--seeds", type=int, help="test seeds per size (default 10)")
    parser.add_argument("--validation-seeds", type=int,
                        help="seeds per size used to tune the baselines (default 2)")
    parser.add_argument("--hours", type=float, help="plant length in hours (default 24)")
    parser.add_argument("--epochs", type=int, help="maximum training epochs (default 100)")
    parser.add_argument("--cache", help=f"folder of cached plants and models "
                                        f"(default {DEFAULT_CACHE})")
    parser.add_argument("--skip-timing", action="store_true",
                        help="leave out the scan timing and the exact-search comparison")
    parser.add_argument("--skip-plants", action="store_true",
                        help="leave out the plant runs (timing only)")


def settings_from(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else Settings()
    changes = {}
    if args.sizes:
        try:
            changes["sizes"] = tuple(int(s) for s in args.sizes.split(","))
        except ValueError:
            raise ConfigError(f"invalid --sizes {args.sizes!r}",
                              "Give whole numbers separated by commas, such as 50,200.") from None
        if any(s < synth.MIN_FIELD_DEVICES + 9 for s in changes["sizes"]):
            raise ConfigError(f"invalid --sizes {args.sizes!r}",
                              f"Each plant needs at least {synth.MIN_FIELD_DEVICES + 9} "
                              f"devices.")
    for name in ("seeds", "validation_seeds", "epochs"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ConfigError(f"invalid --{name.replace('_', '-')} {value}",
                                  "Give a whole number of at least 1.")
            changes[name] = value
    if args.hours is not None:
        if not synth.MIN_HOURS <= args.hours <= synth.MAX_HOURS:
            raise ConfigError(f"invalid --hours {args.hours}",
                              f"Give hours from {synth.MIN_HOURS:g} to {synth.MAX_HOURS:g}.")
        changes["hours"] = args.hours
    if args.cache:
        changes["cache"] = Path(args.cache)
    return replace(settings, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except TglocError as error:
        print(f"error: {error.headline}", file=sys.stderr)
        if error.detail:
            print(f"  {error.detail}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    # A shell starts background jobs with SIGINT ignored; restoring the handler lets
    # `kill -INT` end the test seeds early there too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = settings_from(args)
    settings.cache.mkdir(parents=True, exist_ok=True)
    out = sys.stdout
    began = time.perf_counter()
    print(f"## Localization benchmark\n\n{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} "
          f"UTC, {platform.node()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; settings: "
          f"{json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()})}",
          file=out)
    headline: dict = {"quick": bool(args.quick)}
    methods = METHODS
    if not args.skip_plants:
        missing = dominant_available()
        if missing is not None:
            methods = tuple(m for m in METHODS if m != "dominant")
            print(f"\nPyGOD DOMINANT is left out: it does not run here ({missing}). "
                  f"PyGOD fits through torch_geometric's NeighborSampler, which needs "
                  f"pyg-lib or torch-sparse, and neither installs for torch "
                  f"{_version('torch')}.", file=out)
        headline["methods"] = list(methods)
        headline["sizes"] = {}
        for size in settings.sizes:
            summary = run_size(settings, size, methods, out)
            headline["sizes"][str(size)] = {k: (round(v, 4) if isinstance(v, float) else v)
                                            for k, v in summary.items()}
    if not args.skip_timing:
        headline.update(timing_section(settings, out))
    headline["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(headline), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
