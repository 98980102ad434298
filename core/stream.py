"""The drivers of the online path: `watch` follows a source, `replay` a stored stream.

Both close bins on the data clock: a bin closes when the newest timestamp in the
store reaches its end plus the allowed lateness. Each closed bin is scored by
`core.online.OnlineScorer`, new and grown incidents at or above the alert severity
go to the outbox (`core.alerts`), and the online results file is published.

Rows that arrive for a bin that is already closed are stored, counted in
`late_rows` of the online results and reported, but that bin is not scored again.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core import alerts, ingest, online, store
from core.errors import DataError, IngestError
from core.snapshots import MICROS

log = logging.getLogger(__name__)

SOURCE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".jsonl", ".ndjson", ".json",
                   ".log")
LATE_SQL = """
SELECT (SELECT count(*) FROM events WHERE report_id = $report AND epoch_us(t) < $closed)
     + (SELECT count(*) FROM measurements WHERE report_id = $report AND epoch_us(t) < $closed)
"""
PUBLISH_SECONDS = 2.0
NEWEST_SQL = """
SELECT greatest((SELECT max(epoch_us(t)) FROM events),
                (SELECT max(epoch_us(t)) FROM measurements))
"""

Say = Callable[[str], None]


@dataclass
class Limits:
    """When a driver stops on its own: after `max_bins` bins, or once the bins up to
    the time `until_us` (epoch microseconds, data clock) are closed."""

    max_bins: int | None = None
    until_us: int | None = None


@dataclass
class OnlineSession:
    """A scorer with its outbox and sender, and the alert threshold."""

    scorer: online.OnlineScorer
    outbox: alerts.Outbox
    sender: alerts.Sender
    sinks: list
    min_severity: float
    say: Say
    closed: int = 0
    alerted: list[str] = field(default_factory=list)
    published: float = 0.0

    @classmethod
    def open(cls, workspace: store.Workspace, name: str | None, sinks: list,
             min_severity: float, fresh: bool, say: Say) -> "OnlineSession":
        model = online.OnlineModel.load(workspace)
        scorer = online.OnlineScorer(model, workspace, name)
        outbox_path = scorer.path.with_suffix(".outbox.sqlite")
        if fresh:
            for path in (scorer.path, outbox_path, Path(str(outbox_path) + "-wal"),
                         Path(str(outbox_path) + "-shm")):
                path.unlink(missing_ok=True)
        elif scorer.restore():
            say(f"resuming {scorer.path.name} after bin {scorer.last_bin}")
        outbox = alerts.Outbox(outbox_path)
        sender = alerts.Sender(outbox, sinks).start()
        return cls(scorer, outbox, sender, sinks, min_severity, say)

    def close_bins(self, last: int, limits: Limits, stop: threading.Event,
                   pace: Callable[[int], None] | None = None) -> bool:
        """Close every bin up to `last`; return True when a limit was reached."""
        scorer = self.scorer
        for bin_index in range(scorer.first_bin(), last + 1):
            if stop.is_set():
                return True
            if limits.until_us is not None and scorer.bin_end_us(bin_index) > limits.until_us:
                return True
            if pace is not None:
                pace(bin_index)
            result = scorer.close_bin(bin_index)
            self._alert(result)
            # Alerts are in the outbox before the results that contain them are
            # published. Without news, publishing waits up to PUBLISH_SECONDS, so a
            # fast replay does not rewrite the file for every bin.
            if result.new or result.grown or time.monotonic() - self.published >= PUBLISH_SECONDS:
                scorer.publish()
                self.published = time.monotonic()
            # Settling refines older incidents after the bin's own results are out.
            scorer.settle_due(bin_index)
            self.closed += 1
            if limits.max_bins is not None and self.closed >= limits.max_bins:
                return True
        return False

    def _alert(self, result: online.BinResult) -> None:
        end = online.pd.Timestamp(self.scorer.bin_end_us(result.bin), unit="us", tz="UTC")
        for event, identifiers in (("new", result.new), ("grown", result.grown)):
            for identifier in identifiers:
                payload = self.scorer.payload(identifier)
                self.say(f"{end:%Y-%m-%d %H:%M} {event:<5} {identifier} v{payload['version']} "
                         f"severity {payload['severity']:5.1f}  {payload['summary']}")
                if payload["severity"] >= self.min_severity and self.sinks:
                    if self.outbox.enqueue(payload, self.sinks):
                        self.alerted.append(payload["idempotency_key"])

    def close(self) -> None:
        self.sender.stop()
        counts = self.outbox.counts()
        if counts.get("pending"):
            self.say(f"{counts['pending']} alert deliveries still pending; the next start "
                     "sends them")


def stop_event() -> threading.Event:
    """Return an event that SIGTERM (and SIGINT) sets, so a loop can finish its bin
    and stop."""
    event = threading.Event()

    def handler(signum, frame) -> None:  # noqa: ARG001
        event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    return event


class SourceFollower:
    """Ingests new and grown files of a folder, or one growing file.

    A file is read again only when its size or modification time changed; ingest
    then stores only the rows after its last load (`ingest.ingest_file`).
    """

    def __init__(self, workspace: store.Workspace, source: Path, target: str,
                 say: Say) -> None:
        if not source.exists():
            raise IngestError(f"source not found: {source}",
                              "Give an existing folder or file to --source.")
        self.workspace = workspace
        self.source = source
        self.target = target
        self.say = say
        self.seen: dict[Path, tuple[int, int]] = {}
        self.failed: dict[Path, tuple[int, int]] = {}

    def files(self) -> list[Path]:
        if self.source.is_file():
            return [self.source]
        found = [p for p in self.source.iterdir()
                 if p.is_file() and p.suffix.lower() in SOURCE_SUFFIXES
                 and not p.name.startswith(".")]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def poll(self) -> list[ingest.IngestReport]:
        reports = []
        for path in self.files():
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if self.seen.get(path) == signature or self.failed.get(path) == signature:
                continue
            target = self.target if self.target != "auto" else guess_target(path)
            try:
                report = ingest.ingest_file(self.workspace, path,
                                            ingest.IngestOptions(target=target))
            except IngestError as exc:
                self.failed[path] = signature
                self.say(f"error: {path.name} not loaded: {exc.headline}"
                         + (f" ({exc.detail})" if exc.detail else ""))
                continue
            self.seen[path] = signature
            if report.rows_read:
                reports.append(report)
        return reports


def guess_target(path: Path) -> str:
    """Return "events" when the file's header names a source and a destination
    column, "measurements" otherwise; Parquet files by their column names."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = [n.strip().lower() for n in pq.read_schema(path).names]
    else:
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = handle.readline()
        names = [n.strip().strip('"').lower() for n in
                 header.replace(";", ",").replace("\t", ",").replace("|", ",").split(",")]
    has_src = any(n in ingest.COLUMN_ALIASES["src"] for n in names)
    has_dst = any(n in ingest.COLUMN_ALIASES["dst"] for n in names)
    return "events" if has_src and has_dst else "measurements"


