"""Drill-down of one incident, chosen by the `run` and `incident` query parameters."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import plots, report, views
from core.accepted import accept_incident, list_accepted
from core.feedback import add_suppression, list_suppressions, matching_rules
from core.maintenance import list_maintenance_windows, matching_windows
from core.store import STATUSES, incident_statuses, set_incident_status
from pages.common import ui

st.set_page_config(page_title="tgloc · Incident", layout="wide")

MAX_SERIES = 12
CONTEXT_WINDOWS = 3
MIN_CONTEXT_BINS = 30
TYPE_PHRASES = {
    "process": "process",
    "communication": "communication",
    "both": "process and communication",
}


def main() -> None:
    st.title("Incident")
    context = ui.run_sidebar()
    if context is None:
        ui.no_run_message()
        return

    incidents = ui.load("incidents", context)
    incident_id = st.query_params.get("incident")
    if incidents.empty:
        st.info("This run found no incident. Open the heatmap to see the evidence.")
        return
    if incident_id not in set(incidents["incident_id"]):
        if incident_id:
            st.warning("This run has no incident with the id in the address:")
            st.text(incident_id)
        st.info("Pick an incident here, on the home page or on the heatmap.")
        _picker(context, incidents)
        return

    row = ui.load("incident", context, incident_id)
    members = ui.load("incident_members", context, incident_id)
    st.subheader(f"#{row['rank']}  ·  {ui.escape_markdown(incident_id)}")
    st.text(_summary_sentence(row, members))
    if row.get("summary"):
        st.text(row["summary"])
    _status_form(context, incident_id, row, members)
    _maintenance_note(context, incidents[incidents["incident_id"] == incident_id])
    _acceptance(context, incident_id, row, members)

    st.subheader("Members")
    number_formats = {
        "p_value": st.column_config.NumberColumn(format="%.2e"),
        "evidence": st.column_config.NumberColumn(format="%.2f"),
    }
    shown, hidden = views.split_targets(members)
    st.dataframe(shown, hide_index=True, key="members", column_config=number_formats)
    if hidden:
        st.caption(f"+{hidden} more targets, not listed: the table shows the "
                   f"{views.MAX_TARGETS_SHOWN} strongest.")

    st.subheader("Subgraph and one-hop context")
    edges = ui.load("context_edges", context, incident_id)
    subgraph = plots.subgraph_figure(shown, edges)
    st.plotly_chart(subgraph, key="subgraph")
    links = plots.missing_links(edges)
    if links:
        st.caption(f"Dashed: {links} expected link{'s' if links != 1 else ''} "
                   "that carried no events during the incident.")
    targets = shown.loc[shown["role"] == "target", "device"].dropna().tolist()
    if targets:
        st.caption("Targets (touched by the incident, outside it), strongest first:")
        st.text("\n".join(targets) + (f"\n+{hidden} more" if hidden else ""))

    scale = _chart_scale(context, row)
    window = _context_window(context, row, scale)
    figures = [("Subgraph and one-hop context", subgraph)]
    figures += _sensor_charts(context, row, members, window, scale)
    figures += _pair_charts(context, row, members, window, scale)
    _export(context, row, members, figures)


def _summary_sentence(row: dict, members: pd.DataFrame) -> str:
    counts = members["role"].value_counts()
    start, end = pd.Timestamp(row["start"]), pd.Timestamp(row["end"])
    minutes = (end - start).total_seconds() / 60
    kind = TYPE_PHRASES.get(row["type"], str(row["type"]))
    return (
        f"A {kind} incident from {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC "
        f"({minutes:.0f} min) involving {_count(counts, 'device')}, "
        f"{_count(counts, 'pair')} and {_count(counts, 'sensor')}, touching "
        f"{_count(counts, 'target')}. Score {row['score']:.1f} against a threshold "
        f"of {row['threshold']:.1f} at level {row['alpha']:.0e}.{_significance(row)} "
        f"Severity {row['severity']:.2f} (higher is more urgent)."
    )


def _significance(row: dict) -> str:
    """Return the sentence on the family-wise p-value and false alarms a day, or
    nothing for runs that do not store them."""
    p_value = row.get("p_value")
    if p_value is None or pd.isna(p_value):
        return ""
    per_day = row.get("false_alarms_per_day")
    rate = "" if per_day is None or pd.isna(per_day) else (
        f" (about {per_day:.2g} false alarms a day at this level)")
    return f" Family-wise p-value {p_value:.2g}{rate}."


def _count(counts: pd.Series, role: str) -> str:
    number = int(counts.get(role, 0))
    return f"{number} {role}" + ("" if number == 1 else "s")


def _chart_scale(context: ui.RunContext, row: dict) -> int:
    """Return the `scale` query parameter when the run has it, else the incident's."""
    requested = st.query_params.get("scale", "")
    scales = ui.load("scales", context)
    if requested.isdigit() and int(requested) in scales:
        return int(requested)
    return int(row["scale"])


