"""The command line: `tgloc demo`, `ingest`, `run`, `incidents`, `evaluate` and
`bench localization`.

A thin front end over `core`: it parses arguments, turns progress callbacks into a
progress line, and prints errors as their headline and detail. A traceback is shown
only with `--debug`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core import ingest, store
from core.config import ModelConfig, RunConfig, SearchConfig, StreamConfig
from core.errors import TglocError
from core.stages import StageTimer

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "workspace"
DEFAULT_PORT = 8501
APP_PATH = Path(__file__).resolve().parent.parent / "app.py"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "handler", None) is not command_bench_localization:
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
    load.add_argument("--weight-policy", choices=ingest.WEIGHT_POLICIES,
                      default="quarantine",
                      help="events: quarantine bad weights or count every row as 1")
    load.add_argument("--encoding", default="utf-8",
                      help="text encoding of the files (default utf-8); rows with "
                      "bytes not valid in it are quarantined")
    load.add_argument("--read-unterminated-line", action="store_true",
                      help="also read a last line without a line end (by default it "
                      "is held back until a writer ends it)")
    load.add_argument("--batadal", metavar="FOLDER",
                      help="import the BATADAL water network data set from FOLDER")
    load.set_defaults(handler=command_ingest)

    run = commands.add_parser("run", help="bin, train, score and localize a workspace")
    run.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    run.add_argument("--run-id", help="name of the run (default: a UTC timestamp)")
    run.add_argument("--config", help="JSON file of run settings (RunConfig fields)")
    run.add_argument("--bin-seconds", type=int, help="base bin width in seconds")
    run.add_argument("--reference-start", help="ISO time: reference period start")
    run.add_argument("--reference-end", help="ISO time: reference period end")
    run.add_argument("--score-start", help="ISO time: first scored bin")
    run.add_argument("--score-end", help="ISO time: end of the scored bins")
    run.add_argument("--epochs", type=int, help="maximum training epochs")
    run.add_argument("--seed", type=int, help="seed of training and scoring")
    run.add_argument("--progress-file",
                     help="append JSON lines {stage, fraction} to this file")
    run.set_defaults(handler=command_run)

    show = commands.add_parser("incidents", help="print a run's incidents")
    show.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    show.add_argument("--run", help="run id (default: the latest published run)")
    show.add_argument("--format", choices=("json", "csv"), default="json")
    show.set_defaults(handler=command_incidents)

    evaluation = commands.add_parser(
        "evaluate", help="score window labels against window scores or predictions")
    evaluation.add_argument("file", help="CSV with a label column and a score or pred column")
    evaluation.add_argument("--threshold", type=float,
                       help="alarm where score >= THRESHOLD (needed without pred)")
    evaluation.add_argument("--format", choices=("text", "json"), default="text")
    evaluation.set_defaults(handler=command_evaluate)

    bench = commands.add_parser("bench", help="benchmarks that print tables")
    benches = bench.add_subparsers(dest="bench", required=True)
    # The options belong to bench.localization, which imports the whole pipeline, so
    # they are parsed there and other commands start without importing it.
    localization = benches.add_parser(
        "localization", add_help=False,
        help="localization against baselines on synthetic plants, scan time, null runs; "
        "--help lists its options")
    localization.set_defaults(handler=command_bench_localization)
    return parser


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
    print(f"\nrun {result.run_id}: {len(result.incidents)} incidents; "
          f"{match.found} of {len(plant.truth)} planted anomalies found, "
          f"{len(match.unmatched)} incidents match none")
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
    workspace = store.Workspace.create(args.workspace)
    if args.batadal:
        for report in ingest.ingest_batadal(workspace, args.batadal):
            print(report.summary())
        return 0
    if not args.files:
        raise TglocError("no file to ingest", "Name one or more files, or --batadal FOLDER.")
    columns = {}
    for item in args.column:
        ours, _, theirs = item.partition("=")
        if not ours or not theirs:
            raise TglocError(f"invalid --column {item!r}",
                             "Write it as OURS=THEIRS, e.g. --column time=Timestamp.")
        columns[ours.strip()] = theirs.strip()
    sensor_map = None
    if args.sensor_map:
        sensor_map = ingest.load_sensor_map(args.sensor_map, args.sensor_map_device,
                                            args.sensor_map_columns)
    options = ingest.IngestOptions(
        target=args.target, layout=args.layout, columns=columns,
        time_format=args.time_format, timezone=args.timezone,
        epoch_unit=args.epoch_unit, sensor_map=sensor_map,
        label_column=args.label_column, weight_policy=args.weight_policy,
        encoding=args.encoding, read_unterminated_line=args.read_unterminated_line,
    )
    status = 0
    for path in args.files:
        report = ingest.ingest_file(workspace, path, options)
        print(report.summary())
        print(ingest_details(workspace, report))
        if report.rows_stored == 0 and report.rows_rejected > 0:
            # Every row rejected is nearly always one wrong option for a whole column.
            print(f"error: nothing stored from {path}: all {report.rows_rejected} rows "
                  f"were rejected; check --time-format, --epoch-unit and --column "
                  f"against the reasons above", file=sys.stderr)
            status = 2
    return status


MAX_REJECTED_SHOWN = 10
TARGET_TABLES = {"events": "events", "measurements": "measurements",
                 "devices": "devices", "links": "links"}


def ingest_details(workspace: store.Workspace, report: ingest.IngestReport) -> str:
    """Return the stored column types and the first rejected rows of one report.

    Each rejected row names its file line, its data row (line - 1), the column,
    the value and the reason, so the user can fix the file.
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
        lines.append(f"  line {row.line} (row {row.line - 1}), column {row.column}, "
                     f"value {row.value!r}: {row.reason}")
    if report.rows_rejected > len(rejected):
        lines.append(f"  +{report.rows_rejected - len(rejected)} more in the quarantine "
                     "table")
    return "\n".join(lines)


