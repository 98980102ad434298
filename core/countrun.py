"""A run of a large link stream through the count path, published for the dashboard.

`tgloc run` trains the auto-encoder on dense arrays of every device in every bin.
A stream of network hosts (tens of thousands of them, most idle in any bin, with no
sensor readings) does not fit them: DARPA 1998 would need 50 GiB for its
communication features alone. For such a stream `core.pipeline.run_pipeline` calls
`run_counts`, which scores it with `core.linkcounts` and writes a run file with the
tables the dashboard reads: hosts, bins, elements (those with a p-value up to
`KEPT_P`), device evidence, incidents and their members. No model is trained, so
the run has no training loss and no checkpoint.

Incident members: a host with a flagged element of its own is a `device`, a flagged
pair is a `pair`, and a host that a device's flagged events reached is a `target`.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd

from core import linkcounts, localize, store
from core.accepted import list_accepted
from core.config import RunConfig
from core.errors import DataError
from core.stages import StageTimer

log = logging.getLogger(__name__)

KEPT_P = 0.2
HOST_KIND = "host"
METHOD = "link counts"
# Dense arrays above this many (bin, device) cells do not fit the model's path on a
# machine of 8 GB, because each cell has 6 communication features and a mask.
DENSE_CELL_LIMIT = 150_000_000
# A host's elements are device elements of the run, named in its sensor column.
ELEMENT_NAMES = {kind: linkcounts.ELEMENT_NAMES[kind] for kind in ("out", "in")}
# The bins table has a row per bin and scale, so a count run caps the base bins:
# 5 million is 58 days of one-second bins.
MAX_BASE_BINS = 5_000_000


def dense_cells(workspace: store.Workspace, bin_seconds: int) -> tuple[int, int, bool]:
    """Return (bins, devices, has_measurements) of the store at `bin_seconds`."""
    with store.connect(workspace.store_path, read_only=True) as con:
        lo, hi, devices = con.execute("""
            SELECT min(t), max(t), count(DISTINCT device) FROM (
                SELECT epoch_us(t) AS t, src AS device FROM events
                UNION ALL SELECT epoch_us(t), dst FROM events
                UNION ALL SELECT epoch_us(t), device FROM measurements)""").fetchall()[0]
        measured = con.execute("SELECT count(*) FROM measurements").fetchall()[0][0] > 0
    if lo is None:
        return 0, 0, measured
    bins = (hi - lo) // (bin_seconds * linkcounts.MICROS) + 1
    return int(bins), int(devices), measured


def wants_counts(workspace: store.Workspace, config: RunConfig) -> bool:
    """Return whether the run goes through the count path: asked for, or a link
    stream too large for dense arrays.

    Raises:
        DataError: the store has sensor readings and is too large for dense arrays,
            or the count path is asked for on a store with sensor readings.
    """
    method = config.method
    if method == "model":
        return False
    bins, devices, measured = dense_cells(workspace, config.stream.bin_seconds)
    if measured and method == "counts":
        raise DataError(
            "the count path scores event counts only, and this store has sensor "
            "readings",
            "Run with --method model (the default for plants with sensors).")
    if bins * devices <= DENSE_CELL_LIMIT:
        return method == "counts"
    if measured:
        raise DataError(
            f"{devices:,} devices x {bins:,} bins of {config.stream.bin_seconds} s is "
            f"more than the {DENSE_CELL_LIMIT:,} cells that the model's dense arrays "
            "can hold",
            "Use wider bins (--bin-seconds) or score a shorter window (--score-start, "
            "--score-end).")
    return True


def run_counts(workspace: store.Workspace, config: RunConfig, run_id: str,
               timer: StageTimer, report) -> tuple[str, pd.DataFrame, pd.DataFrame, dict]:
    """Score the link stream of `workspace`, take out its incidents and publish
    the run. Returns (path, incidents, members, info)."""
    _check_settings(config)
    counts = linkcounts.CountConfig(
        bin_seconds=config.stream.bin_seconds, scales=tuple(config.stream.scales),
        holdout_share=1.0 - config.train_share, level=config.search.level,
        seed=config.model.seed)
    report("scoring", 0.0)
    with timer.stage("scoring"), store.connect(workspace.store_path, read_only=True) as con:
        source = _scored_source(con, config)
        first_us, last_us = con.execute(
            f"SELECT min(epoch_us(t)), max(epoch_us(t)) FROM {source}").fetchall()[0]
        if first_us is None:
            raise DataError("no events between the reference start and the score end",
                            "Load a link stream with `tgloc ingest`, or widen "
                            "--reference-start and --score-end.")
        reference_end = _reference_end(config, first_us, last_us)
        _check_window(reference_end, first_us, last_us, counts.bin_seconds)
        accepted = list_accepted(workspace)
        intervals = [(row.start.value // 1000, row.end.value // 1000)
                     for row in accepted.itertuples(index=False)]
        scores = linkcounts.score_stream(con, source, reference_end, counts, intervals)
        devices = _devices(con, scores.origin_us, counts.bin_seconds)
        bins = _bins(con, source, scores, counts, last_us, intervals)
    report("localization", 0.0)
    with timer.stage("localization"):
        days = _scored_days(scores, counts, last_us)
        incidents, members = describe(scores, devices, counts, days)
        for note in scores.notes:
            log.warning("run %s: %s", run_id, note)
    report("publishing", 0.0)
    with timer.stage("publishing"):
        kept = _element_table(scores.elements[scores.elements["p_value"] <= KEPT_P])
        # Every held-out element is kept, so the Model page's calibration check
        # shows the laws' p-values over the whole of [0, 1]. Their p-values are the
        # laws' own, not calibrated, so they stay out of the heatmap's evidence.
        elements = pd.concat([_element_table(scores.held_out, "held out"), kept],
                             ignore_index=True)
        # core.pipeline imports this module, so its helpers are imported here.
        from core.pipeline import device_evidence

        info = _run_info(run_id, config, scores, counts, devices, bins, days)
        info["accepted"] = _accepted_records(accepted, bins, counts.scales[0])
        info["count_notes"] = scores.notes
        tables = {
            "devices": devices, "bins": bins, "elements": elements,
            "device_evidence": device_evidence(kept),
            "incidents": incidents, "incident_members": members,
            "calibration_fallback": _fallback(scores),
        }
        path = store.publish_run(workspace, run_id, tables, info)
    report("done", 1.0)
    return str(path), incidents, members, info


def _check_settings(config: RunConfig) -> None:
    """Raise DataError for run settings that the count path does not apply."""
    if config.score_start is not None:
        raise DataError(
            f"the count path scores from the reference end on, and --score-start "
            f"{config.score_start} asks for a later start",
            "Drop --score-start, or set --reference-end to where scoring starts.")
    if config.search.calibrate_on_scored:
        raise DataError(
            "the count path calibrates on the held-out end of the reference only, so "
            "--calibrate-on-scored does not apply to it",
            "Drop --calibrate-on-scored, or run with --method model.")


def _reference_end(config: RunConfig, first_us: int, last_us: int) -> int:
    """Return the reference end in epoch microseconds: the configured one, or the
    `reference_share` of the events the run reads."""
    if config.reference_end is not None:
        return _micros(config.reference_end)
    return int(first_us + (last_us - first_us) * config.reference_share)


def _micros(text: str) -> int:
    stamp = pd.Timestamp(text)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1000)


def _stamp(micros: int) -> str:
    return f"{pd.Timestamp(micros, unit='us', tz='UTC'):%Y-%m-%d %H:%M:%S} UTC"


def _check_window(reference_end: int, first_us: int, last_us: int, bin_seconds: int) -> None:
    """Raise DataError unless events lie on both sides of the reference end and the
    span fits `MAX_BASE_BINS` bins."""
    span = f"the events run from {_stamp(first_us)} to {_stamp(last_us)}"
    if reference_end > last_us:
        raise DataError(f"no events after the reference end {_stamp(reference_end)}: {span}",
                        "Choose an earlier --reference-end or a later --score-end, or "
                        "load the data to score.")
    if reference_end <= first_us:
        raise DataError(f"no events before the reference end {_stamp(reference_end)}: {span}",
                        "Choose a later --reference-end.")
    bins = (last_us - first_us) // (bin_seconds * linkcounts.MICROS) + 1
    if bins > MAX_BASE_BINS:
        raise DataError(
            f"{bins:,} bins of {bin_seconds} s ({span}) is more than the "
            f"{MAX_BASE_BINS:,} bins a count run holds",
            "Use wider bins (--bin-seconds) or a shorter window (--reference-start, "
            "--score-end).")


def _scored_source(con, config: RunConfig) -> str:
    """Create the view of the events the run reads, from `reference_start` (if set)
    to `score_end` (if set), and return its name."""
    bounds = []
    if config.reference_start is not None:
        bounds.append(f"t >= TIMESTAMPTZ '{pd.Timestamp(config.reference_start).isoformat()}'")
    if config.score_end is not None:
        bounds.append(f"t < TIMESTAMPTZ '{pd.Timestamp(config.score_end).isoformat()}'")
    where = f"WHERE {' AND '.join(bounds)}" if bounds else ""
    con.execute(f"CREATE OR REPLACE TEMP VIEW count_run_events AS "
                f"SELECT t, src, dst, weight FROM events {where}")
    return "count_run_events"


def _devices(con, origin_us: int, bin_seconds: int) -> pd.DataFrame:
    """Return every host, ordered by its first bin, with the kinds the store declares."""
    width = bin_seconds * linkcounts.MICROS
    frame = con.execute(f"""
        WITH seen AS (
            SELECT device, min(bin) AS first_bin FROM (
                SELECT src AS device, (epoch_us(t) - {origin_us}) // {width} AS bin
                FROM count_run_events
                UNION ALL
                SELECT dst, (epoch_us(t) - {origin_us}) // {width} FROM count_run_events)
            GROUP BY device)
        SELECT s.device, coalesce(d.kind, '{HOST_KIND}') AS kind,
               coalesce(d.zone, '') AS zone, coalesce(d.criticality, 0.5) AS criticality,
               s.first_bin
        FROM seen s LEFT JOIN devices d USING (device)
        ORDER BY s.first_bin, s.device""").df()
    frame.insert(0, "idx", np.arange(len(frame), dtype=np.int64))
    return frame


def _bins(con, source: str, scores: linkcounts.CountScores,
          counts: linkcounts.CountConfig, last_us: int,
          accepted_us: list[tuple[int, int]]) -> pd.DataFrame:
    """Return one row per bin and scale with its period, events and strongest
    evidence. A scored bin that overlaps an accepted interval is in the training
    period."""
    width = counts.bin_seconds * linkcounts.MICROS
    num_bins = int((last_us - scores.origin_us) // width) + 1
    events = con.execute(f"""
        SELECT CAST((epoch_us(t) - {scores.origin_us}) // {width} AS BIGINT) AS bin,
               count(*) AS events
        FROM {source} GROUP BY 1""").df()
    base_events = np.zeros(num_bins, dtype=np.int64)
    base_events[events["bin"].to_numpy()] = events["events"].to_numpy()
    split = int(scores.reference_bins * (1.0 - counts.holdout_share))
    origin = pd.Timestamp(scores.origin_us, unit="us", tz="UTC")
    frames = []
    for scale in counts.scales:
        index = np.arange(-(-num_bins // scale))
        start, stop = index * scale, np.minimum((index + 1) * scale, num_bins)
        period = np.where(stop <= split, "train",
                          np.where(stop <= scores.reference_bins, "calibration",
                                   np.where(start >= scores.reference_bins, "score",
                                            "mixed")))
        start_us = scores.origin_us + start * width
        stop_us = scores.origin_us + stop * width
        for first, last in accepted_us:
            period = np.where((period == "score") & (start_us < last) & (stop_us > first),
                              "train", period)
        strongest = scores.elements[scores.elements["scale"] == scale].groupby("bin")[
            "p_value"].min()
        score = np.zeros(len(index))
        score[strongest.index.to_numpy()] = -np.log10(strongest.to_numpy().clip(1e-300))
        frames.append(pd.DataFrame({
            "scale": scale, "bin": index,
            "start": origin + pd.to_timedelta(start * counts.bin_seconds, unit="s"),
            "end": origin + pd.to_timedelta(stop * counts.bin_seconds, unit="s"),
            "period": period, "score": score,
            "events": np.add.reduceat(base_events, start), "note": None}))
    return pd.concat(frames, ignore_index=True)


def _accepted_records(accepted: pd.DataFrame, bins: pd.DataFrame,
                      scale: int) -> list[dict]:
    """Return one record per accepted interval with its base bins now in the
    reference (0 when it lies outside the run's data), as `apply_accepted` does."""
    base = bins[(bins["scale"] == scale) & (bins["period"] == "train")]
    records = []
    for row in accepted.itertuples(index=False):
        inside = (base["start"] < row.end) & (base["end"] > row.start)
        records.append({"accept_id": int(row.accept_id), "incident_id": row.incident_id,
                        "start": row.start.isoformat(), "end": row.end.isoformat(),
                        "accepted_by": row.accepted_by, "bins": int(inside.sum())})
    return records


def _scored_days(scores: linkcounts.CountScores, counts: linkcounts.CountConfig,
                 last_us: int) -> float:
    width = counts.bin_seconds * linkcounts.MICROS
    scored_bins = max(int((last_us - scores.origin_us) // width) + 1 - scores.reference_bins, 1)
    return scored_bins * counts.bin_seconds / 86400.0


def describe(scores: linkcounts.CountScores, devices: pd.DataFrame,
             counts: linkcounts.CountConfig, days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the incidents table and their members, in the layout of the model's
    runs."""
    from core.pipeline import summarize

    criticality = dict(zip(devices["device"], devices["criticality"].astype(float)))
    origin = pd.Timestamp(scores.origin_us, unit="us", tz="UTC")
    threshold = -np.log10(scores.limit)
    rows, member_rows = [], []
    for incident in scores.incidents.itertuples():
        begin = origin + pd.Timedelta(seconds=incident.start_bin * counts.bin_seconds)
        end = origin + pd.Timedelta(seconds=incident.stop_bin * counts.bin_seconds)
        identifier = localize.incident_id(list(incident.devices), begin)
        score = -np.log10(max(incident.p_min, 1e-300))
        ratio = score / max(threshold, 1e-9)
        significance = 1.0 - np.exp(-2.0 * max(ratio - 1.0, 0.0))
        weight = max(criticality.get(device, 0.5) for device in incident.devices)
        inside = scores.flagged[scores.flagged["incident"] == incident.incident]
        rows.append({
            "incident_id": identifier, "start": begin, "end": end, "type": "communication",
            "score": score, "threshold": threshold, "alpha": scores.limit,
            "scale": int(inside["scale"].min()) if len(inside) else counts.scales[0],
            "severity": round(float(100 * significance * (0.5 + 0.5 * weight) * 0.9), 1),
            "p_value": incident.significance,
            "false_alarms_per_day": incident.p_min * scores.tests / days,
            "summary": summarize("communication", list(incident.devices),
                                 len(incident.targets), 0, begin, end),
            "evidence": float(-np.log10(inside["p_value"].clip(lower=1e-300)).sum()),
        })
        member_rows += _members(identifier, incident, inside)
    table = pd.DataFrame(rows, columns=[
        "incident_id", "start", "end", "type", "score", "threshold", "alpha", "scale",
        "severity", "p_value", "false_alarms_per_day", "summary", "evidence"])
    # Most attacks reach the p-value floor, so their severities tie. The summed
    # evidence of the flagged elements ranks a long flood above a one-minute burst.
    table = table.sort_values(["severity", "score", "evidence"], ascending=False,
                              kind="stable")
    table = table.drop_duplicates("incident_id").drop(columns="evidence").reset_index(
        drop=True)
    table.insert(1, "rank", np.arange(1, len(table) + 1))
    members = pd.DataFrame(member_rows, columns=[
        "incident_id", "role", "device", "peer", "sensor", "evidence", "p_value"])
    return table, members[members["incident_id"].isin(table["incident_id"])].reset_index(
        drop=True)


def _members(identifier: str, incident, inside: pd.DataFrame) -> list[dict]:
    def row(role: str, device: str, peer: str | None, p: float) -> dict:
        return {"incident_id": identifier, "role": role, "device": device, "peer": peer,
                "sensor": None, "evidence": -np.log10(max(p, 1e-300)), "p_value": p}

    hosts = inside[inside["kind"] != "pair"]
    pairs = inside[inside["kind"] == "pair"]
    rows = []
    for device in incident.devices:
        own = inside[(inside["src"] == device) | (inside["dst"] == device)]
        rows.append(row("device", device, None,
                        float(own["p_value"].min()) if len(own) else 1.0))
    for (src, dst), group in pairs.groupby(["src", "dst"]):
        rows.append(row("pair", src, dst, float(group["p_value"].min())))
    strongest = float(hosts["p_value"].min()) if len(hosts) else 1.0
    rows += [row("target", target, None, strongest) for target in incident.targets]
    return rows


def _element_table(elements: pd.DataFrame, calibration: str | None = None) -> pd.DataFrame:
    """Return the elements in the run's layout. A host's sent and received counts
    are device elements, named by their sensor column. The calibration column
    names the law (own or newcomer), or is `calibration` when given."""
    pair = elements["kind"] == "pair"
    return pd.DataFrame({
        "kind": np.where(pair, "pair", "device"),
        "device": elements["src"].to_numpy(object),
        "peer": elements["dst"].where(pair, None).to_numpy(object),
        "sensor": elements["kind"].map(ELEMENT_NAMES).where(~pair, None).to_numpy(object),
        "scale": elements["scale"].to_numpy(np.int32),
        "bin": elements["bin"].to_numpy(np.int64),
        "observed": elements["count"].to_numpy(np.float64),
        "expected": elements["expected"].to_numpy(np.float64),
        "residual": (elements["count"] - elements["expected"]).to_numpy(np.float64),
        "score": -np.log10(elements["p_raw"].clip(lower=1e-300)).to_numpy(np.float64),
        "p_value": elements["p_value"].to_numpy(np.float64),
        "calibration": calibration or np.where(elements["novel"], "newcomer law",
                                               "own law"),
    })


def _fallback(scores: linkcounts.CountScores) -> pd.DataFrame:
    elements = scores.elements
    frame = elements.groupby(["kind", "scale", "novel"]).size().reset_index(name="elements")
    return pd.DataFrame({
        "kind": frame["kind"].map(lambda kind: ELEMENT_NAMES.get(kind, kind)),
        "scale": frame["scale"], "level": np.where(frame["novel"], "newcomer law", "own law"),
        "elements": frame["elements"]})


def _run_info(run_id: str, config: RunConfig, scores: linkcounts.CountScores,
              counts: linkcounts.CountConfig, devices: pd.DataFrame, bins: pd.DataFrame,
              days: float) -> dict:
    from core.pipeline import package_versions

    base = bins[bins["scale"] == counts.scales[0]]
    periods = {}
    for name in ("train", "calibration", "score"):
        chosen = base[base["period"] == name]
        if len(chosen):
            periods[name] = {"bins": int(len(chosen)),
                             "start": chosen["start"].iloc[0].isoformat(),
                             "end": chosen["end"].iloc[-1].isoformat()}
    return {
        "run_id": run_id, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "method": METHOD, "config": config.to_dict(),
        "origin": pd.Timestamp(scores.origin_us, unit="us", tz="UTC").isoformat(),
        "origin_us": scores.origin_us, "bin_seconds": counts.bin_seconds,
        "num_bins": int(len(base)), "num_devices": int(len(devices)), "periods": periods,
        "versions": package_versions(),
        "count_path": {"tests": scores.tests, "element_limit": scores.limit,
                       "scored_days": round(days, 3), "kept_p": KEPT_P,
                       "holdout_share": counts.holdout_share,
                       "prior_bins": counts.prior_bins, "merge_gap": counts.merge_gap},
    }
