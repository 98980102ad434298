"""tgloc dashboard, home page: workspace, run, summary, ranked incidents, new runs.

Start it with `streamlit run app.py`. The `TGLOC_WORKSPACE` environment variable sets
the workspace folder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import streamlit as st

from core import plots, views
from core.errors import StoreBusyError
from core.store import Workspace, incident_statuses
from pages.common import ui

REPOSITORY = Path(__file__).resolve().parent
PROGRESS_SECONDS = 1.0
STORE_RETRY_SECONDS = 2.0
LIVE_SECONDS = 3.0
STORE_BUSY_MESSAGE = (
    "An ingest is writing the store right now, so its counts are not shown. The "
    "run below is the last published one. This panel retries every "
    f"{STORE_RETRY_SECONDS:g} s."
)
TABLE_COLUMNS = ["rank", "incident_id", "type", "severity", "significance",
                 "false_alarms_per_day", "start", "end", "devices", "pairs", "sensors", "targets", "status", "owner",
                 "suppressed_by", "maintenance", "accepted_by", "summary"]

st.set_page_config(page_title="tgloc", layout="wide")


def main() -> None:
    st.title("tgloc")
    context = ui.run_sidebar()
    root = Path(st.session_state.workspace_path).expanduser()
    pipeline_panel(root)
    if root.is_dir():
        store_panel(Workspace(root.resolve()))
        live_panel(Workspace(root.resolve()))
    if context is None:
        ui.no_run_message()
        return
    requested = st.query_params.get("incident")
    if requested:
        # A shared address such as /?run=RUN&incident=ID opens the drill-down.
        scale = st.query_params.get("scale", "")
        ui.open_incident(context.run_id, requested,
                         int(scale) if scale.isdigit() else None)

    summary = ui.load("run_summary", context)
    st.subheader("Run")
    st.text(f"{context.run_id}  ·  {context.workspace.root}")
    first, second, third, fourth = st.columns(4)
    first.metric("Devices", summary["devices"])
    second.metric("Bins", summary["bins"])
    third.metric("Span", _span(summary))
    fourth.metric("Incidents", summary["incidents"])
    if summary["start"] is not None:
        st.caption(
            f"{summary['start']:%Y-%m-%d %H:%M} to {summary['end']:%Y-%m-%d %H:%M} UTC,"
            f" bins of {summary['bin_seconds']} s, scales {summary['scales']}"
        )
    incident_table(context)
    with st.expander("Training loss"):
        st.plotly_chart(plots.loss_figure(ui.load("training_loss", context)))


def incident_table(context: ui.RunContext) -> None:
    """Show the ranked incidents. Selecting a row opens its drill-down."""
    st.subheader("Incidents, ranked")
    table = ui.load("incidents", context)
    if table.empty:
        st.info("This run found no incident. Open the heatmap to see the evidence.")
        return
    # Status, owner and notes are keyed by incident id, which depends only on the
    # devices and start time, so they carry over to a re-run of the same data.
    statuses = incident_statuses(context.workspace)[["incident_id", "status", "owner"]]
    table = table.merge(statuses, on="incident_id", how="left")
    table["status"] = table["status"].fillna("new")
    table, flagged = ui.visible_incidents(context, table)
    table = table.reset_index(drop=True)
    if table.empty:
        st.info("Every incident of this run is suppressed or during maintenance. "
                "Turn on a toggle above to list them.")
        return
    event = st.dataframe(
        table[TABLE_COLUMNS],
        hide_index=True,
        key="incident_table",
        on_select="rerun",
        selection_mode="single-row",
        column_config={
            "severity": st.column_config.NumberColumn(format="%.2f"),
            "significance": st.column_config.NumberColumn(
                format="%.3g", help="Family-wise p-value: the chance that a period "
                "with nothing abnormal gets any incident as strong as this one. "
                "Small is significant; incidents are reported below 0.05."),
            "false_alarms_per_day": st.column_config.NumberColumn(
                "false alarms a day", format="%.3g",
                help="False alarms a day to expect if incidents this strong were "
                "reported; empty for runs of older versions."),
            "suppressed_by": st.column_config.NumberColumn(
                "suppressed by rule", format="%d",
                help="An active suppression rule with these devices and this type."),
            "maintenance": st.column_config.NumberColumn(
                "during maintenance", format="%d",
                help="The maintenance window that covers this incident's interval "
                "and at least one of its devices."),
            "accepted_by": st.column_config.TextColumn(
                "accepted as normal by",
                help="The next run trains on this incident's interval."),
            "start": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "end": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        },
    )
    hidden = len(flagged) - len(table)
    st.caption(f"{len(table)} of {len(flagged)} incidents listed"
               + (f", {hidden} hidden by suppression rules or maintenance windows"
                  if hidden else "")
               + ". Select a row to open its drill-down.")
    rows = event.selection.rows if event is not None else []
    if rows:
        chosen = table.iloc[rows[0]]
        incident_id = str(chosen["incident_id"])
        ui.open_incident(context.run_id, incident_id, int(chosen["scale"]))


def live_panel(workspace: Workspace) -> None:
    """Show the online results (`tgloc watch` or `tgloc replay`), refreshed on a
    timer without reloading the page while the toggle is on."""
    live = st.toggle("Live mode", key="live_mode",
                     help="Show the online incidents and refresh them every "
                          f"{LIVE_SECONDS:g} s.")
    if live:
        st.fragment(_live_view, run_every=LIVE_SECONDS)(workspace)


def _live_view(workspace: Workspace) -> None:
    from core import online

    st.subheader("Live")
    live = online.read_live(workspace)
    if live is None:
        st.info("No online results yet. Start `tgloc watch` or `tgloc replay` on this "
                "workspace; this panel refreshes on its own.")
        return
    info = live["info"]
    bins = live["bins"]
    first, second, third, fourth = st.columns(4)
    first.metric("Last closed bin", "none" if bins.empty else f"{bins['end'].iloc[0]:%H:%M}")
    second.metric("Online incidents", len(live["incidents"]))
    third.metric("Late rows", info.get("late_rows", 0))
    fourth.metric("Seconds per bin", "-" if bins.empty else f"{bins['seconds'].median():.2f}")
    st.caption(f"{live['path'].name} (run {info.get('base_run')}), updated "
               f"{info.get('updated', '')[:19]} UTC")
    st.dataframe(live["incidents"], hide_index=True, key="live_incidents",
                 column_config={
                     "severity": st.column_config.NumberColumn(format="%.1f"),
                     "start": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                     "end": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                 })


def store_panel(workspace: Workspace) -> None:
    """Show the store's counts. While an ingest locks the store, retry on a timer."""
    busy = st.session_state.get("store_busy", False)
    interval = STORE_RETRY_SECONDS if busy else None
    st.fragment(_store_counts, run_every=interval)(workspace)