def _context_window(context: ui.RunContext, row: dict, scale: int):
    summary = ui.load("run_summary", context)
    start, end = pd.Timestamp(row["start"]), pd.Timestamp(row["end"])
    base = pd.Timedelta(seconds=(summary["bin_seconds"] or 60) * scale)
    pad = max(CONTEXT_WINDOWS * (end - start), MIN_CONTEXT_BINS * base)
    return max(start - pad, summary["start"]), min(end + pad, summary["end"])


def _sensor_charts(context, row, members, window, scale: int) -> list:
    """Draw the member sensors' series; return them as (title, figure) pairs."""
    sensors = members.loc[members["role"] == "sensor", ["device", "sensor"]]
    sensors = sensors.drop_duplicates()
    if sensors.empty:
        return []
    st.subheader("Sensors against their expected value")
    _too_many(len(sensors))
    flags = ui.load("member_sensor_flags", context, row["incident_id"])
    figures = []
    for device, sensor in sensors.head(MAX_SERIES).itertuples(index=False):
        series = ui.load("sensor_series", context, device, sensor, scale, *window)
        title = f"{device} · {sensor}"
        own = flags[(flags["device"] == device) & (flags["sensor"] == sensor)]
        # st.text shows the names literally, where Markdown would render them.
        st.text(f"{title}: {_flag_phrase(own)}")
        figure = plots.series_figure(series, title, "bin mean", row["start"],
                                     row["end"])
        st.plotly_chart(figure)
        figures.append((title, figure))
    return figures


def _flag_phrase(flags: pd.DataFrame) -> str:
    """Describe one sensor's flags in the incident, with the base bins of each."""
    if flags.empty:
        return "no flags in this incident"
    parts = [f"{flag} ({bins} bin{'' if bins == 1 else 's'})"
             for flag, bins in zip(flags["flag"], flags["bins"])]
    return "flags in this incident: " + ", ".join(parts)


def _pair_charts(context, row, members, window, scale: int) -> list:
    """Draw the member pairs' series; return them as (title, figure) pairs."""
    pairs = members.loc[members["role"] == "pair", ["device", "peer"]].drop_duplicates()
    if pairs.empty:
        return []
    st.subheader("Pair weights over time")
    _too_many(len(pairs))
    figures = []
    for src, dst in pairs.head(MAX_SERIES).itertuples(index=False):
        series = ui.load("pair_series", context, src, dst, scale, *window)
        title = f"{src} → {dst}"
        figure = plots.series_figure(series, title, "weight", row["start"], row["end"])
        st.plotly_chart(figure)
        figures.append((title, figure))
    return figures


def _export(context: ui.RunContext, row: dict, members: pd.DataFrame,
            figures: list) -> None:
    st.subheader("Export")
    incident_id = str(row["incident_id"])
    stem = f"{context.run_id}-{_file_safe(incident_id)}"
    left, middle, right = st.columns(3)
    left.download_button("Members as CSV", report.members_csv_file(members),
                         file_name=f"{stem}-members.csv", mime="text/csv",
                         on_click="ignore", key="export_csv")
    middle.download_button("Members as JSON", report.members_json(row, members),
                           file_name=f"{stem}-members.json",
                           mime="application/json", on_click="ignore",
                           key="export_json")
    # The report carries plotly.js (several MB), so it is built on request only.
    if st.session_state.get("report_for") != incident_id:
        if right.button("Build HTML report", key="build_report"):
            st.session_state.report_for = incident_id
            st.rerun()
        return
    stored = incident_statuses(context.workspace)
    stored = stored[stored["incident_id"] == incident_id]
    status = stored.iloc[0].to_dict() if not stored.empty else None
    page = report.incident_html(row, _summary_sentence(row, members), members,
                                figures, status)
    right.download_button("HTML report", page, file_name=f"{stem}.html",
                          mime="text/html", on_click="ignore", key="export_html")


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def _too_many(count: int) -> None:
    if count > MAX_SERIES:
        st.caption(f"Showing the {MAX_SERIES} strongest of {count}.")


