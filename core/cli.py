"""The command line: `tgloc demo`, `ingest`, `run`, `incidents`, `suppressions`,
`evaluate`, `snapshots`, `bench`.

A thin front end over `core`: it parses arguments, turns progress callbacks into a
progress line, and prints errors as their headline and detail. A traceback is shown
only with `--debug`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core import darpa, flows, ingest, linkstream, model_views, smd, store, views
from core.config import (
    GAP_FILL_POLICIES,
    METHODS,
    ModelConfig,
    RunConfig,
    SearchConfig,
    StreamConfig,
)
from core.errors import TglocError
from core.stages import StageTimer

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "workspace"
# The file formats of `tgloc ingest --format`.
FORMATS = ("auto", "uvt", "darpa", "flows")
# CSV files written for spreadsheets: UTF-8 with a byte order mark, which Excel
# needs to read non-ASCII names as UTF-8.
CSV_FILE_ENCODING = "utf-8-sig"
LIST_SEPARATOR = ";"
DEFAULT_PORT = 8501
APP_PATH = Path(__file__).resolve().parent.parent / "app.py"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "handler", None) not in PASS_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.options = extra
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except TglocError as exc:
        print(f"error: {exc.headline}", file=sys.stderr)
        if exc.detail:
            print(f"  {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output (`| head`) has gone; stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the last guard: no traceback reaches a user
        if args.debug:
            raise
        print(f"error: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  Run the same command with --debug to see the traceback.", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgloc",
        description="Localize anomalies in industrial IoT data as abnormal "
        "sub-temporal-graphs.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="log every step and show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="build the sample plant, find its incidents, serve the dashboard")
    demo.add_argument("--workspace", default=DEFAULT_WORKSPACE,
                      help="workspace folder (default: ./workspace)")
    demo.add_argument("--seed", type=int, default=0, help="sample plant seed (default 0)")
    demo.add_argument("--hours", type=float, default=24.0,
                      help="length of the sample plant's history in hours (default 24)")
    demo.add_argument("--no-serve", action="store_true",
                      help="stop after the run instead of serving the dashboard")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help="dashboard port on 127.0.0.1 (default 8501)")
    demo.set_defaults(handler=command_demo)

    load = commands.add_parser("ingest", help="load files into a workspace's store")
    load.add_argument("files", nargs="*", help="CSV, Parquet, Zeek conn.log or JSON lines")
    load.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    load.add_argument("--target", choices=ingest.TARGETS, default="events",
                      help="table the files fill (default events)")
    load.add_argument("--layout", choices=ingest.LAYOUTS, default="long",
                      help="measurements: long (time, device, sensor, value) or wide")
    load.add_argument("--column", action="append", default=[], metavar="OURS=THEIRS",
                      help="map a file column, e.g. --column time=Timestamp (repeatable)")
    load.add_argument("--time-format", help="strptime format of the time column")
    load.add_argument("--date-order", choices=ingest.DATE_ORDERS,
                      help="order of dates such as 03/07/2017 (default: detected "
                      "from a day above 12; a file without one needs this)")
    load.add_argument("--timezone", default="UTC",
                      help="IANA zone for timestamps without a zone (default UTC)")
    load.add_argument("--epoch-unit", choices=("s", "ms"),
                      help="unit of numeric timestamps (default: detected)")
    load.add_argument("--sensor-map", help="CSV mapping wide sensor columns to devices")
    load.add_argument("--sensor-map-device", default="device",
                      help="device column of --sensor-map (default device)")
    load.add_argument("--sensor-map-columns", default="columns",
                      help="column of --sensor-map listing sensor columns (default columns)")
    load.add_argument("--label-column", help="label column kept out of the features")
    load.add_argument("--ignore-column", action="append", default=[], metavar="NAME",
                      help="a file column that is neither read nor stored "
                      "(repeatable)")
    load.add_argument("--weight-policy", choices=ingest.WEIGHT_POLICIES,
                      default="quarantine",
                      help="events: quarantine bad weights or count every row as 1")
    load.add_argument("--encoding", default="utf-8",
                      help="text encoding of the files (default utf-8); rows with "
                      "bytes not valid in it are quarantined")
    load.add_argument("--sentinel", action="append", default=[], metavar="COLUMN=VALUE",
                      help="a number that means no reading in COLUMN, stored as NULL, "
                      "e.g. --sentinel Init_Win_bytes_forward=-1 (repeatable)")
    load.add_argument("--read-unterminated-line", action="store_true",
                      help="also read a last line without a line end (by default it "
                      "is held back until a writer ends it)")
    load.add_argument("--format", choices=FORMATS, default="auto",
                      help="auto: detect CSV, Parquet, Zeek or JSON lines; uvt: "
                      "headerless integer lines u,v,t with t a slot index "
                      "(needs --slot-seconds); darpa: DARPA 1998 connection "
                      "records as MIDAS distributes them, headerless "
                      "src,dst,MM/DD/YYYY-HH:MM,attack, zipped or not; flows: "
                      "CICFlowMeter flow CSV (Source IP, Destination IP, "
                      "Timestamp, Label)")
    load.add_argument("--slot-seconds", type=float,
                      help="uvt: length of one slot in seconds")
    load.add_argument("--origin", default=linkstream.DEFAULT_ORIGIN,
                      help="uvt: ISO-8601 start of slot 0 (default "
                      f"{linkstream.DEFAULT_ORIGIN})")
    load.add_argument("--undirected", action="store_true",
                      help="uvt: contacts have no direction; store each as "
                      "(smaller id, larger id)")
    load.add_argument("--flow-weight", choices=flows.WEIGHTS,
                      help="flows: event weight, the flow's bytes (forward + "
                      "backward payload, the default), its packets, or 1 per flow")
    load.add_argument("--batadal", metavar="FOLDER",
                      help="import the BATADAL water network data set from FOLDER")
    load.add_argument("--withdraw", type=int, metavar="REPORT_ID",
                      help="remove every row that ingest report REPORT_ID stored, in "
                      "one transaction, so the file can be loaded again")
    load.add_argument("--smd", metavar="FOLDER",
                      help="import one machine of the Server Machine Dataset from "
                      "FOLDER (csv/, interpretation_label/); needs --machine")
    load.add_argument("--machine", help="SMD machine to import, such as machine-1-6")
    load.add_argument("--step-seconds", type=int, default=smd.DEFAULT_STEP_SECONDS,
                      help="SMD: seconds between two rows (default 60)")
    load.set_defaults(handler=command_ingest)

    run = commands.add_parser("run", help="bin, train, score and localize a workspace")
    run.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    run.add_argument("--run-id", help="name of the run (default: a UTC timestamp)")
    run.add_argument("--config", help="JSON file of run settings (RunConfig fields)")
    run.add_argument("--bin-seconds", type=int, help="base bin width in seconds")
    run.add_argument("--scales", type=scale_list, metavar="1,K,...",
                     help="bin widths scored, in base bins, the first 1 (default 1,4,16)")
    run.add_argument("--reference-start", help="ISO time: reference period start")
    run.add_argument("--reference-end", help="ISO time: reference period end")
    run.add_argument("--score-start", help="ISO time: first scored bin")
    run.add_argument("--score-end", help="ISO time: end of the scored bins")
    run.add_argument("--epochs", type=int, help="maximum training epochs")
    run.add_argument("--seed", type=int, help="seed of training and scoring")
    run.add_argument("--gap-fill", choices=GAP_FILL_POLICIES,
                     help="sensor readings stored as NULL: none leaves them missing "
                     "(default), ffill uses the sensor's last earlier reading")
    run.add_argument("--gap-fill-limit", type=int, metavar="N",
                     help="ffill: fill at most N consecutive missing readings")
    run.add_argument("--calibrate-on-scored", action="store_true",
                     help="also judge each element against its own scores in the "
                     "scored period, for a reference far in time from it (see "
                     "SearchConfig.calibrate_on_scored)")
    run.add_argument("--method", choices=METHODS,
                     help="model: train the auto-encoder; counts: test each link's and "
                     "host's event counts against the reference, for link streams of "
                     "many hosts; auto (default): counts for a link stream too large "
                     "for the model's dense arrays")
    run.add_argument("--progress-file",
                     help="append JSON lines {stage, fraction} to this file")
    run.set_defaults(handler=command_run)

    run.add_argument("--snapshots",
                     help="run on snapshots written by `tgloc snapshots` instead of "
                     "binning the store")

    bins = commands.add_parser(
        "snapshots", help="bin partitioned Parquet files on DuckDB or Spark")
    bins.add_argument("--input", required=True,
                      help="folder with events/ (and measurements/) Parquet files")
    bins.add_argument("--output", required=True, help="snapshots file to write (.npz)")
    bins.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                      help="SQL engine that bins the files (default duckdb)")
    bins.add_argument("--bin-seconds", type=int, default=60,
                      help="base bin width in seconds (default 60)")
    bins.add_argument("--master", default="local[*]",
                      help="Spark master URL (default local[*]: this machine)")
    bins.set_defaults(handler=command_snapshots)

    from bench import scale as scale_bench

    bench = commands.add_parser("bench", help="run a benchmark and print its table")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True)
    scale = benchmarks.add_parser(
        "scale", help="time, throughput and peak memory of each stage on synthetic "
        "plants of 1 M, 10 M and 50 M events")
    scale_bench.add_arguments(scale)
    scale.set_defaults(handler=scale_bench.run)
    real = benchmarks.add_parser(
        "real", help="public real data sets against their published results")
    real.add_argument("--data", default=os.environ.get("TGLOC_DATA"),
                      help="folder holding the data sets (default: $TGLOC_DATA)")
    real.add_argument("--only", help="run one data set only (batadal, darpa, mad, smd)")
    real.add_argument("--quick", action="store_true",
                      help="a short version of each benchmark, for a smoke test")
    real.set_defaults(handler=command_bench_real)
    # The options of bench localization belong to bench.localization, which imports
    # the whole pipeline, so they are parsed there and other commands start without
    # importing it.
    localization = benchmarks.add_parser(
        "localization", add_help=False,
        help="localization against baselines on synthetic plants, scan time, null runs; "
        "--help lists its options")
    localization.set_defaults(handler=command_bench_localization)
    null = benchmarks.add_parser(
        "null", add_help=False,
        help="how often the full pipeline reports an incident on plants with nothing "
        "planted; --help lists its options")
    null.set_defaults(handler=command_bench_null)

    show = commands.add_parser("incidents", help="print a run's incidents")
    show.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    show.add_argument("--run", help="run id (default: the latest published run)")
    show.add_argument("--format", choices=("json", "csv"), default="json")
    show.add_argument("--output", metavar="FILE",
                      help="write to FILE instead of standard output; a CSV file gets "
                      "a UTF-8 byte order mark so Excel reads it as UTF-8")
    show.set_defaults(handler=command_incidents)

    rules = commands.add_parser(
        "suppressions", help="list suppression rules, or delete one")
    rules.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    rules.add_argument("--delete", type=int, metavar="RULE_ID",
                       help="delete the suppression rule RULE_ID")
    rules.set_defaults(handler=command_suppressions)

    evaluation = commands.add_parser(
        "evaluate", help="score window labels against window scores or predictions")
    evaluation.add_argument("file", help="CSV with a label column and a score or pred column")
    evaluation.add_argument("--threshold", type=finite_float,
                            help="alarm where score >= THRESHOLD, a finite number "
                            "inside the scores' range (needed without pred)")
    evaluation.add_argument("--format", choices=("text", "json"), default="text")
    evaluation.set_defaults(handler=command_evaluate)

    follow = commands.add_parser(
        "watch", help="score new data bin by bin as it arrives and alert on incidents")
    follow.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    follow.add_argument("--source", required=True,
                        help="folder where CSV/Parquet files land, or one growing file")
    follow.add_argument("--target", choices=("auto", "events", "measurements"),
                        default="auto",
                        help="table of the source files (default: from each file's header)")
    follow.add_argument("--lateness", type=float, default=0.0, metavar="S",
                        help="seconds a bin stays open after its end for late rows "
                             "(data clock; default 0)")
    follow.add_argument("--poll", type=float, default=1.0, metavar="S",
                        help="seconds between looks at the source (default 1)")
    follow.add_argument("--fresh", action="store_true",
                        help="discard earlier online results and alerts of this name "
                             "(default: resume after the last bin they hold)")
    add_online_arguments(follow)
    follow.set_defaults(handler=command_watch)

    again = commands.add_parser(
        "replay", help="feed the stored data after the reference through the online path")
    again.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    again.add_argument("--speed", default="max",
                       help="times real time, such as 60, or 'max' (default)")
    again.add_argument("--from", dest="start", metavar="TIME",
                       help="ISO time of the first replayed bin (default: the run's "
                            "first scored bin)")
    again.add_argument("--resume", action="store_true",
                       help="continue an earlier replay of the same name after its last "
                            "bin (default: start over)")
    add_online_arguments(again)
    again.set_defaults(handler=command_replay)

    planting = commands.add_parser(
        "plant", help="copy a workspace and plant faults with ground truth into the copy")
    planting.add_argument("--workspace", required=True, help="the workspace to copy")
    planting.add_argument("--into", required=True, help="new folder for the copy")
    planting.add_argument("--fault", action="append", default=[], metavar="TYPE[:DEVICES]",
                          help="fault type (scan, new_link, silence, flood, drift, stuck, "
                               "spike, process_fault, link_loss) and optional "
                               "comma-separated devices; repeatable")
    planting.add_argument("--seed", type=int, default=0,
                          help="seed of the devices and sizes drawn (default 0)")
    planting.add_argument("--minutes", type=float, default=30.0,
                          help="length of each fault window in minutes (default 30)")
    planting.set_defaults(handler=command_plant)
    return parser


def command_plant(args: argparse.Namespace) -> int:
    from core import plant

    requests = [plant.FaultRequest.parse(text) for text in args.fault]
    truth = plant.plant_faults(Path(args.workspace), Path(args.into), requests,
                               seed=args.seed, minutes=args.minutes)
    for row in truth.itertuples():
        print(f"{row.anomaly_id}  {row.start:%Y-%m-%d %H:%M} to {row.end:%H:%M}  "
              f"{', '.join(row.devices)}: {row.description}")
    print(f"planted {len(truth)} faults into {args.into}; ground truth in its store's "
          "ground_truth table. Run `tgloc run --workspace "
          f"{args.into}` to localize them.")
    return 0


def add_online_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `watch` and `replay`."""
    parser.add_argument("--webhook", action="append", default=[], metavar="URL",
                        help="POST each alert as JSON to URL (repeatable)")
    parser.add_argument("--syslog", action="append", default=[], metavar="HOST:PORT",
                        help="send each alert as an RFC 5424 line over UDP (repeatable)")
    parser.add_argument("--min-severity", type=float, default=0.0,
                        help="alert on incidents at or above this severity, 0 to 100 "
                             "(default 0)")
    parser.add_argument("--name", help="name of the online results file under online/ "
                                       "(default: the run id, plus -replay for replay)")
    parser.add_argument("--max-bins", type=int, help="stop after closing this many bins")
    parser.add_argument("--until", metavar="TIME",
                        help="stop once the bins up to this ISO time (data clock) are closed")


