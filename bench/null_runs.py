"""Null runs: how often the full pipeline reports an incident where nothing happened.

    PYTHONPATH=. .venv/bin/python -m bench.null_runs [--seeds 20] [--periods 5]

Each seed is a sample plant of `core.synth` with nothing planted. Its first 14.4
hours are the reference period, as in `tgloc demo` (60% of 24 hours): the model
trains on the first 60% of it and the rest calibrates p-values and the scan's null.
After the reference come `--periods` null periods of 9.6 hours each, the length of
the demo's scored period. Each null period is one run: the pipeline scores it with
`score_start` and `score_end` set to its bounds, sets the scan thresholds for a
period of that size and takes out the incidents. The runs of one seed share its
reference period. So binning, training and the model's reconstruction are done once
per seed, and everything after them once per period.

A run counts as a false alarm when it reports any incident. The thresholds are set
for a family-wise level of 0.05 per run, so the share of runs with an incident
should stay near 0.05; the target is at most 0.08. The interval is Clopper-Pearson
at 95%.

Results are kept per seed in the cache folder, under a digest of the `core`
source, so a rerun of the same code after an interruption goes on with the next
seed. Each seed's trained model and reconstruction are kept too, under a digest
of the modules that produce them, so a change to the search alone reruns in
seconds per seed. `train_s` is the training time when the model was trained. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import core  # first: it caps the vector code before numpy loads
import numpy as np
import pandas as pd
from scipy import stats

from core import ingest, pipeline, scoring, store, synth, train
from core.config import ModelConfig, RunConfig, StreamConfig
from core.snapshots import build_snapshots

REFERENCE_HOURS = 14.4
PERIOD_HOURS = 9.6
TARGET = 0.08


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=20, help="plants (default 20)")
    parser.add_argument("--first-seed", type=int, default=100,
                        help="seed of the first plant (default 100, clear of the "
                             "seeds the acceptance test plants)")
    parser.add_argument("--periods", type=int, default=5,
                        help="null periods per plant (default 5)")
    parser.add_argument("--field-devices", type=int,
                        default=synth.PlantConfig().field_devices,
                        help="field devices per plant (default: the sample plant's)")
    parser.add_argument("--epochs", type=int, default=ModelConfig().epochs,
                        help="maximum training epochs (default: the pipeline's)")
    parser.add_argument("--cache", help="folder for plants and per-seed results "
                                        "(default: a folder under the system's temp)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.null_runs",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1 or args.periods < 1:
        print(f"error: invalid --seeds {args.seeds} or --periods {args.periods}: both "
              "must be at least 1", file=sys.stderr)
        return 2
    cache = Path(args.cache or Path(tempfile.gettempdir()) / "tgloc-null-runs")
    cache.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        record = cache / (f"seed{seed}-f{args.field_devices}-e{args.epochs}"
                          f"-p{args.periods}-{code_version()}.json")
        if record.exists():
            result = json.loads(record.read_text(encoding="utf-8"))
        else:
            result = null_seed(cache, seed, args)
            record.write_text(json.dumps(result), encoding="utf-8")
        results.append(result)
        print(f"seed {seed}: {result['devices']} devices, incidents per period "
              f"{result['incidents']}, training {result['train_s']:.0f} s, "
              f"runs {result['runs_s']:.0f} s", flush=True)
        for period, lines in enumerate(result.get("summaries", [])):
            for line in lines:
                print(f"  period {period}: {line}", flush=True)
    print_report(results, args, time.perf_counter() - began)
    return 0


# The modules that generate, ingest, bin, train and reconstruct a plant, with
# everything they import from `core` except the search (`localize`, `scan`).
TRAINING_MODULES = ("__init__", "accepted", "allocation", "binning", "columnar",
                    "config", "errors", "ingest", "model", "pipeline", "reading",
                    "scoring", "snapshots", "stages", "store", "synth", "train")


def code_version(only: tuple[str, ...] | None = None) -> str:
    """Return a digest of the `core` package's source (of the modules in `only`,
    if given), so that a kept result of older code is never reported as this
    code's."""
    digest = hashlib.sha1()
    for path in sorted(Path(core.__file__).parent.glob("*.py")):
        if only is not None and path.stem not in only:
            continue
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def null_seed(cache: Path, seed: int, args: argparse.Namespace) -> dict:
    """Train once on the plant of `seed` and run each null period."""
    hours = REFERENCE_HOURS + PERIOD_HOURS * args.periods
    plant_config = synth.PlantConfig(seed=seed, field_devices=args.field_devices,
                                     hours=hours, anomalies=())
    workspace = _workspace(cache / f"plant{seed}-f{args.field_devices}-h{hours:g}",
                           plant_config)
    start = pd.Timestamp(plant_config.start)
    bounds = [start + pd.Timedelta(hours=REFERENCE_HOURS + PERIOD_HOURS * k)
              for k in range(args.periods + 1)]

    def config_for(period: int | None) -> RunConfig:
        window = {} if period is None else {
            "score_start": bounds[period].isoformat(),
            "score_end": bounds[period + 1].isoformat()}
        return RunConfig(stream=StreamConfig(bin_seconds=60),
                         model=ModelConfig(epochs=args.epochs),
                         reference_end=bounds[0].isoformat(), **window)

    model_file = cache / (f"trained{seed}-f{args.field_devices}-e{args.epochs}"
                    f"-{code_version(TRAINING_MODULES)}.pickle")
    if model_file.exists():
        with model_file.open("rb") as handle:
            snapshots, prepared, model, families, train_s = pickle.load(handle)
    else:
        began = time.perf_counter()
        base = config_for(None)
        snapshots = build_snapshots(workspace.store_path, base.stream.bin_seconds)
        periods, segments = pipeline.assign_periods(snapshots, base)
        train_bins = np.flatnonzero(periods == "train")
        with train.deterministic():
            prepared = train.prepare(snapshots, train_bins, segments)
            model = train.fit(prepared, snapshots, train_bins, base.model).model
            x_hat, pair_hat, candidates, _ = scoring.reconstruct(model, prepared, snapshots)
            families = scoring.families(snapshots, prepared, x_hat, pair_hat, candidates,
                                        train_bins)
        train_s = time.perf_counter() - began
        partial = model_file.with_suffix(".partial")
        with partial.open("wb") as handle:
            pickle.dump((snapshots, prepared, model, families, train_s), handle)
        partial.replace(model_file)
    trained = time.perf_counter()
    counts, summaries, windows = [], [], []
    for period in range(args.periods):
        config = config_for(period)
        periods, _ = pipeline.assign_periods(snapshots, config)
        scored_bins = np.flatnonzero(periods == "score")
        windows.append([snapshots.bin_start(scored_bins[0])[0].isoformat(),
                        snapshots.bin_start(scored_bins[-1] + 1)[0].isoformat()])
        rng = np.random.default_rng(config.model.seed)
        with train.deterministic():
            scored = pipeline.score_scales(families, periods, config)
            incidents, _, _, _ = pipeline.localize_run(
                snapshots, scored, periods, prepared, config, rng, lambda *_: None, model)
        counts.append(int(len(incidents)))
        summaries.append([f"{row.type} at scale {row.scale}, score {row.score:.1f} against "
                          f"{row.threshold:.1f}, p {row.p_value:.2g}: {row.summary}"
                          for row in incidents.itertuples()])
    return {"seed": seed, "devices": int(snapshots.num_devices), "incidents": counts,
            "summaries": summaries, "scored": windows,
            "train_s": train_s, "runs_s": time.perf_counter() - trained}


