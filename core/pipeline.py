"""One run over a workspace: snapshots, training, scoring, localization, publishing.

Each stage is a function of `core` that can be called without Streamlit; the CLI and
the dashboard are two thin front ends over `run_pipeline`. The run reads what it
needs from the store, closes it, computes, and publishes its own file by atomic
rename (`core.store.publish_run`).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import countrun, localize, scoring, store, train
from core.accepted import apply_accepted, list_accepted
from core.config import RunConfig
from core.errors import DataError
from core.snapshots import COMM_FEATURES, MICROS, SENSOR_FEATURES, Snapshots, build_snapshots
from core.stages import StageTimer

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
NULL_FOLDS = 4
MAX_GAPS_LISTED = 20
COLLECTION_GAP_NOTE = "collection gap: no data from any device; not scored"
VERSIONED = ("torch", "torch-geometric", "duckdb", "numpy", "pandas", "scipy")


@dataclass
class RunResult:
    run_id: str
    path: str
    incidents: pd.DataFrame
    members: pd.DataFrame
    timer: StageTimer
    info: dict


def run_pipeline(
    workspace: store.Workspace,
    config: RunConfig | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    timer: StageTimer | None = None,
    snapshots: Snapshots | None = None,
) -> RunResult:
    """Bin, train, score, localize and publish one run of `workspace`.

    Args:
        workspace: a workspace whose store contains events or measurements.
        config: run settings; the defaults suit one-minute polling data.
        run_id: the run's name; a UTC timestamp by default.
        progress: called with (stage, fraction done) as the run advances.
        timer: records each stage's time and peak memory.
        snapshots: snapshots binned elsewhere (on Spark, say, see
            `core.spark_bins`); their bin width must be the configured one. By
            default the store of `workspace` is binned.

    Raises:
        DataError: the store cannot support a run (no data, one device, too few bins).
    """
    config = config or RunConfig()
    timer = timer or StageTimer()
    report = progress or (lambda stage, fraction: None)
    run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("run-%Y%m%dT%H%M%S%fZ")
    workspace.run_path(run_id)
    if snapshots is None and countrun.wants_counts(workspace, config):
        log.info("run %s: link stream scored by its event counts", run_id)
        path, incidents, members, info = countrun.run_counts(workspace, config, run_id,
                                                             timer, report)
        return RunResult(run_id, path, incidents, members, timer, info)
    seed = config.model.seed
    rng = np.random.default_rng(seed)

    report("snapshots", 0.0)
    with timer.stage("snapshots"):
        if snapshots is None:
            snapshots = build_snapshots(workspace.store_path, config.stream.bin_seconds,
                                        gap_fill=config.stream.gap_fill,
                                        gap_fill_limit=config.stream.gap_fill_limit)
        elif snapshots.bin_seconds != config.stream.bin_seconds:
            raise DataError(
                f"the snapshots have {snapshots.bin_seconds} s bins, the run "
                f"configuration {config.stream.bin_seconds} s",
                f"Run with --bin-seconds {snapshots.bin_seconds}, or bin again.",
            )
        elif config.stream.gap_fill != "none":
            raise DataError(
                f"gap_fill={config.stream.gap_fill!r} applies where tgloc bins the "
                "store, and these snapshots were binned already",
                "Run without --snapshots, or without --gap-fill.",
            )
        train.require_devices(snapshots)
        periods, segments = assign_periods(snapshots, config)
        width = snapshots.bin_seconds * MICROS
        starts = snapshots.origin_us + np.arange(snapshots.num_bins, dtype=np.int64) * width
        periods, accepted = apply_accepted(periods, starts, width,
                                           list_accepted(workspace))
    train_bins = np.flatnonzero(periods == "train")
    if not (periods == "score").any():
        raise DataError("no bins to score",
                        "Shorten the reference period or load data after it.")

    # Deterministic torch algorithms make a run repeat bit for bit.
    with train.deterministic():
        report("training", 0.0)
        with timer.stage("training"):
            prepared = train.prepare(snapshots, train_bins, segments)
            fitted = train.fit(prepared, snapshots, train_bins, config.model, progress)
            checkpoint = train.checkpoint_bytes(fitted.model, prepared, config.model)

        report("scoring", 0.0)
        with timer.stage("scoring"):
            x_hat, pair_hat, candidates, _ = scoring.reconstruct(fitted.model, prepared,
                                                                 snapshots)
            families = scoring.families(snapshots, prepared, x_hat, pair_hat, candidates,
                                        train_bins)
            scored = score_scales(families, periods, config)

        report("localization", 0.0)
        with timer.stage("localization"):
            incidents, members, thresholds, null_rows = localize_run(
                snapshots, scored, periods, prepared, config, rng, report, fitted.model)

        report("publishing", 0.0)
        with timer.stage("publishing"):
            info = run_info(workspace, run_id, config, snapshots, periods, checkpoint,
                            fitted, prepared, thresholds)
            info["accepted"] = accepted
            tables = run_tables(snapshots, periods, scored, incidents, members, fitted,
                                null_rows, checkpoint, config)
            tables["sensor_flags"] = sensor_flags(snapshots, prepared, train_bins, periods)
            path = store.publish_run(workspace, run_id, tables, info)
        report("done", 1.0)
        return RunResult(run_id, str(path), incidents, members, timer, info)


def assign_periods(snapshots: Snapshots, config: RunConfig) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Label each base bin train, calibration, score, gap or none.

    A stretch of more than `max_empty_bins` bins in which no device has any event
    or reading is a gap in the data (between two files, say): it is labelled "gap",
    neither trained on nor scored, and splits the run into segments that the model
    encodes separately. Shorter silent stretches are gaps too when silence is not
    part of the stream (`silence_is_gap`): in a plant whose devices poll all the
    time, a bin without data from any device means the collector lost it.

    Returns:
        periods: shape [T], str.
        segments: (start, stop) runs of bins between the long gaps.
    """
    num_bins = snapshots.num_bins
    empty = ~snapshots.active.any(axis=1)
    long_gap = np.zeros(num_bins, dtype=bool)
    for start, stop in _runs(empty):
        if stop - start > config.stream.max_empty_bins:
            long_gap[start:stop] = True
    segments = _runs(~long_gap)
    silent = empty if silence_is_gap(snapshots.active, config.stream.empty_bins) else long_gap

    width = snapshots.bin_seconds * MICROS
    starts = snapshots.origin_us + np.arange(num_bins, dtype=np.int64) * width
    usable = np.flatnonzero(~silent)

    def micros(text: str | None) -> int | None:
        if text is None:
            return None
        stamp = pd.Timestamp(text)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return int(stamp.value // 1000)

    reference = np.zeros(num_bins, dtype=bool)
    if config.reference_end is not None:
        reference = starts < micros(config.reference_end)
        if config.reference_start is not None:
            reference &= starts >= micros(config.reference_start)
        reference &= ~silent
    else:
        reference[usable[: int(len(usable) * config.reference_share)]] = True
    reference_bins = np.flatnonzero(reference)
    if len(reference_bins) < 16:
        raise DataError(
            f"the reference period has {len(reference_bins)} "
            f"bin{'' if len(reference_bins) == 1 else 's'}; at least 16 are needed",
            "Set an earlier reference start or a later reference end.",
        )

    periods = np.full(num_bins, "none", dtype=object)
    periods[silent] = "gap"
    cut = int(len(reference_bins) * config.train_share)
    periods[reference_bins[:cut]] = "train"
    periods[reference_bins[cut:]] = "calibration"

    score_from = micros(config.score_start)
    score_to = micros(config.score_end)
    score = ~silent & ~reference
    score &= starts > starts[reference_bins[-1]] if score_from is None else starts >= score_from
    if score_to is not None:
        score &= starts < score_to
    periods[score] = "score"
    return periods.astype(str), segments


def silence_is_gap(active: np.ndarray, policy: str) -> bool:
    """Whether a bin without data from any device is a collection gap.

    "gap" and "score" decide it. "auto" tests whether such a bin would happen by
    chance: with each device active in a share a_i of the bins that have data, and
    devices independent, a bin is empty with chance prod(1 - a_i). Where that is
    expected less than once over the run (a plant that polls all the time), an
    empty bin is a gap. Where it is expected more often (a sparse contact stream,
    whose quiet slots are part of it), empty bins are scored.

    Args:
        active: shape [T, N], bool, whether each device has data in each bin.
    """
    if policy != "auto":
        return policy == "gap"
    busy = active[active.any(axis=1)]
    if len(busy) == 0:
        return False
    share = busy.mean(axis=0)
    with np.errstate(divide="ignore"):
        log_empty = np.log1p(-np.minimum(share, 1.0)).sum()
    return bool(np.exp(log_empty) * active.shape[0] < 1.0)


def collection_gaps(snapshots: Snapshots, periods: np.ndarray) -> dict:
    """Return the run report's account of the collection gaps: bins and intervals."""
    runs = _runs(periods == "gap")
    intervals = [
        [snapshots.bin_start(start)[0].isoformat(),
         snapshots.bin_start(stop)[0].isoformat()]
        for start, stop in runs[:MAX_GAPS_LISTED]
    ]
    return {"bins": int(sum(stop - start for start, stop in runs)),
            "intervals": len(runs), "first": intervals}


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Return the (start, stop) ranges where `flags` is True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


@dataclass
class Scored:
    """Per scale: the scaled families, their coarse periods and p-values."""

    scale: int
    periods: np.ndarray
    families: list[scoring.ScaledFamily]
    null_families: list[np.ndarray]
    fallback: list[dict]


def score_scales(
    families: list[scoring.Family], periods: np.ndarray, config: RunConfig,
) -> list[Scored]:
    """Aggregate each family to every scale and compute its p-values.

    Score-period p-values are calibrated on all calibration bins. For the null of
    the scan the calibration bins are cut into `NULL_FOLDS` consecutive folds, and
    each fold is calibrated on the others, so the null covers the whole calibration
    period with out-of-sample p-values.
    """
    result = []
    for scale in config.stream.scales:
        coarse = scoring.coarse_periods(periods, scale)
        calibration = np.flatnonzero(coarse == "calibration")
        target = np.flatnonzero(coarse == "score")
        folds = np.array_split(calibration, NULL_FOLDS)
        scaled_families, nulls, fallback = [], [], []
        for family in families:
            scaled = scoring.aggregate(family, scale)
            p, level, counts = scoring.calibrate(
                scaled, calibration, target, config.search.min_reference, config.model.seed)
            null_p = np.full(scaled.score.shape, np.nan)
            for fold in folds:
                if len(fold) == 0:
                    continue
                rest = np.setdiff1d(calibration, fold)
                fold_p, _, _ = scoring.calibrate(
                    scaled, rest, fold, config.search.min_reference, config.model.seed)
                null_p[fold] = fold_p[fold]
            p, null_p = scoring.recalibrate(p, null_p)
            if config.search.calibrate_on_scored:
                p = scoring.stretch_pvalues(scaled.score, p, target,
                                            config.search.max_interval_bins,
                                            config.search.min_reference)
            scaled.p_value = p
            scaled.calibration = level
            scaled_families.append(scaled)
            nulls.append(null_p)
            for name, number in counts.items():
                fallback.append({"kind": family.kind, "scale": scale, "level": name,
                                 "elements": number})
        result.append(Scored(scale, coarse, scaled_families, nulls, fallback))
    return result


def long_elements(families: list[scoring.ScaledFamily], p_arrays: list[np.ndarray]) -> pd.DataFrame:
    """Long form (kind, device_idx, peer_idx, bin, p_value) of the finite p-values."""
    frames = []
    for family, p in zip(families, p_arrays):
        bins, columns = np.nonzero(~np.isnan(p))
        if len(bins) == 0:
            continue
        frames.append(pd.DataFrame({
            "kind": family.kind,
            "column": columns,
            "device_idx": family.ids["device_idx"].to_numpy()[columns],
            "peer_idx": family.ids["peer_idx"].to_numpy()[columns],
            "bin": bins,
            "p_value": p[bins, columns],
            "score": family.score[bins, columns],
        }))
    if not frames:
        return pd.DataFrame({"kind": [], "column": [], "device_idx": [], "peer_idx": [],
                             "bin": [], "p_value": [], "score": []})
    return pd.concat(frames, ignore_index=True)


def localize_run(
    snapshots: Snapshots, scored: list[Scored], periods: np.ndarray,
    prepared: train.Prepared, config: RunConfig, rng: np.random.Generator,
    report: Progress, model=None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, dict], list[dict]]:
    """Set each scale's null thresholds, take the incidents out and describe them.

    With the trained `model`, the devices of each process incident are checked with
    their sensor inputs hidden (`explain_away`).
    """
    search = config.search
    num_devices = snapshots.num_devices
    kinds = snapshots.devices["kind"].astype(str).to_numpy()
    links = np.concatenate([snapshots.pairs, snapshots.links]) if len(snapshots.links) else snapshots.pairs

    inputs = [localize.ScaleInput(
        item.scale, len(item.periods),
        long_elements(item.families, [f.p_value for f in item.families]),
        long_elements(item.families, item.null_families),
        _runs(item.periods == "calibration"), _runs(item.periods == "score"))
        for item in scored]
    states, thresholds, null_rows = localize.build_states(
        inputs, num_devices, search, rng,
        lambda share: report("localization", 0.5 * share))

    aftermath = 2 * sum(config.model.dilations) + config.model.own_lag
    incidents = localize.detect(states, num_devices, snapshots.num_bins, links, kinds, search,
                                aftermath)
    codes = snapshots.pairs[:, 0] * num_devices + snapshots.pairs[:, 1]
    reference = prepared.reference_pairs[:, 0] * num_devices + prepared.reference_pairs[:, 1]
    novel = ~np.isin(codes, reference)
    incidents = localize.gather_scans(incidents, snapshots.pairs[novel],
                                      snapshots.pair_events[:, novel] > 0, search.scan_fanout)
    if model is not None:
        for incident in incidents:
            if incident.process and len(incident.devices) > 1:
                incident.devices = explain_away(model, prepared, snapshots, incident.devices,
                                                incident.start, incident.stop,
                                                search.member_min_share)
    incidents = localize.merge_fragments(incidents, aftermath)
    localize.set_significance(incidents, thresholds, np.count_nonzero(periods == "score")
                              * snapshots.bin_seconds / 86400.0)
    report("localization", 1.0)
    by_scale = {state.scale: state.elements for state in states}
    families = {item.scale: item.families for item in scored}
    table, members = describe_incidents(snapshots, incidents, by_scale, families,
                                        search.scan_fanout)
    return table, members, thresholds, null_rows


