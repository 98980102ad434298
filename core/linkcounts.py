"""Element p-values and incidents of a large link stream, without dense arrays.

A stream of tens of thousands of hosts over tens of thousands of minutes (DARPA 1998:
25,524 hosts, 87,726 minutes) has billions of (host, bin) cells, nearly all empty.
This path never builds one of them: DuckDB aggregates the events into the elements
that exist, and every later step works on those rows.

Elements, per bin: a pair (src, dst) with its number of events, a host's sent
events (`out`) and its received events (`in`). Each element has a count law fitted
to the reference bins where it was active: the count minus one is Poisson, or
negative binomial where it varies more. Its mean and second moment are drawn
towards its kind's law by `prior_bins` pseudo-bins. So an element seen in two
reference bins does not get a tail as narrow as one seen in two thousand. An
element never active in the reference (a new host, a new pair) takes its kind's
law of newcomers. That law is fitted on the counts of elements in the first bin
they were seen, after the first tenth of the reference, and drawn towards the
kind's law in the same way. The p-value is the upper tail at the observed count,
with ties broken at random.

Calibration: the laws are fitted again on the reference without its last
`holdout_share` of bins, and the held-out bins are scored with them. Those out of
sample p-values are each kind's null, mapped as in `core.scoring.null_mapping`, so
a law that fits real traffic badly does not make its p-values look stronger than
the held-out bins show.

Incidents: an element whose calibrated p-value, times the number of element tests
in the scored bins, is at most the level (Bonferroni, a family-wise level over the
whole scored period) is flagged. Flagged elements that share a host and lie within
`merge_gap` base bins of each other form one incident, at any scale. Its interval is
that of its flagged elements at the finest scale among them. Its devices are the hosts
with a flagged element of their own, or both ends of its pairs when none has.

Known weaknesses: only elements with events are scored, so a pair or host that goes
quiet raises nothing here. Each bin is judged alone, without the interval scan of
`core.localize`, whose evidence arrays are dense over devices and bins. An anomaly
in the held-out end of the reference is part of the null. So a later one of its size
maps to about one over the number of held-out elements: on DARPA, the 'back' attack
of 12 June caps later sent-event p-values near 1e-3. A count's p-value breaks ties
at random, so an element close to the limit can be flagged with one seed and not
another.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
from scipy import stats
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from core import scoring
from core.errors import DataError

KINDS = ("pair", "out", "in")
ELEMENT_NAMES = {"pair": "pair events", "out": "sent events", "in": "received events"}
MICROS = 1_000_000


@dataclass(frozen=True)
class CountConfig:
    """Settings of the count path.

    Attributes:
        bin_seconds: width of a base bin.
        scales: bin widths scored, in base bins. A slow sweep that sends a few
            events a minute is visible over an hour. `tgloc run` passes the run's
            scales (`StreamConfig.scales`, 1, 4 and 16 unless set).
        holdout_share: share of the reference bins, at its end, held out to
            calibrate the p-values.
        prior_bins: pseudo-bins of the kind's law mixed into each element's law.
        newcomer_share: share of the reference, at its start, whose first sightings
            are not counted as newcomers (everything is new when a capture starts).
        level: family-wise false-alarm level of the flagged elements.
        merge_gap: flagged elements of one host at most this many base bins apart
            join one incident.
        seed: seed of the random tie-breaking.
    """

    bin_seconds: int = 60
    scales: tuple[int, ...] = (1, 10, 60)
    holdout_share: float = 0.3
    prior_bins: float = 5.0
    newcomer_share: float = 0.1
    level: float = 0.05
    merge_gap: int = 10
    seed: int = 0


@dataclass
class CountScores:
    """The scored bins of one stream.

    Attributes:
        origin_us: epoch microseconds of the start of bin 0.
        reference_bins: bins before this one are the reference.
        elements: one row per scored element: scale, kind, src, dst, bin (at its
            scale), start and stop (base bins), count, expected (the law's mean
            count), novel, p_raw, p_value (calibrated). A host element names its
            host in src, and its dst is NULL.
        held_out: the elements of the held-out end of the reference, in the layout
            of `elements`, with `p_raw` from the laws fitted before it (their
            `p_value` is `p_raw`: these p-values are what the calibration maps).
        tests: number of element tests in the scored bins.
        limit: the calibrated p-value at or below which an element is flagged.
        incidents: one row per incident: incident, start_bin, stop_bin, devices,
            pairs (lists), elements (flagged), p_min, significance (p_min times the
            tests, at most 1), targets (list: the hosts its devices' flagged events
            reached).
        flagged: the flagged elements, in the layout of `elements`, with the
            `incident` each belongs to.
        notes: what the run could not do as configured (a scale without reference
            bins, a kind whose held-out p-values are too few to calibrate).
    """

    origin_us: int
    reference_bins: int
    elements: pd.DataFrame
    held_out: pd.DataFrame
    tests: int
    limit: float
    incidents: pd.DataFrame
    flagged: pd.DataFrame
    notes: list[str]


def build_elements(con: duckdb.DuckDBPyConnection, source: str, config: CountConfig) -> int:
    """Aggregate the events of `source` (a table or view with t, src and dst) into
    the temporary table `count_elements` (scale, kind, src, dst, bin, count), where
    `bin` counts bins of `scale` base bins and `count` counts events. Event weights
    are not read: a law of counts does not fit bytes or packets.

    Returns the origin of bin 0 in epoch microseconds: the first event's time,
    floored to the bin width.
    """
    width = config.bin_seconds * MICROS
    first = con.execute(f"SELECT min(epoch_us(t)) FROM {source}").fetchall()[0][0]
    if first is None:
        raise DataError("no events to score",
                        "Ingest a link stream, or widen the scored window.")
    origin = int(first) // width * width
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE count_pairs AS
        SELECT src, dst, CAST((epoch_us(t) - {origin}) // {width} AS INTEGER) AS bin,
               count(*) AS count
        FROM {source} GROUP BY ALL""")
    parts = []
    for scale in config.scales:
        coarse = f"bin // {scale}"
        parts += [
            f"SELECT {scale} AS scale, 'pair' AS kind, src, dst, {coarse} AS bin, "
            f"sum(count) AS count FROM count_pairs GROUP BY src, dst, {coarse}",
            f"SELECT {scale}, 'out', src, NULL, {coarse}, sum(count) FROM count_pairs "
            f"GROUP BY src, {coarse}",
            f"SELECT {scale}, 'in', dst, NULL, {coarse}, sum(count) FROM count_pairs "
            f"GROUP BY dst, {coarse}"]
    con.execute("CREATE OR REPLACE TEMP TABLE count_elements AS "
                + " UNION ALL ".join(parts))
    con.execute("DROP TABLE count_pairs")
    return origin


