"""The online path: replay, watch, alerts with retries, restart without repeats.

One small sample plant is trained once per module on its first three hours; the
tests copy that workspace and feed it the rest (replay from the store, or watch a
folder of CSV files). Alert receivers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import alerts, cli, ingest, localize, online, pipeline, scoring, store, synth
from core.config import ModelConfig, RunConfig, StreamConfig

ROOT = Path(__file__).resolve().parent.parent
PLANT = synth.PlantConfig(seed=5, field_devices=8, hours=4.0, anomaly_start_share=0.5)
TRAINED_HOURS = 3.0


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame = frame.copy()
    frame["t"] = frame["t"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, synth.Plant, pd.Timestamp]:
    """A workspace trained on the plant's first hours, and the plant."""
    root = tmp_path_factory.mktemp("online") / "ws"
    workspace = store.Workspace.create(root)
    plant = synth.generate_plant(PLANT)
    cut = plant.events["t"].min().floor("min") + pd.Timedelta(hours=TRAINED_HOURS)
    folder = root / "input"
    folder.mkdir()
    events = write_csv(plant.events[plant.events["t"] < cut], folder / "events.csv")
    readings = write_csv(plant.measurements[plant.measurements["t"] < cut],
                         folder / "measurements.csv")
    ingest.ingest_file(workspace, events, ingest.IngestOptions(target="events"))
    ingest.ingest_file(workspace, readings, ingest.IngestOptions(target="measurements"))
    synth.store_plant(workspace, plant)
    config = RunConfig(stream=StreamConfig(bin_seconds=60), model=ModelConfig(epochs=3),
                       reference_share=0.5)
    pipeline.run_pipeline(workspace, config, run_id="base")
    return root, plant, cut


def copy_workspace(trained, tmp_path: Path) -> Path:
    target = tmp_path / "ws"
    shutil.copytree(trained[0], target)
    return target


def ingest_rest(root: Path, plant: synth.Plant, cut: pd.Timestamp) -> None:
    """Store the plant's rows after `cut` (the stream a replay feeds)."""
    workspace = store.Workspace.create(root)
    folder = root / "rest"
    folder.mkdir()
    events = write_csv(plant.events[plant.events["t"] >= cut], folder / "events.csv")
    readings = write_csv(plant.measurements[plant.measurements["t"] >= cut],
                         folder / "measurements.csv")
    ingest.ingest_file(workspace, events, ingest.IngestOptions(target="events"))
    ingest.ingest_file(workspace, readings, ingest.IngestOptions(target="measurements"))


def test_element_keys_unique_without_peer():
    # pandas' string dtype keeps missing cells missing through astype(str), and a key
    # built from them must still name its element.
    ids = pd.DataFrame({"device": pd.array(["a", "b", "a", "a"], dtype="str"),
                        "peer": pd.array([None, None, "b", None], dtype="str"),
                        "sensor": pd.array([None, None, None, "FT-1"], dtype="str")})
    keys = online.element_keys(ids)
    assert keys.is_unique
    assert not keys.isna().any()
    assert list(keys) == ["a\x1f\x1f", "b\x1f\x1f", "a\x1fb\x1f", "a\x1f\x1fFT-1"]


def test_online_model_has_run_weights(trained, tmp_path):
    # The batch scan weighs each device's counts and set its thresholds for those
    # weighted counts, so the online scan must weigh with the run's own weights.
    workspace = store.Workspace.create(copy_workspace(trained, tmp_path))
    model = online.OnlineModel.load(workspace, "base")
    scales = set(model.thresholds)
    info = store.read_run_info(workspace, "base")["thresholds"]

    assert scales and set(model.weights) == scales
    for scale in scales:
        assert len(model.weights[scale]) == model.reference.num_devices
        assert np.allclose(model.weights[scale], info[str(scale)]["weights"])
        assert ((model.weights[scale] > 0) & (model.weights[scale] <= 1)).all()
    scorer = online.OnlineScorer(model, workspace, name="check")
    scorer.warm_up(int(model.info["num_bins"]))
    assert set(scorer.scan) == scales
    for scale, state in scorer.scan.items():
        assert np.array_equal(state.weights, model.weights[scale])


