"""The DARPA 1998 (MIDAS layout) importer on generated zips, its command line, and
the real file when TGLOC_DATA has it."""

from __future__ import annotations

import zipfile

import duckdb
import pandas as pd
import pytest

from core import darpa, store
from core.cli import main
from core.errors import IngestError
from core.snapshots import build_snapshots
from core.withdraw import withdraw_ingest
from tests.conftest import data_folder

# Each block: (records as written, how many times each is repeated).
# Canonical hosts: 172.16.112.20, 192.168.1.10, 172.16.114.50, 10.0.0.5,
# 135.8.60.182. 172.16.112.20 is also written unpadded once.
VALID_BLOCKS = [
    ("172.016.112.020,192.168.001.010,06/01/1998-08:00,-", 10),
    ("172.16.112.20,192.168.001.010,06/01/1998-08:01,neptune", 5),
    ("172.016.114.050,010.000.000.005,06/01/1998-08:01,smurf", 3),
    ("135.008.060.182,172.016.114.050,06/01/1998-08:02,-", 2),
    ("010.000.000.005,135.008.060.182,06/01/1998-08:03,portsweep", 5),
]
INVALID_DATES = [
    "172.016.112.020,192.168.001.010,07/32/1998-05:31,neptune",
    "172.016.112.020,192.168.001.010,02/29/1998-08:03,-",
]
HOSTS = {"172.16.112.20", "192.168.1.10", "172.16.114.50", "10.0.0.5",
         "135.8.60.182"}


def darpa_lines() -> tuple[list[str], dict[int, str]]:
    """Return the fixture's lines and the line number of each rejected record.

    The invalid records, a blank line and a short line sit between valid ones,
    so every line number after them must account for the lines before.
    """
    valid = [record for record, times in VALID_BLOCKS for _ in range(times)]
    lines = valid[:12] + [INVALID_DATES[0], "", "172.016.112.020,4"] + valid[12:20]
    lines += [INVALID_DATES[1]] + valid[20:]
    rejected = {13: INVALID_DATES[0], 15: "172.016.112.020,4",
                24: INVALID_DATES[1]}
    for line, text in rejected.items():
        assert lines[line - 1] == text
    return lines, rejected


def write_zip(path, lines: list[str], member: str = "darpa_original.csv") -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, "".join(f"{line}\n" for line in lines))
    return str(path)


def events_of(workspace: store.Workspace) -> pd.DataFrame:
    return store.query(workspace.store_path,
                       "SELECT t, src, dst, weight, line, label, attack FROM events "
                       "ORDER BY line")


def quarantine_of(workspace: store.Workspace) -> pd.DataFrame:
    return store.query(workspace.store_path,
                       'SELECT line, "column", value, reason FROM quarantine '
                       "ORDER BY line")


