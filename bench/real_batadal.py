"""BATADAL benchmark: which PLC and which signal an attack on C-Town touches, and when.

The data is the BATADAL water network (Taormina et al., J. Water Resour. Plann.
Manage. 144(8), 2018): 43 hourly signals read by 9 PLCs, which with the SCADA server
and their cyber links make the graph. tgloc imports the folder (`core.ingest`),
bins it in hours and trains once on `BATADAL_dataset03.csv` (2014, no attacks): the
first 60% of it trains the model and the rest calibrates p-values and the scan's
null, as `tgloc run --bin-seconds 3600 --reference-end 2015-01-06T01:00:00Z` does.
Each attack file is then scored as its own run (`score_start` and `score_end` at the
file's bounds), so the scan's thresholds are set for one file at a time.

The search setting is tuned on `BATADAL_dataset04.csv` (2016, attacks 1 to 7) over
a fixed grid: `SearchConfig.level` in `LEVELS`, each with
`SearchConfig.calibrate_on_scored` off and on. The chosen setting has the most device
hits among those whose false incident-hours stay within `FALSE_HOURS_BUDGET`. Ties go
to the smaller share of false hours, then to calibration on the reference alone (the
default), then to the smaller level. When no setting is within budget, the one with
the smallest share is taken, ties going to the most device hits and then as above.
The test file (2017, attacks 8 to 14) and both files together are reported with that
setting.

Scoring, per attack of `attack_targets.csv` (its end there is the last attack hour,
so the interval ends one hour later):

- device hit: an incident whose interval overlaps the attack's with an
  intersection over union of at least `MIN_IOU`, has at most `MAX_DEVICES`
  member devices (role "device" in the run's `incident_members`) and among them
  an accepted PLC of the attack.
- sensor hit: a device hit whose incident has a target signal of the attack among
  its top `TOP_SENSORS` sensors. The incident's sensors are its `incident_members`
  rows of role "sensor". They are ranked by evidence (-log10 of the smallest
  p-value of the sensor's significant elements in the incident, higher is more
  anomalous), then by the number of hourly bins inside the incident in which
  `sensor_flags` flags the sensor "outside training range". The other flag,
  "constant in training", is on in every bin of such a sensor, so it does not
  count. Ties left after both go against the target signals, so a tie never
  makes a hit.
- false incident-hours: hours of the file covered by an incident and by no
  attack, as a share of the file's hours without an attack.

The trained model and its reconstruction are kept in a cache folder under a
digest of the `core` modules that produce them and of the data files, so a
rerun with another search setting takes seconds.

Run: `python -m bench.real_batadal --data DIR [--quick] [--cache DIR]`, where DIR is
the BATADAL folder or a folder holding `batadal/`; or `tgloc bench real --data DIR
--only batadal`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import core  # noqa: F401  first: it caps the vector code before numpy loads
import numpy as np
import pandas as pd
import torch

from bench.null_runs import TRAINING_MODULES, code_version
from core import ingest, pipeline, scoring, store, train
from core.config import ModelConfig, RunConfig, SearchConfig, StreamConfig
from core.snapshots import build_snapshots

log = logging.getLogger(__name__)

FOLDER = "batadal"
REFERENCE_FILE = "BATADAL_dataset03.csv"
TUNE_FILE = "BATADAL_dataset04.csv"
TEST_FILE = "BATADAL_test_dataset.csv"
SCORED_FILES = (TUNE_FILE, TEST_FILE)
# Inputs of the trained model besides the SCADA files. A change to one retrains it.
MAP_FILES = ("ctown_plc_tags.csv", "ctown_cyber_links.csv")
TIME_FORMAT = "%d/%m/%y %H"
BIN_SECONDS = 3600
REFERENCE_END = "2015-01-06T01:00:00Z"
LEVELS = (0.01, 0.05, 0.2)
CALIBRATIONS = (False, True)
QUICK_EPOCHS = 5
MIN_IOU = 0.3
MAX_DEVICES = 3
TOP_SENSORS = 3
FALSE_HOURS_BUDGET = 0.05
TARGET_DEVICE_HITS = 10
TARGET_SENSOR_HITS = 7
# Torch threads while the model trains. On a machine shared with other work, two
# threads ran a training step about ten times slower than one (see bench.real_smd).
TORCH_THREADS = 1
# The modules that ingest, bin, train and reconstruct, without the search.
MODEL_MODULES = tuple(name for name in TRAINING_MODULES if name != "synth")
HOUR = pd.Timedelta(hours=1)


@dataclass(frozen=True)
class Attack:
    """One attack of `attack_targets.csv`, with an exclusive `end`."""

    attack_id: int
    file: str
    start: pd.Timestamp
    end: pd.Timestamp
    plcs: tuple[str, ...]
    signals: tuple[str, ...]


@dataclass(frozen=True)
class RankedSensor:
    """One sensor member of an incident; higher evidence is more anomalous."""

    device: str
    sensor: str
    evidence: float
    flagged_bins: int


@dataclass(frozen=True)
class Incident:
    """An incident as the run file describes it, with an exclusive `end`."""

    incident_id: str
    start: pd.Timestamp
    end: pd.Timestamp
    devices: tuple[str, ...]
    sensors: tuple[RankedSensor, ...] = ()


@dataclass(frozen=True)
class Match:
    """The localization of one attack.

    Attributes:
        incident: the hitting incident when there is one (a sensor hit before a
            device hit), else the incident with the largest IoU, else None.
        top: that incident's top sensors, ranked as described in the module docstring.
    """

    attack: Attack
    device_hit: bool
    sensor_hit: bool
    incident: Incident | None
    iou: float
    top: tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    """One point of the tuning grid: the `SearchConfig` fields it sets."""

    level: float
    calibrate_on_scored: bool = False

    @property
    def label(self) -> str:
        scored = ", calibrated on scored" if self.calibrate_on_scored else ""
        return f"level {self.level:g}{scored}"


@dataclass
class FileOutcome:
    """One scored file with one search setting."""

    file: str
    setting: Setting
    matches: list[Match]
    incidents: list[Incident]
    false_hours: int
    normal_hours: int
    seconds: float = 0.0

    @property
    def device_hits(self) -> int:
        return sum(m.device_hit for m in self.matches)

    @property
    def sensor_hits(self) -> int:
        return sum(m.sensor_hit for m in self.matches)

    @property
    def false_share(self) -> float:
        return self.false_hours / max(self.normal_hours, 1)


@dataclass
class Trained:
    """The model's output on the whole store, the same for every search setting."""

    snapshots: object
    prepared: train.Prepared
    model: torch.nn.Module
    families: list
    train_seconds: float
    best_epoch: int
    epochs: int
    spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = field(default_factory=dict)