def _bench_module(name: str):
    """Import bench.NAME. The benchmarks live beside `core` in the repository and are
    not installed, so the repository root joins the import path when needed."""
    import importlib

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.append(root)
    return importlib.import_module(f"bench.{name}")


def command_bench_localization(args: argparse.Namespace) -> int:
    return _bench_module("localization").main(args.options)


def command_bench_null(args: argparse.Namespace) -> int:
    return _bench_module("null_runs").main(args.options)


# Commands whose options their benchmark module parses.
PASS_THROUGH = (command_bench_localization, command_bench_null)


class ProgressPrinter:
    """Turns (stage, fraction) callbacks into a progress line and a JSON-lines file."""

    def __init__(self, path: str | None = None, stream=sys.stderr) -> None:
        self.path = Path(path) if path else None
        self.stream = stream
        self.stage = None
        self.last = 0.0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"stage": stage, "fraction": round(fraction, 4)}) + "\n")
        if stage != self.stage or fraction >= 1.0 or now - self.last > 1.0:
            width = 30
            filled = int(width * min(max(fraction, 0.0), 1.0))
            bar = "#" * filled + "-" * (width - filled)
            end = "\n" if fraction >= 1.0 or not self.stream.isatty() else "\r"
            print(f"{stage:<13} [{bar}] {100 * fraction:5.1f}%", end=end,
                  file=self.stream, flush=True)
            self.stage, self.last = stage, now


