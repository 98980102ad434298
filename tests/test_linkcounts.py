"""The count path for large link streams, on generated streams in DuckDB."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from core import linkcounts
from core.errors import DataError

START = pd.Timestamp("2024-03-01", tz="UTC")
REFERENCE_END = START + pd.Timedelta(hours=36)
END = START + pd.Timedelta(hours=48)
HOSTS = [f"10.0.0.{i}" for i in range(1, 21)]


def normal_events(seed: int) -> pd.DataFrame:
    """Twenty hosts, each polling two others at 1.5 events a minute, for 48 hours."""
    rng = np.random.default_rng(seed)
    minutes = int((END - START) / pd.Timedelta(minutes=1))
    rows = []
    for position, src in enumerate(HOSTS):
        for step in (1, 7):
            dst = HOSTS[(position + step) % len(HOSTS)]
            counts = rng.poisson(1.5, minutes)
            for minute in np.flatnonzero(counts):
                rows += [(minute, src, dst)] * int(counts[minute])
    frame = pd.DataFrame(rows, columns=["minute", "src", "dst"])
    return frame


def load(events: pd.DataFrame) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    frame = pd.DataFrame({
        "t": START + pd.to_timedelta(events["minute"], unit="min")
        + pd.to_timedelta(events.get("second", 0), unit="s"),
        "src": events["src"], "dst": events["dst"], "weight": 1.0})
    con.register("frame", frame)
    con.execute("CREATE TABLE events AS SELECT * FROM frame")
    con.unregister("frame")
    return con


def minute_of(hours: float) -> int:
    return int(hours * 60)


def score(events: pd.DataFrame) -> linkcounts.CountScores:
    return linkcounts.score_stream(load(events), "events", REFERENCE_END.value // 1000)


def test_null_stream_no_incident() -> None:
    for seed in range(3):
        scores = score(normal_events(seed))
        assert scores.incidents.empty, scores.incidents.to_string()
        # Bins 0 to 2,159 are the reference; every host sends and receives from then on.
        assert scores.reference_bins == 36 * 60
        assert set(scores.elements["kind"]) == {"pair", "out", "in"}
        assert set(scores.elements["scale"]) == {1, 10, 60}
        assert scores.elements["start"].min() == 36 * 60
        hourly = scores.elements[scores.elements["scale"] == 60]
        assert sorted(set(hourly["bin"])) == list(range(36, 48))


def test_flood_names_both_hosts() -> None:
    events = normal_events(0)
    onset = minute_of(40)
    flood = pd.DataFrame([(onset + m, HOSTS[3], HOSTS[4]) for m in range(3)
                          for _ in range(40)], columns=["minute", "src", "dst"])
    scores = score(pd.concat([events, flood]))
    assert len(scores.incidents) == 1, scores.incidents.to_string()
    incident = scores.incidents.iloc[0]
    assert (HOSTS[3], HOSTS[4]) in incident["pairs"]
    assert {HOSTS[3], HOSTS[4]} <= set(incident["devices"])
    # The flood's 10-minute and hourly bins are flagged too. Its minutes date it.
    assert set(scores.elements.loc[scores.elements["p_value"] <= scores.limit, "scale"]) == {
        1, 10, 60}
    assert incident["start_bin"] == onset
    assert incident["stop_bin"] == onset + 3
    assert incident["significance"] <= 0.05


def test_sweep_names_reached_hosts() -> None:
    events = normal_events(1)
    onset = minute_of(42)
    swept = [f"192.168.7.{i}" for i in range(1, 61)]
    sweep = pd.DataFrame([(onset + i // 30, "172.16.0.99", host)
                          for i, host in enumerate(swept)], columns=["minute", "src", "dst"])
    scores = score(pd.concat([events, sweep]))
    assert len(scores.incidents) == 1, scores.incidents.to_string()
    incident = scores.incidents.iloc[0]
    assert incident["devices"] == ["172.16.0.99"]
    assert incident["targets"] == sorted(swept)
    # Each swept pair is new and carries one event, as a newcomer pair usually does.
    swept_pairs = scores.elements[(scores.elements["kind"] == "pair")
                                  & (scores.elements["src"] == "172.16.0.99")]
    assert swept_pairs["novel"].all()
    assert (swept_pairs["p_value"] > scores.limit).all()


def test_new_host_normal_rate_unflagged() -> None:
    events = normal_events(2)
    rng = np.random.default_rng(5)
    later = np.arange(minute_of(38), minute_of(48))
    # At 0.3 events a minute the receiver's load rises by 10%, within its variation.
    counts = rng.poisson(0.3, len(later))
    newcomer = pd.DataFrame([(m, "10.9.9.9", HOSTS[0]) for m, c in zip(later, counts)
                             for _ in range(c)], columns=["minute", "src", "dst"])
    scores = score(pd.concat([events, newcomer]))
    assert scores.incidents.empty, scores.incidents.to_string()
    own = scores.elements[(scores.elements["kind"] == "out")
                          & (scores.elements["src"] == "10.9.9.9")]
    assert own["novel"].all()
    assert len(own) > 100


def test_larger_count_smaller_p_value() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    p = linkcounts.upper_p(counts, np.full(5, 0.5), np.full(5, 0.75), rng)
    assert np.all(np.diff(p) < 0)
    # Over-dispersed: the second moment 10 gives variance 9.75 > mean 0.5.
    wide = linkcounts.upper_p(counts, np.full(5, 0.5), np.full(5, 10.0), rng)
    assert np.all(wide[2:] > p[2:])


def test_unsplittable_reference_rejected() -> None:
    events = normal_events(0)
    con = load(events)
    with pytest.raises(DataError, match="reference contains 1 bin.s. of 60 s from the first "
                                        "event at 2024-03-01 00:00:00 UTC"):
        linkcounts.score_stream(con, "events", (START + pd.Timedelta(minutes=1)).value // 1000)
    empty = duckdb.connect()
    empty.execute("CREATE TABLE events (t TIMESTAMPTZ, src VARCHAR, dst VARCHAR, "
                  "weight DOUBLE)")
    with pytest.raises(DataError, match="no events to score"):
        linkcounts.score_stream(empty, "events", REFERENCE_END.value // 1000)


def test_weights_do_not_change_counts() -> None:
    events = normal_events(0)
    plain = score(events)
    heavy = load(events)
    heavy.execute("UPDATE events SET weight = 1.7e308")

    weighted = linkcounts.score_stream(heavy, "events", REFERENCE_END.value // 1000)

    assert np.isfinite(weighted.elements["p_value"]).all()
    assert weighted.elements["count"].equals(plain.elements["count"])
    assert weighted.elements["p_value"].equals(plain.elements["p_value"])


def test_scales_without_reference_are_noted() -> None:
    events = normal_events(0)
    config = linkcounts.CountConfig(scales=(1, 10, 3000))
    scores = linkcounts.score_stream(load(events), "events", REFERENCE_END.value // 1000,
                                     config)
    assert set(scores.elements["scale"]) == {1, 10}
    assert scores.notes[0] == ("scale 3000: no complete bin in the reference, so this "
                               "scale is not scored")
    # The held-out last 30 of 100 reference minutes are 3 bins of 10 minutes, so 20
    # hosts give 60 held-out sent-event p-values, fewer than the 100 a map needs.
    short = linkcounts.score_stream(load(events), "events",
                                    (START + pd.Timedelta(minutes=100)).value // 1000,
                                    linkcounts.CountConfig(scales=(1, 10)))
    noted = [note for note in short.notes if note.startswith("scale 10, sent events: ")]
    assert len(noted) == 1
    assert noted[0].endswith("so its p-values are the laws' own, not calibrated")
    uncalibrated = short.elements[(short.elements["scale"] == 10)
                                  & (short.elements["kind"] == "out")]
    assert uncalibrated["p_value"].equals(uncalibrated["p_raw"])



def test_newcomer_law_shrunk_to_kind() -> None:
    events = normal_events(4)
    # The reference's only newcomer after its first tenth sends one event, then a
    # new pair between two known hosts carries 4 events in one minute.
    newcomer = pd.DataFrame([(minute_of(20), "10.9.9.9", HOSTS[0])],
                            columns=["minute", "src", "dst"])
    new_pair = pd.DataFrame([(minute_of(40), HOSTS[0], HOSTS[10])] * 4,
                            columns=["minute", "src", "dst"])

    scores = score(pd.concat([events, newcomer, new_pair]))

    assert scores.incidents.empty, scores.incidents.to_string()
    pair = scores.elements[(scores.elements["kind"] == "pair")
                           & (scores.elements["src"] == HOSTS[0])
                           & (scores.elements["dst"] == HOSTS[10])
                           & (scores.elements["scale"] == 1)]
    assert pair["novel"].all()
    assert pair["p_value"].min() > 1e-3
