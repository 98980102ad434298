"""Frozen settings for binning, the model, the search and a whole run.

Every range check raises `ConfigError` naming the parameter, the allowed range and the
value given. A run stores its configuration as JSON (`RunConfig.to_dict`) and rebuilds
it with `RunConfig.from_dict`, so a run file records exactly how it was made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.errors import ConfigError

HUB_KINDS = ("plc", "scada", "hmi", "gateway", "historian", "switch")
GAP_FILL_POLICIES = ("none", "ffill")
EMPTY_BIN_POLICIES = ("auto", "gap", "score")


def _is_time(value: Any) -> bool:
    """Return whether `value` is text that reads as one ISO-8601 time."""
    if not isinstance(value, str):
        return False
    try:
        return pd.Timestamp(value) is not pd.NaT and value[:4].isdigit()
    except (ValueError, TypeError):
        return False


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(
            f"invalid setting {name}={value!r}",
            f"{name} must be {allowed}; got {value!r}.",
        )


@dataclass(frozen=True)
class StreamConfig:
    """Settings that turn raw events and measurements into snapshots.

    Attributes:
        bin_seconds: width of the base bin in seconds.
        scales: bin widths as multiples of the base bin; elements are scored and
            calibrated at each. The first must be 1.
        timezone: IANA zone used to read timestamps that carry no zone.
        drop_loopback: drop self-loop events on loopback addresses (127.0.0.0/8, ::1).
        max_empty_bins: a stretch of more consecutive bins in which no device has any
            event or reading (a gap between two files, say) is neither trained on
            nor scored, and the model restarts after it.
        empty_bins: what a shorter stretch of bins without data from any device
            is. "gap": a collection gap, neither trained on nor scored. "score":
            part of the stream, scored like any bin. "auto" (the default): a gap
            where, from how often each device is active, such a bin would not
            happen by chance once in the run (a plant that polls all the time);
            scored otherwise (a sparse contact stream).
        gap_fill: how the model's sensor features treat a stored NULL reading.
            "none" leaves it missing (masked); "ffill" uses the sensor's last
            earlier reading. The stored NULL is never changed.
        gap_fill_limit: "ffill" only: the maximum number of consecutive missing
            readings of a sensor that are filled. None fills every run of them.
    """

    bin_seconds: int = 60
    scales: tuple[int, ...] = (1, 4, 16)
    timezone: str = "UTC"
    drop_loopback: bool = True
    max_empty_bins: int = 120
    empty_bins: str = "auto"
    gap_fill: str = "none"
    gap_fill_limit: int | None = None

    def __post_init__(self) -> None:
        _check("bin_seconds", self.bin_seconds,
               isinstance(self.bin_seconds, int) and self.bin_seconds >= 1,
               "a whole number of seconds >= 1")
        scales = tuple(self.scales)
        object.__setattr__(self, "scales", scales)
        _check("scales", scales,
               len(scales) >= 1 and scales[0] == 1
               and all(isinstance(s, int) and s >= 1 for s in scales)
               and list(scales) == sorted(set(scales)),
               "increasing whole numbers starting with 1, such as (1, 4, 16)")
        _check("max_empty_bins", self.max_empty_bins, self.max_empty_bins >= 1, ">= 1")
        _check("empty_bins", self.empty_bins, self.empty_bins in EMPTY_BIN_POLICIES,
               " or ".join(EMPTY_BIN_POLICIES))
        _check("gap_fill", self.gap_fill, self.gap_fill in GAP_FILL_POLICIES,
               " or ".join(f'"{name}"' for name in GAP_FILL_POLICIES))
        _check("gap_fill_limit", self.gap_fill_limit,
               self.gap_fill_limit is None
               or (isinstance(self.gap_fill_limit, int) and self.gap_fill_limit >= 1),
               "None or a whole number of readings >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """Size and training of the temporal graph auto-encoder.

    Attributes:
        hidden: width of the message-passing and temporal layers.
        dilations: dilations of the causal temporal convolutions (kernel 3 each).
        own_lag: bins between a device's newest own input and the bin it
            reconstructs, so a spike is not copied forward and a drift not followed.
        epochs: maximum training epochs; early stopping may end sooner.
        patience: epochs without improvement of the validation loss before stopping.
        learning_rate: Adam step size.
        negatives_per_edge: sampled non-edges per observed edge in a bin.
        huber_delta: residuals beyond this many standard deviations weigh linearly,
            so the few anomalies in the reference period do not dominate training.
        hide_share: share of devices whose sensor inputs are hidden over a random
            stretch of each training window (the loss still reads them), so the model
            learns to reconstruct a device from its context alone. Localization
            hides suspect devices this way to tell a faulty device from a neighbour
            whose reconstruction it moved.
        seed: seed of every random draw in training and scoring.
        windows_per_epoch: training windows drawn at random per epoch; None
            steps through every window of the training bins once per epoch. A
            budget for long runs of short bins, where one pass costs minutes.
    """

    hidden: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    own_lag: int = 5
    epochs: int = 100
    patience: int = 8
    learning_rate: float = 3e-3
    negatives_per_edge: float = 1.0
    huber_delta: float = 1.0
    hide_share: float = 0.15
    seed: int = 0
    windows_per_epoch: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(self.dilations))
        _check("windows_per_epoch", self.windows_per_epoch,
               self.windows_per_epoch is None or self.windows_per_epoch >= 1,
               "None or a whole number >= 1")
        _check("hidden", self.hidden, 4 <= self.hidden <= 1024, "between 4 and 1024")
        _check("epochs", self.epochs, 1 <= self.epochs <= 10_000, "between 1 and 10000")
        _check("patience", self.patience, self.patience >= 1, ">= 1")
        _check("own_lag", self.own_lag, 1 <= self.own_lag <= 10_000, "between 1 and 10000")
        _check("learning_rate", self.learning_rate,
               0 < self.learning_rate < 1, "in (0, 1)")
        _check("negatives_per_edge", self.negatives_per_edge,
               0 <= self.negatives_per_edge <= 20, "between 0 and 20")
        _check("hide_share", self.hide_share, 0 <= self.hide_share < 1, "in [0, 1)")
        _check("huber_delta", self.huber_delta, self.huber_delta > 0, "> 0")
        _check("dilations", self.dilations,
               len(self.dilations) >= 1 and all(d >= 1 for d in self.dilations),
               "one or more whole numbers >= 1")


@dataclass(frozen=True)
class SearchConfig:
    """The subset scan over devices and time intervals.

    Attributes:
        statistic: "bj" (Berk-Jones) or "hc" (higher criticism).
        alphas: significance levels the statistic is maximized over.
        max_interval_bins: longest interval searched, in bins of each scale.
        connectivity: require incidents to be connected (see `core.localize`).
        hub_kinds: device kinds that connect two devices one hop apart.
        min_reference: reference values an element needs for its own calibration;
            with fewer it falls back to its device kind, then to the whole graph.
        max_incidents: incidents kept per run, highest score first.
        null_shifts: circular shifts of the held-out reference windows used to
            estimate the largest statistic that normal data reaches.
        level: the chance that a scored period with nothing abnormal in it gets
            any incident (family-wise, over every interval, element and scale).
        member_min_score: statistic a device must reach on its own elements to be
            reported as a member of a hit (Berk-Jones: about the log of how
            surprising its share of small p-values is).
        member_min_share: fraction of the strongest member's own statistic that
            another device needs to be reported as a member.
        member_min_magnitude: fraction of the largest element score (of the same
            kind) among a hit's members that a member's own largest score needs.
        scan_fanout: new pairs a device must open in an incident's interval to be
            treated as the source of a scan, whose peers are its targets.
        calibrate_on_scored: also rank each element's score among its own scores
            in the stretch of scored bins it belongs to, leaving out the
            `max_interval_bins` bins on either side, and keep the larger of that
            p-value and the reference's. For a scored period far in time from the
            reference, where the plant's normal level has moved: a change that
            lasts longer than the longest interval searched becomes normal. No
            p-value falls below one over the bins of the stretch.
    """

    statistic: str = "bj"
    alphas: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1)
    max_interval_bins: int = 64
    connectivity: bool = True
    hub_kinds: tuple[str, ...] = HUB_KINDS
    min_reference: int = 30
    max_incidents: int = 50
    null_shifts: int = 8
    level: float = 0.05
    member_min_score: float = 8.0
    member_min_share: float = 0.5
    member_min_magnitude: float = 0.3
    scan_fanout: int = 3
    calibrate_on_scored: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(sorted(self.alphas)))
        object.__setattr__(self, "hub_kinds", tuple(self.hub_kinds))
        _check("statistic", self.statistic, self.statistic in ("bj", "hc"),
               '"bj" or "hc"')
        _check("alphas", self.alphas,
               len(self.alphas) >= 1 and all(0 < a < 1 for a in self.alphas),
               "one or more levels in (0, 1)")
        _check("max_interval_bins", self.max_interval_bins,
               self.max_interval_bins >= 1, ">= 1")
        _check("min_reference", self.min_reference, self.min_reference >= 2, ">= 2")
        _check("max_incidents", self.max_incidents, self.max_incidents >= 1, ">= 1")
        _check("null_shifts", self.null_shifts, self.null_shifts >= 1, ">= 1")
        _check("level", self.level, 0 < self.level < 1, "between 0 and 1, such as 0.05")
        _check("member_min_score", self.member_min_score, self.member_min_score >= 0,
               ">= 0")
        _check("member_min_share", self.member_min_share,
               0 <= self.member_min_share <= 1, "between 0 and 1")
        _check("scan_fanout", self.scan_fanout, self.scan_fanout >= 2, ">= 2")


METHODS = ("auto", "model", "counts")


@dataclass(frozen=True)
class RunConfig:
    """One run: which bins train, calibrate and get scored, and with what settings.

    Times are ISO-8601 strings in UTC. Bins before `reference_end` are the reference
    period (assumed mostly normal): its first `train_share` trains the model and the
    rest calibrates p-values and the null of the scan. Bins from `score_start` to
    `score_end` are scored; `None` means right after the reference and to the end.
    Bins in neither period (a gap between files) are binned but never scored.

    `method`: "model" trains the auto-encoder on dense arrays of every device and
    bin; "counts" tests each link's and host's event counts against their reference
    laws (`core.countrun`), for link streams of many hosts without sensors; "auto"
    takes "counts" for a link stream too large for the dense arrays.
    """

    stream: StreamConfig = field(default_factory=StreamConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    reference_start: str | None = None
    reference_end: str | None = None
    score_start: str | None = None
    score_end: str | None = None
    train_share: float = 0.6
    reference_share: float = 0.6
    method: str = "auto"

    def __post_init__(self) -> None:
        _check("method", self.method, self.method in METHODS, f"one of {', '.join(METHODS)}")
        _check("train_share", self.train_share, 0.2 <= self.train_share <= 0.9,
               "between 0.2 and 0.9")
        _check("reference_share", self.reference_share,
               0.1 <= self.reference_share <= 0.95, "between 0.1 and 0.95")
        for name in ("reference_start", "reference_end", "score_start", "score_end"):
            value = getattr(self, name)
            _check(name, value, value is None or _is_time(value),
                   "an ISO-8601 time such as 2024-03-04T12:00:00Z")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        parts = {
            "stream": StreamConfig,
            "model": ModelConfig,
            "search": SearchConfig,
        }
        for key, kind in parts.items():
            if key in data and isinstance(data[key], dict):
                data[key] = _build(kind, data[key])
        return _build(cls, data)


def _build(kind: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]!r} for {kind.__name__}",
            f"allowed settings: {', '.join(sorted(names))}",
        )
    return kind(**data)
