"""Alerts for new and grown online incidents: a persisted outbox and its senders.

Each alert is one (incident id, version) with the idempotency key
"<incident id>:<version>". `Outbox.enqueue` stores it once per sink in an SQLite
file (WAL mode) before the online results that contain it are published, so a
process that stops before sending finds it again on restart, and enqueueing it again
changes nothing. `Sender` delivers due alerts from a background thread, retries a
failed attempt with exponential backoff and logs each failure.

Sinks: a webhook (HTTP POST of the JSON payload, with an `Idempotency-Key` header;
any 2xx status is a success) and syslog over UDP (one RFC 5424 line per alert,
facility local0). UDP has no acknowledgement, so a syslog alert counts as sent once
the datagram has left.

NOTE: an alert whose delivery succeeded but whose "sent" mark was not yet written
(the process killed in between) is sent again after a restart; receivers can drop
the repeat by its idempotency key.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

log = logging.getLogger(__name__)

BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 60.0
HTTP_TIMEOUT_SECONDS = 5.0
SYSLOG_FACILITY = 16  # local0
APP_NAME = "tgloc"
# RFC 5424 private enterprise number 32473 is reserved for documentation examples.
SD_ID = "tgloc@32473"

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY, incident_id TEXT, version INTEGER, severity REAL,
    payload TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT, sink TEXT, state TEXT, attempts INTEGER, next_attempt REAL,
    last_error TEXT, sent_at TEXT, PRIMARY KEY (key, sink));
"""


class WebhookSink:
    """HTTP POST of the alert's JSON to a URL."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlparse(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"invalid webhook URL {url!r}",
                              "Give an http:// or https:// URL, such as "
                              "http://127.0.0.1:9000/alerts.")
        self.url = url
        self.name = f"webhook:{url}"

    def send(self, payload: dict) -> None:
        body = json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json",
                     "Idempotency-Key": payload["idempotency_key"]})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            raise OSError(f"HTTP {exc.code} {exc.reason}") from exc
        if not 200 <= status < 300:
            raise OSError(f"HTTP {status}")


class SyslogSink:
    """One RFC 5424 line per alert, sent over UDP."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"invalid syslog address {address!r}",
                              "Give HOST:PORT, such as 127.0.0.1:514.")
        self.address = (host, int(port))
        self.name = f"syslog:{address}"

    def send(self, payload: dict) -> None:
        line = syslog_line(payload)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(line.encode("utf-8"), self.address)


def syslog_line(payload: dict) -> str:
    """Format an alert as an RFC 5424 message: the header, one structured-data
    element with the incident id, version and key, and the summary as the message."""
    severity = float(payload.get("severity", 0.0))
    # Syslog levels: 2 critical, 3 error, 4 warning.
    if severity >= 80:
        level = 2
    elif severity >= 50:
        level = 3
    else:
        level = 4
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    stamp = stamp.replace("+00:00", "Z")
    host = socket.gethostname() or "-"

    def escape(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")

    data = (f'[{SD_ID} id="{escape(payload["incident_id"])}" '
            f'version="{escape(payload["version"])}" '
            f'key="{escape(payload["idempotency_key"])}" '
            f'severity="{escape(round(severity, 1))}"]')
    message = f'{payload.get("event", "new")} incident: {payload.get("summary", "")}'
    return f"<{SYSLOG_FACILITY * 8 + level}>1 {stamp} {host} {APP_NAME} - incident {data} {message}"


def build_sinks(webhooks: list[str], syslogs: list[str]) -> list:
    return [WebhookSink(url) for url in webhooks] + [SyslogSink(a) for a in syslogs]


@dataclass
class Outbox:
    """The persisted alerts of one online results file."""

    path: Path

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(OUTBOX_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def enqueue(self, payload: dict, sinks: list) -> bool:
        """Store an alert for every sink; return False when it was stored before."""
        key = payload["idempotency_key"]
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            cursor = con.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?, ?)",
                (key, payload["incident_id"], payload["version"], payload["severity"],
                 json.dumps(payload), dt.datetime.now(dt.timezone.utc).isoformat()))
            added = cursor.rowcount > 0
            for sink in sinks:
                con.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?, 'pending', 0, 0, NULL, NULL)",
                            (key, sink.name))
            con.execute("COMMIT")
        finally:
            con.close()
        return added

    def due(self, now: float) -> list[tuple[str, str, int, dict]]:
        con = self._connect()
        try:
            rows = con.execute(
                "SELECT d.key, d.sink, d.attempts, a.payload FROM deliveries d "
                "JOIN alerts a USING (key) WHERE d.state = 'pending' AND d.next_attempt <= ? "
                "ORDER BY a.created, d.key", (now,)).fetchall()
        finally:
            con.close()
        return [(key, sink, attempts, json.loads(payload)) for key, sink, attempts, payload in rows]

    def mark(self, key: str, sink: str, error: str | None, attempts: int,
             next_attempt: float) -> None:
        con = self._connect()
        try:
            if error is None:
                con.execute("UPDATE deliveries SET state = 'sent', attempts = ?, sent_at = ?, "
                            "last_error = NULL WHERE key = ? AND sink = ?",
                            (attempts, dt.datetime.now(dt.timezone.utc).isoformat(), key, sink))
            else:
                con.execute("UPDATE deliveries SET attempts = ?, next_attempt = ?, "
                            "last_error = ? WHERE key = ? AND sink = ?",
                            (attempts, next_attempt, error, key, sink))
        finally:
            con.close()

    def counts(self) -> dict[str, int]:
        """Deliveries per state: pending and sent."""
        con = self._connect()
        try:
            rows = con.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
        finally:
            con.close()
        return {state: int(number) for state, number in rows}


class Sender:
    """Delivers an outbox's due alerts from a background thread."""

    def __init__(self, outbox: Outbox, sinks: list, poll_seconds: float = 0.2) -> None:
        self.outbox = outbox
        self.sinks = {sink.name: sink for sink in sinks}
        self.poll_seconds = poll_seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="alert-sender", daemon=True)

    def start(self) -> "Sender":
        if self.sinks:
            self.thread.start()
        return self

    def stop(self, flush_seconds: float = 5.0) -> None:
        """Stop the thread after one last pass over the due alerts, for at most
        `flush_seconds`; alerts still pending stay in the outbox for the next start."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=flush_seconds + HTTP_TIMEOUT_SECONDS)

    def _loop(self) -> None:
        while True:
            self.deliver_due()
            if self.stopped.wait(self.poll_seconds):
                self.deliver_due()
                return

    def deliver_due(self) -> int:
        """Try every due delivery once; return how many succeeded."""
        delivered = 0
        for key, sink_name, attempts, payload in self.outbox.due(time.time()):
            sink = self.sinks.get(sink_name)
            if sink is None:
                continue  # configured in an earlier start, not in this one
            attempts += 1
            try:
                sink.send(payload)
            except OSError as exc:
                wait = min(BACKOFF_SECONDS * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)
                log.warning("alert %s to %s failed (attempt %d): %s; retrying in %.1f s",
                            key, sink_name, attempts, exc, wait)
                self.outbox.mark(key, sink_name, str(exc), attempts, time.time() + wait)
                continue
            self.outbox.mark(key, sink_name, None, attempts, 0.0)
            delivered += 1
            log.info("alert %s sent to %s (attempt %d)", key, sink_name, attempts)
        return delivered