def newest_time(workspace: store.Workspace) -> int | None:
    frame = store.query(workspace.store_path, NEWEST_SQL)
    value = frame.iloc[0, 0]
    return None if value is None or value != value else int(value)


def late_rows(workspace: store.Workspace, report: ingest.IngestReport, closed_us: int) -> int:
    frame = store.query(workspace.store_path, LATE_SQL,
                        {"report": report.report_id, "closed": closed_us})
    return int(frame.iloc[0, 0])


def watch(workspace: store.Workspace, source: Path, session: OnlineSession,
          lateness_seconds: float, limits: Limits, poll_seconds: float,
          target: str, stop: threading.Event) -> None:
    """Follow `source` until `stop` is set or a limit is reached."""
    scorer = session.scorer
    follower = SourceFollower(workspace, source, target, session.say)
    first = scorer.first_bin()
    scorer.warm_up(first)
    session.say(f"watching {source}; scoring from bin {first} "
                f"({online.pd.Timestamp(scorer.bin_end_us(first - 1), unit='us', tz='UTC')}), "
                f"lateness {lateness_seconds:g} s")
    while not stop.is_set():
        for report in follower.poll():
            closed_us = scorer.bin_end_us(scorer.first_bin() - 1)
            late = late_rows(workspace, report, closed_us)
            if late:
                scorer.late_rows += late
                session.say(f"{late} rows of {Path(report.file).name} arrived after their "
                            f"bin closed (before {online.pd.Timestamp(closed_us, unit='us', tz='UTC')});"
                            " they are stored but not scored")
        newest = newest_time(workspace)
        if newest is not None:
            width = scorer.online.bin_seconds * MICROS
            ready = newest - int(lateness_seconds * MICROS)
            last = (ready - scorer.online.origin_us) // width - 1
            if session.close_bins(int(last), limits, stop):
                break
        if limits.until_us is not None and scorer.bin_end_us(scorer.first_bin()) > limits.until_us:
            break
        stop.wait(poll_seconds)
    scorer.publish()


def replay(workspace: store.Workspace, session: OnlineSession, speed: float | None,
           limits: Limits, stop: threading.Event, start_us: int | None = None) -> None:
    """Score the stored bins after the reference period (or from `start_us`) through
    the online path, `speed` times faster than real time (None: as fast as possible)."""
    scorer = session.scorer
    model = scorer.online
    width = model.bin_seconds * MICROS
    if scorer.last_bin is None:
        spans = model.info["periods"]
        begin = start_us if start_us is not None else online.micros(spans["score"]["start"])
        scorer.last_bin = (begin - model.origin_us) // width - 1
    first = scorer.first_bin()
    newest = newest_time(workspace)
    if newest is None:
        raise DataError("the store contains no events and no measurements",
                        "Load data with `tgloc ingest` first.")
    last = (newest - model.origin_us) // width
    scorer.warm_up(first)
    session.say(f"replaying bins {first} to {last} at "
                f"{'maximum speed' if speed is None else f'{speed:g}x real time'}")
    began = time.monotonic()

    def pace(bin_index: int) -> None:
        if speed is None:
            return
        due = began + (bin_index + 1 - first) * model.bin_seconds / speed
        stop.wait(max(0.0, due - time.monotonic()))

    if not session.close_bins(int(last), limits, stop, pace):
        # The stored stream ends here, so its open incidents are settled now.
        scorer.settle_open()
    scorer.publish()
