"""Tests for the second pass that names an incident's members, pairs and targets
(core.pipeline.choose_members) on hand-made element tables."""

from __future__ import annotations

import pandas as pd

from core.pipeline import choose_members

ALPHA = 1e-4
FANOUT = 3
STRONG = 1e-9
QUIET = 0.4


def _elements(rows: list[tuple]) -> pd.DataFrame:
    """(kind, device, peer, p-value) rows repeated over bins 0 to 4; peer -1 for an
    element of one device."""
    return pd.DataFrame([
        {"kind": kind, "device_idx": device, "peer_idx": peer, "bin": b,
         "p_value": p, "score": 0.0, "column": column}
        for column, (kind, device, peer, p) in enumerate(rows) for b in range(5)
    ])


def _pairs(chosen: dict) -> set[tuple[int, int]]:
    frame = chosen["pairs"]
    return set(zip(frame["device_idx"].tolist(), frame["peer_idx"].tolist()))


def test_lost_link_names_both_ends():
    # Server 0 stops polling PLC 1: the pair in both directions is abnormal, and
    # the server's device element, which sums its traffic, dropped with it.
    inside = _elements([
        ("pair", 0, 1, STRONG), ("pair", 1, 0, STRONG), ("pair", 0, 2, QUIET),
        ("device", 0, -1, STRONG), ("device", 1, -1, QUIET),
    ])
    chosen = choose_members(inside, [0], ALPHA, FANOUT)
    assert chosen["devices"] == [0, 1]
    assert _pairs(chosen) == {(0, 1), (1, 0)}
    assert chosen["targets"].empty


def test_silent_device_keeps_its_poller_as_target():
    # Field device 3 misses its readings, and its PLC 1 only lost the link to it.
    inside = _elements([
        ("sensor", 3, -1, STRONG), ("device", 3, -1, STRONG), ("pair", 3, 1, STRONG),
        ("pair", 1, 3, STRONG), ("device", 1, -1, QUIET),
    ])
    chosen = choose_members(inside, [3], ALPHA, FANOUT)
    assert chosen["devices"] == [3]
    assert set(chosen["targets"]["target"]) == {1}
    assert len(chosen["sensors"]) == 5


def test_scan_centre_keeps_hosts_as_targets():
    inside = _elements([("pair", 0, host, STRONG) for host in (4, 5, 6, 7)])
    chosen = choose_members(inside, [0], ALPHA, FANOUT)
    assert chosen["devices"] == [0]
    assert set(chosen["targets"]["target"]) == {4, 5, 6, 7}


def test_host_of_scan_is_demoted_to_target():
    inside = _elements([("pair", 0, host, STRONG) for host in (4, 5, 6)])
    chosen = choose_members(inside, [0, 4], ALPHA, FANOUT)
    assert chosen["devices"] == [0]
    assert set(chosen["targets"]["target"]) == {4, 5, 6}


def test_scanned_host_alone_brings_its_scanner():
    # The first pass found only host 4; the scan's centre 0 joins, and the host
    # becomes its target as when both were found.
    inside = _elements([("pair", 0, host, STRONG) for host in (4, 5, 6)])
    chosen = choose_members(inside, [4], ALPHA, FANOUT)
    assert chosen["devices"] == [0]
    assert set(chosen["targets"]["target"]) == {4, 5, 6}


def test_reached_member_is_not_target():
    # Device 7's only abnormal pair goes to host 4, which the scan from 0 reached.
    inside = _elements([("pair", 0, host, STRONG) for host in (4, 5, 6)]
                       + [("pair", 7, 4, STRONG)])
    chosen = choose_members(inside, [0, 7], ALPHA, FANOUT, reached=[4, 5, 6])
    assert chosen["devices"] == [0, 4, 7]
    assert set(chosen["targets"]["target"]) == {5, 6}