def command_demo(args: argparse.Namespace) -> int:
    from core import evaluate, pipeline, synth

    timer = StageTimer()
    workspace = store.Workspace.create(args.workspace)
    progress = ProgressPrinter(str(workspace.root / ".progress.jsonl"))
    with timer.stage("sample plant"):
        plant = synth.generate_plant(synth.PlantConfig(seed=args.seed, hours=args.hours))
        files = synth.write_plant(plant, workspace.root / "input")
    with timer.stage("ingest"):
        reports = [
            ingest.ingest_file(workspace, files["events"], ingest.IngestOptions(target="events")),
            ingest.ingest_file(workspace, files["measurements"],
                               ingest.IngestOptions(target="measurements")),
        ]
        synth.store_plant(workspace, plant)
    for report in reports:
        print(report.summary())

    result = pipeline.run_pipeline(workspace, demo_config(), progress=progress, timer=timer)
    match = evaluate.match_incidents(result.incidents, result.members, plant.truth)
    found, unmatched = len(result.incidents), len(match.unmatched)
    print(f"\nrun {result.run_id}: {found} incident{_plural(found)}; "
          f"{match.found} of {len(plant.truth)} planted anomalies found, "
          f"{unmatched} incident{_plural(unmatched)} "
          f"{'matches' if unmatched == 1 else 'match'} none")
    for row in result.incidents.itertuples():
        print(f"  {row.incident_id}  {row.type:<13} severity {row.severity:5.1f}  {row.summary}")
    for row in match.truth.itertuples():
        found = row.incident_id or "not found"
        print(f"  planted {row.kind:<14} -> {found}")
    print("\n" + timer.table())
    if args.no_serve:
        return 0
    return serve(workspace, args.port)


