"""The benchmark's bulk event generator: exact counts, time order, a plant graph."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from bench import bulk


def test_build_links_cells_and_scada():
    links = bulk.build_links(20, seed=1)

    pairs = set(zip(links.src.tolist(), links.dst.tolist()))
    plcs = [2, 11]
    assert len(links.names) == 20
    assert len(set(links.names)) == 20
    for scada in (0, 1):
        for plc in plcs:
            assert (scada, plc) in pairs
            assert (plc, scada) in pairs
    for plc, field in ((2, 3), (11, 19)):
        assert (plc, field) in pairs
        assert (field, plc) in pairs
    assert (2, 19) not in pairs
    assert ((links.period_s >= 10) & (links.period_s <= 30)).all()


def test_generate_chunks_exact_count_in_order(monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK_EVENTS", 1_000)
    links = bulk.build_links(30, seed=2)

    tables = list(bulk.generate_chunks(links, 4_500, seed=2))

    times = np.concatenate([t["time"].cast("int64").to_numpy() for t in tables])
    assert len(tables) == 5
    assert len(times) == 4_500
    assert (np.diff(times) >= 0).all()
    assert times[0] >= bulk.ORIGIN_US


def test_write_parquet_parts_follow_each_other(tmp_path):
    links = bulk.build_links(12, seed=3)
    span = bulk.span_for(links, 2_000)

    bulk.write_parquet(links, 2_000, tmp_path / "a.parquet", seed=0)
    bulk.write_parquet(links, 2_000, tmp_path / "b.parquet", seed=1, start_s=span)

    first = pq.read_table(tmp_path / "a.parquet")["time"].cast("int64").to_numpy()
    second = pq.read_table(tmp_path / "b.parquet")["time"].cast("int64").to_numpy()
    assert len(first) == len(second) == 2_000
    assert second[0] >= bulk.ORIGIN_US + span * 1e6
    # The first part reaches about as far as the second starts.
    assert abs(first[-1] - second[0]) < 0.05 * span * 1e6