def run(data_dir: Path, quick: bool, cache: Path | None = None) -> dict:
    """Train (or load the cached model), tune the search setting on dataset04 and
    score both attack files.

    Returns:
        table: the markdown tables; caveats: one line; headline: figures by name.
    """
    folder = data_folder(Path(data_dir))
    epochs = QUICK_EPOCHS if quick else ModelConfig().epochs
    cache = Path(cache or Path(tempfile.gettempdir()) / "tgloc-real-batadal")
    trained = trained_model(folder, epochs, cache)
    attacks = read_attacks(folder)

    grid: dict[Setting, dict[str, FileOutcome]] = {}
    for name in SCORED_FILES:
        chosen = [a for a in attacks if a.file == name]
        for setting, outcome in search_file(trained, name, chosen).items():
            grid.setdefault(setting, {})[name] = outcome
    setting = choose_setting({key: files[TUNE_FILE] for key, files in grid.items()})
    outcomes = [grid[setting][name] for name in SCORED_FILES]
    return {
        "table": format_tables(outcomes, grid, setting),
        "caveats": caveats(trained, quick),
        "headline": headline(outcomes, setting, trained),
    }


def data_folder(data_dir: Path) -> Path:
    """Return the BATADAL folder: `data_dir` itself or its `batadal/`."""
    nested = data_dir / FOLDER
    return nested if (nested / REFERENCE_FILE).is_file() else data_dir


def read_attacks(folder: Path) -> list[Attack]:
    """Read `attack_targets.csv`, whose end is the last attack hour."""
    table = pd.read_csv(folder / "attack_targets.csv", dtype=str)
    attacks = []
    for row in table.itertuples(index=False):
        start = pd.Timestamp(row.start, tz="UTC")
        end = pd.Timestamp(row.end, tz="UTC") + HOUR
        attacks.append(Attack(int(row.attack_id), row.file, start, end,
                              tuple(row.accepted_plcs.split()),
                              tuple(row.target_signals.split())))
    return attacks