def explain_away(
    model, prepared: train.Prepared, snapshots: Snapshots, devices: list[int],
    start: int, stop: int, share: float,
) -> list[int]:
    """Return the devices of a process incident whose own readings are abnormal.

    The model reconstructs a device from its neighbours, so a faulty device moves
    the expected readings of the devices around it, and their residuals can be as
    large as its own. With the sensor inputs of every device of the incident hidden
    over its interval, each device is reconstructed from the rest of the plant only:
    a faulty device still deviates, a neighbour that only looked abnormal no longer
    does. A device is kept when the largest mean residual of its sensors, over base
    bins [start, stop), reaches `share` of the largest among the devices. Devices
    without sensors (a workstation reached across a PLC) have no readings to be
    abnormal and are dropped, unless no device with sensors is kept.
    """
    sensors = snapshots.sensors
    if len(sensors) == 0 or len(devices) <= 1:
        return devices
    # Row i of x_hat, x and mask is device devices[i], and only the sensors of
    # `devices` are read.
    x_hat = train.hidden_reconstruction_of(model, prepared, devices, start, stop).numpy()
    stop = start + x_hat.shape[0]
    index = np.asarray(devices, dtype=np.int64)
    x = prepared.x[start:stop].numpy()[:, index]
    mask = prepared.mask[start:stop].numpy()[:, index]
    row_of = {int(device): row for row, device in enumerate(devices)}
    sensors = sensors[sensors["device_idx"].isin(list(row_of))]
    column = (len(COMM_FEATURES) + len(SENSOR_FEATURES) * sensors["slot"].to_numpy()
              + SENSOR_FEATURES.index("mean"))
    owner = sensors["device_idx"].to_numpy()
    # As in `scoring.families`, a sensor constant in training counts by its departure
    # from the constant against an expected 0, because the model's output for it
    # only echoes its neighbours.
    constant = set(prepared.constant)
    fixed = np.array([(str(device), str(name)) in constant
                      for device, name in zip(sensors["device"], sensors["sensor"])],
                     dtype=bool)
    if fixed.any():
        rows = np.array([row_of[int(device)] for device in owner[fixed]], dtype=np.int64)
        columns = column[fixed]
        x[:, rows, columns] = scoring.constant_departure(x[:, rows, columns])
        x_hat[:, rows, columns] = 0.0
    strength = {}
    for device in devices:
        own = column[owner == device]
        if len(own) == 0:
            continue
        row = row_of[int(device)]
        seen = mask[:, row, own]
        residual = (x[:, row, own] - x_hat[:, row, own]) * seen
        mean = np.abs(residual.sum(axis=0) / np.maximum(seen.sum(axis=0), 1))
        strength[device] = float(mean.max())
    if not strength:
        return devices
    top = max(strength.values())
    kept = [d for d in devices if d in strength and strength[d] >= share * top]
    log.info("explain away %s: %s", devices, {d: round(v, 2) for d, v in strength.items()})
    return kept


