"""Sidebar, cached view calls and error display shared by every dashboard page.

The run and incident a page shows live in the URL (`?run=...&incident=...&scale=...`),
so a view can be shared by its address. The workspace path comes from the
`TGLOC_WORKSPACE` environment variable and can be changed in the sidebar.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import model_views, pair_views, views
from core.errors import RunNotFoundError, TglocError
from core.feedback import flag_incidents
from core.store import Workspace

log = logging.getLogger(__name__)

WORKSPACE_ENV = "TGLOC_WORKSPACE"
DEFAULT_WORKSPACE = "./workspace"
CACHE_SECONDS = 3600
CACHE_ENTRIES = 256
INCIDENT_PAGE = "pages/2_Incident.py"
SHOW_PARAMETER = "show"
# Incident flags a page hides by default: flag column, name in the `show` query
# parameter, and the toggle's label.
HIDDEN_FLAGS = (
    ("suppressed_by", "suppressed", "Show suppressed"),
    ("maintenance", "maintenance", "Show during maintenance"),
)
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~:$])")

# Views a page may call through `load`; each takes (workspace, run_id, ...).
CACHED_VIEWS: dict[str, Callable[..., Any]] = {
    "run_summary": views.run_summary,
    "run_info": views.run_info,
    "scales": views.scales,
    "device_filters": views.device_filters,
    "device_names": views.device_names,
    "heatmap_matrix": views.heatmap_matrix,
    "incidents": views.incidents,
    "incident": views.incident,
    "incident_members": views.incident_members,
    "member_cells": views.member_cells,
    "member_sensor_flags": views.member_sensor_flags,
    "periods": views.periods,
    "sensor_series": views.sensor_series,
    "pair_series": views.pair_series,
    "context_edges": views.context_edges,
    "training_loss": views.training_loss,
    "pair_changes": pair_views.pair_changes,
    "pair_matrix": pair_views.pair_matrix,
    "reference_p_values": model_views.reference_p_values,
}


@dataclass(frozen=True)
class RunContext:
    """The workspace and run a page shows, with the run file's version stamp."""

    workspace: Workspace
    run_id: str
    version: int


def escape_markdown(text: object) -> str:
    """Return `text` with Markdown punctuation escaped, so Streamlit shows it as is."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def show_error(error: TglocError) -> None:
    """Show an error's headline, its detail in an expander and a retry button."""
    st.error(escape_markdown(error.headline))
    if error.detail:
        with st.expander("Details"):
            st.text(error.detail)
    st.button("Retry", key="retry_after_error")


def guard(body: Callable[[], None]) -> None:
    """Run a page body, turning errors into messages instead of tracebacks."""
    try:
        body()
    except TglocError as error:
        show_error(error)
    except Exception as error:
        log.exception("dashboard page failed")
        st.error("This view failed unexpectedly. The server log has the traceback.")
        with st.expander("Details"):
            st.text(f"{type(error).__name__}: {error}")


def workspace_path() -> Path:
    """Render the workspace field in the sidebar and return the chosen folder."""
    if "workspace_path" not in st.session_state:
        default = os.environ.get(WORKSPACE_ENV, DEFAULT_WORKSPACE)
        st.session_state.workspace_path = default
    # A widget's state is dropped when a page that lacks it runs, so the value is
    # kept under a plain key and copied into the widget before it renders.
    st.session_state.workspace_widget = st.session_state.workspace_path
    st.sidebar.text_input(
        "Workspace folder",
        key="workspace_widget",
        on_change=_remember_workspace,
        help=f"Folder with store.duckdb and runs/. Default: ${WORKSPACE_ENV} or "
        f"{DEFAULT_WORKSPACE}.",
    )
    return Path(st.session_state.workspace_path).expanduser()


