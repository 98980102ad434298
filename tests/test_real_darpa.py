"""The DARPA benchmark on a generated zip in the MIDAS layout, and on the real zip
when TGLOC_DATA has it."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from bench import real, real_darpa
from tests.conftest import data_folder

SERVERS = [f"172.016.112.{i:03d}" for i in range(10, 22)]
CLIENTS = [f"192.168.001.{i:03d}" for i in range(1, 9)]
FLOOD_AT = pd.Timestamp("1998-06-15 09:00")
SWEEP_AT = pd.Timestamp("1998-06-15 14:00")
SWEPT = [f"172.016.115.{i:03d}" for i in range(1, 41)]


def darpa_file(path) -> None:
    """Normal polling from 13 June 12:00 to 16 June 00:00, one flood (neptune) and
    one sweep (ipsweep) from hosts never seen before, on 15 June."""
    rng = np.random.default_rng(7)
    minutes = pd.date_range("1998-06-13 12:00", "1998-06-15 23:59", freq="min")
    lines = []
    for minute in minutes:
        stamp = minute.strftime("%m/%d/%Y-%H:%M")
        for client, server in zip(CLIENTS, SERVERS):
            lines += [f"{client},{server},{stamp},-"] * int(rng.poisson(1.2))
        if minute >= FLOOD_AT and minute < FLOOD_AT + pd.Timedelta(minutes=4):
            lines += [f"135.013.216.191,{SERVERS[0]},{stamp},neptune"] * 60
        if minute >= SWEEP_AT and minute < SWEEP_AT + pd.Timedelta(minutes=2):
            half = SWEPT[:20] if minute == SWEEP_AT else SWEPT[20:]
            lines += [f"202.077.162.213,{host},{stamp},ipsweep" for host in half]
    lines.append(f"{CLIENTS[0]},{SERVERS[0]},07/32/1998-05:31,neptune")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("darpa_original.csv", "".join(f"{line}\n" for line in lines))


@pytest.fixture
def darpa_folder(tmp_path):
    folder = tmp_path / "data" / real_darpa.FOLDER
    folder.mkdir(parents=True)
    darpa_file(folder / real_darpa.ARCHIVE)
    return tmp_path / "data"


def test_generated_zip_finds_both_attacks(darpa_folder) -> None:
    outcome = real_darpa.measure(darpa_folder / real_darpa.FOLDER / real_darpa.ARCHIVE,
                                 quick=False)

    assert outcome.rejected == 1
    attack_records = 4 * 60 + len(SWEPT)
    assert outcome.attack_share == pytest.approx(attack_records / outcome.records)
    # 2% of the records are attacks, so a score unrelated to them gives an average
    # precision near 0.02. The normal records to the flood's victim in the flood's
    # hour share its hourly element and rank with the attack.
    assert outcome.auc > 0.99
    assert outcome.average_precision > 0.5
    instances = outcome.instances.set_index("attack")
    # The flood is one instance at one victim; the sweep is one instance per host.
    assert instances.loc["neptune", ["instances", "found"]].tolist() == [1, 1]
    assert instances.loc["ipsweep", ["instances", "found"]].tolist() == [40, 40]
    assert outcome.incidents == 2
    assert outcome.unmatched_incidents == 0
    assert [record.stage for record in outcome.stages] == [
        "ingest", "scoring", "localization", "publishing", "evaluate"]


def test_bench_real_prints_darpa(darpa_folder, capsys) -> None:
    code = real.main(["--data", str(darpa_folder), "--only", "darpa"])

    assert code == 0
    printed = capsys.readouterr().out
    assert "| MIDAS-R (reference) | 0.952 | 0.973 |" in printed
    assert "| neptune | 240 | 1 | 1 | 1.00 | 1 |" in printed
    assert "| ipsweep | 40 | 40 | 40 | 1.00 | 0 |" in printed
    assert "zip to incidents" in printed
    headline = json.loads(printed.strip().splitlines()[-1])
    assert headline["darpa_instance_recall"] == 1.0
    assert headline["darpa_incidents"] == 2


@pytest.mark.data
def test_real_zip_beats_midas_r() -> None:
    folder = data_folder(real_darpa.FOLDER)

    outcome = real_darpa.measure(folder / real_darpa.ARCHIVE, quick=False)

    assert outcome.records == 4_184_674
    assert outcome.rejected == 10
    assert outcome.auc >= real_darpa.TARGET_AUC
    assert outcome.average_precision >= real_darpa.TARGET_AP
