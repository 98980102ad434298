"""Device pairs that are new, missing or surging in a window, with their raw events."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import pair_views
from pages.common import ui, window

st.set_page_config(page_title="tgloc · Device pairs", layout="wide")

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
        return

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
    chosen = st.selectbox("Show the stored events of", range(len(shown)),
                          index=None, format_func=labels.__getitem__,
                          placeholder="pick a pair")
    if chosen is not None:
        row = shown.iloc[chosen]
        _raw_events(context, str(row["src"]), str(row["dst"]), start, end)


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