def test_darpa_zip_counts(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    lines, rejected = darpa_lines()
    path = write_zip(tmp_path / "darpa.zip", lines)

    report = darpa.ingest_darpa(workspace, path)

    records = sum(times for _, times in VALID_BLOCKS)
    assert report.rows_read == records + len(rejected)
    assert report.rows_stored == records
    assert report.rows_rejected == len(rejected)
    assert len(events_of(workspace)) == records


def test_darpa_padded_addresses_one_device(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    report = darpa.ingest_darpa(workspace, write_zip(tmp_path / "d.zip",
                                                     darpa_lines()[0]))
    events = events_of(workspace)
    devices = set(events["src"]) | set(events["dst"])
    assert devices == HOSTS
    assert any("1 host written in more than one way" in note and
               "172.016.112.020" in note and "172.16.112.20" in note
               for note in report.notes)
    assert any("5 distinct hosts from 6 written addresses" in note
               for note in report.notes)


def test_darpa_quarantine_names_lines(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    lines, rejected = darpa_lines()
    darpa.ingest_darpa(workspace, write_zip(tmp_path / "d.zip", lines))
    quarantine = quarantine_of(workspace)

    assert list(quarantine["line"]) == sorted(rejected)
    by_line = quarantine.set_index("line")
    assert by_line.loc[13, "column"] == "time"
    assert by_line.loc[13, "value"] == "07/32/1998-05:31"
    assert "July 1998 has no day 32" in by_line.loc[13, "reason"]
    assert by_line.loc[24, "value"] == "02/29/1998-08:03"
    assert "February 1998 has no day 29" in by_line.loc[24, "reason"]
    assert "2 fields" in by_line.loc[15, "reason"]
    stored_lines = set(events_of(workspace)["line"])
    assert stored_lines.isdisjoint(rejected)
    assert 14 not in stored_lines


def test_darpa_repeats_are_pair_weight(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    darpa.ingest_darpa(workspace, write_zip(tmp_path / "d.zip", darpa_lines()[0]))
    snapshots = build_snapshots(workspace.store_path, 60)
    names = snapshots.devices.set_index("idx")["device"]
    pairs = [(names[a], names[b]) for a, b in snapshots.pairs]
    column = pairs.index(("172.16.112.20", "192.168.1.10"))

    # Minute 08:00 has 10 identical records, 08:01 has 5 (neptune).
    assert snapshots.pair_events[0, column] == 10
    assert snapshots.pair_bytes[0, column] == 10.0
    assert snapshots.pair_events[1, column] == 5


def test_darpa_labels_read_back(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    report = darpa.ingest_darpa(workspace, write_zip(tmp_path / "d.zip",
                                                     darpa_lines()[0]))
    counts = store.query(
        workspace.store_path,
        "SELECT label, coalesce(attack, '') AS attack, count(*) AS n FROM events "
        "GROUP BY ALL ORDER BY ALL")
    found = {(int(r.label), r.attack): int(r.n) for r in counts.itertuples()}
    assert found == {(0, ""): 12, (1, "neptune"): 5, (1, "portsweep"): 5,
                     (1, "smurf"): 3}
    ground_truth = store.query(workspace.store_path,
                               "SELECT count(*) AS n FROM ground_truth")
    assert int(ground_truth["n"][0]) == 0
    assert any("13 of 25 records labelled attack (3 attack names)" in note
               for note in report.notes)


def test_darpa_times_in_utc_and_zone(tmp_path):
    lines = ["172.016.112.020,192.168.001.010,06/01/1998-08:00,-"]
    utc = store.Workspace.create(tmp_path / "utc")
    report = darpa.ingest_darpa(utc, write_zip(tmp_path / "a.zip", lines))
    eastern = store.Workspace.create(tmp_path / "eastern")
    darpa.ingest_darpa(eastern, write_zip(tmp_path / "b.zip", lines),
                       timezone="America/New_York")

    assert events_of(utc)["t"][0] == pd.Timestamp("1998-06-01T08:00:00Z")
    # Eastern Daylight Time is UTC-4 in June.
    assert events_of(eastern)["t"][0] == pd.Timestamp("1998-06-01T12:00:00Z")
    assert any("times carry no zone: read as UTC" in note for note in report.notes)


def test_darpa_zip_and_member_same_content(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    lines = darpa_lines()[0]
    first = darpa.ingest_darpa(workspace, write_zip(tmp_path / "d.zip", lines))
    plain = tmp_path / "darpa_original.csv"
    plain.write_text("".join(f"{line}\n" for line in lines))

    again = darpa.ingest_darpa(workspace, plain)

    assert again.already_loaded == first.report_id
    assert again.rows_stored == 0
    assert len(events_of(workspace)) == first.rows_stored


def test_darpa_withdraw_then_reload(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    path = write_zip(tmp_path / "d.zip", darpa_lines()[0])
    first = darpa.ingest_darpa(workspace, path)

    withdrawn = withdraw_ingest(workspace, first.report_id)
    emptied = len(events_of(workspace))
    again = darpa.ingest_darpa(workspace, path)

    assert withdrawn.removed["events"] == first.rows_stored
    assert withdrawn.removed["quarantine"] == first.rows_rejected
    assert emptied == 0
    assert again.already_loaded is None
    assert again.rows_stored == first.rows_stored
    assert len(events_of(workspace)) == first.rows_stored


def test_darpa_bad_archive_keeps_store(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    darpa.ingest_darpa(workspace, write_zip(tmp_path / "d.zip", darpa_lines()[0]))
    before = len(events_of(workspace))
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.csv", "1.1.1.1,2.2.2.2,06/01/1998-08:00,-\n")
        archive.writestr("b.csv", "1.1.1.1,2.2.2.2,06/01/1998-08:00,-\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("1.1.1.1,2.2.2.2,06/01/1998-08:00,caf\u00e9\n".encode("latin-1"))

    with pytest.raises(IngestError, match="contains 2 CSV members"):
        darpa.ingest_darpa(workspace, two)
    with pytest.raises(IngestError, match="not UTF-8"):
        darpa.ingest_darpa(workspace, latin)
    assert len(events_of(workspace)) == before


def test_darpa_header_and_empty_file(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    headed = tmp_path / "headed.csv"
    headed.write_text("src,dst,time,attack\n"
                      "172.016.112.020,192.168.001.010,06/01/1998-08:00,-\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")

    report = darpa.ingest_darpa(workspace, headed)
    quarantine = quarantine_of(workspace)

    assert report.rows_stored == 1
    assert list(quarantine["line"]) == [1]
    assert "has no header line" in quarantine["reason"][0]
    with pytest.raises(IngestError, match="empty.csv contains no record"):
        darpa.ingest_darpa(workspace, empty)
    assert len(events_of(workspace)) == 1


def test_darpa_older_store_gains_attack(tmp_path):
    workspace = store.Workspace.create(tmp_path / "ws")
    # A store as the version before events.attack wrote it.
    workspace.store_path.unlink()
    older = store.STORE_SCHEMA.replace(
        "ALTER TABLE events ADD COLUMN IF NOT EXISTS attack VARCHAR;", "")
    with duckdb.connect(str(workspace.store_path)) as con:
        con.execute(older)
        con.execute("INSERT INTO events (t, src, dst, weight) VALUES "
                    "('2024-01-01 00:00:00+00', 'a', 'b', 1)")
        columns = {row[0] for row in con.execute("DESCRIBE events").fetchall()}
    assert "attack" not in columns

    darpa.ingest_darpa(workspace, write_zip(tmp_path / "d.zip", darpa_lines()[0]))

    events = store.query(workspace.store_path,
                         "SELECT src, attack FROM events ORDER BY t DESC")
    assert len(events) == 26
    assert events["src"].iloc[0] == "a"
    assert pd.isna(events["attack"].iloc[0])


def test_cli_darpa_report_and_help(tmp_path, capsys):
    lines, rejected = darpa_lines()
    path = write_zip(tmp_path / "d.zip", lines)

    status = main(["ingest", "--workspace", str(tmp_path / "ws"), "--format",
                   "darpa", path])
    output = capsys.readouterr().out

    assert status == 0
    assert "28 rows read, 25 stored, 3 rejected" in output
    assert "line 13 (row 13), column time, value '07/32/1998-05:31'" in output
    assert "read as UTC" in output
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "darpa: DARPA 1998 connection records" in help_text


def test_cli_darpa_rejects_column_option(tmp_path, capsys):
    path = write_zip(tmp_path / "d.zip", darpa_lines()[0])
    status = main(["ingest", "--workspace", str(tmp_path / "ws"), "--format",
                   "darpa", "--time-format", "%Y", path])
    error = capsys.readouterr().err
    assert status == 2
    assert "--format darpa does not read --time-format" in error
    assert "Traceback" not in error


@pytest.mark.data
@pytest.mark.slow
def test_darpa_real_zip(tmp_path):
    folder = data_folder("darpa98")
    path = folder / "darpa_original.zip"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    workspace = store.Workspace.create(tmp_path / "ws")

    report = darpa.ingest_darpa(workspace, path)

    assert report.rows_read == 4_554_344
    assert report.rows_rejected == 10
    assert report.rows_stored == 4_554_334
    quarantine = quarantine_of(workspace)
    assert list(quarantine["line"]) == list(range(4_536_629, 4_536_639))
    assert set(quarantine["value"].str[:10]) == {"07/32/1998"}
    hosts = store.query(
        workspace.store_path,
        "SELECT count(*) AS n FROM (SELECT src FROM events UNION SELECT dst FROM "
        "events)")
    # 25,525 addresses as written; 172.016.112.20 and 172.016.112.020 are one.
    assert int(hosts["n"][0]) == 25_524
    attacks = store.query(workspace.store_path,
                          "SELECT sum(label) AS n, count(DISTINCT attack) AS names "
                          "FROM events")
    assert int(attacks["n"][0]) == 2_737_209 - 10
    assert int(attacks["names"][0]) == 89
