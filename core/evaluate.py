"""Matching incidents to ground truth, and the metrics built on that match.

An incident matches a labelled anomaly when their time intervals overlap and the
Jaccard index of their device sets is at least 0.5. Metrics that need both classes
(ROC-AUC, average precision) return None with a message when the labels contain
one class only, instead of raising. Window metrics are reported point-wise and
point-adjusted side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pandas as pd

MATCH_JACCARD = 0.5


@dataclass
class Match:
    """The match of incidents to labelled anomalies.

    `truth` gives, per anomaly, the best matching incident (or None) and its Jaccard
    index. `unmatched` lists the incidents that match no anomaly. `repeats` lists
    incidents that match an anomaly whose best match is another incident, such as a
    second piece of one drift."""

    truth: pd.DataFrame
    unmatched: list[str]
    repeats: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return int(self.truth["incident_id"].notna().sum())


def jaccard(first: set, second: set) -> float:
    union = first | second
    return len(first & second) / len(union) if union else 0.0


def match_incidents(
    incidents: pd.DataFrame, members: pd.DataFrame, truth: pd.DataFrame,
    threshold: float = MATCH_JACCARD,
) -> Match:
    """Match each labelled anomaly to the overlapping incident of highest Jaccard.

    An incident that matches some anomaly but is not its best match is a repeat, not
    an unmatched incident.

    Args:
        incidents: columns incident_id, start, end (UTC, end exclusive).
        members: columns incident_id, role, device (role "device" rows are used).
        truth: columns anomaly_id, kind, start, end, devices (list of names).
    """
    devices = (members[members["role"] == "device"]
               .groupby("incident_id")["device"].apply(set).to_dict())
    rows = []
    used: set[str] = set()
    matching: set[str] = set()
    for anomaly in truth.itertuples(index=False):
        labelled = set(anomaly.devices)
        best_id, best_score = None, 0.0
        for incident in incidents.itertuples(index=False):
            if not (incident.start < anomaly.end and anomaly.start < incident.end):
                continue
            score = jaccard(devices.get(incident.incident_id, set()), labelled)
            if score >= threshold:
                matching.add(incident.incident_id)
            if score >= threshold and score > best_score:
                best_id, best_score = incident.incident_id, score
        if best_id is not None:
            used.add(best_id)
        rows.append({"anomaly_id": anomaly.anomaly_id, "kind": anomaly.kind,
                     "incident_id": best_id, "jaccard": best_score})
    identifiers = incidents["incident_id"].tolist()
    unmatched = [i for i in identifiers if i not in matching]
    repeats = [i for i in identifiers if i in matching and i not in used]
    return Match(pd.DataFrame(rows), unmatched, repeats)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, str]:
    """ROC-AUC of scores (higher is more anomalous), or None when undefined."""
    from sklearn.metrics import roc_auc_score

    return _ranking_metric("ROC-AUC", roc_auc_score, labels, scores)


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, str]:
    """PR-AUC (average precision) of scores, or None when undefined."""
    from sklearn.metrics import average_precision_score

    return _ranking_metric("PR-AUC", average_precision_score, labels, scores)


def _ranking_metric(name, metric, labels, scores) -> tuple[float | None, str]:
    labels = np.asarray(labels).astype(int)
    classes = np.unique(labels)
    if len(classes) == 0:
        return None, f"{name} undefined: no labels"
    if len(classes) < 2:
        return None, (f"{name} undefined: labels contain only class {classes[0]} "
                      f"({len(labels)} windows)")
    return float(metric(labels, scores)), ""


def point_adjust(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Mark every window of a labelled anomaly as detected when any one of it is.

    This is the point-adjusted protocol of several time-series benchmarks. It
    inflates scores (one hit in a long anomaly counts as finding all of it), so
    its metrics are reported beside the point-wise ones, never alone.
    """
    labels = np.asarray(labels).astype(bool)
    adjusted = np.asarray(predictions).astype(bool).copy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], labels.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        if adjusted[start:stop].any():
            adjusted[start:stop] = True
    return adjusted


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Precision, recall and F1 of binary window predictions, with alarm counts.

    A metric whose denominator is 0 is None, with the reason in `messages`.
    """
    labels = np.asarray(labels).astype(bool)
    predictions = np.asarray(predictions).astype(bool)
    true_alarms = int((labels & predictions).sum())
    alarms = int(predictions.sum())
    positives = int(labels.sum())
    messages = []
    precision = true_alarms / alarms if alarms else None
    if precision is None:
        messages.append("precision undefined: no alarms")
    recall = true_alarms / positives if positives else None
    if recall is None:
        messages.append("recall undefined: labels contain no anomalous window")
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "alarms": alarms,
            "false_alarms": alarms - true_alarms, "messages": messages}


def evaluate_windows(
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    predictions: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict:
    """Evaluate window labels against scores or predictions without raising.

    Args:
        labels: shape [W], 1 for an anomalous window.
        scores: shape [W], higher is more anomalous; gives ROC-AUC and PR-AUC, and
            alarms where score >= `threshold`.
        predictions: shape [W], 1 for an alarm; used instead of a threshold.
        threshold: alarm level for `scores`.

    Returns:
        windows, roc_auc and pr_auc (None when undefined), point_wise and
        point_adjusted (each from `classification_metrics`) and messages.

    Raises:
        ValueError: neither predictions nor scores with a threshold are given.
    """
    labels = np.asarray(labels).astype(int)
    if predictions is None:
        if scores is None or threshold is None:
            raise ValueError("invalid evaluation input: give predictions, or scores "
                             "with a threshold")
        predictions = np.asarray(scores, dtype=float) >= threshold
    report = {"windows": int(len(labels)), "roc_auc": None, "pr_auc": None,
              "messages": []}
    if scores is not None:
        report["roc_auc"], roc_message = roc_auc(labels, scores)
        report["pr_auc"], pr_message = pr_auc(labels, scores)
        report["messages"] += [m for m in (roc_message, pr_message) if m]
    report["point_wise"] = classification_metrics(labels, predictions)
    report["point_adjusted"] = classification_metrics(
        labels, point_adjust(labels, predictions))
    report["messages"] += report["point_wise"]["messages"]
    return report


def format_report(report: dict) -> str:
    """Return the evaluation as text lines; point-adjusted F1 never appears alone."""

    def number(value) -> str:
        return "undefined" if value is None else f"{value:.4g}"

    lines = [f"windows: {report['windows']}"]
    if "roc_auc" in report:
        lines.append(f"ROC-AUC: {number(report['roc_auc'])}")
        lines.append(f"PR-AUC: {number(report['pr_auc'])}")
    point_wise, adjusted = report["point_wise"], report["point_adjusted"]
    lines.append(f"alarms: {point_wise['alarms']}, false alarms: "
                 f"{point_wise['false_alarms']}")
    for name in ("precision", "recall", "F1"):
        key = name.lower()
        lines.append(f"point-wise {name}: {number(point_wise[key])}; "
                     f"point-adjusted {name}: {number(adjusted[key])}")
    lines += report["messages"]
    return "\n".join(lines)



def read_windows(path: str) -> pd.DataFrame:
    """Read a window file: a label column (0 or 1) and a score or pred column.

    Raises:
        TglocError: the file is missing, lacks the columns, or a cell is invalid;
            the message names the column, the value and the file line.
    """
    from core.errors import TglocError

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise TglocError(f"cannot read the window file {path}", str(exc)) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if "label" not in frame or not ({"score", "pred"} & set(frame.columns)):
        raise TglocError(
            f"no label column, or neither a score nor a pred column, in {path}",
            f"Columns found: {', '.join(frame.columns)}. Name them label and score "
            "(or pred).",
        )
    result = pd.DataFrame(index=frame.index)
    for column in ("label", "pred", "score"):
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        allowed = values.isin([0, 1]) if column != "score" else np.isfinite(values)
        if not allowed.all():
            row = int(np.flatnonzero(~allowed.to_numpy())[0])
            expected = "0 or 1" if column != "score" else "a finite number"
            raise TglocError(
                f"invalid value {frame[column].iloc[row]!r} in column {column}, "
                f"line {row + 2}",
                f"Each {column} must be {expected}. Fix that line and run again.",
            )
        result[column] = values.to_numpy()
    return result


def top_count(percent: float, relevant: int) -> int:
    """Return round(percent * relevant / 100), rounding halves up.

    Exact in decimal: 150% of 3 is 4.5, which gives 5.
    """
    share = Fraction(str(percent)) * relevant / 100
    return math.floor(share + Fraction(1, 2))


def tie_groups(priority: np.ndarray, tiebreak: np.ndarray) -> list[np.ndarray]:
    """Split items into groups of equal (priority, tiebreak), best group first.

    Higher is more anomalous for both keys; `tiebreak` orders items of equal
    `priority`. Items equal in both keys form one group, whose internal order
    is left open (never the item order).
    """
    priority = np.asarray(priority, dtype=float)
    tiebreak = np.asarray(tiebreak, dtype=float)
    if priority.shape != tiebreak.shape or priority.ndim != 1:
        raise ValueError(f"priority {priority.shape} and tiebreak {tiebreak.shape} "
                         "must be 1-D arrays of one length")
    order = np.lexsort((-tiebreak, -priority))
    keys = np.stack([priority[order], tiebreak[order]], axis=1)
    changes = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
    return np.split(order, changes)


def hit_rate(priority: np.ndarray, tiebreak: np.ndarray, relevant: np.ndarray,
             percent: float) -> float:
    """HitRate@P%: the share of the relevant items among the top round(P% of k).

    k is the number of relevant items. A tie group that straddles the cut counts
    its relevant items in proportion to the places left for it, which is the
    expected hit count over every order of the tie.

    Args:
        priority, tiebreak: shape [M], higher is more anomalous.
        relevant: shape [M], bool, the labelled items.
        percent: P, such as 100 or 150.

    Raises:
        ValueError: no item is relevant.
    """
    relevant = np.asarray(relevant, dtype=bool)
    count = int(relevant.sum())
    if count == 0:
        raise ValueError("hit_rate needs at least one relevant item")
    cut = min(top_count(percent, count), len(relevant))
    hits, position = 0.0, 0
    for group in tie_groups(priority, tiebreak):
        if position >= cut:
            break
        places = min(len(group), cut - position)
        hits += relevant[group].sum() * places / len(group)
        position += len(group)
    return hits / count


def ndcg(priority: np.ndarray, tiebreak: np.ndarray, relevant: np.ndarray,
         percent: float = 100) -> float:
    """NDCG@P% with binary gains over the top round(P% of k) places.

    A tie group spreads its relevant items evenly over its places (the expected
    gain over every order of the tie). The ideal ranking puts the k relevant
    items first.

    Raises:
        ValueError: no item is relevant.
    """
    relevant = np.asarray(relevant, dtype=bool)
    count = int(relevant.sum())
    if count == 0:
        raise ValueError("ndcg needs at least one relevant item")
    cut = min(top_count(percent, count), len(relevant))
    discounts = 1.0 / np.log2(np.arange(cut) + 2.0)
    gain, position = 0.0, 0
    for group in tie_groups(priority, tiebreak):
        if position >= cut:
            break
        share = relevant[group].sum() / len(group)
        gain += share * discounts[position : position + len(group)].sum()
        position += len(group)
    return float(gain / discounts[: min(count, cut)].sum())
