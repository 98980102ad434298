"""Binning of partitioned Parquet files, on Apache Spark or on DuckDB.

Binning is the stage whose cost grows with the raw events, and everything after
it reads snapshots only. When the raw events outgrow one machine, Spark runs the
same binning SQL (`core.binning`) over Parquet files that several machines can
read. Only the binned rows come back to build the snapshots: one per (bin, pair)
and one per (bin, device, sensor). `bin_parquet` runs that SQL on either engine
over the same files, so the two can be compared row for row.

Input folder layout (hive partitions such as `day=2024-03-01/` are allowed and
ignored as columns)::

    INPUT/events/**/*.parquet        t (timestamp, UTC), src, dst, weight
    INPUT/measurements/**/*.parquet  t, device, sensor, value   (optional)
    INPUT/devices.parquet            device, kind, zone, criticality, label (optional)
    INPUT/links.parquet              src, dst, weight                       (optional)

These are the columns of the store's tables, as `tgloc ingest` leaves them. Spark
runs in local mode unless `master` names a cluster. pyspark is an optional
dependency (`pip install -e '.[spark]'`), and Spark needs Java 17 or later.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path

import duckdb
import pandas as pd

from core import binning
from core.errors import DataError, TglocError
from core.snapshots import Snapshots, assemble, categorical_addresses

log = logging.getLogger(__name__)

ENGINES = ("duckdb", "spark")
EVENT_COLUMNS = ("t", "src", "dst", "weight")
MEASUREMENT_COLUMNS = ("t", "device", "sensor", "value")
DEVICE_COLUMNS = ("device", "kind", "zone", "criticality", "label")
LINK_COLUMNS = ("src", "dst", "weight")
# Spark shuffles into 200 partitions by default. Binned rows are few, so fewer
# partitions save task overhead in local mode.
SHUFFLE_PARTITIONS = 8


class SparkUnavailableError(TglocError):
    """pyspark or Java is missing, so Spark cannot run."""


def spark_missing_reason() -> str | None:
    """Return why Spark cannot run here, or None when pyspark and Java are found."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return ("pyspark is not installed: run `.venv/bin/pip install -e '.[spark]'`")
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home, "bin", "java") if java_home else shutil.which("java")
    if java is None or not Path(java).exists():
        return ("Java is not installed: install a Java 17 runtime, for example "
                "`apt-get install default-jre-headless`")
    return None


def build_snapshots_parquet(
    folder: str | os.PathLike,
    bin_seconds: int,
    engine: str = "duckdb",
    origin_us: int | None = None,
    stop_us: int | None = None,
    master: str = "local[*]",
) -> Snapshots:
    """Bin the Parquet files under `folder` on `engine` into snapshots.

    Args:
        folder: the input folder (see the module docstring).
        bin_seconds: base bin width.
        engine: "duckdb" or "spark".
        origin_us: start of bin 0; by default the first timestamp aligned to the bin.
        stop_us: end of the last bin (exclusive); by default after the last timestamp.
        master: the Spark master URL (Spark only).

    Raises:
        DataError: the folder has no event files, or they hold no rows.
        SparkUnavailableError: engine is "spark" and pyspark or Java is missing.
    """
    binned = bin_parquet(folder, bin_seconds, engine, origin_us, stop_us, master)
    events, measurements, known, links, origin_us, num_bins = binned
    return assemble(events, measurements, known, links, origin_us, bin_seconds,
                    num_bins)


def bin_parquet(
    folder: str | os.PathLike,
    bin_seconds: int,
    engine: str = "duckdb",
    origin_us: int | None = None,
    stop_us: int | None = None,
    master: str = "local[*]",
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, int, int]:
    """Run the binning SQL over the Parquet files under `folder`.

    Returns:
        The binned events and measurements (rows of `binning.event_bins_sql` and
        `binning.measurement_bins_sql`, in key order), the devices and links
        tables, the origin and the number of bins.
    """
    if engine not in ENGINES:
        raise ValueError(f"invalid engine {engine!r}; expected one of {ENGINES}")
    inputs = _inputs(Path(folder))
    if engine == "spark":
        return _bin_spark(inputs, bin_seconds, origin_us, stop_us, master)
    return _bin_duckdb(inputs, bin_seconds, origin_us, stop_us)


def _inputs(folder: Path) -> dict[str, list[str]]:
    """Return the Parquet files of each input table under `folder`."""
    if not folder.is_dir():
        raise DataError(f"input folder not found: {folder}",
                        "Give the folder that holds events/ (and measurements/).")
    found: dict[str, list[str]] = {}
    for name in ("events", "measurements"):
        files = sorted(str(p) for p in (folder / name).rglob("*.parquet"))
        found[name] = files
    for name in ("devices", "links"):
        path = folder / f"{name}.parquet"
        found[name] = [str(path)] if path.is_file() else []
    if not found["events"] and not found["measurements"]:
        raise DataError(
            f"no Parquet files under {folder / 'events'} or {folder / 'measurements'}",
            "Write the events as Parquet files under INPUT/events/ (partition "
            "folders such as day=2024-03-01/ are fine).",
        )
    return found