def _overlapping(ranges: list[tuple[int, int]], table: str = "") -> str:
    """SQL condition: the element's bin overlaps one of the base-bin `ranges`.
    `table` qualifies the columns bin and scale (`e.`, say)."""
    terms = [f"({table}bin * {table}scale < {stop} AND ({table}bin + 1) * {table}scale "
             f"> {start})" for start, stop in ranges]
    return " OR ".join(terms) if terms else "FALSE"


def fit_laws(con: duckdb.DuckDBPyConnection, stop_bin: int, config: CountConfig,
             accepted: list[tuple[int, int]] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit each element's law on the bins that end by base bin `stop_bin`, and on
    those that overlap an `accepted` range of base bins. An accepted range is a
    time interval, so every element active in it learns its counts there, as on the
    model's path, where a bin is one snapshot of the whole graph. The kinds' laws
    come from the reference only, so an accepted burst does not widen the law of
    every newcomer.

    Returns:
        laws: scale, kind, src, dst, n (active bins), m1 and m2 (mean of count - 1 and of
            its square over those bins).
        kinds: per scale and kind, m1 and m2 over all active element bins (`all_m1`,
            `all_m2`) and over newcomers' first bins (`new_m1`, `new_m2`).
    """
    before = f"(bin + 1) * scale <= {stop_bin}"
    reference = f"({before} OR {_overlapping(list(accepted))})"
    laws = con.execute(f"""
        SELECT scale, kind, src, dst, count(*) AS n, avg(count - 1) AS m1,
               avg((count - 1) * (count - 1)) AS m2
        FROM count_elements WHERE {reference}
        GROUP BY scale, kind, src, dst""").df()
    settle = int(stop_bin * config.newcomer_share)
    kinds = con.execute(f"""
        WITH firsts AS (
            SELECT scale, kind, src, dst, arg_min(count, bin) AS count, min(bin) AS bin
            FROM count_elements WHERE {before}
            GROUP BY scale, kind, src, dst),
        everything AS (
            SELECT scale, kind, avg(count - 1) AS all_m1,
                   avg((count - 1) * (count - 1)) AS all_m2
            FROM count_elements WHERE {before} GROUP BY scale, kind),
        newcomers AS (
            SELECT scale, kind, avg(count - 1) AS new_m1,
                   avg((count - 1) * (count - 1)) AS new_m2, count(*) AS newcomers
            FROM firsts WHERE bin * scale >= {settle} GROUP BY scale, kind)
        SELECT * FROM everything LEFT JOIN newcomers USING (scale, kind)""").df()
    # Like an element's law, the newcomers' law is drawn towards the kind's by
    # `prior_bins` pseudo-newcomers, so a handful of newcomers does not fix it.
    seen = kinds["newcomers"].fillna(0).to_numpy(np.float64)
    for moment in ("m1", "m2"):
        kinds[f"new_{moment}"] = shrunk(seen, kinds[f"new_{moment}"].fillna(0).to_numpy(),
                                        kinds[f"all_{moment}"].to_numpy(), config.prior_bins)
    return laws, kinds


def shrunk(seen: np.ndarray, own: np.ndarray, prior: np.ndarray,
           weight: float) -> np.ndarray:
    """Return the mean of `seen` values averaging `own`, mixed with `weight`
    pseudo-values averaging `prior`."""
    return (seen * own + weight * prior) / (seen + weight)


def upper_p(counts: np.ndarray, m1: np.ndarray, m2: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """P(C > c) + U P(C = c) for C - 1 with mean `m1` and second moment `m2`:
    Poisson where the variance is at most the mean, negative binomial above it."""
    y = np.maximum(counts - 1.0, 0.0)
    mean = np.maximum(m1, 1e-6)
    variance = np.maximum(m2 - m1 * m1, 0.0)
    u = rng.random(len(y))
    p = np.empty(len(y))
    poisson = variance <= mean * 1.0001
    if poisson.any():
        mu = mean[poisson]
        p[poisson] = stats.poisson.sf(y[poisson], mu) + u[poisson] * stats.poisson.pmf(
            y[poisson], mu)
    wide = ~poisson
    if wide.any():
        mu, var = mean[wide], variance[wide]
        success = mu / var
        size = mu * success / (1.0 - success)
        p[wide] = (stats.nbinom.sf(y[wide], size, success)
                   + u[wide] * stats.nbinom.pmf(y[wide], size, success))
    return np.clip(p, scoring.P_FLOOR, 1.0)


def element_p(con: duckdb.DuckDBPyConnection, start_bin: int, stop_bin: int | None,
              laws: pd.DataFrame, kinds: pd.DataFrame, config: CountConfig,
              rng: np.random.Generator, skipped: list[tuple[int, int]] = ()) -> pd.DataFrame:
    """Return the elements inside base bins [start_bin, stop_bin), except those that
    overlap a `skipped` range, with their laws' raw p-values and their base bins
    `start` and `stop`."""
    con.register("count_laws", laws)
    con.register("count_kinds", kinds)
    upper = "" if stop_bin is None else f"AND (e.bin + 1) * e.scale <= {stop_bin}"
    rows = con.execute(f"""
        SELECT e.scale, e.kind, e.src, e.dst, e.bin, e.bin * e.scale AS start,
               (e.bin + 1) * e.scale AS stop, e.count,
               coalesce(l.n, 0) AS n, coalesce(l.m1, 0) AS m1, coalesce(l.m2, 0) AS m2,
               k.all_m1, k.all_m2, k.new_m1, k.new_m2
        FROM count_elements e
        JOIN count_kinds k ON e.scale = k.scale AND e.kind = k.kind
        LEFT JOIN count_laws l
          ON e.scale = l.scale AND e.kind = l.kind AND e.src = l.src
         AND e.dst IS NOT DISTINCT FROM l.dst
        WHERE e.bin * e.scale >= {start_bin} {upper}
          AND NOT ({_overlapping(list(skipped), "e.")})
        ORDER BY e.scale, e.kind, e.bin, e.src, e.dst""").df()
    con.unregister("count_laws")
    con.unregister("count_kinds")
    n = rows["n"].to_numpy(np.float64)
    new = n == 0
    m1 = shrunk(n, rows["m1"].to_numpy(), rows["all_m1"].to_numpy(), config.prior_bins)
    m2 = shrunk(n, rows["m2"].to_numpy(), rows["all_m2"].to_numpy(), config.prior_bins)
    m1[new] = rows.loc[new, "new_m1"].to_numpy(np.float64)
    m2[new] = rows.loc[new, "new_m2"].to_numpy(np.float64)
    rows["expected"] = m1 + 1.0
    rows["novel"] = new
    rows["p_raw"] = upper_p(rows["count"].to_numpy(np.float64), m1, m2, rng)
    return rows.drop(columns=["n", "m1", "m2", "all_m1", "all_m2", "new_m1", "new_m2"])


def score_stream(con: duckdb.DuckDBPyConnection, source: str, reference_end_us: int,
                 config: CountConfig = CountConfig(),
                 accepted_us: list[tuple[int, int]] = ()) -> CountScores:
    """Score every element of `source` from `reference_end_us` (epoch microseconds)
    on against the laws of the events before it, and take out the incidents.

    The bins that overlap an `accepted_us` interval (epoch microseconds, behaviour an
    analyst accepted as normal) join the reference and are not scored.
    """
    rng = np.random.default_rng(config.seed)
    origin = build_elements(con, source, config)
    width = config.bin_seconds * MICROS
    reference_bins = int((reference_end_us - origin) // width)
    split = int(reference_bins * (1.0 - config.holdout_share))
    if split <= 0 or split >= reference_bins:
        first = pd.Timestamp(origin, unit="us", tz="UTC")
        raise DataError(
            f"the reference contains {max(reference_bins, 0)} bin(s) of "
            f"{config.bin_seconds} s from the first event at {first:%Y-%m-%d %H:%M:%S} "
            "UTC; it needs at least 2, so that the laws fit on one part and are "
            "calibrated on the rest",
            "Choose a later reference end, or narrower bins (--bin-seconds).")
    accepted = [((start - origin) // width, -(-(stop - origin) // width))
                for start, stop in accepted_us]
    # The laws that score the held-out bins learn nothing at or after them.
    before_split = [(start, min(stop, split)) for start, stop in accepted if start < split]
    laws, kinds = fit_laws(con, split, config, before_split)
    held_out = element_p(con, split, reference_bins, laws, kinds, config, rng)
    laws, kinds = fit_laws(con, reference_bins, config, accepted)
    scored = element_p(con, reference_bins, None, laws, kinds, config, rng, accepted)
    scored["p_value"] = scored["p_raw"]
    notes = [f"scale {scale}: no complete bin in the reference, so this scale is not "
             "scored" for scale in config.scales if scale not in set(kinds["scale"])]
    for scale, kind in kinds[["scale", "kind"]].itertuples(index=False):
        null = held_out.loc[(held_out["scale"] == scale) & (held_out["kind"] == kind),
                            "p_raw"].to_numpy(np.float64)
        mapping = scoring.null_mapping(null)
        here = ((scored["scale"] == scale) & (scored["kind"] == kind)).to_numpy()
        if mapping is None:
            notes.append(f"scale {scale}, {ELEMENT_NAMES[kind]}: {len(null)} held-out "
                         f"p-value(s), fewer than {scoring.MIN_NULL}, so its p-values are "
                         "the laws' own, not calibrated")
        elif here.any():
            scored.loc[here, "p_value"] = mapping(scored.loc[here, "p_raw"].to_numpy())
    tests = len(scored)
    limit = config.level / max(tests, 1)
    incidents, flagged = gather_incidents(scored, limit, tests, config.merge_gap)
    incidents["targets"] = reached_hosts(con, flagged, incidents)
    held_out["p_value"] = held_out["p_raw"]
    return CountScores(origin, reference_bins, scored, held_out, tests, limit, incidents,
                       flagged, notes)


def reached_hosts(con: duckdb.DuckDBPyConnection, flagged: pd.DataFrame,
                  incidents: pd.DataFrame) -> list[list[str]]:
    """Return, per incident, the hosts that its devices' flagged sent or received
    events reached in their bins at the incident's finest flagged scale, other than
    its devices. These are the hosts a sweep touched, or the sources of a flood.
    None of their pairs needs to be abnormal on its own."""
    if incidents.empty:
        return []
    hosts = flagged[flagged["kind"] != "pair"]
    # An hour flagged at a busy server contains all of its ordinary clients too, so the
    # targets come from the incident's finest flagged scale.
    finest = hosts.groupby("incident")["scale"].transform("min")
    hosts = hosts[hosts["scale"] == finest]
    con.register("count_flagged", hosts[["incident", "scale", "kind", "src", "bin"]])
    reached = con.execute("""
        SELECT DISTINCT f.incident,
               CASE WHEN f.kind = 'out' THEN e.dst ELSE e.src END AS host
        FROM count_flagged f
        JOIN count_elements e ON e.scale = f.scale AND e.kind = 'pair' AND e.bin = f.bin
         AND ((f.kind = 'out' AND e.src = f.src) OR (f.kind = 'in' AND e.dst = f.src))
        """).df()
    con.unregister("count_flagged")
    by_incident = reached.groupby("incident")["host"].agg(set)
    return [sorted(by_incident.get(number, set()) - set(devices))
            for number, devices in zip(incidents["incident"], incidents["devices"])]


def gather_incidents(elements: pd.DataFrame, limit: float, tests: int,
                     gap: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join the flagged elements that share a host within `gap` bins into incidents.

    Returns the incidents and the flagged elements with the incident of each."""
    columns = ["incident", "start_bin", "stop_bin", "devices", "pairs", "elements",
               "p_min", "significance"]
    flagged = elements[elements["p_value"] <= limit].reset_index(drop=True)
    if flagged.empty:
        return pd.DataFrame(columns=columns), flagged.assign(incident=pd.Series(dtype="int64"))
    # Each flagged element mentions its host, or both ends of its pair.
    spans = flagged[["start", "stop"]].rename_axis("element").reset_index()
    is_pair = (flagged["kind"] == "pair").to_numpy()
    ends = flagged.loc[is_pair, "dst"].to_numpy(object)
    mentions = pd.concat([spans.assign(host=flagged["src"].to_numpy(object)),
                          spans[is_pair].assign(host=ends)],
                         ignore_index=True).sort_values(["host", "start"], kind="stable")
    host = mentions["host"].to_numpy(object)
    # Each mention chains to the one before it of the same host when it starts at
    # most `gap` base bins after the latest end among the earlier ones.
    reach = mentions.groupby("host", sort=False)["stop"].cummax().to_numpy()
    starts = mentions["start"].to_numpy()
    element = mentions["element"].to_numpy()
    chained = (host[1:] == host[:-1]) & (starts[1:] - reach[:-1] <= gap)
    graph = coo_matrix((np.ones(chained.sum()), (element[:-1][chained], element[1:][chained])),
                       shape=(len(flagged), len(flagged)))
    _, label = connected_components(graph, directed=False)
    flagged["incident"] = label
    rows = []
    for number, group in flagged.groupby("incident", sort=False):
        own = group[group["kind"] != "pair"]
        pairs = group[group["kind"] == "pair"]
        devices = sorted(set(own["src"]) if len(own)
                         else set(pairs["src"]) | set(pairs["dst"]))
        p_min = float(group["p_value"].min())
        # A flood flags its hour as well as its minutes: the finest scale dates it.
        finest = group[group["scale"] == group["scale"].min()]
        rows.append({
            "incident": int(number), "start_bin": int(finest["start"].min()),
            "stop_bin": int(finest["stop"].max()), "devices": devices,
            "pairs": sorted(set(zip(pairs["src"], pairs["dst"]))),
            "elements": len(group), "p_min": p_min,
            "significance": min(1.0, p_min * tests)})
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values(["significance", "start_bin"]).reset_index(drop=True)
    number = dict(zip(table["incident"], range(len(table))))
    table["incident"] = np.arange(len(table))
    flagged["incident"] = flagged["incident"].map(number)
    return table, flagged
