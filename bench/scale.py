"""Scale benchmark: each pipeline stage on synthetic plants of 1 M to 50 M events.

Run as ``tgloc bench scale`` or ``python -m bench.scale``. For each size the
benchmark writes the events with `bench.bulk`: periodic polling with jitter over a
plant graph, without sensors or planted anomalies, which is enough to load every
stage. The events go to Parquet and to CSV files of at most `PART_EVENTS` events
each, as a rotated log would. Each measured task then runs in a fresh child
process:

- ingest from Parquet into an empty workspace;
- ingest from CSV, with every row validated, into another;
- the run on the Parquet workspace: binning, training, scoring, localization
  and publishing (`core.pipeline.run_pipeline`, with `--epochs` epochs);
- the dashboard's heatmap query (`core.views.heatmap_matrix`) on that run.

Memory is the peak resident set size (RSS) of the child, sampled every 50 ms with
psutil (`core.stages.StageTimer`). A stage's peak includes what earlier stages of
the same child still hold. CPU seconds are the child's user plus system time,
which shows the work done when other processes share the cores.

The table goes to standard output, and its last line is one JSON object of the
headline figures and of whether each target was met.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

SIZES = {"1M": (1_000_000, 100), "10M": (10_000_000, 1_000), "50M": (50_000_000, 5_000)}
QUICK_SIZES = ("1M",)
PART_EVENTS = 5_000_000
DEFAULT_EPOCHS = 1
DEFAULT_BIN_SECONDS = 60
TARGET_PARQUET_EPS = 2_000_000
TARGET_CSV_EPS = 1_000_000
TARGET_END_TO_END_S = 300.0
TARGET_PEAK_MB = 4096.0
TARGET_SIZE = "10M"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to `parser` (shared with `tgloc bench scale`)."""
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help=f"comma-separated sizes among {', '.join(SIZES)} "
                        "(default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="run the smallest size only (1 M events, 100 devices)")
    parser.add_argument("--folder", default=None,
                        help="work folder for the files and workspaces (default: a "
                        "new folder under the system's temporary folder, removed "
                        "afterwards)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs of each run (default {DEFAULT_EPOCHS})")
    parser.add_argument("--through", choices=("run", "binning"), default="run",
                        help="last stage measured: the whole run (default), or "
                        "binning only, which skips training, scoring, localization "
                        "and the heatmap")
    parser.add_argument("--bin-seconds", type=int, default=DEFAULT_BIN_SECONDS,
                        help="base bin width in seconds "
                        f"(default {DEFAULT_BIN_SECONDS})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale",
                                     description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for the chosen sizes and print the table and the JSON."""
    sizes = list(QUICK_SIZES) if args.quick else _sizes(args.sizes)
    if args.epochs < 1:
        raise SystemExit(f"invalid --epochs {args.epochs}: must be >= 1")
    own_folder = args.folder is None
    root = Path(args.folder or _temporary_folder())
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for size in sizes:
            results[size] = _measure_size(root / size, size, args)
            _print_size(size, results[size])
    finally:
        if own_folder:
            shutil.rmtree(root, ignore_errors=True)
    headline = _headline(results, args)
    print(json.dumps(headline, sort_keys=True))
    return 0


def _sizes(text: str) -> list[str]:
    sizes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [size for size in sizes if size not in SIZES]
    if unknown or not sizes:
        raise SystemExit(f"invalid --sizes {text!r}: choose from {', '.join(SIZES)}")
    return sizes


def _temporary_folder() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="tgloc-bench-scale-")


def _measure_size(folder: Path, size: str, args: argparse.Namespace) -> dict[str, Any]:
    num_events, num_devices = SIZES[size]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    inputs = _child(_write_inputs, str(folder), num_events, num_devices)
    parquet = _child(_ingest_task, str(folder / "ws-parquet"), inputs["parquet"])
    csv = _child(_ingest_task, str(folder / "ws-csv"), inputs["csv"])
    shutil.rmtree(folder / "ws-csv", ignore_errors=True)
    if args.through == "binning":
        pipeline = _child(_binning_task, str(folder / "ws-parquet"), args.bin_seconds)
        heatmap = None
    else:
        pipeline = _child(_run_task, str(folder / "ws-parquet"), args.epochs,
                          args.bin_seconds)
        heatmap = _child(_heatmap_task, str(folder / "ws-parquet"),
                         pipeline["run_id"])
    shutil.rmtree(folder, ignore_errors=True)
    return {"events": num_events, "devices": num_devices, "inputs": inputs,
            "parquet": parquet, "csv": csv, "run": pipeline, "heatmap": heatmap}


def _child(task, *args):
    """Run `task(*args)` in a fresh process and return its result."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(task, args)


# Tasks, each run in its own process.


def _write_inputs(folder: str, num_events: int, num_devices: int) -> dict[str, Any]:
    from bench import bulk

    began = time.perf_counter()
    links = bulk.build_links(num_devices)
    parts = max(1, -(-num_events // PART_EVENTS))
    files: dict[str, list[str]] = {"parquet": [], "csv": []}
    for part in range(parts):
        count = min(PART_EVENTS, num_events - part * PART_EVENTS)
        stem = Path(folder) / f"events-{part:03d}"
        # Each part is its own stretch of time, as consecutive log files are.
        start = part * bulk.span_for(links, PART_EVENTS)
        bulk.write_parquet(links, count, f"{stem}.parquet", seed=part, start_s=start)
        bulk.write_csv(links, count, f"{stem}.csv", seed=part, start_s=start)
        files["parquet"].append(f"{stem}.parquet")
        files["csv"].append(f"{stem}.csv")
    sizes = {kind: sum(os.path.getsize(path) for path in paths)
             for kind, paths in files.items()}
    return {**files, "bytes": sizes, "links": int(len(links.src)),
            "hours": bulk.span_for(links, num_events) / 3600,
            "seconds": time.perf_counter() - began}


def _ingest_task(workspace_root: str, files: list[str]) -> dict[str, Any]:
    from core import ingest, store
    from core.stages import StageTimer

    workspace = store.Workspace.create(workspace_root)
    timer = StageTimer()
    cpu = _cpu_seconds()
    stored = rejected = 0
    with timer.stage("ingest"):
        for path in files:
            report = ingest.ingest_file(workspace, path,
                                        ingest.IngestOptions(target="events"))
            stored += report.rows_stored
            rejected += report.rows_rejected
    record = timer.records[0]
    return {"seconds": record.seconds, "cpu_seconds": _cpu_seconds() - cpu,
            "peak_mb": record.peak_mb, "stored": stored, "rejected": rejected}


def _run_task(workspace_root: str, epochs: int, bin_seconds: int) -> dict[str, Any]:
    from core import pipeline, store
    from core.config import ModelConfig, RunConfig, StreamConfig

    workspace = store.Workspace(Path(workspace_root))
    config = RunConfig(stream=StreamConfig(bin_seconds=bin_seconds),
                       model=ModelConfig(epochs=epochs))
    timer = _CpuTimer()
    cpu = _cpu_seconds()
    result = pipeline.run_pipeline(workspace, config, run_id="scale", timer=timer)
    stages = {r.stage: {"seconds": r.seconds, "peak_mb": r.peak_mb,
                        "cpu_seconds": timer.cpu[r.stage]}
              for r in timer.records}
    with store.connect(Path(result.path), read_only=True) as con:
        devices, bins = con.execute(
            "SELECT (SELECT count(*) FROM devices), "
            "(SELECT count(*) FROM bins WHERE scale = 1)").fetchone()
        epochs_run, train_bins = con.execute(
            "SELECT count(*), (SELECT count(*) FROM bins WHERE scale = 1 "
            "AND period = 'train') FROM training_loss").fetchone()
        elements = con.execute("SELECT count(*) FROM elements").fetchone()[0]
    return {"run_id": result.run_id, "stages": stages, "devices": int(devices),
            "bins": int(bins), "train_bins": int(train_bins),
            "epochs": int(epochs_run), "elements": int(elements),
            "incidents": len(result.incidents), "cpu_seconds": _cpu_seconds() - cpu}


def _binning_task(workspace_root: str, bin_seconds: int) -> dict[str, Any]:
    from core import snapshots, store

    workspace = store.Workspace(Path(workspace_root))
    timer = _CpuTimer()
    with timer.stage("snapshots"):
        built = snapshots.build_snapshots(workspace.store_path, bin_seconds)
    record = timer.records[0]
    stages = {"snapshots": {"seconds": record.seconds, "peak_mb": record.peak_mb,
                            "cpu_seconds": timer.cpu["snapshots"]}}
    return {"stages": stages, "devices": built.num_devices, "bins": built.num_bins,
            "train_bins": 0, "epochs": 0, "elements": 0, "incidents": None,
            "cpu_seconds": timer.cpu["snapshots"]}


def _heatmap_task(workspace_root: str, run_id: str) -> dict[str, Any]:
    from core import store, views
    from core.stages import StageTimer

    workspace = store.Workspace(Path(workspace_root))
    timer = StageTimer()
    cpu = _cpu_seconds()
    with timer.stage("heatmap"):
        matrix = views.heatmap_matrix(workspace, run_id, scale=1)
    record = timer.records[0]
    cells = int(matrix.evidence.size)
    return {"seconds": record.seconds, "cpu_seconds": _cpu_seconds() - cpu,
            "peak_mb": record.peak_mb, "cells": cells}


class _CpuTimer:
    """A `StageTimer` that also records each stage's CPU seconds (all threads)."""

    def __init__(self) -> None:
        from core.stages import StageTimer

        self.timer = StageTimer()
        self.cpu: dict[str, float] = {}

    @property
    def records(self):
        return self.timer.records

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = _cpu_seconds()
        try:
            with self.timer.stage(name):
                yield
        finally:
            self.cpu[name] = _cpu_seconds() - began


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


# Output.


def _rows(result: dict[str, Any]) -> list[tuple[str, float, float, str, float]]:
    """Return (stage, seconds, CPU seconds, throughput, peak MB) per stage."""
    events = result["events"]
    run = result["run"]
    stages = run["stages"]
    epochs = max(run["epochs"], 1)
    device_bins = run["devices"] * run["bins"]
    train_elements = run["devices"] * run["train_bins"] * epochs

    def stage(name: str, label: str, count: float, unit: str, per: int = 1):
        record = stages[name]
        return (label, record["seconds"] / per, record["cpu_seconds"] / per,
                _rate(count, record["seconds"], unit), record["peak_mb"])

    rows = []
    for kind, label in (("parquet", "ingest Parquet"), ("csv", "ingest CSV")):
        task = result[kind]
        rows.append((label, task["seconds"], task["cpu_seconds"],
                     _rate(events, task["seconds"], "events"), task["peak_mb"]))
    rows.append(stage("snapshots", "binning", events, "events"))
    if "training" not in stages:
        return rows
    rows += [
        stage("training", "training/epoch", train_elements, "device-bins", epochs),
        stage("scoring", "scoring", device_bins, "device-bins"),
        stage("localization", "localization", device_bins, "device-bins"),
        stage("publishing", "publishing", run["elements"], "elements"),
    ]
    heatmap = result["heatmap"]
    rows.append(("heatmap query", heatmap["seconds"], heatmap["cpu_seconds"],
                 _rate(heatmap["cells"], heatmap["seconds"], "cells"),
                 heatmap["peak_mb"]))
    return rows


def _rate(count: float, seconds: float, unit: str) -> str:
    if seconds <= 0:
        return f"- {unit}/s"
    return f"{count / seconds:,.0f} {unit}/s"


def _print_size(size: str, result: dict[str, Any]) -> None:
    run = result["run"]
    print(f"\n{size}: {result['events']:,} events, {run['devices']} devices, "
          f"{result['inputs']['links']} links, {run['bins']} bins, "
          f"{run['epochs']} epoch(s), {run['incidents']} incidents, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'stage':<16} {'seconds':>9} {'CPU s':>8} {'throughput':>28} "
          f"{'peak MB':>9}")
    for stage, seconds, cpu, rate, peak in _rows(result):
        print(f"{stage:<16} {seconds:>9.2f} {cpu:>8.2f} {rate:>28} {peak:>9.0f}")
    sys.stdout.flush()


def _size_figures(result: dict[str, Any]) -> dict[str, Any]:
    """Return the headline figures of one size."""
    events = result["events"]
    stages = result["run"]["stages"]
    binning = stages["snapshots"]
    parquet, csv = result["parquet"], result["csv"]
    figures = {
        "events": events,
        "devices": result["devices"],
        "ingest_parquet_eps": round(events / parquet["seconds"]),
        "ingest_csv_eps": round(events / csv["seconds"]),
        "binning_eps": round(events / binning["seconds"]),
        "parquet_and_binning_eps": round(
            events / (parquet["seconds"] + binning["seconds"])),
        "csv_and_binning_eps": round(events / (csv["seconds"] + binning["seconds"])),
        "parquet_and_binning_events_per_cpu_s": round(
            events / (parquet["cpu_seconds"] + binning["cpu_seconds"])),
        "csv_and_binning_events_per_cpu_s": round(
            events / (csv["cpu_seconds"] + binning["cpu_seconds"])),
        "peak_mb": round(max(parquet["peak_mb"],
                             *(stage["peak_mb"] for stage in stages.values()))),
    }
    if result["heatmap"] is None:
        return figures
    epochs = max(result["run"]["epochs"], 1)
    figures.update({
        "epochs": result["run"]["epochs"],
        "training_epoch_s": round(stages["training"]["seconds"] / epochs, 2),
        "end_to_end_s": round(
            parquet["seconds"] + sum(stage["seconds"] for stage in stages.values()), 1),
        "end_to_end_cpu_s": round(
            parquet["cpu_seconds"]
            + sum(stage["cpu_seconds"] for stage in stages.values()), 1),
        "heatmap_s": round(result["heatmap"]["seconds"], 3),
        "incidents": result["run"]["incidents"],
    })
    return figures


def _headline(results: dict[str, dict[str, Any]], args: argparse.Namespace
              ) -> dict[str, Any]:
    sizes = {size: _size_figures(result) for size, result in results.items()}
    targets = {
        "parquet_and_binning_2M_eps": all(
            s["parquet_and_binning_eps"] >= TARGET_PARQUET_EPS for s in sizes.values()
        ) if sizes else None,
        "csv_and_binning_1M_eps": all(
            s["csv_and_binning_eps"] >= TARGET_CSV_EPS for s in sizes.values()
        ) if sizes else None,
        "end_to_end_10M_5min_4GB": None,
    }
    headline = sizes.get(TARGET_SIZE, {})
    if "end_to_end_s" in headline:
        targets["end_to_end_10M_5min_4GB"] = (
            headline["end_to_end_s"] <= TARGET_END_TO_END_S
            and headline["peak_mb"] <= TARGET_PEAK_MB)
    return {
        "benchmark": "scale",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": f"{os.cpu_count()} cores, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB, "
                   f"{platform.machine()}",
        "load_average_1min": round(os.getloadavg()[0], 1),
        "epochs": args.epochs,
        "through": args.through,
        "sizes": sizes,
        "targets_met": targets,
    }


if __name__ == "__main__":
    sys.exit(main())
