"""Import of the Server Machine Dataset (SMD): server metrics on a row-index clock.

SMD (Su et al., KDD 2019, repository NetManAIOps/OmniAnomaly) publishes per server
38 metrics at one-minute steps, min-max scaled, with no wall-clock time and no
metric names. Each machine has a training half and a test half. The test half's
anomaly segments name the metrics that are anomalous. This module decides how such
a machine becomes a workspace:

- Clock: row `t` of the training half is `SMD_ORIGIN + t * step`, and row `t` of the
  test half is `SMD_ORIGIN + (train_rows + t) * step`, so the halves are one series.
- Graph: each metric is a device with one sensor of the same name (kind "metric").
  The links are a dependency graph learned on the training half only (see
  `dependency_links`). The test half never shapes the graph.
- Ground truth: each line `start-end:m,m,...` of `interpretation_label/<machine>.txt`
  is one `ground_truth` row. `start` is the first anomalous test row, `end` is
  exclusive, and metric ids are 1-based (metric 1 is column `m01`). The point
  labels of the test file (`label`) are kept out of the features and checked
  against the segments.

Expected layout of the folder (as distributed with tgloc's benchmarks):
`csv/<machine>_train.csv.gz` (`t,m01..m38`), `csv/<machine>_test.csv.gz`
(`t,m01..m38,label`) and `interpretation_label/<machine>.txt`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import store
from core.errors import IngestError
from core.ingest import IngestOptions, IngestReport, ingest_frame
from core.store import Workspace

log = logging.getLogger(__name__)

SMD_ORIGIN = pd.Timestamp("2000-01-01T00:00:00Z")
DEFAULT_STEP_SECONDS = 60
# Dependency graph: each metric links to its GRAPH_TOP_K most correlated metrics
# whose absolute Pearson correlation on the training half is at least
# GRAPH_MIN_CORRELATION. A metric that is constant there links to nothing.
GRAPH_TOP_K = 3
GRAPH_MIN_CORRELATION = 0.5
METRIC_PATTERN = re.compile(r"^m\d{2}$")
SEGMENT_PATTERN = re.compile(r"^(\d+)-(\d+):(\d+(?:,\d+)*)$")
MACHINE_PATTERN = re.compile(r"^machine-\d+-\d+$")


@dataclass(frozen=True)
class Segment:
    """One labelled anomaly of a test half.

    Attributes:
        start: first anomalous test row (0-based).
        stop: first test row after the anomaly (exclusive end).
        metrics: the anomalous metric columns, such as ("m01", "m09").
    """

    start: int
    stop: int
    metrics: tuple[str, ...]


@dataclass
class Machine:
    """One SMD machine read from its files.

    Attributes:
        name: such as "machine-1-6".
        train: shape [train_rows, M], the training half's metric columns.
        test: shape [test_rows, M], the test half's metric columns.
        labels: shape [test_rows], 0/1 point labels of the test half.
        segments: the labelled anomalies, in file order.
    """

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    labels: np.ndarray
    segments: list[Segment]

    @property
    def metrics(self) -> list[str]:
        return list(self.train.columns)

    def segment_labels(self) -> list[set[str]]:
        """Return, per test row, the union of the metrics of the segments covering it.

        Segments may overlap (machine-3-3 has rows in two segments); such a row
        gets the metrics of both.
        """
        rows: list[set[str]] = [set() for _ in range(len(self.test))]
        for segment in self.segments:
            for row in range(segment.start, segment.stop):
                rows[row].update(segment.metrics)
        return rows


def machine_names(folder: str | Path) -> list[str]:
    """Return the machines of `folder` that have a training and a test file."""
    csv = Path(folder) / "csv"
    names = sorted(p.name.removesuffix("_train.csv.gz") for p in csv.glob("*_train.csv.gz"))
    return [n for n in names if (csv / f"{n}_test.csv.gz").is_file()]


def read_machine(folder: str | Path, machine: str) -> Machine:
    """Read and check one machine's training half, test half and segments.

    Raises:
        IngestError: a file is missing, a column or row index is wrong, a segment
            line cannot be read, or the point labels disagree with the segments.
    """
    folder = Path(folder)
    if not MACHINE_PATTERN.match(machine):
        raise IngestError(
            f"invalid SMD machine name {machine!r}",
            "Give a name such as machine-1-6; the folder has: "
            f"{', '.join(machine_names(folder)) or 'no machines'}.",
        )
    train_path = folder / "csv" / f"{machine}_train.csv.gz"
    test_path = folder / "csv" / f"{machine}_test.csv.gz"
    segments_path = folder / "interpretation_label" / f"{machine}.txt"
    for path in (train_path, test_path, segments_path):
        if not path.is_file():
            raise IngestError(
                f"SMD file not found: {path}",
                f"Machines in {folder}: {', '.join(machine_names(folder)) or 'none'}.",
            )
    train = _read_half(train_path, with_label=False)
    test = _read_half(test_path, with_label=True)
    if list(train.columns) != [c for c in test.columns if c != "label"]:
        raise IngestError(
            f"{test_path.name} and {train_path.name} have different metric columns",
            "Both halves need the same columns t, m01..mNN in the same order.",
        )
    labels = test.pop("label").to_numpy(dtype=np.int8)
    metrics = list(train.columns)
    text = segments_path.read_text(encoding="utf-8")
    segments = parse_segments(text, segments_path.name, len(test), metrics)
    result = Machine(machine, train, test, labels, segments)

    covered = np.array([bool(s) for s in result.segment_labels()])
    disagree = np.flatnonzero(covered != labels.astype(bool))
    if len(disagree):
        row = int(disagree[0])
        raise IngestError(
            f"{test_path.name}: point labels disagree with {segments_path.name} "
            f"on {len(disagree)} rows",
            f"Test row t={row} (line {row + 2}) has label {labels[row]}, but the "
            f"segments {'cover' if covered[row] else 'do not cover'} it. The "
            "segments' end is exclusive; check that both files are of one version.",
        )
    return result


def parse_segments(
    text: str, source: str, num_rows: int, metrics: list[str]
) -> list[Segment]:
    """Parse `interpretation_label` lines `start-end:m,m,...` into segments.

    `end` is exclusive and metric ids are 1-based, so `0-5:1,3` covers test rows
    0..4 and names metrics `metrics[0]` and `metrics[2]`. Blank lines are skipped.

    Raises:
        IngestError: a line does not match, names a metric outside 1..len(metrics),
            has end <= start, or ends after the last test row.
    """
    segments = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        match = SEGMENT_PATTERN.match(line)
        if match is None:
            raise IngestError(
                f"invalid segment in {source} line {number}: {line!r}",
                "Each line is start-end:m,m,... with 0-based start, exclusive end "
                "and 1-based metric ids, such as 246-252:1,2,3.",
            )
        start, stop = int(match.group(1)), int(match.group(2))
        ids = [int(i) for i in match.group(3).split(",")]
        if stop <= start:
            raise IngestError(
                f"invalid segment in {source} line {number}: end {stop} is not after "
                f"start {start}",
                "The end is exclusive, so a one-row segment at row 7 is 7-8.",
            )
        if stop > num_rows:
            raise IngestError(
                f"invalid segment in {source} line {number}: end {stop} is after the "
                f"last test row ({num_rows - 1})",
                "Check that the segment file belongs to this machine's test file.",
            )
        bad = [i for i in ids if not 1 <= i <= len(metrics)]
        if bad:
            raise IngestError(
                f"invalid segment in {source} line {number}: metric id {bad[0]} is "
                f"outside 1..{len(metrics)}",
                "Metric ids are 1-based: 1 is the first metric column.",
            )
        named = tuple(dict.fromkeys(metrics[i - 1] for i in ids))
        segments.append(Segment(start, stop, named))
    return segments


def dependency_links(
    train: pd.DataFrame, top_k: int = GRAPH_TOP_K,
    min_correlation: float = GRAPH_MIN_CORRELATION,
) -> pd.DataFrame:
    """Learn links between metrics from their training series.

    Each metric links to its `top_k` partners of largest absolute Pearson
    correlation, among those at or above `min_correlation`; ties go to the earlier
    column. A link found from both ends is kept once, with src < dst. Metrics that
    are constant in `train` have no correlation and get no link.

    Returns:
        Columns src, dst, weight (the absolute correlation), sorted by src, dst.
    """
    values = train.to_numpy(dtype=float)
    varying = values.std(axis=0) > 0
    names = np.asarray(train.columns)[varying]
    if len(names) < 2:
        return pd.DataFrame({"src": [], "dst": [], "weight": []})
    correlation = np.abs(np.corrcoef(values[:, varying], rowvar=False))
    np.fill_diagonal(correlation, -1.0)
    links: dict[tuple[str, str], float] = {}
    for row, name in enumerate(names):
        order = np.argsort(-correlation[row], kind="stable")[:top_k]
        for column in order:
            strength = float(correlation[row, column])
            if strength < min_correlation:
                break
            key = tuple(sorted((str(name), str(names[column]))))
            links[key] = strength
    rows = sorted(links.items())
    return pd.DataFrame({
        "src": [a for (a, _), _ in rows],
        "dst": [b for (_, b), _ in rows],
        "weight": [w for _, w in rows],
    })


def row_times(rows: np.ndarray, step_seconds: int) -> pd.Series:
    """Return the instants of row positions on the joined train-then-test clock."""
    offsets = pd.to_timedelta(np.asarray(rows, dtype=np.int64) * step_seconds, unit="s")
    return pd.Series(SMD_ORIGIN + offsets)


def ingest_smd(
    workspace: Workspace, folder: str | Path, machine: str,
    step_seconds: int = DEFAULT_STEP_SECONDS,
) -> list[IngestReport]:
    """Import one SMD machine: both halves, the metric devices, links, segments.

    Loading the same machine again stores nothing new. A workspace holds one
    machine, because the metric names m01..m38 repeat across machines.

    Args:
        workspace: the workspace to fill.
        folder: the SMD folder (`csv/`, `interpretation_label/`).
        machine: such as "machine-1-6".
        step_seconds: the time between two rows.

    Returns:
        Reports of the training half, the test half, the devices and the links.

    Raises:
        IngestError: see `read_machine`; or the workspace holds another machine.
    """
    if step_seconds < 1:
        raise IngestError(f"invalid step_seconds={step_seconds}",
                          "Give the time between two rows in whole seconds, >= 1.")
    data = read_machine(folder, machine)
    _require_same_machine(workspace, machine)
    train_rows = len(data.train)

    reports = []
    halves = (("train", data.train, 0, None),
              ("test", data.test, train_rows, data.labels))
    for half, frame, offset, labels in halves:
        wide = frame.copy()
        wide.insert(0, "time", row_times(np.arange(len(frame)) + offset, step_seconds))
        label = None
        if labels is not None:
            wide["label"] = labels
            label = "label"
        options = IngestOptions(target="measurements", layout="wide",
                                columns={"time": "time"}, label_column=label,
                                label_intervals=False)
        reports.append(ingest_frame(workspace, wide, options, f"{machine}_{half}"))

    devices = pd.DataFrame({"device": data.metrics, "kind": "metric", "zone": machine})
    reports.append(ingest_frame(workspace, devices, IngestOptions(target="devices"),
                                f"{machine} metrics"))
    links = dependency_links(data.train)
    if len(links):
        reports.append(ingest_frame(workspace, links, IngestOptions(target="links"),
                                    f"{machine} dependency links"))
    _store_segments(workspace, data, step_seconds)
    return reports


def _read_half(path: Path, with_label: bool) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, compression="gzip", dtype=str, keep_default_na=False)
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
        raise IngestError(f"failed to read {path}", str(exc)) from exc
    columns = list(frame.columns)
    metrics = [c for c in columns[1:] if c != "label"]
    if not columns or columns[0] != "t" or not metrics or not all(
            METRIC_PATTERN.match(c) for c in metrics):
        raise IngestError(
            f"unexpected columns in {path.name}: {', '.join(columns[:5])}...",
            "An SMD half has columns t, m01..mNN" + (", label." if with_label else "."),
        )
    if with_label != ("label" in columns):
        raise IngestError(
            f"{path.name}: label column {'missing' if with_label else 'unexpected'}",
            "The test half has a 0/1 label column; the training half has none.",
        )
    index = pd.to_numeric(frame["t"], errors="coerce")
    wrong = np.flatnonzero(index.to_numpy() != np.arange(len(frame)))
    if len(wrong):
        row = int(wrong[0])
        raise IngestError(
            f"{path.name} line {row + 2}: t is {frame['t'].iloc[row]!r}, expected {row}",
            "t is the 0-based row index; rows must be complete and in order.",
        )
    result = pd.DataFrame(index=frame.index)
    for column in metrics + (["label"] if with_label else []):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy())
        if column == "label" and not len(bad):
            bad = np.flatnonzero(~numbers.isin([0, 1]).to_numpy())
        if len(bad):
            row = int(bad[0])
            raise IngestError(
                f"{path.name} line {row + 2}, column {column}: invalid value "
                f"{frame[column].iloc[row]!r}",
                "Metric values are numbers and labels are 0 or 1.",
            )
        result[column] = numbers.to_numpy()
    return result


def _require_same_machine(workspace: Workspace, machine: str) -> None:
    with store.connect(workspace.store_path, read_only=True) as con:
        zones = con.execute(
            "SELECT DISTINCT zone FROM devices WHERE kind = 'metric'").fetchall()
    others = sorted(str(z) for (z,) in zones if z != machine)
    if others:
        raise IngestError(
            f"workspace {workspace.root} already holds SMD machine {others[0]}",
            f"Import {machine} into a new workspace: metric names repeat across "
            "machines, so two machines in one workspace would merge their metrics.",
        )


def _store_segments(workspace: Workspace, data: Machine, step_seconds: int) -> None:
    offset = len(data.train)
    starts = row_times(np.array([s.start for s in data.segments]) + offset, step_seconds)
    stops = row_times(np.array([s.stop for s in data.segments]) + offset, step_seconds)
    truth = pd.DataFrame({
        "anomaly_id": [f"{data.name}/segment-{i:02d}" for i in range(len(data.segments))],
        "kind": "segment",
        "start": starts,
        "end": stops,
        "devices": [list(s.metrics) for s in data.segments],
        "sensors": [list(s.metrics) for s in data.segments],
        "description": [f"test rows {s.start}..{s.stop - 1}" for s in data.segments],
    })
    with store.connect(workspace.store_path) as con:
        con.register("_truth", truth)
        try:
            con.execute("INSERT OR REPLACE INTO ground_truth BY NAME SELECT * FROM _truth")
        finally:
            con.unregister("_truth")
    log.info("stored %d SMD segments of %s as ground truth", len(truth), data.name)
