"""Scale and time window choosers whose values live in the URL.

The `scale`, `start` and `end` query parameters seed the widgets and receive their
values, so reloading or sharing a page's address shows the same view. Times in the
URL are UTC, written as 2026-03-01T00:00.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

from pages.common import ui

URL_TIME_FORMAT = "%Y-%m-%dT%H:%M"


def scale_picker(scales: list[int]) -> int:
    """Render the scale chooser, seeded from and written to the `scale` parameter."""
    requested = st.query_params.get("scale", "")
    default = int(requested) if requested.isdigit() else 1
    index = scales.index(default) if default in scales else 0
    scale = st.selectbox(
        "Scale (multiple of the base bin width)", scales, index=index
    )
    st.query_params["scale"] = str(scale)
    return int(scale)


def time_range(summary: dict, scale: int) -> tuple[pd.Timestamp, pd.Timestamp]:
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


def run_window() -> tuple | None:
    """Render the run chooser, scale and time window of a page over one run.

    Returns (context, scale, start, end), or None after showing what to do when
    there is no run or the run has no bins.
    """
    context = ui.run_sidebar()
    if context is None:
        ui.no_run_message()
        return None
    summary = ui.load("run_summary", context)
    if summary["start"] is None:
        st.info("This run has no bins. Start a new run from the home page.")
        return None
    scale = scale_picker(summary["scales"])
    start, end = time_range(summary, scale)
    return context, scale, start, end
