"""Heatmap of device evidence over time, incidents outlined; a click opens one."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

from core import plots, views
from pages.common import ui

st.set_page_config(page_title="tgloc · Heatmap", layout="wide")

URL_TIME_FORMAT = "%Y-%m-%dT%H:%M"


def main() -> None:
    st.title("Heatmap")
    context = ui.run_sidebar()
    if context is None:
        ui.no_run_message()
        return

    summary = ui.load("run_summary", context)
    if summary["start"] is None:
        st.info("This run has no bins. Start a new run from the home page.")
        return
    scale = _scale_picker(summary["scales"])
    start, end = _time_range(summary, scale)
    filters = ui.load("device_filters", context)
    left, right = st.columns(2)
    kinds = left.multiselect("Device kinds", filters["kinds"], placeholder="all")
    zones = right.multiselect("Zones", filters["zones"], placeholder="all")

    incidents = ui.load("incidents", context)
    in_window = incidents[(incidents["end"] > start) & (incidents["start"] < end)]
    first, second, third = st.columns(3)
    first.metric("Incidents", len(incidents))
    second.metric("In this window", len(in_window))

    page = st.session_state.get("heatmap_page", 1)
    offset = (page - 1) * views.MAX_HEATMAP_ROWS
    overview = ui.load("heatmap_matrix", context, scale, start, end,
                       offset=offset, kinds=kinds, zones=zones)
    zoom = st.multiselect(
        "Zoom to devices", overview.devices, key="zoom_devices", placeholder="none",
        help="Show only these devices; with a short time range every bin is shown.")
    matrix = overview
    if zoom:
        matrix = ui.load("heatmap_matrix", context, scale, start, end, devices=zoom)
    third.metric("Devices shown", f"{len(matrix.devices)} of {overview.total_rows}")
    pages = views.page_count(overview.total_rows)
    if page > pages:
        # Filters left fewer devices than the page that was open, so start over.
        st.session_state.heatmap_page = 1
        st.rerun()
    if pages > 1:
        st.number_input("Device page (sorted by peak evidence)", 1, pages,
                        key="heatmap_page")
    if matrix.factor > 1:
        st.caption(f"Each column is the maximum over {matrix.factor} bins.")

    figure = plots.heatmap_figure(matrix, ui.load("member_cells", context), in_window,
                                  periods=ui.load("periods", context))
    event = st.plotly_chart(figure, key="heatmap", on_select="rerun",
                            selection_mode="points", config={"displaylogo": False})
    st.caption("Outlined: incidents. Click a cell to open the incident that covers it.")
    _follow_click(context, event, scale)
    _incident_picker(context, in_window, scale)


def _scale_picker(scales: list[int]) -> int:
    requested = st.query_params.get("scale", "")
    default = int(requested) if requested.isdigit() else 1
    index = scales.index(default) if default in scales else 0
    scale = st.selectbox(
        "Scale (bins per column of the base width)", scales, index=index
    )
    st.query_params["scale"] = str(scale)
    return int(scale)


def _time_range(summary: dict, scale: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Render the time range slider, seeded from the `start` and `end` parameters.

    The chosen range goes back into the URL, so reloading or sharing the address
    shows the same window.
    """
    first = summary["start"].tz_convert("UTC").tz_localize(None).to_pydatetime()
    last = summary["end"].tz_convert("UTC").tz_localize(None).to_pydatetime()
    if first >= last:
        return summary["start"], summary["end"]
    step = pd.Timedelta(seconds=(summary["bin_seconds"] or 60) * scale).to_pytimedelta()
    previous = st.session_state.get("time_range")
    if previous is None or previous[0] < first or previous[1] > last:
        # First render, or another run with another span was chosen.
        st.session_state.time_range = _window_from_url(first, last)
    chosen = st.slider("Time range (UTC)", min_value=first, max_value=last,
                       step=step, format="YYYY-MM-DD HH:mm", key="time_range")
    st.query_params["start"] = f"{chosen[0]:{URL_TIME_FORMAT}}"
    st.query_params["end"] = f"{chosen[1]:{URL_TIME_FORMAT}}"
    return pd.Timestamp(chosen[0], tz="UTC"), pd.Timestamp(chosen[1], tz="UTC")


def _window_from_url(first: datetime, last: datetime) -> tuple[datetime, datetime]:
    """Return the window in the URL clipped to the run, or the whole run.

    A missing, unreadable or empty window falls back to the whole run, with a
    warning when the address contains a window that could not be used.
    """
    start, end = st.query_params.get("start"), st.query_params.get("end")
    if start is None and end is None:
        return first, last
    try:
        lower = _naive_utc(start) if start else first
        upper = _naive_utc(end) if end else last
    except (ValueError, TypeError):
        st.warning("The time range in the address is not a UTC time like "
                   "2026-03-01T00:00, so the whole run is shown.")
        return first, last
    lower, upper = max(lower, first), min(upper, last)
    if lower >= upper:
        st.warning("The time range in the address lies outside this run, so the "
                   "whole run is shown.")
        return first, last
    return lower, upper


def _naive_utc(text: str) -> datetime:
    stamp = pd.Timestamp(text)
    if pd.isna(stamp):
        raise ValueError(f"invalid time {text!r}")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime()


def _follow_click(context: ui.RunContext, event, scale: int) -> None:
    points = event.selection.points if event is not None else []
    if not points:
        return
    customdata = points[0].get("customdata") or []
    if len(customdata) < 4:
        return
    device, start, end, incident_id = customdata[:4]
    if incident_id:
        ui.open_incident(context.run_id, incident_id, scale)
    st.info("No incident covers the selected cell:")
    st.text(f"{device}, {start} to {end}")


def _incident_picker(context: ui.RunContext, incidents: pd.DataFrame,
                     scale: int) -> None:
    if incidents.empty:
        st.caption("No incident in this window. Widen the time range to see others.")
        return
    labels = {
        row.incident_id: f"#{row.rank}  {row.incident_id}  ({row.type})"
        for row in incidents.itertuples(index=False)
    }
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    chosen = left.selectbox("Incident", list(labels), format_func=labels.get)
    if right.button("Open drill-down", key="open_incident"):
        ui.open_incident(context.run_id, chosen, scale)


ui.guard(main)
