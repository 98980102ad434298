"""Heatmap of device evidence over time, incidents outlined; a click opens one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import plots, views
from pages.common import ui, window

st.set_page_config(page_title="tgloc · Heatmap", layout="wide")


def main() -> None:
    st.title("Heatmap")
    chosen = window.run_window()
    if chosen is None:
        return
    context, scale, start, end = chosen
    filters = ui.load("device_filters", context)
    left, right = st.columns(2)
    kinds = left.multiselect("Device kinds", filters["kinds"], placeholder="all")
    zones = right.multiselect("Zones", filters["zones"], placeholder="all")

    incidents, flagged = ui.visible_incidents(context, ui.load("incidents", context))
    in_window = incidents[(incidents["end"] > start) & (incidents["start"] < end)]
    first, second, third = st.columns(3)
    first.metric("Incidents", len(incidents),
                 help=f"Listed of the run's {len(flagged)}; the toggles above show "
                 "the hidden ones.")
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

    cells = ui.load("member_cells", context)
    # Cells of hidden incidents lead nowhere, so a click on one shows "no incident".
    cells = cells[cells["incident_id"].isin(incidents["incident_id"])]
    figure = plots.heatmap_figure(matrix, cells, in_window,
                                  periods=ui.load("periods", context))
    event = st.plotly_chart(figure, key="heatmap", on_select="rerun",
                            selection_mode="points", config={"displaylogo": False})
    st.caption("Outlined: incidents. Click a cell to open the incident that covers it.")
    _follow_click(context, event, matrix, cells, scale)
    _incident_picker(context, in_window, scale)
    if not zoom and page < pages:
        # The next page goes into the cache after this one is sent, so moving on to
        # it runs no query on the run file.
        ui.load("heatmap_matrix", context, scale, start, end,
                offset=offset + views.MAX_HEATMAP_ROWS, kinds=kinds, zones=zones)


def _follow_click(context: ui.RunContext, event, matrix: views.HeatmapMatrix,
                  cells: pd.DataFrame, scale: int) -> None:
    points = event.selection.points if event is not None else []
    if not points:
        return
    cell = plots.clicked_cell(matrix, cells, points[0])
    if cell is None:
        return
    if cell.incident_id:
        ui.open_incident(context.run_id, cell.incident_id, scale)
    st.info("No incident covers the selected cell:")
    st.text(f"{cell.device}, {cell.start:%Y-%m-%d %H:%M} to {cell.end:%Y-%m-%d %H:%M} UTC")


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