def command_run(args: argparse.Namespace) -> int:
    from core import pipeline

    workspace = store.Workspace.create(args.workspace)
    config = run_config(args)
    timer = StageTimer()
    progress = ProgressPrinter(args.progress_file)
    result = pipeline.run_pipeline(workspace, config, run_id=args.run_id,
                                   progress=progress, timer=timer)
    print(f"run {result.run_id}: {len(result.incidents)} incidents -> {result.path}")
    print(timer.table())
    return 0


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
    if args.bin_seconds is not None:
        stream = StreamConfig(**{**stream.__dict__, "bin_seconds": args.bin_seconds})
    model = config.model
    if args.epochs is not None or args.seed is not None:
        model = ModelConfig(**{**model.__dict__,
                               "epochs": args.epochs if args.epochs is not None else model.epochs,
                               "seed": args.seed if args.seed is not None else model.seed})
    overrides = {
        "reference_start": args.reference_start, "reference_end": args.reference_end,
        "score_start": args.score_start, "score_end": args.score_end,
    }
    values = {**config.__dict__, "stream": stream, "model": model,
              "search": config.search if isinstance(config.search, SearchConfig) else SearchConfig()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig(**values)


def command_evaluate(args: argparse.Namespace) -> int:
    from core import evaluate

    windows = evaluate.read_windows(args.file)
    if "pred" not in windows and args.threshold is None:
        raise TglocError("no alarm threshold for the scores",
                         "Pass --threshold, or add a pred column of 0 and 1.")
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


def command_incidents(args: argparse.Namespace) -> int:
    workspace = store.Workspace(Path(args.workspace).resolve())
    run_id = workspace.resolve_run(args.run)
    incidents, members = incident_records(workspace, run_id)
    if args.format == "json":
        print(json.dumps({"run": run_id, "incidents": incidents}, indent=2, default=str))
    else:
        write_csv(incidents)
    return 0


def incident_records(workspace: store.Workspace, run_id: str) -> tuple[list[dict], Any]:
    """Incidents of a run with their members grouped by role."""
    path = workspace.run_path(run_id)
    incidents = store.query(path, "SELECT * FROM incidents ORDER BY rank")
    members = store.query(path, "SELECT * FROM incident_members")
    records = []
    for row in incidents.itertuples(index=False):
        own = members[members["incident_id"] == row.incident_id]
        records.append({
            "id": row.incident_id, "rank": int(row.rank),
            "start": row.start.isoformat(), "end": row.end.isoformat(),
            "type": row.type, "score": float(row.score), "threshold": float(row.threshold),
            "severity": float(row.severity), "scale": int(row.scale),
            "devices": own.loc[own["role"] == "device", "device"].tolist(),
            "pairs": [[s, d] for s, d in own.loc[own["role"] == "pair", ["device", "peer"]]
                      .itertuples(index=False)],
            "targets": own.loc[own["role"] == "target", "device"].tolist(),
            "sensors": [[d, s] for d, s in own.loc[own["role"] == "sensor", ["device", "sensor"]]
                        .itertuples(index=False)],
            "summary": row.summary,
        })
    return records, members


def write_csv(records: list[dict]) -> None:
    """Write one CSV row per incident to standard output.

    List fields are joined by ';', and a cell that a spreadsheet would read as a
    formula is prefixed with a quote."""
    import csv

    fields = ["id", "rank", "start", "end", "type", "score", "threshold", "severity",
              "scale", "devices", "pairs", "targets", "sensors", "summary"]
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = dict(record)
        row["devices"] = ";".join(record["devices"])
        row["pairs"] = ";".join(f"{s}->{d}" for s, d in record["pairs"])
        row["targets"] = ";".join(record["targets"])
        row["sensors"] = ";".join(f"{d}/{s}" for d, s in record["sensors"])
        writer.writerow({k: sanitize_cell(v) for k, v in row.items()})


def sanitize_cell(value: Any) -> Any:
    """Prefix text starting with = + - @ (or tab, CR) so spreadsheets show it as text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


if __name__ == "__main__":
    sys.exit(main())
