"""Binning of partitioned Parquet on DuckDB and on Spark gives the store's snapshots.

The Spark tests carry the `spark` marker and skip with the reason when pyspark or
Java is missing. `make test` installs pyspark and `.ci/run` installs Java.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import ingest, snapshots, spark_bins, synth
from core.cli import main
from core.config import RunConfig, StreamConfig
from core.errors import DataError
from core.pipeline import run_pipeline
from core.snapshots import (
    SENSOR_FEATURES,
    build_snapshots,
    load_snapshots,
    save_snapshots,
)
from core.store import Workspace

BIN_SECONDS = 60
# Float features that are sums and roots computed inside each engine: DuckDB and
# Spark add a bin's values in their own order, which moves the last bits.
ROUNDED_FEATURES = (SENSOR_FEATURES.index("mean"), SENSOR_FEATURES.index("std"))


@pytest.fixture(scope="module")
def plant() -> synth.Plant:
    return synth.generate_plant(synth.PlantConfig(seed=3, hours=3.0, field_devices=12))


@pytest.fixture(scope="module")
def parquet_folder(plant, tmp_path_factory) -> Path:
    """The plant as hive-partitioned Parquet: one folder per hour and table."""
    root = tmp_path_factory.mktemp("parquet")
    for name in ("events", "measurements"):
        frame = getattr(plant, name).copy()
        frame["hour"] = frame["t"].dt.strftime("%Y%m%d%H")
        frame.to_parquet(root / name, partition_cols=["hour"], index=False)
    plant.devices.to_parquet(root / "devices.parquet", index=False)
    plant.links.to_parquet(root / "links.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def store_snapshots(plant, tmp_path_factory) -> snapshots.Snapshots:
    """Snapshots of the same plant ingested into a store and binned there."""
    workspace = Workspace.create(tmp_path_factory.mktemp("ws"))
    files = synth.write_plant(plant, workspace.root / "input")
    for target in ("events", "measurements"):
        options = ingest.IngestOptions(target=target)
        ingest.ingest_file(workspace, files[target], options)
    synth.store_plant(workspace, plant)
    return build_snapshots(workspace.store_path, BIN_SECONDS)


def assert_same_snapshots(
    left: snapshots.Snapshots, right: snapshots.Snapshots
) -> None:
    assert left.origin_us == right.origin_us
    assert left.num_bins == right.num_bins
    pd.testing.assert_frame_equal(left.devices.reset_index(drop=True),
                                  right.devices.reset_index(drop=True),
                                  check_dtype=False)
    pd.testing.assert_frame_equal(left.sensors.reset_index(drop=True),
                                  right.sensors.reset_index(drop=True),
                                  check_dtype=False)
    for name in ("comm", "pairs", "pair_events", "pair_bytes", "links", "active"):
        np.testing.assert_array_equal(getattr(left, name), getattr(right, name),
                                      err_msg=name)
    exact = [i for i in range(len(SENSOR_FEATURES)) if i not in ROUNDED_FEATURES]
    np.testing.assert_array_equal(left.sensor_values[..., exact],
                                  right.sensor_values[..., exact])
    np.testing.assert_allclose(left.sensor_values[..., list(ROUNDED_FEATURES)],
                               right.sensor_values[..., list(ROUNDED_FEATURES)],
                               rtol=1e-6, atol=1e-9)


def test_parquet_duckdb_equals_store(parquet_folder, store_snapshots):
    built = spark_bins.build_snapshots_parquet(parquet_folder, BIN_SECONDS, "duckdb")

    assert built.num_devices > 10
    assert len(built.sensors) > 10
    assert_same_snapshots(built, store_snapshots)


def test_snapshots_file_round_trip(store_snapshots, tmp_path):
    path = save_snapshots(store_snapshots, tmp_path / "bins.npz")

    assert_same_snapshots(load_snapshots(path), store_snapshots)


def test_parquet_folder_without_events(tmp_path):
    with pytest.raises(DataError, match="no Parquet files"):
        spark_bins.build_snapshots_parquet(tmp_path, BIN_SECONDS, "duckdb")


def _require_spark() -> None:
    reason = spark_bins.spark_missing_reason()
    if reason is not None:
        pytest.skip(f"Spark cannot run: {reason}")


@pytest.mark.spark
def test_spark_equals_duckdb(parquet_folder, store_snapshots):
    _require_spark()
    on_duckdb = spark_bins.bin_parquet(parquet_folder, BIN_SECONDS, "duckdb")
    on_spark = spark_bins.bin_parquet(parquet_folder, BIN_SECONDS, "spark",
                                      master="local[2]")

    for left, right in zip(on_duckdb[:2], on_spark[:2]):
        assert len(left) > 0
        exact = [c for c in left.columns if c not in ("mean", "std")]
        pd.testing.assert_frame_equal(left[exact], right[exact], check_dtype=False)
    assert on_duckdb[4:] == on_spark[4:]

    built = spark_bins.build_snapshots_parquet(parquet_folder, BIN_SECONDS, "spark",
                                               master="local[2]")
    assert_same_snapshots(built, store_snapshots)


@pytest.mark.spark
def test_spark_bin_edges(tmp_path):
    """An event at a bin's first microsecond is in that bin, one before is not."""
    _require_spark()
    origin = pd.Timestamp("2024-03-01T00:00:00Z")
    width = pd.Timedelta(seconds=BIN_SECONDS)
    offsets = [pd.Timedelta(0), width - pd.Timedelta(microseconds=1), width,
               3 * width + pd.Timedelta(microseconds=1)]
    events = pd.DataFrame({
        "t": pd.Series([origin + o for o in offsets]).astype("datetime64[us, UTC]"),
        "src": ["a", "a", "a", "b"], "dst": ["b", "b", "b", "a"],
        "weight": [1.0, 2.0, 4.0, 8.0],
    })
    (tmp_path / "events").mkdir()
    events.to_parquet(tmp_path / "events" / "part.parquet", index=False)

    for engine in ("duckdb", "spark"):
        binned = spark_bins.bin_parquet(tmp_path, BIN_SECONDS, engine,
                                        master="local[1]")
        rows = binned[0]
        assert rows["bin"].tolist() == [0, 1, 3], engine
        assert rows["events"].tolist() == [2, 1, 1], engine
        assert rows["weight"].tolist() == [3.0, 4.0, 8.0], engine
        assert binned[4] == origin.value // 1000
        assert binned[5] == 4


def test_snapshots_command_writes_file(parquet_folder, store_snapshots, tmp_path,
                                       capsys):
    output = tmp_path / "bins.npz"

    code = main(["snapshots", "--engine", "duckdb", "--input", str(parquet_folder),
                 "--bin-seconds", str(BIN_SECONDS), "--output", str(output)])

    assert code == 0
    assert "(duckdb)" in capsys.readouterr().out
    assert_same_snapshots(load_snapshots(output), store_snapshots)


def test_run_rejects_snapshots_of_other_width(store_snapshots, tmp_path):
    config = RunConfig(stream=StreamConfig(bin_seconds=2 * BIN_SECONDS))

    with pytest.raises(DataError, match="60 s bins"):
        run_pipeline(Workspace.create(tmp_path / "ws"), config,
                     snapshots=store_snapshots)