def _bin_duckdb(inputs, bin_seconds, origin_us, stop_us):
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for name, columns in (("events", EVENT_COLUMNS),
                              ("measurements", MEASUREMENT_COLUMNS)):
            _duckdb_view(con, name, inputs[name], columns)
        # fetchall, not fetchone: DuckDB rejects con.sql while a result is pending.
        first, last = con.execute(binning.span_sql(binning.DUCKDB)).fetchall()[0]
        if first is None:
            raise DataError("the Parquet files contain no rows",
                            "Check the input folder.")
        origin_us, stop_us, num_bins = binning.window(first, last, bin_seconds,
                                                      origin_us, stop_us)
        params = binning.parameters(origin_us, bin_seconds, origin_us, stop_us)
        rows = con.sql(binning.event_bins_sql(binning.DUCKDB), params=params)
        events = categorical_addresses(rows.to_arrow_table())
        measurements = con.execute(
            binning.measurement_bins_sql(binning.DUCKDB),
            binning.measurement_parameters(origin_us, bin_seconds, origin_us, stop_us),
        ).df()
        known = _duckdb_table(con, inputs["devices"], DEVICE_COLUMNS)
        links = _duckdb_table(con, inputs["links"], LINK_COLUMNS)
    finally:
        con.close()
    return events, measurements, known, links, origin_us, num_bins


def _duckdb_view(con, name: str, files: list[str], columns: tuple[str, ...]) -> None:
    # The view's name and columns are module constants. The file names reach
    # DuckDB as values through read_parquet, never as SQL text.
    select = ", ".join(columns)
    if files:
        relation = con.read_parquet(files, hive_partitioning=True)
        con.register(f"_{name}_files", relation)
        con.execute(f"CREATE TEMP VIEW {name} AS SELECT {select} FROM _{name}_files")
    else:
        types = {"t": "TIMESTAMPTZ", "value": "DOUBLE", "weight": "DOUBLE"}
        fields = ", ".join(f"{c} {types.get(c, 'VARCHAR')}" for c in columns)
        con.execute(f"CREATE TEMP TABLE {name} ({fields})")


def _duckdb_table(con, files: list[str], columns: tuple[str, ...]) -> pd.DataFrame:
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = con.read_parquet(files).df()
    return _with_columns(frame, columns)


def _with_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    for column in columns:
        if column not in frame:
            frame[column] = None
    return frame[list(columns)]


def _bin_spark(inputs, bin_seconds, origin_us, stop_us, master):
    reason = spark_missing_reason()
    if reason is not None:
        raise SparkUnavailableError("Spark cannot run here", reason)
    with warnings.catch_warnings():
        # pyspark 4.3 warns that it does not fully support pandas 3. Results come
        # back through Arrow, not through pyspark's pandas conversion, and the
        # spark tests compare them with DuckDB's.
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support",
                                category=FutureWarning)
        return _bin_spark_session(spark_session(master), inputs, bin_seconds,
                                  origin_us, stop_us)


def _bin_spark_session(spark, inputs, bin_seconds, origin_us, stop_us):
    for name, columns in (("events", EVENT_COLUMNS),
                          ("measurements", MEASUREMENT_COLUMNS)):
        _spark_view(spark, name, inputs[name], columns)
    first, last = spark.sql(binning.span_sql(binning.SPARK)).collect()[0]
    if first is None:
        raise DataError("the Parquet files contain no rows", "Check the input folder.")
    origin_us, stop_us, num_bins = binning.window(first, last, bin_seconds,
                                                  origin_us, stop_us)
    params = binning.parameters(origin_us, bin_seconds, origin_us, stop_us)
    events = categorical_addresses(
        spark.sql(binning.event_bins_sql(binning.SPARK), params).toArrow())
    measurements = _spark_frame(spark.sql(
        binning.measurement_bins_sql(binning.SPARK),
        binning.measurement_parameters(origin_us, bin_seconds, origin_us, stop_us)))
    known = _spark_table(spark, inputs["devices"], DEVICE_COLUMNS)
    links = _spark_table(spark, inputs["links"], LINK_COLUMNS)
    return events, measurements, known, links, origin_us, num_bins


def spark_session(master: str = "local[*]"):
    """Return the Spark session, created in UTC on first use."""
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(master).appName("tgloc-binning")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
            .getOrCreate())


def _spark_view(spark, name: str, files: list[str], columns: tuple[str, ...]) -> None:
    if files:
        frame = spark.read.option("mergeSchema", "false").parquet(*files)
        frame.select(*columns).createOrReplaceTempView(name)
        return
    types = {"t": "TIMESTAMP", "value": "DOUBLE", "weight": "DOUBLE"}
    fields = [f"CAST(NULL AS {types.get(c, 'STRING')}) AS {c}" for c in columns]
    spark.range(0).selectExpr(*fields).createOrReplaceTempView(name)


def _spark_frame(frame) -> pd.DataFrame:
    """Collect a Spark result through Arrow.

    `toArrow` skips pyspark's own pandas conversion, which pyspark 4.3 does not
    yet support for pandas 3.
    """
    return frame.toArrow().to_pandas()


def _spark_table(spark, files: list[str], columns: tuple[str, ...]) -> pd.DataFrame:
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return _with_columns(_spark_frame(spark.read.parquet(*files)), columns)