def demo_config() -> RunConfig:
    """Settings for the sample plant: one-minute bins, the defaults otherwise."""
    return RunConfig(stream=StreamConfig(bin_seconds=60))


def serve(workspace: store.Workspace, port: int) -> int:
    """Serve the dashboard on 127.0.0.1 until interrupted."""
    environment = dict(os.environ, TGLOC_WORKSPACE=str(workspace.root))
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.headless", "true", "--server.address", "127.0.0.1",
        "--server.port", str(port), "--browser.gatherUsageStats", "false",
    ]
    print(f"\ndashboard: http://127.0.0.1:{port}  (Ctrl+C stops it)", flush=True)
    return subprocess.call(command, env=environment, cwd=str(APP_PATH.parent))


def command_ingest(args: argparse.Namespace) -> int:
    if args.withdraw is not None:
        from core.withdraw import withdraw_ingest

        if args.files or args.batadal:
            raise TglocError("--withdraw takes no files",
                             "Withdraw first, then load the files in a second command.")
        workspace = existing_workspace(args.workspace)
        print(withdraw_ingest(workspace, args.withdraw).summary())
        return 0
    workspace = store.Workspace.create(args.workspace)
    if args.batadal:
        for report in ingest.ingest_batadal(workspace, args.batadal):
            print(report.summary())
        return 0
    if args.smd:
        if not args.machine:
            raise TglocError("--smd needs --machine",
                             "Name the machine, such as --machine machine-1-6.")
        reports = smd.ingest_smd(workspace, args.smd, args.machine, args.step_seconds)
        for report in reports:
            print(report.summary())
        return 0
    if not args.files:
        raise TglocError("no file to ingest",
                         "Name one or more files, --batadal FOLDER or --smd FOLDER.")
    _check_format_options(args)
    if args.format == "uvt":
        return ingest_uvt_files(workspace, args)
    if args.format == "darpa":
        return ingest_darpa_files(workspace, args)
    columns = {}
    for item in args.column:
        ours, _, theirs = item.partition("=")
        if not ours or not theirs:
            raise TglocError(f"invalid --column {item!r}",
                             "Write it as OURS=THEIRS, e.g. --column time=Timestamp.")
        columns[ours.strip()] = theirs.strip()
    sentinels: dict[str, list[str]] = {}
    for item in args.sentinel:
        column, _, value = item.rpartition("=")
        if not column.strip() or not value.strip():
            raise TglocError(f"invalid --sentinel {item!r}",
                             "Write it as COLUMN=VALUE, e.g. --sentinel "
                             "Init_Win_bytes_forward=-1.")
        sentinels.setdefault(column.strip(), []).append(value.strip())
    sensor_map = None
    if args.sensor_map:
        sensor_map = ingest.load_sensor_map(args.sensor_map, args.sensor_map_device,
                                            args.sensor_map_columns)
    options = ingest.IngestOptions(
        target=args.target, layout=args.layout, columns=columns,
        time_format=args.time_format, date_order=args.date_order,
        timezone=args.timezone,
        epoch_unit=args.epoch_unit, sensor_map=sensor_map,
        label_column=args.label_column, ignore_columns=tuple(args.ignore_column),
        weight_policy=args.weight_policy,
        encoding=args.encoding, read_unterminated_line=args.read_unterminated_line,
        sentinels=sentinels,
    )
    # Each file is its own load, so one bad file does not stop the others. The
    # exit status is 2 when any file stored nothing because of an error.
    failed: list[str] = []
    for path in args.files:
        try:
            if args.format == "flows":
                report = flows.ingest_flows(workspace, path,
                                            args.flow_weight or "bytes", options)
            else:
                report = ingest.ingest_file(workspace, path, options)
        except TglocError as exc:
            print(f"error: {path}: {exc.headline}", file=sys.stderr)
            if exc.detail:
                print(f"  {exc.detail}", file=sys.stderr)
            failed.append(path)
            continue
        print(report.summary())
        print(ingest_details(workspace, report))
        if report.rows_stored == 0 and report.rows_rejected > 0:
            # Every row rejected is nearly always one wrong option for a whole column.
            count = report.rows_rejected
            what = "the only row was" if count == 1 else f"all {count} rows were"
            print(f"error: nothing stored from {path}: {what} rejected; check "
                  f"--time-format, --epoch-unit and --column against the reasons "
                  f"above", file=sys.stderr)
            failed.append(path)
    if failed and len(args.files) > 1:
        stored = len(args.files) - len(failed)
        print(f"{stored} of {len(args.files)} files loaded; "
              f"{len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
    return 2 if failed else 0


# The options of `tgloc ingest` that only one format reads, with the value that
# means "not given".
FORMAT_OPTIONS = {
    "uvt": {"--slot-seconds": ("slot_seconds", None),
            "--undirected": ("undirected", False)},
    "flows": {"--flow-weight": ("flow_weight", None)},
}
# The general options that a fixed-layout format has no use for.
LAYOUT_OPTIONS = {
    "--column": ("column", []), "--time-format": ("time_format", None),
    "--date-order": ("date_order", None), "--epoch-unit": ("epoch_unit", None),
    "--sensor-map": ("sensor_map", None), "--label-column": ("label_column", None),
    "--ignore-column": ("ignore_column", []), "--sentinel": ("sentinel", []),
    "--layout": ("layout", "long"), "--target": ("target", "events"),
    "--weight-policy": ("weight_policy", "quarantine"),
    "--encoding": ("encoding", "utf-8"),
    "--read-unterminated-line": ("read_unterminated_line", False),
}


def _check_format_options(args: argparse.Namespace) -> None:
    """Raise when an option is given that the chosen --format does not read."""
    for name, options in FORMAT_OPTIONS.items():
        present = [option for option, (attribute, unset) in options.items()
                   if getattr(args, attribute) != unset]
        if present and args.format != name:
            listed = " and ".join(options)
            verb = "needs" if len(options) == 1 else "need"
            raise TglocError(f"{listed} {verb} --format {name}",
                             f"Remove {' and '.join(present)}, or add --format {name}.")
    if args.format != "darpa":
        return
    for option, (name, unset) in LAYOUT_OPTIONS.items():
        if getattr(args, name) != unset:
            raise TglocError(
                f"--format darpa does not read {option}",
                "A DARPA record file has a fixed layout (src,dst,time,attack), so "
                f"its columns need no mapping. Remove {option}; --timezone sets "
                "the zone of its times.",
            )


def ingest_darpa_files(workspace: store.Workspace, args: argparse.Namespace) -> int:
    """Ingest each file as DARPA 1998 connection records in the MIDAS layout."""
    failed: list[str] = []
    for path in args.files:
        try:
            report = darpa.ingest_darpa(workspace, path, args.timezone)
        except TglocError as exc:
            print(f"error: {path}: {exc.headline}", file=sys.stderr)
            if exc.detail:
                print(f"  {exc.detail}", file=sys.stderr)
            failed.append(path)
            continue
        print(report.summary())
        print(ingest_details(workspace, report, header=False))
        if report.rows_stored == 0 and report.rows_rejected > 0:
            print(f"error: nothing stored from {path}: all {report.rows_rejected} "
                  "records were rejected; a DARPA record line is "
                  "src,dst,MM/DD/YYYY-HH:MM,attack", file=sys.stderr)
            failed.append(path)
    return 2 if failed else 0


def ingest_uvt_files(workspace: store.Workspace, args: argparse.Namespace) -> int:
    """Ingest each file as a headerless u,v,t link stream with a slot clock."""
    if args.slot_seconds is None:
        raise TglocError("--format uvt needs --slot-seconds",
                         "Give the length of one slot, e.g. --slot-seconds 20.")
    status = 0
    for path in args.files:
        report = linkstream.ingest_uvt(workspace, path, args.slot_seconds,
                                       args.origin, args.undirected)
        print(report.summary())
        print(ingest_details(workspace, report, header=False))
        if report.rows_stored == 0 and report.rows_rejected > 0:
            print(f"error: nothing stored from {path}: all {report.rows_rejected} rows "
                  "were rejected; a uvt file holds lines of three integers u,v,t",
                  file=sys.stderr)
            status = 2
    return status


MAX_REJECTED_SHOWN = 10
TARGET_TABLES = {"events": "events", "measurements": "measurements",
                 "devices": "devices", "links": "links"}


def ingest_details(workspace: store.Workspace, report: ingest.IngestReport,
                   header: bool = True) -> str:
    """Return the stored column types and the first rejected rows of one report.

    Each rejected row names its file line, its data row (line - 1 after a header
    line, the line itself in a file without one), the column, the value and the
    reason, so the user can fix the file.
    """
    table = TARGET_TABLES[report.target]
    kinds = store.query(workspace.store_path, f"DESCRIBE {table}")
    shown = kinds[~kinds["column_name"].isin(["report_id", "line"])]
    lines = ["  column types: " + ", ".join(
        f"{name} {kind}" for name, kind in zip(shown["column_name"], shown["column_type"]))]
    plural = "" if report.rows_rejected == 1 else "s"
    lines.append(f"  {report.rows_rejected} row{plural} rejected")
    rejected = store.query(
        workspace.store_path,
        'SELECT line, "column", value, reason FROM quarantine WHERE report_id = $id '
        "ORDER BY line LIMIT $limit",
        {"id": report.report_id, "limit": MAX_REJECTED_SHOWN},
    )
    for row in rejected.itertuples(index=False):
        # A row the reader rejected whole (bad encoding, wrong field count) has no
        # column; its value is the whole line.
        where = f"line {row.line} (row {row.line - 1 if header else row.line})"
        if isinstance(row.column, str):
            where += f", column {row.column}"
        what = "line" if not isinstance(row.column, str) else "value"
        lines.append(f"  {where}, {what} {row.value!r}: {row.reason}")
    if report.rows_rejected > len(rejected):
        lines.append(f"  +{report.rows_rejected - len(rejected)} more in the quarantine "
                     "table")
    return "\n".join(lines)


def command_run(args: argparse.Namespace) -> int:
    config = run_config(args)
    workspace = existing_workspace(args.workspace)
    # Imported after the checks, because loading torch takes seconds.
    from core import pipeline

    timer = StageTimer()
    progress = ProgressPrinter(args.progress_file)
    snapshots = None
    if args.snapshots:
        from core.snapshots import load_snapshots

        snapshots = load_snapshots(args.snapshots)
    result = pipeline.run_pipeline(workspace, config, run_id=args.run_id,
                                   progress=progress, timer=timer, snapshots=snapshots)
    found = len(result.incidents)
    print(f"run {result.run_id}: {found} incident{_plural(found)} -> {result.path}")
    for line in model_views.run_notes(result.info):
        print(f"  {line}")
    for line in accepted_lines(result.info.get("accepted", [])):
        print(line)
    print(timer.table())
    return 0


def _plural(count: int) -> str:
    return "" if count == 1 else "s"


def accepted_lines(accepted: list[dict]) -> list[str]:
    """Describe the accepted intervals a run trained on, one line each."""
    lines = []
    for record in accepted:
        bins = int(record["bins"])
        where = (f"{bins} bin{_plural(bins)} in the reference" if bins
                 else "outside this run's data, not used")
        lines.append(f"accepted as normal: incident {record['incident_id']} "
                     f"({record['start']} to {record['end']}, by "
                     f"{record['accepted_by']}): {where}")
    return lines


def command_snapshots(args: argparse.Namespace) -> int:
    from core import snapshots, spark_bins

    built = spark_bins.build_snapshots_parquet(args.input, args.bin_seconds,
                                               engine=args.engine, master=args.master)
    path = snapshots.save_snapshots(built, args.output)
    print(f"{built.num_bins} bins of {built.bin_seconds} s, {built.num_devices} "
          f"devices, {len(built.pairs)} pairs, {len(built.sensors)} sensors "
          f"({args.engine}) -> {path}")
    return 0


def online_session(args: argparse.Namespace, default_suffix: str, fresh: bool):
    from core import alerts, stream

    if not 0 <= args.min_severity <= 100:
        raise TglocError(f"invalid --min-severity {args.min_severity}",
                         "Give a severity from 0 to 100.")
    if args.max_bins is not None and args.max_bins < 1:
        raise TglocError(f"invalid --max-bins {args.max_bins}", "Give a whole number >= 1.")
    sinks = alerts.build_sinks(args.webhook, args.syslog)
    workspace = store.Workspace.create(args.workspace)
    name = args.name or (workspace.resolve_run(None) + default_suffix)

    def say(text: str) -> None:
        print(text, flush=True)

    session = stream.OnlineSession.open(workspace, name, sinks, args.min_severity, fresh, say)
    limits = stream.Limits(max_bins=args.max_bins,
                           until_us=parse_time(args.until, "--until") if args.until else None)
    return workspace, session, limits


def parse_time(text: str, option: str) -> int:
    """Return epoch microseconds of an ISO-8601 time (UTC when it has no zone)."""
    from core import online

    try:
        return online.micros(text)
    except ValueError as exc:
        raise TglocError(f"invalid {option} {text!r}",
                         "Give an ISO-8601 time such as 2024-03-04T12:00:00Z.") from exc


def command_watch(args: argparse.Namespace) -> int:
    from core import stream

    if args.lateness < 0:
        raise TglocError(f"invalid --lateness {args.lateness}", "Give seconds >= 0.")
    if args.poll <= 0:
        raise TglocError(f"invalid --poll {args.poll}", "Give seconds > 0.")
    workspace, session, limits = online_session(args, "", args.fresh)
    stop = stream.stop_event()
    try:
        stream.watch(workspace, Path(args.source), session, args.lateness, limits,
                     args.poll, args.target, stop)
    finally:
        session.close()
    scorer = session.scorer
    print(f"stopped after bin {scorer.last_bin}: {len(scorer.tracked)} online incidents, "
          f"{scorer.late_rows} late rows, {len(session.alerted)} alerts queued "
          f"-> {scorer.path}")
    return 0


def command_replay(args: argparse.Namespace) -> int:
    from core import stream

    speed: float | None = None
    if args.speed != "max":
        try:
            speed = float(args.speed)
        except ValueError:
            speed = -1.0
        if not speed > 0:
            raise TglocError(f"invalid --speed {args.speed!r}",
                             "Give a factor of real time > 0, such as 60, or 'max'.")
    start = parse_time(args.start, "--from") if args.start else None
    workspace, session, limits = online_session(args, "-replay", not args.resume)
    stop = stream.stop_event()
    try:
        stream.replay(workspace, session, speed, limits, stop, start)
    finally:
        session.close()
    scorer = session.scorer
    print(f"replayed to bin {scorer.last_bin}: {len(scorer.tracked)} online incidents, "
          f"{len(session.alerted)} alerts queued -> {scorer.path}")
    return 0


def scale_list(text: str) -> tuple[int, ...]:
    """Parse --scales: comma-separated whole numbers such as 1,10,60."""
    try:
        scales = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid scales {text!r}: write whole numbers of base bins separated by "
            "commas, such as 1,10,60") from None
    return scales


