"""Suppression rules created from false positives, and the incidents they match."""

from __future__ import annotations

import streamlit as st

from core.errors import SuppressionNotFoundError
from core.feedback import delete_suppression, list_suppressions, matching_rules
from pages.common import ui

st.set_page_config(page_title="tgloc · Suppressions", layout="wide")


def main() -> None:
    st.title("Suppression rules")
    st.caption(
        "A rule is a device set and an incident type, made from an incident marked "
        "false positive. The incident list marks incidents that match a rule. The "
        "pipeline does not read the rules, so no run loses data."
    )
    context = ui.run_sidebar()
    if context is None:
        ui.no_run_message()
        return

    message = st.session_state.pop("suppression_message", None)
    if message:
        st.success(message)
    rules = list_suppressions(context.workspace)
    st.metric("Rules", len(rules))
    if rules.empty:
        st.info(
            "No rule yet. Open an incident, set its status to false positive, save, "
            "then create a rule from it."
        )
        return

    incidents = ui.load("incidents", context)
    matched = matching_rules(incidents, rules) if not incidents.empty else None
    counts = matched.value_counts() if matched is not None else {}
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


ui.guard(main)