def describe_incidents(
    snapshots: Snapshots, incidents: list[localize.Incident],
    by_scale: dict[int, pd.DataFrame], families: dict[int, list[scoring.ScaledFamily]],
    fanout: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Choose each incident's members and describe it in one sentence. `fanout` is
    the scan fan-out of `choose_members`."""
    names = snapshots.devices["device"].astype(str).to_numpy()
    criticality = snapshots.devices["criticality"].to_numpy(dtype=float)
    rows, member_rows = [], []
    for incident in incidents:
        scale = incident.scale
        elements = by_scale[scale]
        start = incident.start // scale
        stop = -(-incident.stop // scale)
        inside = elements[(elements["bin"] >= start) & (elements["bin"] < stop)]
        chosen = choose_members(inside, incident.devices, incident.alpha, fanout,
                                incident.targets)
        device_set = chosen["devices"]

        begin = snapshots.bin_start(incident.start)[0]
        end = snapshots.bin_start(incident.stop)[0]
        identifier = localize.incident_id([names[d] for d in device_set], begin)
        kind = incident_type(chosen["significant"], device_set)
        ratio = incident.score / max(incident.threshold, 1e-9)
        significance = 1.0 - np.exp(-2.0 * max(ratio - 1.0, 0.0))
        weight = 1.0 if kind == "both" else 0.9
        severity = 100 * significance * (0.5 + 0.5 * criticality[device_set].max()) * weight
        rows.append({
            "incident_id": identifier, "start": begin, "end": end, "type": kind,
            "score": incident.score, "threshold": incident.threshold,
            "alpha": incident.alpha, "scale": scale, "severity": round(float(severity), 1),
            "p_value": incident.p_value, "false_alarms_per_day": incident.false_alarms_per_day,
            "summary": summarize(kind, [names[d] for d in device_set],
                                 len(chosen["targets"]["target"].unique()),
                                 len(chosen["sensors"]["column"].unique()), begin, end),
        })
        member_rows += member_table(identifier, chosen, names, families[scale])

    table = pd.DataFrame(rows, columns=[
        "incident_id", "start", "end", "type", "score", "threshold", "alpha", "scale",
        "severity", "p_value", "false_alarms_per_day", "summary"])
    if len(table):
        table = table.sort_values(["severity", "score"], ascending=False, kind="stable")
        table = table.drop_duplicates("incident_id").reset_index(drop=True)
        table.insert(1, "rank", np.arange(1, len(table) + 1))
    else:
        table.insert(1, "rank", pd.Series(dtype="int64"))
    members = pd.DataFrame(member_rows, columns=[
        "incident_id", "role", "device", "peer", "sensor", "evidence", "p_value"])
    members = members[members["incident_id"].isin(table["incident_id"])]
    members = members.drop_duplicates(["incident_id", "role", "device", "peer", "sensor"])
    return table, members.reset_index(drop=True)


def choose_members(inside: pd.DataFrame, devices: list[int], alpha: float, fanout: int,
                   reached: list[int] = ()) -> dict:
    """Second pass: members, pairs, targets and sensors of an incident.

    A device whose only significant pairs are with a single peer that has
    significant pairs with `fanout` or more devices (the centre of a scan) is a
    target of that peer, not a member. Both ends of a flood or of a new link stay
    members. A member without a significant sensor element, whose significant
    pairs reach fewer than `fanout` devices, entered on its communication alone.
    Its pairs are what is abnormal (its device element sums them), so the devices
    at their other ends are members too: a lost link between a SCADA server and a
    PLC names both, while a field device that went silent, whose readings are
    missing, keeps its PLC as a target. The pairs between the members and the
    hosts in `reached` (a scan's targets) are targets whatever their p-values.
    """
    significant = inside[inside["p_value"] <= alpha]
    members = set(devices)
    pairs = significant[significant["kind"] == "pair"]
    own = significant[significant["kind"] != "pair"]

    peers: dict[int, set[int]] = {}
    for src, dst in zip(pairs["device_idx"], pairs["peer_idx"]):
        peers.setdefault(int(src), set()).add(int(dst))
        peers.setdefault(int(dst), set()).add(int(src))

    # The other ends join before the demotion, so that a scanned host found alone
    # brings in its scanner and then becomes the scanner's target, as it does when
    # both were found.
    sensors = own[own["kind"].str.startswith("sensor")]
    with_readings = set(sensors["device_idx"].tolist())
    for device in sorted(members):
        linked = peers.get(device, set())
        if device not in with_readings and len(linked) < fanout:
            members |= linked

    demoted = set()
    for device in sorted(members):
        linked = peers.get(device, set())
        if len(linked) != 1:
            continue
        (peer,) = linked
        if peer not in members or peer in demoted:
            continue
        if len(peers.get(peer, set())) >= fanout:
            demoted.add(device)
    kept = sorted(members - demoted) or sorted(members)

    in_set = set(kept)
    src_in = pairs["device_idx"].isin(in_set)
    dst_in = pairs["peer_idx"].isin(in_set)
    internal = pairs[src_in & dst_in]
    leaving = pairs[src_in ^ dst_in]
    # A host that the scan reached and that is now a member is not a target.
    reached = [device for device in reached if device not in in_set]
    if len(reached):
        every = inside[inside["kind"] == "pair"]
        to_reached = ((every["device_idx"].isin(in_set) & every["peer_idx"].isin(reached))
                      | (every["peer_idx"].isin(in_set) & every["device_idx"].isin(reached)))
        leaving = pd.concat([leaving, every[to_reached]]).drop_duplicates(
            ["device_idx", "peer_idx", "bin"])
    src_side = leaving["device_idx"].isin(in_set).to_numpy()
    outside = np.where(src_side, leaving["peer_idx"], leaving["device_idx"])
    targets = leaving.assign(target=outside)
    sensors = sensors[sensors["device_idx"].isin(in_set)]
    return {
        "devices": kept,
        "pairs": internal,
        "targets": targets,
        "sensors": sensors,
        "significant": significant[significant["device_idx"].isin(in_set)
                                   | significant["peer_idx"].isin(in_set)],
        "inside": inside,
    }


def incident_type(significant: pd.DataFrame, devices: list[int]) -> str:
    """Return "process" when at least 80% of the significant elements are sensor
    elements, "communication" when at most 20% are, and "both" otherwise."""
    if significant.empty:
        return "communication"
    share = float(significant["kind"].str.startswith("sensor").mean())
    if share >= 0.8:
        return "process"
    if share <= 0.2:
        return "communication"
    return "both"


def summarize(kind: str, devices: list[str], targets: int, sensors: int,
              begin: pd.Timestamp, end: pd.Timestamp) -> str:
    """Return one plain sentence: what happened, where and when."""
    shown = ", ".join(devices[:3]) + (f" and {len(devices) - 3} more" if len(devices) > 3 else "")
    text = (f"{kind.capitalize()} anomaly on {shown} from "
            f"{begin:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC")
    details = []
    if sensors:
        details.append(f"{sensors} abnormal sensor reading{'s' if sensors != 1 else ''}")
    if targets:
        details.append(f"links to {targets} target device{'s' if targets != 1 else ''}")
    return text + (" with " + " and ".join(details) if details else "") + "."


def member_table(identifier: str, chosen: dict, names: np.ndarray,
                 families: list[scoring.ScaledFamily]) -> list[dict]:
    """Rows of incident_members: one per device, pair, target and sensor."""
    inside = chosen["inside"]
    rows = []

    def strength(frame: pd.DataFrame) -> tuple[float, float]:
        p = float(frame["p_value"].min()) if len(frame) else 1.0
        return -np.log10(max(p, 1e-300)), p

    for device in chosen["devices"]:
        touching = inside[(inside["device_idx"] == device) | (inside["peer_idx"] == device)]
        evidence, p = strength(touching)
        rows.append({"incident_id": identifier, "role": "device", "device": names[device],
                     "peer": None, "sensor": None, "evidence": evidence, "p_value": p})
    for (src, dst), group in chosen["pairs"].groupby(["device_idx", "peer_idx"]):
        evidence, p = strength(group)
        rows.append({"incident_id": identifier, "role": "pair", "device": names[src],
                     "peer": names[dst], "sensor": None, "evidence": evidence, "p_value": p})
    for target, group in chosen["targets"].groupby("target"):
        evidence, p = strength(group)
        rows.append({"incident_id": identifier, "role": "target", "device": names[target],
                     "peer": None, "sensor": None, "evidence": evidence, "p_value": p})
    sensor_family = next((f for f in families if f.kind == "sensor"), None)
    if sensor_family is not None:
        for column, group in chosen["sensors"].groupby("column"):
            evidence, p = strength(group)
            ids = sensor_family.ids.iloc[int(column)]
            rows.append({"incident_id": identifier, "role": "sensor",
                         "device": str(ids["device"]), "peer": None,
                         "sensor": str(ids["sensor"]), "evidence": evidence, "p_value": p})
    return rows


def package_versions() -> dict[str, str | None]:
    """Return the versions of Python and of the packages a run depends on."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_info(workspace, run_id, config, snapshots, periods, checkpoint, fitted,
             prepared, thresholds) -> dict:
    versions = package_versions()
    period_spans = {}
    for name in ("train", "calibration", "score", "gap"):
        chosen = np.flatnonzero(periods == name)
        if len(chosen):
            period_spans[name] = {
                "bins": int(len(chosen)),
                "start": snapshots.bin_start(chosen[0])[0].isoformat(),
                "end": snapshots.bin_start(chosen[-1] + 1)[0].isoformat(),
            }
    return {
        "run_id": run_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "config": config.to_dict(),
        "origin": pd.Timestamp(snapshots.origin_us, unit="us", tz="UTC").isoformat(),
        "origin_us": snapshots.origin_us,
        "bin_seconds": snapshots.bin_seconds,
        "num_bins": snapshots.num_bins,
        "num_devices": snapshots.num_devices,
        "periods": period_spans,
        "model_checksum": train.checksum(checkpoint),
        "best_epoch": fitted.best_epoch,
        "versions": versions,
        "thresholds": {
            str(scale): {
                **value,
                "by_length": {str(k): v for k, v in value["by_length"].items()},
            }
            for scale, value in thresholds.items()
        },
        "constant_in_training": [list(pair) for pair in prepared.constant],
        "collection_gaps": collection_gaps(snapshots, periods),
        "rounded_readings": [
            {"device": str(row.device), "sensor": str(row.sensor),
             "places": int(row.places), "sources": int(row.sources),
             "finer_sources": int(row.finer_sources)}
            for row in snapshots.rounded.itertuples()],
        "gap_fill": {"policy": config.stream.gap_fill,
                     "limit": config.stream.gap_fill_limit,
                     "imputed_cells": snapshots.imputed_cells},
        "workspace": str(workspace.root),
    }


def run_tables(snapshots, periods, scored, incidents, members, fitted, null_rows,
               checkpoint, config) -> dict[str, pd.DataFrame]:
    devices = snapshots.devices.copy()
    bins = []
    elements = []
    base_events = snapshots.pair_events.sum(axis=1) if snapshots.pair_events.size else \
        np.zeros(snapshots.num_bins)
    for item in scored:
        scale = item.scale
        starts = snapshots.bin_start(np.arange(len(item.periods)) * scale)
        ends = snapshots.bin_start(np.minimum((np.arange(len(item.periods)) + 1) * scale,
                                              snapshots.num_bins))
        events = np.add.reduceat(base_events, np.arange(0, snapshots.num_bins, scale))
        windows = scoring.window_scores(item.families, events)
        # A window that contains a collection gap is not scored at this scale
        # (its coarse period is "gap" or "mixed"), and its note gives the reason.
        silent = np.add.reduceat((periods == "gap").astype(np.int64),
                                 np.arange(0, snapshots.num_bins, scale)) > 0
        windows["note"] = np.where(silent, COLLECTION_GAP_NOTE, windows["note"])
        bins.append(pd.DataFrame({"scale": scale, "bin": np.arange(len(item.periods)),
                                  "start": starts, "end": ends, "period": item.periods,
                                  "score": windows["score"], "events": windows["events"],
                                  "note": windows["note"]}))
        for family, null_p in zip(item.families, item.null_families):
            p = np.where(np.isnan(family.p_value), null_p, family.p_value)
            t, j = np.nonzero(~np.isnan(p))
            if len(t) == 0:
                continue
            ids = family.ids
            observed = family.observed[t, j]
            expected = family.expected[t, j]
            elements.append(pd.DataFrame({
                "kind": family.kind,
                "device": ids["device"].to_numpy()[j],
                "peer": ids["peer"].to_numpy()[j],
                "sensor": ids["sensor"].to_numpy()[j],
                "scale": scale, "bin": t,
                "observed": observed, "expected": expected,
                "residual": observed - expected,
                "score": family.score[t, j],
                "p_value": p[t, j],
                "calibration": family.calibration[j].astype(str),
            }))
    element_table = pd.concat(elements, ignore_index=True) if elements else pd.DataFrame()
    evidence = device_evidence(element_table)
    fallback = pd.DataFrame([row for item in scored for row in item.fallback])
    return {
        "devices": devices,
        "sensors": snapshots.sensors[["device", "sensor", "slot"]],
        "bins": pd.concat(bins, ignore_index=True),
        "elements": element_table,
        "device_evidence": evidence,
        "incidents": incidents,
        "incident_members": members,
        "training_loss": pd.DataFrame(fitted.history),
        "calibration_fallback": fallback,
        "null_scan": pd.DataFrame(null_rows),
        "model_checkpoint": pd.DataFrame({"name": ["model"], "data": [checkpoint]}),
    }


def device_evidence(elements: pd.DataFrame) -> pd.DataFrame:
    """Per (device, scale, bin): -log10 of the smallest p-value of the device's
    elements (a pair counts for both ends) and how many elements it has."""
    if elements.empty:
        return pd.DataFrame(columns=["device", "scale", "bin", "evidence", "min_p", "elements"])
    ends = [elements[["device", "scale", "bin", "p_value"]]]
    pairs = elements[elements["kind"] == "pair"]
    ends.append(pairs[["peer", "scale", "bin", "p_value"]].rename(columns={"peer": "device"}))
    stacked = pd.concat(ends, ignore_index=True)
    grouped = stacked.groupby(["device", "scale", "bin"], sort=False)["p_value"]
    table = grouped.agg(min_p="min", elements="size").reset_index()
    table["evidence"] = -np.log10(table["min_p"].clip(lower=1e-300))
    return table[["device", "scale", "bin", "evidence", "min_p", "elements"]]


def sensor_flags(snapshots: Snapshots, prepared: train.Prepared, train_bins: np.ndarray,
                 periods: np.ndarray) -> pd.DataFrame:
    """Flagged sensor bin means of the scored bins: constant in training, or outside
    the training range. One row per (bin, device, sensor, flag)."""
    scored_bins = np.flatnonzero(periods == "score")
    frame = scoring.sensor_deviations(snapshots, prepared, train_bins, scored_bins)
    frame = frame.explode("flags").dropna(subset=["flags"])
    frame = frame.rename(columns={"flags": "flag"})
    return frame[["bin", "start", "device", "sensor", "value", "scaled", "flag"]] \
        .reset_index(drop=True)
