"""The run's model: training loss, calibration check and configuration."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import model_views, plots
from core.countrun import METHOD as COUNT_METHOD
from pages.common import ui, window

st.set_page_config(page_title="tgloc · Model", layout="wide")


def main() -> None:
    st.title("Model")
    context = ui.run_sidebar()
    if context is None:
        ui.no_run_message()
        return

    info = ui.load("run_info", context)
    counts = info.get("method") == COUNT_METHOD
    st.subheader("Training loss")
    if counts:
        st.caption("No model was trained: this run tested each link's and host's event "
                   "counts against their reference count laws (the count path for "
                   "large link streams).")
    loss = ui.load("training_loss", context)
    if not loss.empty:
        last = loss.iloc[-1]
        st.caption(f"{len(loss)} epochs; last training loss {last['loss']:.4g}, "
                   f"validation loss {last['validation_loss']:.4g}.")
    st.plotly_chart(plots.loss_figure(loss), key="loss")

    st.subheader("Reference p-values")
    summary = ui.load("run_summary", context)
    scale = window.scale_picker(summary["scales"])
    histogram = ui.load("reference_p_values", context, scale)
    if counts:
        st.caption(
            "p-values of the elements in the held-out end of the reference, under the "
            "count laws fitted before it. Where the laws fit, they are uniform and the "
            "histogram is flat. A peak near 0 means counts vary more than the laws "
            "allow, and the run's calibration maps these p-values for that reason.")
    else:
        st.caption(
            "p-values of the elements in the calibration bins. With a valid calibration "
            "they are uniform, so the histogram is flat; a peak near 0 means the "
            "reference looked anomalous."
        )
    if histogram.empty:
        st.info("The run has no calibration bins at this scale. Pick scale 1.")
    else:
        st.metric("Reference elements", f"{int(histogram['elements'].sum()):,}")
    st.plotly_chart(plots.p_value_histogram_figure(histogram), key="p_values")

    st.subheader("Input")
    notes = model_views.run_notes(info)
    if notes:
        st.markdown("\n".join(f"- {note}" for note in notes))
    else:
        st.caption("No collection gap, no imputed reading and no rounded sensor in "
                   "this run.")
    rounded = info.get("rounded_readings") or []
    if rounded:
        st.caption("Sensors whose sources (ingest loads) report different decimal "
                   "places, read at the coarsest everywhere in the run.")
        st.dataframe(pd.DataFrame(rounded).rename(columns={
            "places": "decimal places", "sources": "sources",
            "finer_sources": "sources read finer"}), hide_index=True)

    st.subheader("Configuration")
    st.text(f"Run {context.run_id}, created {info.get('created', 'unknown')}")
    st.json(info.get("config", {}), expanded=2)
    details = {key: value for key, value in info.items()
               if key in ("periods", "versions", "origin", "model_checksum", "method",
                          "count_path")}
    with st.expander("Periods, versions and checksum"):
        st.json(details)


ui.guard(main)
