"""Measure the online path against the batch run on a sample plant.

Usage:
    tgloc demo --no-serve --workspace W      # builds, trains and runs the sample plant
    python bench/online.py [--workspace W] [--timing-devices 1000]

It replays the batch run's scored bins through the online path (the same code as
`tgloc replay --speed max`), and prints per planted anomaly: the bin of onset, the
first bin after which an online incident matched it (time overlap and device
Jaccard >= 0.5, as `core.evaluate` matches), the start bin of the batch run's
matching incident, and whether the target holds. Abrupt types: online within two
bins of onset. Gradual types: no later than one bin after the batch run found
them, where "found" is the first bin t after which a batch run over the data up to
t matches the anomaly (the run's model, with the bins after t left unscored). The
batch run's start bin dates an anomaly from the whole day's data, which no run
has at the time, so the count of targets met against it is printed too.
Then how many batch incidents have an online incident with the same devices and
start and end within one bin, and the seconds to score one bin after it closes
(without settling older incidents, which runs after the bin's results are out and
is timed on its own).
With --timing-devices N it builds a plant of about N devices, trains it for
one epoch to keep the build short and times bins on it. A bin scans only the
intervals that end with it, so its time does not grow with the bins scored before.
A bin with hits costs more, and a poorly trained model leaves more of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core  # noqa: E402,F401  (first: it caps vector code before numpy loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core import evaluate, ingest, online, pipeline, scoring, store, synth, train  # noqa: E402
from core.config import ModelConfig, RunConfig, StreamConfig  # noqa: E402
from core.snapshots import build_snapshots  # noqa: E402

ABRUPT = ("port_scan", "new_link", "silence", "flood", "spike")
GRADUAL = ("drift", "stuck", "process_fault")
# The batch runs over the data so far are searched up to this many bins after the
# online path's first match.
PREFIX_MARGIN = 3


def _shown(value: int | None) -> str:
    return "-" if value is None else str(value)


def read_truth(workspace: store.Workspace) -> pd.DataFrame:
    truth = store.query(workspace.store_path, "SELECT * FROM ground_truth")
    truth["devices"] = truth["devices"].map(lambda v: list(v) if not isinstance(v, str)
                                            else json.loads(v))
    for column in ("start", "end"):
        truth[column] = pd.to_datetime(truth[column], utc=True)
    return truth


def replay(workspace: store.Workspace, truth: pd.DataFrame) -> tuple[dict, pd.DataFrame,
                                                                     pd.DataFrame, list[float],
                                                                     online.OnlineScorer]:
    """Replay the scored bins; return the first bin each anomaly was matched."""
    model = online.OnlineModel.load(workspace)
    scorer = online.OnlineScorer(model, workspace, name="bench-replay")
    width = model.bin_seconds * 1_000_000
    first = (online.micros(model.info["periods"]["score"]["start"]) - model.origin_us) // width
    scorer.warm_up(first)
    found: dict[str, int] = {}
    seconds = []
    for bin_index in range(first, int(model.info["num_bins"])):
        result = scorer.close_bin(bin_index)
        seconds.append(result.seconds)
        scorer.settle_due(bin_index)
        if not (result.new or result.grown) or len(found) == len(truth):
            continue
        incidents, members = scorer.incident_table()
        match = evaluate.match_incidents(incidents, members, truth)
        for row in match.truth.itertuples():
            if pd.notna(row.incident_id) and row.anomaly_id not in found:
                found[row.anomaly_id] = bin_index
    scorer.settle_open()
    incidents, members = scorer.incident_table()
    scorer.publish()
    return found, incidents, members, seconds, scorer


def same_incidents(batch: pd.DataFrame, batch_members: pd.DataFrame,
                   live: pd.DataFrame, live_members: pd.DataFrame,
                   bin_of) -> tuple[int, list[str]]:
    """Count batch incidents with an online incident of the same devices whose start
    and end are each within one bin, and return a line per batch incident: its bins
    and devices, and those of the closest online incident (most devices shared)."""
    def devices(members: pd.DataFrame) -> dict[str, frozenset]:
        chosen = members[members["role"] == "device"]
        return chosen.groupby("incident_id")["device"].apply(frozenset).to_dict()

    def shown(ids: frozenset) -> str:
        names = sorted(ids)
        return ",".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")

    batch_devices, live_devices = devices(batch_members), devices(live_members)
    count = 0
    lines = []
    for row in batch.sort_values("start").itertuples():
        own = batch_devices.get(row.incident_id, frozenset())
        same = closest = None
        for other in live.itertuples():
            theirs = live_devices.get(other.incident_id, frozenset())
            if (theirs == own and abs(bin_of(other.start) - bin_of(row.start)) <= 1
                    and abs(bin_of(other.end) - bin_of(row.end)) <= 1):
                same = other
                break
            shared = len(theirs & own)
            if shared and (closest is None or shared > closest[0]):
                closest = (shared, other)
        count += same is not None
        other = same
        if other is None and closest is not None:
            other = closest[1]
        line = f"{bin_of(row.start):>6} {bin_of(row.end):>6}  {shown(own):<34}"
        if other is None:
            line += "  -"
        else:
            line += (f"  {bin_of(other.start):>6} {bin_of(other.end):>6}  "
                     f"{shown(live_devices.get(other.incident_id, frozenset())):<34} "
                     f"{'yes' if same is not None else 'no'}")
        lines.append(line)
    return count, lines


class PrefixRuns:
    """Batch runs of a published run's model over the data up to a chosen bin.

    The model is causal, so the element scores of the bins up to t are the same
    whether the run saw the bins after t or not. A prefix run marks the bins after
    t as not scored and calibrates, scans and describes the rest as `tgloc run`
    does, its family-wise thresholds set for the bins it scores.
    """

    def __init__(self, workspace: store.Workspace, run_id: str) -> None:
        info = store.read_run_info(workspace, run_id)
        self.config = RunConfig.from_dict(info["config"])
        blobs = store.query(workspace.run_path(run_id),
                            "SELECT data FROM model_checkpoint WHERE name = 'model'")
        self.model, payload = train.load_checkpoint(bytes(blobs["data"].iloc[0]))
        stream = self.config.stream
        self.snapshots = build_snapshots(workspace.store_path, stream.bin_seconds,
                                         gap_fill=stream.gap_fill,
                                         gap_fill_limit=stream.gap_fill_limit)
        self.periods, segments = pipeline.assign_periods(self.snapshots, self.config)
        train_bins = np.flatnonzero(self.periods == "train")
        with train.deterministic():
            self.prepared = train.prepare(self.snapshots, train_bins, segments,
                                          kinds=payload["kinds"])
            x_hat, pair_hat, candidates, _ = scoring.reconstruct(self.model, self.prepared,
                                                                 self.snapshots)
            self.families = scoring.families(self.snapshots, self.prepared, x_hat,
                                             pair_hat, candidates, train_bins)

    def found(self, last: int, truth: pd.DataFrame) -> set[str]:
        """Return the anomaly ids of `truth` that a batch run over bins 0 to `last`
        matches."""
        periods = self.periods.copy()
        periods[last + 1:] = "gap"
        rng = np.random.default_rng(self.config.model.seed)
        with train.deterministic():
            scored = pipeline.score_scales(self.families, periods, self.config)
            incidents, members, _, _ = pipeline.localize_run(
                self.snapshots, scored, periods, self.prepared, self.config, rng,
                lambda stage, fraction: None, self.model)
        match = evaluate.match_incidents(incidents, members, truth)
        return set(match.truth.loc[match.truth["incident_id"].notna(), "anomaly_id"])

    def first_found(self, truth: pd.DataFrame, anomaly_id: str, first: int,
                    last: int) -> int | None:
        """Return the first bin t in [first, last] after which a batch run over the
        bins up to t matches the anomaly, or None."""
        for bin_index in range(first, last + 1):
            if anomaly_id in self.found(bin_index, truth):
                return bin_index
        return None


def timing_plant(devices: int, bins: int) -> list[float]:
    """Seconds per closed bin on a plant of about `devices` devices."""
    with tempfile.TemporaryDirectory() as folder:
        workspace = store.Workspace.create(folder)
        plant = synth.generate_plant(synth.PlantConfig(seed=0, field_devices=devices,
                                                       hours=4.0))
        files = synth.write_plant(plant, workspace.root / "input")
        ingest.ingest_file(workspace, files["events"], ingest.IngestOptions(target="events"))
        ingest.ingest_file(workspace, files["measurements"],
                           ingest.IngestOptions(target="measurements"))
        synth.store_plant(workspace, plant)
        config = RunConfig(stream=StreamConfig(bin_seconds=60), model=ModelConfig(epochs=1))
        started = time.perf_counter()
        pipeline.run_pipeline(workspace, config, run_id="timing")
        print(f"timing plant: {len(plant.devices)} devices, batch run "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        model = online.OnlineModel.load(workspace)
        scorer = online.OnlineScorer(model, workspace, name="timing")
        width = model.bin_seconds * 1_000_000
        first = (online.micros(model.info["periods"]["score"]["start"]) - model.origin_us) // width
        scorer.warm_up(first)
        seconds, settling = [], []
        for bin_index in range(first, min(first + bins, int(model.info["num_bins"]))):
            seconds.append(scorer.close_bin(bin_index).seconds)
            started = time.perf_counter()
            settled = scorer.settle_due(bin_index)
            line = f"  bin {bin_index}: {seconds[-1]:.3f} s"
            if settled:
                settling.append(time.perf_counter() - started)
                line += f", then {settled} incident(s) settled in {settling[-1]:.3f} s"
            print(line, flush=True)
        if settling:
            print(f"settling after a bin: {len(settling)} times, "
                  f"{describe(settling).replace('bins', 'settlings')}")
        return seconds


def build_workspace(folder: str, hours: float, epochs: int) -> None:
    """Build the sample plant of `tgloc demo` (seed 0) over `hours` and run it with at
    most `epochs` training epochs."""
    workspace = store.Workspace.create(folder)
    plant = synth.generate_plant(synth.PlantConfig(seed=0, hours=hours))
    files = synth.write_plant(plant, workspace.root / "input")
    ingest.ingest_file(workspace, files["events"], ingest.IngestOptions(target="events"))
    ingest.ingest_file(workspace, files["measurements"],
                       ingest.IngestOptions(target="measurements"))
    synth.store_plant(workspace, plant)
    started = time.perf_counter()
    pipeline.run_pipeline(workspace, RunConfig(stream=StreamConfig(bin_seconds=60),
                                               model=ModelConfig(epochs=epochs)))
    print(f"built {folder}: batch run {time.perf_counter() - started:.0f} s", flush=True)


def describe(seconds: list[float]) -> str:
    values = np.asarray(seconds)
    return (f"median {np.median(values):.3f} s, 95th percentile "
            f"{np.quantile(values, 0.95):.3f} s, max {values.max():.3f} s over {len(values)} bins")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="a workspace built by tgloc demo")
    parser.add_argument("--timing-devices", type=int, help="also time bins on this many devices")
    parser.add_argument("--timing-bins", type=int, default=30)
    parser.add_argument("--build-hours", type=float,
                        help="first build the sample plant over this many hours into "
                             "--workspace (instead of tgloc demo)")
    parser.add_argument("--build-epochs", type=int, default=100,
                        help="training epochs at most for --build-hours (default 100)")
    args = parser.parse_args()
    if not args.workspace and not args.timing_devices:
        parser.error("give --workspace, --timing-devices or both")
    print(f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    if args.workspace:
        replay_report(args)
    if args.timing_devices:
        timed = timing_plant(args.timing_devices, args.timing_bins)
        print(f"seconds to score one bin (about {args.timing_devices} field devices): "
              f"{describe(timed)}")
    load = os.getloadavg()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} at the end, Python {platform.python_version()}, "
          f"{pd.Timestamp.now(tz='UTC'):%Y-%m-%d}")
    return 0


def replay_report(args: argparse.Namespace) -> None:
    """Replay the workspace's run and print the table of onsets against the batch run."""
    if args.build_hours:
        build_workspace(args.workspace, args.build_hours, args.build_epochs)
    workspace = store.Workspace.create(args.workspace)
    run_id = workspace.resolve_run(None)
    run_path = workspace.run_path(run_id)
    info = store.read_run_info(workspace, run_id)
    origin = pd.Timestamp(info["origin_us"], unit="us", tz="UTC")
    width = pd.Timedelta(seconds=int(info["bin_seconds"]))
    truth = read_truth(workspace)
    batch = store.query(run_path, "SELECT * FROM incidents")
    batch_members = store.query(run_path, "SELECT * FROM incident_members")
    for column in ("start", "end"):
        batch[column] = pd.to_datetime(batch[column], utc=True)
    batch_match = evaluate.match_incidents(batch, batch_members, truth)

    started = time.perf_counter()
    found, live, live_members, seconds, _ = replay(workspace, truth)
    elapsed = time.perf_counter() - started
    record = workspace.root / "online" / "bench-found.json"
    record.write_text(json.dumps({"found": found, "seconds": seconds}))

    def bin_of(stamp: pd.Timestamp) -> int:
        return int((stamp - origin) // width)

    print(f"\nrun {run_id}, {len(truth)} planted anomalies; replay of {len(seconds)} bins "
          f"took {elapsed:.0f} s\n")
    prefix = PrefixRuns(workspace, run_id)
    print(f"{'anomaly':<14} {'onset':>6} {'online':>7} {'batch':>6} {'so far':>7}  "
          f"{'target':<24} met")
    met = met_on_start = 0
    for row in truth.sort_values("start").itertuples():
        onset = bin_of(row.start)
        live_bin = found.get(row.anomaly_id)
        batch_id = batch_match.truth.set_index("anomaly_id").loc[row.anomaly_id, "incident_id"]
        batch_bin = so_far = None
        if pd.notna(batch_id):
            batch_bin = bin_of(batch.set_index("incident_id").loc[batch_id, "start"])
        if row.kind in ABRUPT:
            target = "online <= onset + 2"
            ok = ok_on_start = live_bin is not None and live_bin <= onset + 2
        else:
            # The earliest batch run over the data so far that finds the anomaly,
            # searched up to a few bins past the online path's.
            last = (live_bin if live_bin is not None else bin_of(row.end)) + PREFIX_MARGIN
            so_far = prefix.first_found(truth, row.anomaly_id, onset,
                                        min(last, int(info["num_bins"]) - 1))
            target = "online <= so far + 1"
            ok = live_bin is not None and (so_far is None or live_bin <= so_far + 1)
            ok_on_start = (live_bin is not None and batch_bin is not None
                           and live_bin <= batch_bin + 1)
        met += ok
        met_on_start += ok_on_start
        print(f"{row.kind:<14} {onset:>6} {_shown(live_bin):>7} {_shown(batch_bin):>6} "
              f"{_shown(so_far):>7}  {target:<24} {'yes' if ok else 'no'}")
    print(f"\ntargets met: {met} of {len(truth)}; with the gradual types against the "
          f"batch incident's start bin instead: {met_on_start} of {len(truth)}")
    print("'so far': the first bin after which a batch run over the data up to that "
          f"bin finds the anomaly ('-': none up to {PREFIX_MARGIN} bins after the online "
          "path's)")
    same, lines = same_incidents(batch, batch_members, live, live_members, bin_of)
    print(f"\n{'start':>6} {'end':>6}  {'batch incident':<34}  {'start':>6} {'end':>6}  "
          f"{'closest online incident':<34} same")
    for line in lines:
        print(line)
    print()
    print(f"batch incidents: {len(batch)}; online incidents: {len(live)}; batch incidents "
          f"with an online incident of the same devices, start and end within one bin: "
          f"{same}")
    print(f"planted anomalies found: batch {batch_match.found}, online {len(found)}")
    print(f"seconds to score one bin ({info['num_devices']} devices): {describe(seconds)}")


if __name__ == "__main__":
    raise SystemExit(main())