def test_online_evidence_matches_batch_run(trained, tmp_path):
    # The online path scores the batch run's own scored bins with the same model and
    # calibration, so each device's evidence must be the batch run's.
    workspace = store.Workspace.create(copy_workspace(trained, tmp_path))
    model = online.OnlineModel.load(workspace, "base")
    scorer = online.OnlineScorer(model, workspace, name="check")
    width = model.bin_seconds * 1_000_000
    first = (online.micros(model.info["periods"]["score"]["start"]) - model.origin_us) // width
    scorer.warm_up(first)
    for bin_index in range(first, first + 8):
        scorer.close_bin(bin_index)

    live = pd.concat(scorer.evidence, ignore_index=True)
    # Warming up scores the bins before the first one too, and the batch run has
    # evidence for scored bins only.
    live = live[(live["scale"] == 1) & (live["bin"] >= first)]
    batch = store.query(workspace.run_path("base"),
                        "SELECT device, bin, evidence FROM device_evidence WHERE scale = 1")
    both = live.merge(batch, on=["device", "bin"], suffixes=("_live", "_batch"))
    assert len(both) == len(live) > 0

    # Ties among equal scores are broken by the element, bin and seed, not by the
    # order of scoring, so every device's evidence is the batch run's, also that
    # of control devices with pairs the training never saw.
    kinds = model.reference.devices.set_index("device")["kind"].astype(str)
    assert (both["device"].map(kinds) != "field").sum() > 20
    gap = (both["evidence_live"] - both["evidence_batch"]).abs()
    assert gap.max() < 1e-6, both.loc[gap.nlargest(5).index]


def random_bin(rng: np.random.Generator, num_devices: int, size: int) -> pd.DataFrame:
    """Elements of one coarse bin: devices, pairs and sensors with random p-values."""
    kind = rng.choice(["device", "pair", "sensor"], size)
    device = rng.integers(0, num_devices, size)
    peer = np.where(kind == "pair", (device + rng.integers(1, num_devices, size)) % num_devices,
                    -1)
    return pd.DataFrame({"kind": kind, "column": np.arange(size), "device_idx": device,
                         "peer_idx": peer, "bin": 0, "p_value": rng.random(size) ** 4,
                         "score": rng.random(size)})