def run_config(args: argparse.Namespace) -> RunConfig:
    """Build a RunConfig from --config and the command-line overrides."""
    data: dict[str, Any] = {}
    if args.config:
        try:
            data = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TglocError(f"cannot read the run settings {args.config}", str(exc)) from exc
    config = RunConfig.from_dict(data)
    stream = config.stream
    stream_overrides = {
        "bin_seconds": args.bin_seconds, "gap_fill": args.gap_fill,
        "gap_fill_limit": args.gap_fill_limit, "scales": getattr(args, "scales", None),
    }
    stream_overrides = {k: v for k, v in stream_overrides.items() if v is not None}
    if stream_overrides:
        stream = StreamConfig(**{**stream.__dict__, **stream_overrides})
    model = config.model
    if args.epochs is not None or args.seed is not None:
        model = ModelConfig(**{**model.__dict__,
                               "epochs": args.epochs if args.epochs is not None else model.epochs,
                               "seed": args.seed if args.seed is not None else model.seed})
    overrides = {
        "reference_start": args.reference_start, "reference_end": args.reference_end,
        "score_start": args.score_start, "score_end": args.score_end,
        "method": getattr(args, "method", None),
    }
    search = config.search if isinstance(config.search, SearchConfig) else SearchConfig()
    if getattr(args, "calibrate_on_scored", False):
        search = dataclasses.replace(search, calibrate_on_scored=True)
    values = {**config.__dict__, "stream": stream, "model": model, "search": search}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig(**values)