def _store_counts(workspace: Workspace) -> None:
    was_busy = st.session_state.get("store_busy", False)
    try:
        summary = views.store_summary(workspace)
    except StoreBusyError as error:
        st.session_state.store_busy = True
        st.subheader("Store")
        st.warning(STORE_BUSY_MESSAGE)
        with st.expander("Details"):
            st.text(error.detail)
        if not was_busy:
            # A full rerun starts the retry timer of the fragment.
            st.rerun()
        return

    st.session_state.store_busy = False
    if was_busy:
        # A full rerun stops the retry timer.
        st.rerun()
    if summary is None:
        return

    st.subheader("Store")
    first, second, third, fourth = st.columns(4)
    first.metric("Events stored", f"{summary['events']:,}")
    second.metric("Measurements stored", f"{summary['measurements']:,}")
    third.metric("Devices listed", f"{summary['devices']:,}")
    fourth.metric("Quarantined rows", f"{summary['quarantined']:,}")
    last = summary["last_report"]
    if last is not None:
        st.caption(
            f"Last ingest: report {last['report_id']}, "
            f"{ui.escape_markdown(Path(last['file']).name)} into {last['target']}: "
            f"{last['rows_read']} read, {last['rows_stored']} stored, "
            f"{last['rows_rejected']} rejected, {last['rows_deduplicated']} "
            "deduplicated."
        )


def pipeline_panel(root: Path) -> None:
    """Offer to start a run as a separate process and follow its progress."""
    with st.sidebar:
        st.divider()
        process: subprocess.Popen | None = st.session_state.get("pipeline")
        if process is not None:
            pipeline_progress(root)
            return
        if st.button("Run the pipeline", disabled=not root.is_dir()):
            st.session_state.pipeline = start_pipeline(Workspace(root.resolve()))
            st.session_state.pop("pipeline_exit", None)
            st.rerun()
        code = st.session_state.get("pipeline_exit")
        if code == 0:
            st.success("The run finished and is now the latest run.")
        elif code is not None:
            st.error(f"The pipeline stopped with exit code {code}.")
            log_path = root / views.PIPELINE_LOG_FILE
            if log_path.exists():
                with st.expander("Pipeline output"):
                    st.code(log_path.read_text(errors="replace")[-4000:], language=None)


@st.fragment(run_every=PROGRESS_SECONDS)
def pipeline_progress(root: Path) -> None:
    """Show the last progress record, and rerun the page once the process ends."""
    process: subprocess.Popen | None = st.session_state.get("pipeline")
    if process is None:
        return
    code = process.poll()
    if code is None:
        progress = views.read_progress(root / views.PROGRESS_FILE)
        stage = progress["stage"] if progress else "starting"
        fraction = progress["fraction"] if progress else 0.0
        st.progress(fraction, text=ui.escape_markdown(stage))
        return
    st.session_state.pipeline = None
    st.session_state.pipeline_exit = code
    if code == 0:
        # The new run is the latest, so the page drops the run it was showing.
        st.session_state.pop("run_id", None)
        st.query_params.pop("run", None)
    st.rerun()


def start_pipeline(workspace: Workspace) -> subprocess.Popen:
    """Start `core.cli run` on the workspace in its own process, without waiting."""
    (workspace.root / views.PROGRESS_FILE).unlink(missing_ok=True)
    log_file = (workspace.root / views.PIPELINE_LOG_FILE).open("wb")
    try:
        return subprocess.Popen(
            views.pipeline_command(workspace),
            cwd=REPOSITORY,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log_file.close()


def _span(summary: dict) -> str:
    if summary["start"] is None:
        return "none"
    span = pd.Timedelta(summary["end"] - summary["start"])
    hours = span.total_seconds() / 3600
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h"


ui.guard(main)
