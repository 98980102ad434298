"""Device pairs in a window: new, missing and surging pairs, a source x destination
matrix, and the raw events of the pair picked in either.

The picked pair lives in the `src` and `dst` query parameters, so its address
reopens it.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import pair_views, plots
from pages.common import ui, window

st.set_page_config(page_title="tgloc · Device pairs", layout="wide")

COLOURS = {"events": "events in the window",
           "evidence": "anomaly evidence (-log10 p-value)"}

CHANGE_HELP = {
    "new": "Pairs that carried events in the window but never in the training bins.",
    "missing": (f"Reference pairs expected to carry at least "
                f"{pair_views.MIN_EXPECTED_EVENTS:g} event in the window that carried "
                f"at most {pair_views.MISSING_SHARE:.0%} of their expected events."),
    "surging": (f"Reference pairs with at least {pair_views.SURGE_RATIO:g} times their "
                f"expected events and a p-value at or below "
                f"{pair_views.SURGE_P_VALUE:g}."),
}


def main() -> None:
    st.title("Device pairs")
    chosen = window.run_window()
    if chosen is None:
        return
    context, scale, start, end = chosen
    changes = ui.load("pair_changes", context, scale, start, end)

    columns = st.columns(len(pair_views.CHANGES))
    for column, change in zip(columns, pair_views.CHANGES):
        rows = changes[changes["change"] == change]
        total = int(rows["total"].iloc[0]) if not rows.empty else 0
        column.metric(f"{change.capitalize()} pairs", total, help=CHANGE_HELP[change])
    if changes.empty:
        st.info("No pair is new, missing or surging in this window. Widen the time "
                "range or pick another scale.")
    else:
        _change_table(changes)
    _matrix(context, scale, start, end)
    src, dst = st.query_params.get("src"), st.query_params.get("dst")
    if src is not None and dst is not None:
        _raw_events(context, src, dst, start, end)


def _change_table(changes: pd.DataFrame) -> None:
    shown = changes.drop(columns=["total"]).reset_index(drop=True)
    st.dataframe(
        shown, hide_index=True, key="pair_changes",
        column_config={
            "observed": st.column_config.NumberColumn("observed events", format="%.0f"),
            "expected": st.column_config.NumberColumn("expected events", format="%.1f"),
            "min_p_value": st.column_config.NumberColumn("min p-value", format="%.2e"),
        },
    )
    hidden = int(changes.groupby("change")["total"].first().sum()) - len(changes)
    if hidden > 0:
        st.caption(f"{hidden} more pairs are not listed: each change shows its "
                   f"{pair_views.MAX_PAIRS_PER_CHANGE} strongest.")
    labels = [f"{row.change}: {row.src} → {row.dst}" for row in shown.itertuples()]
    pairs = [(str(row.src), str(row.dst)) for row in shown.itertuples()]
    st.selectbox("Show the stored events of", range(len(shown)),
                 index=None, format_func=labels.__getitem__,
                 placeholder="pick a pair", key="change_pick",
                 on_change=_pick_change, args=(pairs,))


def _pick_change(pairs: list[tuple[str, str]]) -> None:
    chosen = st.session_state.change_pick
    if chosen is not None:
        _select_pair(*pairs[chosen])


def _select_pair(src: str, dst: str) -> None:
    st.query_params["src"] = src
    st.query_params["dst"] = dst


def _matrix(context: ui.RunContext, scale: int, start: pd.Timestamp,
            end: pd.Timestamp) -> None:
    st.subheader("Source × destination")
    colour = st.radio("Colour", list(COLOURS), format_func=COLOURS.get,
                      horizontal=True, key="matrix_colour")
    matrix = ui.load("pair_matrix", context, scale, start, end)
    if matrix.empty:
        st.info("No pair carried an element in this window.")
        return
    shown_sources = sum(name is not None for name in matrix.sources)
    shown_destinations = sum(name is not None for name in matrix.destinations)
    note = (f"{shown_sources} of {matrix.total_sources} sources and "
            f"{shown_destinations} of {matrix.total_destinations} destinations, "
            "the busiest first.")
    if matrix.grouped_sources or matrix.grouped_destinations:
        note += (f" The {matrix.grouped_sources} sources and "
                 f"{matrix.grouped_destinations} destinations with fewer events "
                 f"share the \"other\" row and column: only the "
                 f"{pair_views.MAX_MATRIX_DEVICES} busiest get their own.")
    st.caption(note)
    selected = (st.query_params.get("src"), st.query_params.get("dst"))
    figure = plots.pair_matrix_figure(matrix, colour, selected)
    st.plotly_chart(figure, key="pair_matrix", on_select=_pick_cell,
                    selection_mode="points", config={"displaylogo": False})
    st.caption("Click a cell to show the stored events of its pair.")
    grouped = st.session_state.pop("grouped_cell", None)
    if grouped:
        st.info(f"That cell groups several {grouped}, so it is no single pair. A "
                "shorter time range involves fewer devices, or pick a pair from the "
                "table.")


def _pick_cell() -> None:
    points = st.session_state.pair_matrix.selection.points
    if not points:
        return
    src, dst, src_grouped, dst_grouped = points[0].get("customdata") or ["", "", 1, 1]
    if src_grouped or dst_grouped:
        parts = []
        if src_grouped:
            parts.append("sources")
        if dst_grouped:
            parts.append("destinations")
        st.session_state.grouped_cell = " and ".join(parts)
        return
    _select_pair(src, dst)


def _raw_events(context: ui.RunContext, src: str, dst: str, start: pd.Timestamp,
                end: pd.Timestamp) -> None:
    st.subheader("Stored events")
    st.text(f"{src} → {dst}, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC")
    events, total = pair_views.pair_events(context.workspace, src, dst, start, end)
    if total == 0:
        st.info("The store has no event for this pair in the window. The store may "
                "have been cleared or re-imported since the run.")
        return
    st.dataframe(events, hide_index=True, key="pair_events")
    if total > len(events):
        st.caption(f"The first {len(events)} of {total} events, oldest first.")


ui.guard(main)