def file_span(path: Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Return the first hour of a SCADA file and the end of its last hour."""
    times = pd.to_datetime(pd.read_csv(path, usecols=[0]).iloc[:, 0],
                           format=TIME_FORMAT, utc=True)
    return times.min(), times.max() + HOUR


# Scoring rules: pure functions of attacks and incidents.


def interval_iou(start_a: pd.Timestamp, end_a: pd.Timestamp,
                 start_b: pd.Timestamp, end_b: pd.Timestamp) -> float:
    """Intersection over union of two half-open time intervals."""
    overlap = min(end_a, end_b) - max(start_a, start_b)
    if overlap <= pd.Timedelta(0):
        return 0.0
    union = max(end_a, end_b) - min(start_a, start_b)
    return overlap / union


def top_sensors(incident: Incident, signals: tuple[str, ...],
                count: int = TOP_SENSORS) -> list[str]:
    """Return the incident's `count` top sensor names for an attack on `signals`.

    Sensors rank by evidence, then by flagged bins, both higher first. Among
    sensors equal on both, the non-target ones come first, so a tie never puts a
    target signal into the top.
    """
    ranked = sorted(incident.sensors, key=lambda s: (
        -s.evidence, -s.flagged_bins, s.sensor in signals, s.sensor))
    return [s.sensor for s in ranked[:count]]


def is_device_hit(attack: Attack, incident: Incident) -> bool:
    """Return whether the incident overlaps the attack with IoU >= `MIN_IOU`, has at
    most `MAX_DEVICES` devices and contains an accepted PLC."""
    iou = interval_iou(attack.start, attack.end, incident.start, incident.end)
    return (iou >= MIN_IOU and len(incident.devices) <= MAX_DEVICES
            and any(d in attack.plcs for d in incident.devices))


def is_sensor_hit(attack: Attack, incident: Incident) -> bool:
    """Return whether the incident is a device hit with a target signal in its top
    sensors."""
    if not is_device_hit(attack, incident):
        return False
    return any(s in attack.signals for s in top_sensors(incident, attack.signals))


def match_attack(attack: Attack, incidents: list[Incident]) -> Match:
    """Score one attack against the incidents of its file."""
    def iou(incident: Incident) -> float:
        return interval_iou(attack.start, attack.end, incident.start, incident.end)

    sensor = [i for i in incidents if is_sensor_hit(attack, i)]
    device = [i for i in incidents if is_device_hit(attack, i)]
    pool = sensor or device or incidents
    best = max(pool, key=iou, default=None)
    if best is not None and not (sensor or device) and iou(best) == 0.0:
        best = None
    return Match(
        attack, bool(device), bool(sensor), best,
        iou(best) if best is not None else 0.0,
        tuple(top_sensors(best, attack.signals)) if best is not None else (),
    )


def false_incident_hours(incidents: list[Incident], attacks: list[Attack],
                         start: pd.Timestamp, end: pd.Timestamp) -> tuple[int, int]:
    """Count the file's hours covered by an incident and by no attack.

    Args:
        start, end: the file's first hour and the end of its last hour.

    Returns:
        The false incident-hours, and the file's hours without an attack.
    """
    hours = pd.date_range(start, end, freq="h", inclusive="left")
    attacked = np.zeros(len(hours), dtype=bool)
    for attack in attacks:
        attacked |= (hours >= attack.start) & (hours < attack.end)
    covered = np.zeros(len(hours), dtype=bool)
    for incident in incidents:
        covered |= (hours >= incident.start) & (hours < incident.end)
    return int((covered & ~attacked).sum()), int((~attacked).sum())


def score_file(name: str, setting: Setting, incidents: list[Incident],
               attacks: list[Attack], span: tuple[pd.Timestamp, pd.Timestamp]
               ) -> FileOutcome:
    """Apply the scoring rules to one file's incidents."""
    false_hours, normal_hours = false_incident_hours(incidents, attacks, *span)
    return FileOutcome(name, setting, [match_attack(a, incidents) for a in attacks],
                       incidents, false_hours, normal_hours)


def choose_setting(tuned: dict[Setting, FileOutcome]) -> Setting:
    """Pick the setting with the most device hits within the false-hours budget,
    or the one with the smallest false share when none is within it."""
    def preference(outcome: FileOutcome) -> tuple:
        setting = outcome.setting
        return (outcome.false_share, -outcome.device_hits,
                setting.calibrate_on_scored, setting.level)

    within = [o for o in tuned.values() if o.false_share <= FALSE_HOURS_BUDGET]
    if within:
        max_hits = max(o.device_hits for o in within)
        best = min((o for o in within if o.device_hits == max_hits), key=preference)
    else:
        best = min(tuned.values(), key=preference)
    return best.setting


def incidents_from_run(table: pd.DataFrame, members: pd.DataFrame,
                       flags: pd.DataFrame) -> list[Incident]:
    """Build incidents from the run tables `incidents`, `incident_members` and
    `sensor_flags` (the frames `core.pipeline` publishes)."""
    result = []
    for row in table.itertuples(index=False):
        start, end = pd.Timestamp(row.start), pd.Timestamp(row.end)
        own = members[members["incident_id"] == row.incident_id]
        devices = tuple(sorted(set(own.loc[own["role"] == "device", "device"])))
        inside = flags[(flags["start"] >= start) & (flags["start"] < end)
                       & (flags["flag"] == scoring.OUTSIDE_TRAINING_RANGE)]
        flagged = inside.groupby(["device", "sensor"])["bin"].nunique()
        sensors = tuple(
            RankedSensor(str(s.device), str(s.sensor), float(s.evidence),
                         int(flagged.get((s.device, s.sensor), 0)))
            for s in own[own["role"] == "sensor"].itertuples(index=False))
        result.append(Incident(str(row.incident_id), start, end, devices, sensors))
    return result


# The model, trained once and cached, and the search, run per file and level.


def trained_model(folder: Path, epochs: int, cache: Path) -> Trained:
    """Load the cached model output for this code and data, or train and cache it."""
    cache.mkdir(parents=True, exist_ok=True)
    digests = f"{code_version(MODEL_MODULES)}-{data_digest(folder)}"
    path = cache / f"trained-e{epochs}-{digests}.pickle"
    if path.exists():
        with path.open("rb") as handle:
            fields = pickle.load(handle)
        log.info("loaded the trained model from %s", path)
        return Trained(**fields)
    trained = train_model(folder, epochs)
    # The fields are pickled, not the dataclass: run as `python -m`, this module
    # is `__main__`, and a pickled `__main__.Trained` would not load elsewhere.
    partial = path.with_suffix(".partial")
    with partial.open("wb") as handle:
        pickle.dump(vars(trained), handle)
    partial.replace(path)
    return trained


def data_digest(folder: Path) -> str:
    """Return a digest of the files the model is trained and scored on."""
    digest = hashlib.sha1()
    for name in (REFERENCE_FILE, *SCORED_FILES, *MAP_FILES):
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:10]