def _workspace(root: Path, plant_config: synth.PlantConfig) -> store.Workspace:
    """Open the plant's workspace at `root`, generating and ingesting it first if needed."""
    workspace = store.Workspace.create(root)
    done = root / "ingested"
    if done.exists():
        return workspace
    plant = synth.generate_plant(plant_config)
    files = synth.write_plant(plant, root / "input")
    for target in ("events", "measurements"):
        ingest.ingest_file(workspace, files[target], ingest.IngestOptions(target=target))
    for path in files.values():
        path.unlink(missing_ok=True)
    done.write_text("ok\n", encoding="utf-8")
    return workspace


def print_report(results: list[dict], args: argparse.Namespace, seconds: float) -> None:
    counts = np.array([c for r in results for c in r["incidents"]])
    alarms = int((counts > 0).sum())
    runs = len(counts)
    interval = stats.binomtest(alarms, runs).proportion_ci(confidence_level=0.95)
    share = alarms / runs
    print(f"\nNull runs: {len(results)} plants x {args.periods} null periods of "
          f"{PERIOD_HOURS:g} h, about {results[0]['devices']} devices each\n")
    print("| runs | runs with an incident | share | 95% interval | incidents in all | "
          "target | met |")
    print("| ---: | ---: | ---: | --- | ---: | --- | --- |")
    print(f"| {runs} | {alarms} | {share:.3f} | {interval.low:.3f} to "
          f"{interval.high:.3f} | {int(counts.sum())} | <= {TARGET:g} | "
          f"{'yes' if share <= TARGET else 'no'} |")
    load = os.getloadavg()
    print(f"\n{seconds:.0f} s in all; machine: {platform.machine()}, {os.cpu_count()} "
          f"CPUs, load average {load[0]:.1f} at the end; "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(json.dumps({"null_runs": runs, "null_runs_with_incident": alarms,
                      "null_share_with_incident": share,
                      "null_share_ci95": [interval.low, interval.high]}))


if __name__ == "__main__":
    sys.exit(main())