def command_bench_real(args: argparse.Namespace) -> int:
    try:
        from bench import real
    except ModuleNotFoundError as exc:
        raise TglocError("the benchmarks are not importable",
                         "Run tgloc bench from the repository root, where the bench "
                         "folder is.") from exc
    if args.only is not None and args.only not in real.DATA_SETS:
        raise TglocError(f"invalid --only {args.only!r}",
                         f"Choose one of: {', '.join(sorted(real.DATA_SETS))}.")
    return real.run(args)


def command_evaluate(args: argparse.Namespace) -> int:
    from core import evaluate

    windows = evaluate.read_windows(args.file)
    if "pred" not in windows and args.threshold is None:
        raise TglocError("no alarm threshold for the scores",
                         "Pass --threshold, or add a pred column of 0 and 1.")
    if "pred" not in windows:
        check_threshold(args.threshold, windows["score"].to_numpy(dtype=float),
                        args.file)
    report = evaluate.evaluate_windows(
        windows["label"].to_numpy(),
        scores=windows["score"].to_numpy() if "score" in windows else None,
        predictions=windows["pred"].to_numpy() if "pred" in windows else None,
        threshold=args.threshold,
    )
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(evaluate.format_report(report))
    return 0


def command_suppressions(args: argparse.Namespace) -> int:
    from core import feedback

    workspace = existing_workspace(args.workspace)
    if args.delete is not None:
        feedback.delete_suppression(workspace, args.delete)
        print(f"suppression rule {args.delete} deleted")
        return 0
    rules = feedback.list_suppressions(workspace)
    if rules.empty:
        print("no suppression rules")
    for rule in rules.itertuples(index=False):
        state = "active" if rule.active else "inactive"
        print(f"{rule.rule_id}\t{rule.type}\t{' '.join(rule.devices)}\t{state}\t"
              f"from {rule.incident_id}")
    return 0


