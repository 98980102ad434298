"""Matching incidents to ground truth, and the metrics built on that match.

An incident matches a labelled anomaly when their time intervals overlap and the
Jaccard index of their device sets is at least 0.5. Metrics that need both classes
(ROC-AUC, average precision) return None with a message when the labels hold one
class only, instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MATCH_JACCARD = 0.5


@dataclass
class Match:
    """Per labelled anomaly: the best matching incident (or None) and its Jaccard
    index; the incidents that match no anomaly; and the repeats, incidents that match
    an anomaly whose best match is another incident (a second piece of one drift)."""

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

    labels = np.asarray(labels).astype(int)
    classes = np.unique(labels)
    if len(classes) < 2:
        return None, (f"ROC-AUC undefined: labels contain only class {classes[0]} "
                      f"({len(labels)} windows)" if len(classes) else "ROC-AUC undefined: no labels")
    return float(roc_auc_score(labels, scores)), ""
