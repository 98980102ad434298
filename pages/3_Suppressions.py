"""Suppression rules, maintenance windows and behaviour accepted as normal."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.accepted import list_accepted
from core.errors import SuppressionNotFoundError
from core.feedback import delete_suppression, flag_incidents, list_suppressions
from core.maintenance import (
    add_maintenance_window,
    delete_maintenance_window,
    list_maintenance_windows,
)
from pages.common import ui

st.set_page_config(page_title="tgloc · Suppressions", layout="wide")

TIME_HELP = "UTC, written as 2026-03-01T08:00."
TIME_EXAMPLE = "2026-03-01T08:00"


def main() -> None:
    st.title("Suppression rules")
    st.caption(
        "A rule is a device set and an incident type, made from an incident marked "
        "false positive. The incident list and the heatmap hide incidents that match "
        "an active rule unless \"Show suppressed\" is on. The run file keeps them."
    )
    context = ui.run_sidebar()
    if context is None:
        ui.no_run_message()
        return

    message = st.session_state.pop("suppression_message", None)
    if message:
        st.success(message)

    flagged = flag_incidents(context.workspace, ui.load("incidents", context))
    _rules(context, flagged)
    _maintenance(context, flagged)
    _accepted(context)


def _rules(context: ui.RunContext, flagged: pd.DataFrame) -> None:
    rules = list_suppressions(context.workspace)
    st.metric("Rules", len(rules))
    if rules.empty:
        st.info(
            "No rule yet. Open an incident, set its status to false positive, save, "
            "then create a rule from it."
        )
        return
    counts = flagged["suppressed_by"].value_counts()
    rules["matches_in_run"] = [int(counts.get(rule, 0)) for rule in rules["rule_id"]]
    st.dataframe(
        rules[["rule_id", "type", "devices", "matches_in_run", "incident_id",
               "created", "active"]],
        hide_index=True,
        key="rules",
        column_config={
            "devices": st.column_config.ListColumn("devices"),
            "matches_in_run": st.column_config.NumberColumn("matches in this run"),
            "incident_id": st.column_config.TextColumn("from incident"),
        },
    )
    chosen = st.selectbox("Rule to delete", rules["rule_id"].tolist(),
                          key="rule_to_delete")
    st.button("Delete rule", key="delete_rule", on_click=_delete,
              args=(context.workspace, chosen))


def _delete(workspace, rule_id: int) -> None:
    # A callback runs before the page is drawn again, so the table shows the
    # rules without this one.
    try:
        delete_suppression(workspace, int(rule_id))
        st.session_state.suppression_message = f"Suppression rule {rule_id} deleted."
    except SuppressionNotFoundError as exc:
        st.session_state.suppression_message = f"{exc.headline}. {exc.detail}"


def _maintenance(context: ui.RunContext, flagged: pd.DataFrame) -> None:
    st.header("Maintenance windows")
    st.caption(
        "An incident is during maintenance when its interval overlaps a window that "
        "covers every device or at least one of its member devices. The incident "
        "list and the heatmap hide such incidents unless \"Show during maintenance\" "
        "is on. Runs still score these intervals."
    )
    added = st.session_state.pop("window_added", None)
    if added is not None:
        st.success(f"Maintenance window {added} saved.")
    windows = list_maintenance_windows(context.workspace)
    st.metric("Maintenance windows", len(windows))
    if not windows.empty:
        counts = flagged["maintenance"].value_counts()
        windows["incidents_in_run"] = [int(counts.get(window, 0))
                                       for window in windows["window_id"]]
        windows["devices"] = [names if names is not None else ["all devices"]
                              for names in windows["devices"]]
        st.dataframe(
            windows[["window_id", "start", "end", "devices", "reason",
                     "incidents_in_run", "created"]],
            hide_index=True, key="maintenance_windows",
            column_config={
                "devices": st.column_config.ListColumn("devices"),
                "start": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                "end": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                "incidents_in_run": st.column_config.NumberColumn(
                    "incidents in this run"),
            },
        )
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        chosen = left.selectbox("Window to delete", windows["window_id"].tolist(),
                                index=None, placeholder="pick a window id")
        if right.button("Delete window", key="delete_window",
                        disabled=chosen is None):
            delete_maintenance_window(context.workspace, int(chosen))
            st.rerun()
    _window_form(context)


def _window_form(context: ui.RunContext) -> None:
    summary = ui.load("run_summary", context)
    devices = ui.load("device_names", context)
    with st.form("maintenance_window"):
        st.subheader("Declare a maintenance window")
        chosen = st.multiselect("Devices", devices, placeholder="all devices",
                                help="Leave empty for every device.")
        left, right = st.columns(2)
        start = left.text_input("Start", placeholder=_placeholder(summary["start"]),
                                help=TIME_HELP)
        end = right.text_input("End", placeholder=_placeholder(summary["end"]),
                               help=TIME_HELP + " The end is excluded.")
        reason = st.text_input("Reason")
        if not st.form_submit_button("Save window"):
            return
    try:
        window_id = add_maintenance_window(context.workspace, start.strip(),
                                           end.strip(), chosen, reason)
    except ValueError as error:
        st.error(ui.escape_markdown(error))
        return
    st.session_state.window_added = window_id
    st.rerun()


def _placeholder(stamp) -> str:
    """Return a run bound as an example time, or a fixed example without one."""
    return TIME_EXAMPLE if stamp is None else f"{stamp:%Y-%m-%dT%H:%M}"


def _accepted(context: ui.RunContext) -> None:
    st.header("Accepted as the new normal")
    st.caption(
        "The next run of this workspace trains on these intervals: their bins move "
        "from the scored period into the training period, for every device. The "
        "run's output lists each interval and how many bins it used."
    )
    accepted = list_accepted(context.workspace)
    if accepted.empty:
        st.info("Nothing accepted yet. An incident's page offers \"Accept as the new "
                "normal\".")
        return
    trained = _trained_by_run(context)
    accepted["members"] = [
        [_member_label(member) for member in members]
        for members in accepted["members"]
    ]
    accepted["in_this_run"] = [trained.get(int(i), "pending: a later run trains on it")
                               for i in accepted["accept_id"]]
    st.dataframe(
        accepted[["accept_id", "incident_id", "start", "end", "members",
                  "accepted_by", "created", "in_this_run"]],
        hide_index=True, key="accepted",
        column_config={
            "members": st.column_config.ListColumn("members"),
            "start": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "end": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "in_this_run": st.column_config.TextColumn("in this run"),
        },
    )


def _trained_by_run(context: ui.RunContext) -> dict[int, str]:
    """Describe, per accepted id, how the shown run used the interval."""
    used = {}
    for record in ui.load("run_info", context).get("accepted", []):
        bins = int(record.get("bins", 0))
        used[int(record["accept_id"])] = (
            f"in the reference, {bins} bins" if bins else "outside this run's data")
    return used


def _member_label(member: dict) -> str:
    if member.get("role") == "pair":
        return f"pair {member['device']} → {member['peer']}"
    if member.get("role") == "sensor":
        return f"sensor {member['device']} · {member['sensor']}"
    return f"{member.get('role')} {member.get('device')}"


ui.guard(main)
