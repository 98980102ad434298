"""The BATADAL scoring rules on the real attack table, with hand-made incidents.

Needs TGLOC_DATA with a `batadal/` folder; no model is trained.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bench import real_batadal
from bench.real_batadal import FileOutcome, Incident, RankedSensor, Setting
from tests.conftest import data_folder

HOUR = pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def folder():
    return data_folder(real_batadal.FOLDER)


@pytest.fixture(scope="module")
def attacks(folder):
    return {a.attack_id: a for a in real_batadal.read_attacks(folder)}


def incident(start, end, devices, sensors=()) -> Incident:
    return Incident("inc", start, end, tuple(devices), tuple(sensors))


def sensor(name, evidence, flagged_bins=0, device="PLC9") -> RankedSensor:
    return RankedSensor(device, name, evidence, flagged_bins)


@pytest.mark.data
def test_attack_hours_match_labels(folder, attacks):
    assert sorted(attacks) == list(range(1, 15))
    for name in real_batadal.SCORED_FILES:
        labels = pd.read_csv(folder / name, usecols=["DATETIME", "ATT_FLAG"])
        labelled = int((labels["ATT_FLAG"] == 1).sum())
        chosen = [a for a in attacks.values() if a.file == name]
        hours = sum((a.end - a.start) / HOUR for a in chosen)
        assert len(chosen) == 7
        assert hours == labelled


@pytest.mark.data
def test_attack_one_interval_and_targets(attacks):
    first = attacks[1]
    assert first.start == pd.Timestamp("2016-09-13 23:00", tz="UTC")
    # The table's end is the last attack hour, so the interval ends an hour later.
    assert first.end == pd.Timestamp("2016-09-16 01:00", tz="UTC")
    assert first.plcs == ("PLC9", "PLC5")
    assert "L_T7" in first.signals


@pytest.mark.data
def test_device_hit_iou_boundary(attacks):
    first = attacks[1]
    hours = (first.end - first.start) / HOUR
    assert hours == 50
    # 15 of 50 hours inside the attack: IoU 0.3 exactly, a hit.
    at = incident(first.start, first.start + 15 * HOUR, ["PLC9"])
    below = incident(first.start, first.start + 14 * HOUR, ["PLC9"])
    assert real_batadal.interval_iou(first.start, first.end, at.start, at.end) == 0.3
    assert real_batadal.is_device_hit(first, at)
    assert not real_batadal.is_device_hit(first, below)


@pytest.mark.data
def test_device_hit_iou_counts_union(attacks):
    first = attacks[1]
    # The whole attack plus 117 hours after it: IoU 50 / 167 < 0.3.
    long = incident(first.start, first.end + 117 * HOUR, ["PLC9"])
    longer_ok = incident(first.start, first.end + 116 * HOUR, ["PLC9"])
    assert not real_batadal.is_device_hit(first, long)
    assert real_batadal.is_device_hit(first, longer_ok)


@pytest.mark.data
def test_device_hit_needs_accepted_plc(attacks):
    first = attacks[1]
    assert real_batadal.is_device_hit(first, incident(first.start, first.end, ["PLC5"]))
    assert not real_batadal.is_device_hit(
        first, incident(first.start, first.end, ["PLC1", "PLC2"]))
    assert not real_batadal.is_device_hit(first, incident(first.start, first.end, []))


@pytest.mark.data
def test_device_hit_at_most_three_devices(attacks):
    first = attacks[1]
    three = incident(first.start, first.end, ["PLC9", "PLC1", "PLC2"])
    four = incident(first.start, first.end, ["PLC9", "PLC1", "PLC2", "PLC3"])
    assert real_batadal.is_device_hit(first, three)
    assert not real_batadal.is_device_hit(first, four)


@pytest.mark.data
def test_sensor_hit_top_three(attacks):
    first = attacks[1]
    others = [sensor("P_J280", 9.0), sensor("L_T1", 8.0), sensor("F_PU1", 7.0)]
    third = incident(first.start, first.end, ["PLC9"],
                     others[:2] + [sensor("L_T7", 7.5)] + others[2:])
    fourth = incident(first.start, first.end, ["PLC9"],
                      others + [sensor("L_T7", 6.0)])
    assert real_batadal.top_sensors(third, first.signals) == ["P_J280", "L_T1", "L_T7"]
    assert real_batadal.is_sensor_hit(first, third)
    assert not real_batadal.is_sensor_hit(first, fourth)


@pytest.mark.data
def test_sensor_hit_ties_go_against_target(attacks):
    first = attacks[1]
    tied = [sensor("P_J280", 5.0), sensor("L_T1", 5.0), sensor("F_PU1", 5.0)]
    # "L_T7" sorts before "P_J280" by name, yet the tie must not make a hit.
    tie = incident(first.start, first.end, ["PLC9"], tied + [sensor("L_T7", 5.0)])
    flagged = incident(first.start, first.end, ["PLC9"],
                       tied + [sensor("L_T7", 5.0, flagged_bins=2)])
    assert not real_batadal.is_sensor_hit(first, tie)
    assert real_batadal.is_sensor_hit(first, flagged)
    assert real_batadal.top_sensors(flagged, first.signals)[0] == "L_T7"


@pytest.mark.data
def test_sensor_hit_needs_device_hit(attacks):
    first = attacks[1]
    wrong_plc = incident(first.start, first.end, ["PLC1"], [sensor("L_T7", 9.0)])
    too_short = incident(first.start, first.start + 5 * HOUR, ["PLC9"],
                         [sensor("L_T7", 9.0)])
    assert not real_batadal.is_sensor_hit(first, wrong_plc)
    assert not real_batadal.is_sensor_hit(first, too_short)


@pytest.mark.data
def test_match_prefers_hit_to_larger_overlap(attacks):
    first = attacks[1]
    wide = incident(first.start, first.end, ["PLC1", "PLC2", "PLC3", "PLC9"])
    narrow = Incident("narrow", first.start, first.start + 20 * HOUR, ("PLC5",),
                      (sensor("F_PU10", 3.0, device="PLC5"),))
    match = real_batadal.match_attack(first, [wide, narrow])
    assert match.device_hit
    assert match.sensor_hit
    assert match.incident is narrow
    assert match.iou == pytest.approx(0.4)
    assert match.top == ("F_PU10",)


@pytest.mark.data
def test_match_without_overlap(attacks):
    first = attacks[1]
    elsewhere = incident(first.end + 10 * HOUR, first.end + 20 * HOUR, ["PLC9"])
    match = real_batadal.match_attack(first, [elsewhere])
    assert not match.device_hit
    assert not match.sensor_hit
    assert match.incident is None
    assert match.iou == 0.0


@pytest.mark.data
def test_false_incident_hours(folder, attacks):
    name = real_batadal.TUNE_FILE
    span = real_batadal.file_span(folder / name)
    chosen = [a for a in attacks.values() if a.file == name]
    rows = len(pd.read_csv(folder / name, usecols=["DATETIME"]))
    attack_hours = sum((a.end - a.start) / HOUR for a in chosen)
    first, second = attacks[1], attacks[2]
    incidents = [
        # The whole of attack 1: no false hour.
        incident(first.start, first.end, ["PLC9"]),
        # 5 hours before attack 2 and 3 of its hours: 5 false hours.
        incident(second.start - 5 * HOUR, second.start + 3 * HOUR, ["PLC9"]),
        # The same 5 hours again: covered hours count once.
        incident(second.start - 5 * HOUR, second.start, ["PLC5"]),
        # The first 4 hours of the file, far from any attack.
        incident(span[0], span[0] + 4 * HOUR, ["PLC1"]),
    ]
    false_hours, normal_hours = real_batadal.false_incident_hours(
        incidents, chosen, *span)
    assert span[1] - span[0] == rows * HOUR
    assert normal_hours == rows - attack_hours
    assert false_hours == 9


@pytest.mark.data
def test_score_file_counts_hits(folder, attacks):
    name = real_batadal.TEST_FILE
    span = real_batadal.file_span(folder / name)
    chosen = [a for a in attacks.values() if a.file == name]
    ninth, tenth = attacks[9], attacks[10]
    incidents = [
        incident(ninth.start, ninth.end, ["PLC3"],
                 [sensor("L_T2", 4.0, device="PLC2")]),
        incident(tenth.start, tenth.end, ["PLC1", "PLC2"]),
    ]
    outcome = real_batadal.score_file(name, Setting(0.05), incidents, chosen, span)
    assert outcome.device_hits == 2
    assert outcome.sensor_hits == 1
    assert outcome.false_hours == 0


def outcome(setting, device_hits, false_hours) -> FileOutcome:
    result = FileOutcome("f", setting, [], [], false_hours, 1000)
    hit = real_batadal.Match(None, True, False, None, 1.0, ())
    result.matches = [hit] * device_hits
    return result


def choose(*rows) -> Setting:
    return real_batadal.choose_setting(
        {setting: outcome(setting, hits, false_hours)
         for setting, hits, false_hours in rows})


def test_choose_setting_within_budget():
    chosen = choose((Setting(0.01), 3, 10), (Setting(0.05), 5, 40),
                    (Setting(0.2), 7, 80), (Setting(0.2, True), 9, 51))
    assert chosen == Setting(0.05)


def test_choose_setting_ties():
    # Equal hits: the smaller false share wins, whatever the level.
    assert choose((Setting(0.01), 5, 30), (Setting(0.2), 5, 20)) == Setting(0.2)
    # Equal hits and share: calibration on the reference alone, then the smaller level.
    assert choose((Setting(0.01, True), 5, 20), (Setting(0.2), 5, 20)) == Setting(0.2)
    assert choose((Setting(0.2), 5, 20), (Setting(0.05), 5, 20)) == Setting(0.05)


def test_choose_setting_none_within_budget():
    chosen = choose((Setting(0.01), 3, 60), (Setting(0.05, True), 5, 55),
                    (Setting(0.2), 7, 90))
    assert chosen == Setting(0.05, True)


def test_choose_setting_none_within_budget_ties():
    # Equal smallest share: the most device hits, not the smaller level.
    chosen = choose((Setting(0.01, True), 3, 95), (Setting(0.05, True), 4, 95),
                    (Setting(0.2, True), 4, 112))
    assert chosen == Setting(0.05, True)


def test_incidents_from_run_roles_and_flags():
    start = pd.Timestamp("2017-01-01 00:00", tz="UTC")
    table = pd.DataFrame({"incident_id": ["a"], "start": [start],
                          "end": [start + 3 * HOUR]})
    members = pd.DataFrame({
        "incident_id": ["a"] * 4,
        "role": ["device", "pair", "sensor", "sensor"],
        "device": ["PLC1", "PLC1", "PLC1", "PLC2"],
        "peer": [None, "SCADA", None, None],
        "sensor": [None, None, "F_PU1", "L_T1"],
        "evidence": [5.0, 4.0, 5.0, 2.0],
        "p_value": [1e-5, 1e-4, 1e-5, 1e-2],
    })

    flags = pd.DataFrame({
        "bin": [0, 0, 1, 2, 3],
        "start": [start, start, start + HOUR, start + 2 * HOUR, start + 3 * HOUR],
        "device": ["PLC1"] * 5,
        "sensor": ["F_PU1"] * 5,
        "flag": ["outside training range", "constant in training",
                 "outside training range", "constant in training",
                 "outside training range"],
    })

    (built,) = real_batadal.incidents_from_run(table, members, flags)
    # A pair's peer is not a member device.
    assert built.devices == ("PLC1",)
    by_name = {s.sensor: s for s in built.sensors}
    # Bins 0 and 1 are flagged outside the training range inside the incident, and
    # bin 0's two flags count once. Bin 2 is only constant in training, which does not
    # count, and bin 3 is after the end.
    assert by_name["F_PU1"].flagged_bins == 2
    assert by_name["L_T1"].flagged_bins == 0
    assert by_name["L_T1"].device == "PLC2"