def existing_workspace(root: str) -> store.Workspace:
    """Return the workspace at `root`; raise if it has no store (nothing is created).

    Only `ingest` and `demo` create a workspace, so a mistyped --workspace on any
    other command stops with an error instead of leaving an empty folder behind.
    """
    workspace = store.Workspace(Path(root).resolve())
    if not workspace.store_path.is_file():
        what = "folder not found" if not workspace.root.exists() else (
            f"no {store.STORE_FILE} in it")
        raise TglocError(
            f"workspace {root!r} not found ({what})",
            "Check --workspace. `tgloc ingest --workspace DIR FILE...` or `tgloc demo "
            "--workspace DIR` creates a workspace.",
        )
    return workspace


def finite_float(text: str) -> float:
    """Parse a command-line number; reject nan and inf, which compare as no alarm."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: give a finite number such as 0.5")
    return value


def check_threshold(threshold: float, scores, path: str) -> None:
    """Raise unless some windows alarm at `threshold` and some do not.

    A threshold at or below the smallest score alarms on every window, and one
    above the largest on none, so the evaluation would not measure the scores.
    """
    low, high = float(scores.min()), float(scores.max())
    if low < threshold <= high:
        return
    side = ("every window would alarm" if threshold <= low
            else "no window would alarm")
    raise TglocError(
        f"invalid --threshold {threshold:g}: outside the scores of {path} "
        f"({low:g} to {high:g}), so {side}",
        f"Give a threshold above {low:g} and at most {high:g}.",
    )


def command_incidents(args: argparse.Namespace) -> int:
    workspace = existing_workspace(args.workspace)
    run_id = workspace.resolve_run(args.run)
    incidents, members = incident_records(workspace, run_id)
    if args.output:
        # A file gets a UTF-8 byte order mark when it is CSV, so Excel reads its
        # names as UTF-8; standard output never does, because a mark in a stream
        # breaks the programs reading it.
        encoding = CSV_FILE_ENCODING if args.format == "csv" else "utf-8"
        try:
            with open(args.output, "w", encoding=encoding, newline="") as handle:
                _write_incidents(handle, run_id, incidents, args.format)
        except OSError as exc:
            raise TglocError(f"failed to write {args.output}", str(exc)) from exc
        print(f"{len(incidents)} incident{_plural(len(incidents))} of run {run_id} "
              f"written to {args.output}")
        return 0
    _write_incidents(sys.stdout, run_id, incidents, args.format)
    return 0


def _write_incidents(handle, run_id: str, incidents: list[dict], kind: str) -> None:
    if kind == "json":
        handle.write(json.dumps({"run": run_id, "incidents": incidents}, indent=2,
                                default=str) + "\n")
    else:
        write_csv(incidents, handle)


def incident_records(workspace: store.Workspace, run_id: str) -> tuple[list[dict], Any]:
    """Incidents of a run with their members grouped by role.

    `sensor_flags` lists each member sensor flagged during the incident, with its
    flags and the base bins of each (see `core.views.member_sensor_flags`). The CSV
    format leaves it out.
    """
    path = workspace.run_path(run_id)
    incidents = store.query(path, "SELECT * FROM incidents ORDER BY rank")
    members = store.query(path, "SELECT * FROM incident_members")
    flags = views.member_sensor_flags(workspace, run_id)
    records = []
    for row in incidents.itertuples(index=False):
        own = members[members["incident_id"] == row.incident_id]
        records.append({
            "id": row.incident_id, "rank": int(row.rank),
            "start": row.start.isoformat(), "end": row.end.isoformat(),
            "type": row.type, "score": float(row.score), "threshold": float(row.threshold),
            "severity": float(row.severity), "scale": int(row.scale),
            "p_value": _optional(getattr(row, "p_value", None)),
            "false_alarms_per_day": _optional(getattr(row, "false_alarms_per_day", None)),
            "devices": own.loc[own["role"] == "device", "device"].tolist(),
            "pairs": [[s, d] for s, d in own.loc[own["role"] == "pair", ["device", "peer"]]
                      .itertuples(index=False)],
            "targets": own.loc[own["role"] == "target", "device"].tolist(),
            "sensors": [[d, s] for d, s in own.loc[own["role"] == "sensor", ["device", "sensor"]]
                        .itertuples(index=False)],
            "summary": row.summary,
            "sensor_flags": _sensor_flag_records(
                flags[flags["incident_id"] == row.incident_id]),
        })
    return records, members


def _optional(value) -> float | None:
    """Return `value` as a float, or None where the run file has no such column or
    value."""
    return None if value is None or math.isnan(float(value)) else float(value)


def _sensor_flag_records(flags) -> list[dict]:
    records = []
    for (device, sensor), rows in flags.groupby(["device", "sensor"], sort=True):
        bins = dict(zip(rows["flag"], rows["bins"].astype(int).tolist()))
        records.append({"device": device, "sensor": sensor,
                        "flags": list(bins), "flagged_bins": bins})
    return records


def write_csv(records: list[dict], handle=None) -> None:
    """Write one CSV row per incident to `handle` (standard output by default).

    The list fields devices, targets, pairs (as src->dst) and sensors (as
    device/sensor) are joined by LIST_SEPARATOR inside one cell. A name that
    contains ';' is then ambiguous; `--format json` keeps every name exact. A cell
    that a spreadsheet would read as a formula is prefixed with a quote."""
    import csv

    fields = ["id", "rank", "start", "end", "type", "score", "threshold", "severity",
              "p_value", "false_alarms_per_day", "scale", "devices", "pairs", "targets", "sensors", "summary"]
    writer = csv.DictWriter(handle or sys.stdout, fieldnames=fields,
                            extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = dict(record)
        row["devices"] = LIST_SEPARATOR.join(record["devices"])
        row["pairs"] = LIST_SEPARATOR.join(f"{s}->{d}" for s, d in record["pairs"])
        row["targets"] = LIST_SEPARATOR.join(record["targets"])
        row["sensors"] = LIST_SEPARATOR.join(f"{d}/{s}" for d, s in record["sensors"])
        writer.writerow({k: sanitize_cell(v) for k, v in row.items()})


def sanitize_cell(value: Any) -> Any:
    """Prefix text starting with = + - @ (or tab, CR) so spreadsheets show it as text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


if __name__ == "__main__":
    sys.exit(main())