def base_config(epochs: int, setting: Setting = Setting(SearchConfig().level),
                window: tuple[pd.Timestamp, pd.Timestamp] | None = None) -> RunConfig:
    """Return the run settings of `tgloc run --bin-seconds 3600 --reference-end ...`,
    scoring `window` only when given."""
    bounds = {} if window is None else {"score_start": window[0].isoformat(),
                                        "score_end": window[1].isoformat()}
    return RunConfig(stream=StreamConfig(bin_seconds=BIN_SECONDS),
                     model=ModelConfig(epochs=epochs),
                     search=SearchConfig(
                         level=setting.level,
                         calibrate_on_scored=setting.calibrate_on_scored),
                     reference_end=REFERENCE_END, **bounds)


def train_model(folder: Path, epochs: int) -> Trained:
    """Import the folder into a scratch workspace, bin it, train and reconstruct."""
    began = time.perf_counter()
    config = base_config(epochs)
    with tempfile.TemporaryDirectory(prefix="tgloc-batadal-") as scratch:
        workspace = store.Workspace.create(Path(scratch) / "ws")
        ingest.ingest_batadal(workspace, folder)
        snapshots = build_snapshots(workspace.store_path, BIN_SECONDS)
    train.require_devices(snapshots)
    periods, segments = pipeline.assign_periods(snapshots, config)
    train_bins = np.flatnonzero(periods == "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        with train.deterministic():
            prepared = train.prepare(snapshots, train_bins, segments)
            fitted = train.fit(prepared, snapshots, train_bins, config.model)
            x_hat, pair_hat, candidates, _ = scoring.reconstruct(
                fitted.model, prepared, snapshots)
            families = scoring.families(snapshots, prepared, x_hat, pair_hat,
                                        candidates, train_bins)
    finally:
        torch.set_num_threads(threads)
    spans = {name: file_span(folder / name) for name in SCORED_FILES}
    return Trained(snapshots, prepared, fitted.model, families,
                   time.perf_counter() - began, int(fitted.best_epoch), epochs, spans)


def search_file(trained: Trained, name: str, attacks: list[Attack],
                levels: tuple[float, ...] = LEVELS,
                calibrations: tuple[bool, ...] = CALIBRATIONS,
                ) -> dict[Setting, FileOutcome]:
    """Score one file as its own run and localize it with each search setting.

    The p-values are computed once per calibration. Each level's search starts
    from the random state that followed them, as one `tgloc run` with that
    setting would.
    """
    span = trained.spans[name]
    periods, _ = pipeline.assign_periods(trained.snapshots,
                                         base_config(trained.epochs, window=span))
    train_bins = np.flatnonzero(periods == "train")
    flags = pipeline.sensor_flags(trained.snapshots, trained.prepared, train_bins,
                                  periods)
    outcomes = {}
    for calibrate_on_scored in calibrations:
        config = base_config(trained.epochs, Setting(SearchConfig().level,
                                                     calibrate_on_scored), span)
        rng = np.random.default_rng(config.model.seed)
        with train.deterministic():
            scored = pipeline.score_scales(trained.families, periods, config)
        state = rng.bit_generator.state
        for level in levels:
            setting = Setting(level, calibrate_on_scored)
            outcomes[setting] = localize_file(trained, name, attacks, setting,
                                              scored, periods, flags, state)
    return outcomes


def localize_file(trained: Trained, name: str, attacks: list[Attack],
                  setting: Setting, scored: list, periods: np.ndarray,
                  flags: pd.DataFrame, state: dict) -> FileOutcome:
    """Run the search of one setting on scored p-values and apply the rules."""
    began = time.perf_counter()
    span = trained.spans[name]
    search = base_config(trained.epochs, setting, span)
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    with train.deterministic():
        table, members, _, _ = pipeline.localize_run(
            trained.snapshots, scored, periods, trained.prepared, search, rng,
            lambda *_: None, trained.model)
    incidents = incidents_from_run(table, members, flags)
    outcome = score_file(name, setting, incidents, attacks, span)
    outcome.seconds = time.perf_counter() - began
    log.info("%s %s: %d incidents, %d device hits, %d sensor hits, "
             "false hours %d of %d", name, setting.label, len(incidents),
             outcome.device_hits, outcome.sensor_hits, outcome.false_hours,
             outcome.normal_hours)
    return outcome


# Report.


def format_tables(outcomes: list[FileOutcome],
                  grid: dict[Setting, dict[str, FileOutcome]],
                  setting: Setting) -> str:
    """Return the per-attack table, the summary and the tuning grid as markdown."""
    lines = [
        f"Search setting {setting.label}, chosen on {TUNE_FILE}.",
        "",
        "| attack | file | window (UTC) | device hit | sensor hit | incident devices "
        "| IoU | top sensors |",
        "| ---: | --- | --- | --- | --- | --- | ---: | --- |",
    ]
    for outcome in outcomes:
        for m in outcome.matches:
            a = m.attack
            devices = " ".join(m.incident.devices) if m.incident else "none"
            lines.append(
                f"| {a.attack_id} | {a.file} | {a.start:%Y-%m-%d %H:%M} to "
                f"{a.end:%Y-%m-%d %H:%M} | {'yes' if m.device_hit else 'no'} | "
                f"{'yes' if m.sensor_hit else 'no'} | {devices} | {m.iou:.2f} | "
                f"{' '.join(m.top) or 'none'} |")
    lines += [
        "",
        "| file | incidents | device hits | sensor hits | false incident-hours "
        "| hours without attack | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for outcome in outcomes:
        lines.append(
            f"| {outcome.file} | {len(outcome.incidents)} | {outcome.device_hits} of "
            f"{len(outcome.matches)} | {outcome.sensor_hits} of {len(outcome.matches)} "
            f"| {outcome.false_hours} | {outcome.normal_hours} | "
            f"{outcome.false_share:.1%} |")
    total = totals(outcomes)
    lines.append(
        f"| both | {total['incidents']} | {total['device_hits']} of {total['attacks']} "
        f"| {total['sensor_hits']} of {total['attacks']} | {total['false_hours']} | "
        f"{total['normal_hours']} | {total['false_share']:.1%} |")
    lines.append(f"| target | | >= {TARGET_DEVICE_HITS} of 14 | "
                 f">= {TARGET_SENSOR_HITS} of 14 | | | "
                 f"<= {FALSE_HOURS_BUDGET:.0%} per file |")
    lines += [
        "",
        "| level | calibrated on scored | file | incidents | device hits "
        "| sensor hits | false share | search s |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for point, files in grid.items():
        for outcome in files.values():
            lines.append(
                f"| {point.level:g} | {'yes' if point.calibrate_on_scored else 'no'} "
                f"| {outcome.file} | {len(outcome.incidents)} | "
                f"{outcome.device_hits} | {outcome.sensor_hits} | "
                f"{outcome.false_share:.1%} | {outcome.seconds:.1f} |")
    return "\n".join(lines)


def totals(outcomes: list[FileOutcome]) -> dict:
    """Sum the figures of the files."""
    false_hours = sum(o.false_hours for o in outcomes)
    normal_hours = sum(o.normal_hours for o in outcomes)
    return {
        "attacks": sum(len(o.matches) for o in outcomes),
        "incidents": sum(len(o.incidents) for o in outcomes),
        "device_hits": sum(o.device_hits for o in outcomes),
        "sensor_hits": sum(o.sensor_hits for o in outcomes),
        "false_hours": false_hours,
        "normal_hours": normal_hours,
        "false_share": false_hours / max(normal_hours, 1),
    }


def caveats(trained: Trained, quick: bool) -> str:
    return (
        f"caveats: trained once on {REFERENCE_FILE} ({trained.epochs} epochs at most, "
        f"best epoch {trained.best_epoch}, "
        f"{trained.train_seconds:.0f} s when trained); "
        "each attack file scored as its own run; the search setting was tuned on "
        f"{TUNE_FILE}, so only {TEST_FILE} is held out"
        f"{'; quick run: few epochs' if quick else ''}."
    )


def headline(outcomes: list[FileOutcome], setting: Setting,
             trained: Trained) -> dict:
    by_file = {TUNE_FILE: "tune", TEST_FILE: "test"}
    figures: dict = {"batadal_level": setting.level,
                     "batadal_calibrate_on_scored": setting.calibrate_on_scored,
                     "batadal_epochs": trained.epochs}
    for outcome in outcomes:
        key = f"batadal_{by_file[outcome.file]}"
        figures[f"{key}_device_hits"] = outcome.device_hits
        figures[f"{key}_sensor_hits"] = outcome.sensor_hits
        figures[f"{key}_false_share"] = round(outcome.false_share, 4)
    total = totals(outcomes)
    figures["batadal_device_hits"] = total["device_hits"]
    figures["batadal_sensor_hits"] = total["sensor_hits"]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.real_batadal",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("TGLOC_DATA"),
                        help="the BATADAL folder, or a folder holding batadal/ "
                             "(default: $TGLOC_DATA)")
    parser.add_argument("--quick", action="store_true",
                        help=f"train {QUICK_EPOCHS} epochs at most")
    parser.add_argument("--cache", type=Path,
                        help="folder for the trained model (default: a folder under "
                             "the system's temp)")
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("no data folder; pass --data DIR or set TGLOC_DATA")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = dt.datetime.now(dt.timezone.utc)
    result = run(args.data, args.quick, args.cache)
    load = os.getloadavg()
    print(result["table"])
    print(result["caveats"])
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    started_text = started.isoformat(timespec="seconds")
    print(json.dumps({"set": "batadal", "started": started_text, **result["headline"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