def _status_form(context: ui.RunContext, incident_id: str, row: dict,
                 members: pd.DataFrame) -> None:
    stored = incident_statuses(context.workspace)
    stored = stored[stored["incident_id"] == incident_id]
    current = stored.iloc[0].to_dict() if not stored.empty else {}
    status_now = current.get("status") or "new"
    st.subheader("Status")
    st.text(f"Status: {status_now}"
            + (f"  ·  owner: {current['owner']}" if current.get("owner") else ""))
    saved = st.session_state.pop("status_saved", None)
    if saved == incident_id:
        st.success("Saved. The status stays with this incident id in later runs.")

    with st.form("status"):
        status = st.selectbox("Status", STATUSES, index=STATUSES.index(status_now))
        owner = st.text_input("Owner", value=current.get("owner") or "")
        notes = st.text_area("Notes", value=current.get("notes") or "")
        if st.form_submit_button("Save"):
            set_incident_status(context.workspace, incident_id, status,
                                owner.strip() or None, notes.strip() or None)
            st.session_state.status_saved = incident_id
            # A rerun redraws the status line above the form with the stored value.
            st.rerun()
    if status_now == "false positive":
        _suppression_offer(context, incident_id, row, members)


def _suppression_offer(context: ui.RunContext, incident_id: str, row: dict,
                       members: pd.DataFrame) -> None:
    devices = sorted(members.loc[members["role"] == "device", "device"].dropna())
    if not devices:
        st.caption("This incident has no member devices, so no suppression rule can "
                   "describe it.")
        return
    rules = list_suppressions(context.workspace)
    probe = pd.DataFrame({"member_devices": [devices], "type": [row["type"]]})
    rule_id = matching_rules(probe, rules).iloc[0]
    if pd.notna(rule_id):
        st.info(f"Suppression rule {rule_id} covers this pattern. The Suppressions "
                "page lists it.")
        return
    st.caption(f"A suppression rule marks later {row['type']} incidents of exactly "
               f"these {len(devices)} devices as suppressed in the incident list:")
    st.text("\n".join(devices))
    if st.button("Create suppression rule", key="create_suppression"):
        add_suppression(context.workspace, incident_id, devices, row["type"])
        st.rerun()


def _maintenance_note(context: ui.RunContext, listed: pd.DataFrame) -> None:
    windows = list_maintenance_windows(context.workspace)
    window_id = matching_windows(listed, windows).iloc[0]
    if pd.isna(window_id):
        return
    window = windows[windows["window_id"] == window_id].iloc[0]
    st.info(f"During maintenance: window {window_id}, "
            f"{window['start']:%Y-%m-%d %H:%M} to {window['end']:%Y-%m-%d %H:%M} UTC. "
            "Reason:")
    st.text(window["reason"])


def _acceptance(context: ui.RunContext, incident_id: str, row: dict,
                members: pd.DataFrame) -> None:
    st.subheader("Accept as the new normal")
    accepted = list_accepted(context.workspace)
    accepted = accepted[accepted["incident_id"] == incident_id]
    if not accepted.empty:
        record = accepted.iloc[0]
        analyst = ui.escape_markdown(record["accepted_by"])
        st.success(f"Accepted as the new normal by {analyst} "
                   f"on {pd.Timestamp(record['created']):%Y-%m-%d %H:%M} UTC. The next "
                   "run of this workspace trains on this interval, for every device, "
                   "and no longer scores it.")
        return
    st.caption(
        "Accepting records this incident's id, members and interval, your name and "
        "the time in the analyst file. The next `tgloc run` on this workspace moves "
        f"the bins from {pd.Timestamp(row['start']):%Y-%m-%d %H:%M} to "
        f"{pd.Timestamp(row['end']):%Y-%m-%d %H:%M} UTC into its training period, "
        "for every device, so the model learns this behaviour and no longer scores "
        "it. Nothing stored is deleted."
    )
    with st.form("accept"):
        analyst = st.text_input("Your name", key="accepted_by")
        if not st.form_submit_button("Accept as the new normal"):
            return
    try:
        accept_incident(context.workspace, context.run_id, incident_id, members,
                        row["start"], row["end"], analyst)
    except ValueError as error:
        st.error(ui.escape_markdown(error))
        return
    st.rerun()


def _picker(context: ui.RunContext, incidents: pd.DataFrame) -> None:
    labels = {
        row.incident_id: f"#{row.rank}  {row.incident_id}  ({row.type})"
        for row in incidents.itertuples(index=False)
    }
    chosen = st.selectbox("Incident", list(labels), format_func=labels.get)
    if st.button("Open", key="open_incident"):
        ui.open_incident(context.run_id, chosen)


ui.guard(main)