@pytest.mark.parametrize("weighted", [False, True])
def test_live_scale_matches_rebuilt_state(weighted):
    # The online scan state grows by one coarse bin at a time, drops its oldest
    # bins, and keeps take-outs that reach bins not closed yet. At every step its
    # counts, prefix sums and element queries must be those of a state built from
    # scratch from the elements it still holds, with device weights too.
    rng = np.random.default_rng(3)
    scale, num_devices, alphas = 4, 12, (1e-3, 0.01, 0.1)
    weights = rng.uniform(0.01, 1.0, num_devices) if weighted else None
    state = online.LiveScale(scale, num_devices, alphas, {1: 5.0, 2: 6.0}, {}, capacity=2,
                             weights=weights)
    first = 0  # absolute coarse bin of local bin 0
    removals: list[tuple[list[int], int, int]] = []  # absolute base bins
    for step in range(40):
        state.append(random_bin(rng, num_devices, int(rng.integers(0, 50))))
        if step % 5 == 4:
            # Up to the end of the next coarse bin, which has not closed yet.
            devices = sorted(rng.choice(num_devices, 2, replace=False).tolist())
            start = (state.num_bins - 2) * scale + 1
            state.remove(devices, start, start + 2 * scale, alphas)
            removals.append((devices, start + first * scale, start + 2 * scale + first * scale))
        if step % 13 == 12:
            state.drop(3)
            first += 3
        active_elements = state.elements[state.active]
        built = localize.ScaleState.build(
            localize.ScaleElements(scale, state.num_bins, active_elements, [(0, state.num_bins)]),
            num_devices, alphas, state.thresholds, {}, weights)
        np.testing.assert_allclose(state.counts, built.counts, atol=1e-9)
        np.testing.assert_allclose(state.totals, built.totals, atol=1e-9)
        evidence, expected = state.evidence(), built.evidence()
        np.testing.assert_allclose(evidence.counts, expected.counts, atol=1e-9)
        np.testing.assert_allclose(evidence.totals, expected.totals, atol=1e-9)
        whole = localize.ScaleState(scale, state.elements, state.active.copy(), built.counts,
                                    built.totals, state.runs, state.thresholds, {}, weights)
        for lower in range(0, state.num_bins, 3):
            upper = lower + 3
            for alpha in alphas:
                devices = [0, 1, 2, 3, 4]
                assert state.dominant(devices, lower, upper, alpha, 0.3) == \
                    whole.dominant(devices, lower, upper, alpha, 0.3)
                assert state.is_process(devices, lower, upper, alpha) == \
                    whole.is_process(devices, lower, upper, alpha)
                assert state.targets(devices, lower, upper, alpha) == \
                    whole.targets(devices, lower, upper, alpha)
        # Every take-out applies to every kept coarse bin that touches it, including
        # the bins that closed after it.
        bins = state.elements["bin"].to_numpy() + first
        for devices, start, stop in removals:
            touching = (state.elements["device_idx"].isin(devices)
                        | state.elements["peer_idx"].isin(devices)).to_numpy()
            inside = (bins >= start // scale) & (bins < -(-stop // scale))
            assert not (state.active & touching & inside).any()
    assert state.num_bins > 2
    assert len(state.count_buffer) > 2, "the buffers never grew"


def reference_pvalues(calibrator: online.Calibrator, scaled: scoring.ScaledFamily,
                      coarse_bin: int, seed: int) -> np.ndarray:
    """P-values of one bin, one element at a time, as `scoring.calibrate` computes them."""
    score = scaled.score[0]
    exists = scaled.exists[0] & np.isfinite(score)
    p = np.full(len(score), np.nan)
    groups = scaled.ids["group"].astype(str).to_numpy()
    novel = scaled.ids["novel"].to_numpy() if "novel" in scaled.ids \
        else np.zeros(len(groups), bool)
    rows = calibrator._rows(scaled.ids)
    for column in np.flatnonzero(exists):
        group = groups[column]
        uniform = scoring.tie_uniforms(scaled.ids.iloc[[column]], calibrator.kind,
                                       calibrator.scale, np.array([coarse_bin]), seed)[0]
        if novel[column]:
            p[column] = calibrator.novelty.get(group, 1.0) * uniform[0]
            continue
        pool_group = calibrator.group_pools.get(group, np.zeros(0))
        tail = pool_group if len(pool_group) >= calibrator.min_reference else calibrator.whole
        row = rows[column]
        if row >= 0 and calibrator.own_count[row] >= calibrator.min_reference:
            pool = calibrator.own[row, : calibrator.own_count[row]]
        elif len(pool_group) >= calibrator.min_reference:
            pool = pool_group
        else:
            pool = calibrator.whole
        p[column] = scoring.tail_pvalues(pool, score[column:column + 1], uniform, tail)[0]
    if calibrator.kind in scoring.COUNT_KINDS:
        chosen = exists & ~novel
        p[chosen] = np.maximum(p[chosen], scoring.count_pvalues(
            scaled.observed[0, chosen] * scaled.scale,
            scaled.expected[0, chosen] * scaled.scale))
    return calibrator.mapping(p) if calibrator.mapping is not None else p


def replay_bins(root: Path, name: str, count: int) -> online.OnlineScorer:
    """Close `count` bins from the start of the run's scored period."""
    workspace = store.Workspace.create(root)
    model = online.OnlineModel.load(workspace, "base")
    scorer = online.OnlineScorer(model, workspace, name=name)
    width = model.bin_seconds * 1_000_000
    first = (online.micros(model.info["periods"]["score"]["start"]) - model.origin_us) // width
    scorer.warm_up(first)
    for bin_index in range(first, first + count):
        scorer.close_bin(bin_index)
    return scorer


def test_online_pvalues_match_per_element(trained, tmp_path, monkeypatch):
    # The online calibration scores all elements of a bin at once. It must give the
    # p-values of scoring them one by one, also for scores beyond the calibration
    # pool (the fitted tail).
    checked = {"values": 0, "beyond": 0}
    vectorized = online.Calibrator.pvalues

    def both(self, scaled, coarse_bin, seed):
        expected = reference_pvalues(self, scaled, coarse_bin, seed)
        got = vectorized(self, scaled, coarse_bin, seed)
        assert np.array_equal(got, expected, equal_nan=True), (self.kind, self.scale)
        checked["values"] += int(np.isfinite(got).sum())
        checked["beyond"] += int(np.sum(scaled.score[0] > self.whole[-1]))
        return got

    monkeypatch.setattr(online.Calibrator, "pvalues", both)
    root = copy_workspace(trained, tmp_path)
    ingest_rest(root, trained[1], trained[2])
    replay_bins(root, "check", 30)
    assert checked["values"] > 1000
    assert checked["beyond"] > 0


def test_online_summary_names_whole_incident(trained, tmp_path):
    # An incident grows over many bins. Its sentence must give its whole interval and
    # its own devices, not those of the hit that scored highest.
    root = copy_workspace(trained, tmp_path)
    ingest_rest(root, trained[1], trained[2])
    scorer = replay_bins(root, "summary", 60)
    table, members = scorer.incident_table()
    devices = members[members["role"] == "device"]
    assert (table["stop_bin"] - table["start_bin"] > 1).any(), "no incident grew"
    for row in table.itertuples():
        assert f"from {row.start:%Y-%m-%d %H:%M} to {row.end:%Y-%m-%d %H:%M} UTC" in row.summary
        listed = row.summary.split(" anomaly on ")[1].split(" from ")[0]
        own = set(devices.loc[devices["incident_id"] == row.incident_id, "device"])
        for name in listed.split(" and ")[0].split(", "):
            assert name in own, (name, row.summary)


def test_online_scan_new_intervals_only(trained, tmp_path, monkeypatch):
    # Each closed bin scans only the intervals that end with it, at the scales whose
    # bin closed with it, so no interval is scanned in two bins. Rescanning every
    # interval of the horizon at each bin fails this.
    root = copy_workspace(trained, tmp_path)
    ingest_rest(root, trained[1], trained[2])
    closing: dict = {}
    scanned: list[tuple[int, int, int, int]] = []  # bin, scale, start, stop (absolute)
    scan, hit = localize.scan_intervals, localize.best_hit

    def spy(evidence, runs, config, min_stop=None):
        intervals, best, alpha_index, members = scan(evidence, runs, config, min_stop)
        scale = closing["scale"]
        offset = closing["scorer"].scan_origin // scale
        scanned.extend((closing["bin"], scale, int(a) + offset, int(b) + offset)
                       for a, b in intervals)
        return intervals, best, alpha_index, members

    def note_scale(state, *args, **kwargs):
        closing["scale"] = state.scale
        return hit(state, *args, **kwargs)

    close = online.OnlineScorer.close_bin

    def note_bin(self, bin_index):
        closing.update(scorer=self, bin=bin_index)
        return close(self, bin_index)

    monkeypatch.setattr(localize, "scan_intervals", spy)
    monkeypatch.setattr(localize, "best_hit", note_scale)
    monkeypatch.setattr(online.OnlineScorer, "close_bin", note_bin)
    count = 90
    scorer = replay_bins(root, "scanned", count)

    assert scorer.scan_origin > scorer.scan_anchor, "the scan never dropped old bins"
    frame = pd.DataFrame(scanned, columns=["bin", "scale", "start", "stop"])
    assert frame["bin"].nunique() == count
    for (bin_index, scale), group in frame.groupby(["bin", "scale"]):
        assert (bin_index + 1) % scale == 0
        assert (group["stop"] * scale == bin_index + 1).all()
        # One interval per dyadic length at most.
        longest = max(scorer.online.thresholds[scale], default=1)
        assert group[["start", "stop"]].drop_duplicates().shape[0] <= longest.bit_length()
    bins_per_interval = frame.groupby(["scale", "start", "stop"])["bin"].nunique()
    assert (bins_per_interval == 1).all()


class Recomputed(online.LiveScale):
    """The online scan state with every query computed over all of its elements and
    bins, as `localize.ScaleState` computes them."""

    def evidence(self):
        return localize.ScaleState.evidence(self)

    def dominant(self, *args):
        return localize.ScaleState.dominant(self, *args)

    def is_process(self, *args):
        return localize.ScaleState.is_process(self, *args)

    def targets(self, *args):
        return localize.ScaleState.targets(self, *args)

    def remove(self, devices, start, stop, alphas):
        localize.ScaleState.remove(self, devices, start, stop, alphas)
        if -(-stop // self.scale) > self.num_bins:
            self.pending.append((list(devices), start, stop))


def test_online_incidents_match_recomputed_state(trained, tmp_path, monkeypatch):
    # The incremental bookkeeping of the scan state (rows per bin, kept prefix sums,
    # take-outs of bins not closed yet, dropped old bins) must find the incidents
    # that full recomputations over the state's elements find.
    root = copy_workspace(trained, tmp_path)
    ingest_rest(root, trained[1], trained[2])
    count = 90
    incremental = replay_bins(root, "incremental", count)
    monkeypatch.setattr(online, "LiveScale", Recomputed)
    recomputed = replay_bins(root, "recomputed", count)

    assert all(isinstance(s, Recomputed) for s in recomputed.scan.values())
    assert incremental.scan_origin > incremental.scan_anchor, "the scan never dropped old bins"
    live, live_members = incremental.incident_table()
    again, again_members = recomputed.incident_table()
    assert len(live) >= 1
    pd.testing.assert_frame_equal(live, again)
    pd.testing.assert_frame_equal(live_members, again_members)

class Receiver:
    """An HTTP server on 127.0.0.1 that answers 503 to its first request and 200
    to the rest, and records every body it accepted."""

    def __init__(self) -> None:
        self.accepted: list[dict] = []
        self.refused = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server interface)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    refuse = owner.refused == 0
                    if refuse:
                        owner.refused += 1
                    else:
                        owner.accepted.append({"body": json.loads(body),
                                               "key": self.headers["Idempotency-Key"]})
                self.send_response(503 if refuse else 200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def outbox_keys(path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(path) as con:
        return [row[0] for row in con.execute("SELECT key FROM alerts ORDER BY key")]


@pytest.mark.slow
def test_replay_alerts_exactly_once_across_restart(trained, tmp_path, caplog, capsys):
    root = copy_workspace(trained, tmp_path)
    ingest_rest(root, trained[1], trained[2])
    receiver = Receiver()
    caplog.set_level("WARNING", logger="core.alerts")
    onset = trained[1].truth["start"].min() - pd.Timedelta(minutes=5)
    try:
        first = cli.main(["replay", "--workspace", str(root), "--speed", "max",
                          "--from", onset.isoformat(), "--max-bins", "20",
                          "--webhook", receiver.url])
        assert first == 0
        middle = len(receiver.accepted)
        second = cli.main(["replay", "--workspace", str(root), "--speed", "max",
                           "--resume", "--max-bins", "30", "--webhook", receiver.url])
        assert second == 0
    finally:
        receiver.close()
    output = capsys.readouterr().out
    path = online.online_path(store.Workspace(root), "base-replay")
    keys = outbox_keys(path.with_suffix(".outbox.sqlite"))
    received = [item["key"] for item in receiver.accepted]

    assert "resuming base-replay.duckdb" in output
    assert receiver.refused == 1
    assert any("failed (attempt 1): HTTP 503" in r.getMessage() for r in caplog.records)
    assert middle >= 1, "the first part of the replay raised no alert"
    assert len(keys) > middle, "the resumed replay raised no alert of its own"
    assert sorted(received) == keys
    assert len(set(received)) == len(received)
    for item in receiver.accepted:
        assert item["body"]["idempotency_key"] == item["key"]
        assert item["key"] == f"{item['body']['incident_id']}:{item['body']['version']}"

    info = online.read_online_info(path)
    incidents = store.query(path, "SELECT * FROM incidents")
    assert info["base_run"] == "base"
    width = pd.Timedelta(minutes=1)
    origin = pd.Timestamp(info["origin_us"], unit="us", tz="UTC")
    assert origin + info["last_bin"] * width == onset.floor("min") + 49 * width
    assert len(incidents) >= 1
    assert set(incidents["incident_id"]) == {key.split(":")[0] for key in keys}


@pytest.mark.slow
def test_watch_folder_scores_new_files_and_counts_late_rows(trained, tmp_path):
    root = copy_workspace(trained, tmp_path)
    plant, cut = trained[1], trained[2]
    source = tmp_path / "landing"
    source.mkdir()
    later = plant.events[(plant.events["t"] >= cut)
                         & (plant.events["t"] < cut + pd.Timedelta(minutes=30))]
    readings = plant.measurements[(plant.measurements["t"] >= cut)
                                  & (plant.measurements["t"] < cut + pd.Timedelta(minutes=30))]
    write_csv(later, source / "events-1.csv")
    write_csv(readings, source / "measurements-1.csv")
    until = cut + pd.Timedelta(minutes=20)

    command = [sys.executable, "-m", "core.cli", "watch", "--workspace", str(root),
               "--source", str(source), "--poll", "0.2", "--until", until.isoformat()]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert first.returncode == 0, first.stderr
    path = online.online_path(store.Workspace(root), "base")
    info = online.read_online_info(path)
    width = pd.Timedelta(minutes=1)
    origin = pd.Timestamp(info["origin_us"], unit="us", tz="UTC")
    closed_end = origin + (info["last_bin"] + 1) * width
    assert closed_end == until
    assert info["late_rows"] == 0

    # Rows for a bin already closed: stored, counted and reported, not dropped.
    stale = later[later["t"] < cut + pd.Timedelta(minutes=5)].head(7)
    write_csv(stale.assign(t=stale["t"] + pd.Timedelta(seconds=1)), source / "late.csv")
    command[-1] = (until + pd.Timedelta(minutes=3)).isoformat()
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert second.returncode == 0, second.stderr
    assert "resuming base.duckdb" in second.stdout
    assert "7 rows of late.csv arrived after their bin closed" in second.stdout
    info = online.read_online_info(path)
    assert info["late_rows"] == 7
    stored = store.query(root / "store.duckdb",
                         "SELECT count(*) AS n FROM events WHERE report_id IN "
                         "(SELECT report_id FROM ingest_reports WHERE file LIKE '%late.csv')")
    assert int(stored["n"].iloc[0]) == 7
    assert origin + (info["last_bin"] + 1) * width == until + pd.Timedelta(minutes=3)


@pytest.mark.slow
def test_watch_stops_cleanly_on_sigterm(trained, tmp_path):
    root = copy_workspace(trained, tmp_path)
    source = tmp_path / "empty"
    source.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "watch", "--workspace", str(root),
         "--source", str(source), "--poll", "0.2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 300
        line = ""
        while time.monotonic() < deadline and "watching" not in line:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
        assert "watching" in line, process.stderr.read()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "stopped after bin" in out
    assert "Traceback" not in err
    assert online.online_path(store.Workspace(root), "base").exists()


def test_syslog_line_is_rfc5424_over_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        sink = alerts.SyslogSink(f"127.0.0.1:{port}")
        sink.send({"idempotency_key": "inc-1:2", "incident_id": "inc-1", "version": 2,
                   "severity": 85.0, "event": "grown", "summary": 'Flood on "plc-1".'})
        line = sock.recv(4096).decode("utf-8")
    pattern = (r'^<130>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ tgloc - incident '
               r'\[tgloc@32473 id="inc-1" version="2" key="inc-1:2" severity="85.0"\] '
               r'grown incident: Flood on "plc-1"\.$')
    assert re.match(pattern, line), line


def test_outbox_enqueue_twice_stores_once(tmp_path):
    outbox = alerts.Outbox(tmp_path / "a.outbox.sqlite")
    sink = alerts.WebhookSink("http://127.0.0.1:9/x")
    payload = {"idempotency_key": "inc-9:1", "incident_id": "inc-9", "version": 1,
               "severity": 10.0}
    assert outbox.enqueue(payload, [sink]) is True
    again = alerts.Outbox(tmp_path / "a.outbox.sqlite")
    assert again.enqueue(payload, [sink]) is False
    assert again.counts() == {"pending": 1}


@pytest.mark.parametrize("value", ["ftp://127.0.0.1/x", "127.0.0.1:80", "http://"])
def test_webhook_url_invalid_rejected(value):
    with pytest.raises(Exception, match="invalid webhook URL"):
        alerts.WebhookSink(value)


@pytest.mark.parametrize("value", ["127.0.0.1", "host:port", "127.0.0.1:70000"])
def test_syslog_address_invalid_rejected(value):
    with pytest.raises(Exception, match="invalid syslog address"):
        alerts.SyslogSink(value)