def run_sidebar() -> RunContext | None:
    """Render the workspace and run choosers; return the chosen run or None.

    The run comes from the `run` query parameter, then from this session's last
    choice, then the latest run. When there is no run, the sidebar shows what to do
    next and None is returned.

    Raises:
        RunNotFoundError: the `run` query parameter names no published run; the
            detail lists the runs that exist.
    """
    root = workspace_path()
    if not root.is_dir():
        st.sidebar.warning("This folder does not exist yet.")
        return None
    workspace = Workspace(root.resolve())
    runs = views.list_runs(workspace)
    if not runs:
        st.sidebar.info("No published run in this workspace yet.")
        return None

    in_address = st.query_params.get("run")
    if in_address and in_address not in runs:
        # Showing another run under this address would pass it off as the one
        # requested, so the page stops here until a run is chosen.
        st.session_state.pop("run_id", None)
        st.session_state.run_widget = None
        st.sidebar.selectbox("Run", runs, key="run_widget", on_change=_remember_run,
                             placeholder="Choose a run",
                             help="Published runs, newest first.")
        raise RunNotFoundError(
            f"run {in_address!r} from the address not found in {root}",
            f"Published runs, newest first: {', '.join(runs)}. Choose one in the "
            "sidebar's Run list.",
        )
    requested = in_address or st.session_state.get("run_id")
    run_id = requested if requested in runs else runs[0]
    st.session_state.run_id = run_id
    st.session_state.run_widget = run_id
    st.sidebar.selectbox(
        "Run", runs, key="run_widget", on_change=_remember_run,
        help="Published runs, newest first.",
    )
    st.query_params["run"] = run_id
    return RunContext(workspace, run_id, views.run_version(workspace, run_id))


def load(view: str, context: RunContext, *args: Any, **kwargs: Any) -> Any:
    """Call a `core.views` function for the context's run, cached by its arguments."""
    frozen = tuple(sorted((k, _freeze(v)) for k, v in kwargs.items()))
    return _cached_view(
        view, str(context.workspace.root), context.run_id, context.version,
        tuple(_freeze(a) for a in args), frozen,
    )


def visible_incidents(
    context: RunContext, incidents: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Render the toggles for hidden incidents; return (visible, all flagged).

    Incidents that match an active suppression rule or fall in a maintenance window
    are hidden unless their toggle is on. Each toggle's label gives the number it
    hides, and its state lives in the `show` query parameter
    (`?show=suppressed,maintenance`), so a shared address shows the same list.
    """
    flagged = flag_incidents(context.workspace, incidents)
    requested = set(filter(None, st.query_params.get(SHOW_PARAMETER, "").split(",")))
    shown = set()
    columns = st.columns(len(HIDDEN_FLAGS))
    for column, (flag, name, label) in zip(columns, HIDDEN_FLAGS):
        count = int(flagged[flag].notna().sum())
        if column.toggle(f"{label} ({count})", value=name in requested,
                         key=f"show_{name}"):
            shown.add(name)
    if shown:
        st.query_params[SHOW_PARAMETER] = ",".join(sorted(shown))
    else:
        st.query_params.pop(SHOW_PARAMETER, None)

    keep = pd.Series(True, index=flagged.index)
    for flag, name, _ in HIDDEN_FLAGS:
        if name not in shown:
            keep &= flagged[flag].isna()
    return flagged[keep], flagged


def open_incident(run_id: str, incident_id: str, scale: int | None = None) -> None:
    """Switch to the drill-down page for one incident, with its ids in the URL."""
    params = {"run": run_id, "incident": incident_id}
    if scale is not None:
        params["scale"] = str(scale)
    st.switch_page(INCIDENT_PAGE, query_params=params)


def no_run_message() -> None:
    """Explain how to get a first run into the workspace."""
    st.info(
        "No run yet: run `tgloc demo` to load the sample plant and analyse it, or "
        "import files and start a run from the home page."
    )


@st.cache_data(ttl=CACHE_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def _cached_view(
    view: str,
    root: str,
    run_id: str,
    version: int,
    args: tuple[Any, ...],
    kwargs: tuple[tuple[str, Any], ...],
) -> Any:
    # `version` is part of the cache key only: a republished run gets a new one.
    function = CACHED_VIEWS[view]
    return function(Workspace(Path(root)), run_id, *args, **dict(kwargs))


def _freeze(value: Any) -> Any:
    if isinstance(value, list | set):
        return tuple(value)
    return value


def _remember_workspace() -> None:
    st.session_state.workspace_path = st.session_state.workspace_widget
    st.session_state.pop("run_id", None)
    st.query_params.pop("run", None)
    st.query_params.pop("incident", None)


def _remember_run() -> None:
    st.session_state.run_id = st.session_state.run_widget
    st.query_params["run"] = st.session_state.run_widget
    st.query_params.pop("incident", None)
