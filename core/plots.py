"""Plotly figures for the dashboard, built from what `core.views` returns.

Plotly renders a subset of HTML (`<b>`, `<br>`, `<a href>`) in tick labels, hover text
and annotations, so every data string passes through `escape_label` before it becomes
a label. Figures only draw; they read no files and import no Streamlit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

if TYPE_CHECKING:
    from core.pair_views import PairMatrix
    from core.views import HeatmapMatrix

MAX_MARKERS = 4000
# Plotly.js 3.8 (bundled with Streamlit 1.67) treats every marker of size 6 or less
# within 3 px of a click as equally close and picks the last drawn of them. Markers
# of that size, at most this many per row, stay more than 3 px apart and so are hit
# exactly on any plot wider than 400 px.
MAX_CLICK_COLUMNS = 120
CLICK_MARKER_SIZE = 6
ROW_HEIGHT = 22
# Heatmap margins in pixels (`_heatmap_margin`). In headless Chromium the colour bar
# with its two-line title took 123 px on the right, and the date ticks with the axis
# title 88 px below. Labels of 8 characters took 72 px on the left, about 7 px per
# character, so 8 px per character leaves room for wider letters.
HEATMAP_RIGHT_MARGIN = 130
HEATMAP_BOTTOM_MARGIN = 95
LABEL_CHARACTER_WIDTH = 8
LABEL_PADDING = 16
HEATMAP_MAX_LEFT_MARGIN = 320
NODE_SPACING = 24
TRAINING_PERIOD = "train"
# Colours drawn straight onto the page background are mid-tones that stay readable
# on both the light (#ffffff) and the dark (#0e1117) theme of .streamlit/config.toml.
# Text on a light label background keeps the darker blue.
TRAINING_COLOR = "#d5d9e0"
INCIDENT_COLOR = "#3b82f6"
INCIDENT_LABEL_COLOR = "#1f4e9c"
LABEL_BACKGROUND = "rgba(255,255,255,0.85)"
MEMBER_COLOR = "#c0392b"
TARGET_COLOR = "#e67e22"
CONTEXT_COLOR = "#95a5a6"
OBSERVED_COLOR = "#3b82f6"
EXPECTED_COLOR = "#7f8c8d"
COLORSCALE = "YlOrRd"
# Blues without its near-white and near-black ends, so every cell is visible on
# both theme backgrounds.
EVENTS_COLORSCALE = [[0.0, "#c6dbef"], [0.5, "#6baed6"], [1.0, "#2b7bba"]]
MATRIX_ROW_HEIGHT = 18
SELECTED_COLOR = "#16a085"


def escape_label(text: object) -> str:
    """Return `text` with `&`, `<` and `>` escaped, so Plotly shows it literally."""
    return (
        str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    )


def heatmap_figure(
    matrix: HeatmapMatrix,
    member_cells: pd.DataFrame,
    incidents: pd.DataFrame,
    periods: pd.DataFrame | None = None,
    max_markers: int = MAX_MARKERS,
    max_click_columns: int = MAX_CLICK_COLUMNS,
) -> go.Figure:
    """Draw devices x time evidence with incidents outlined and a click layer.

    Streamlit 1.67 returns an empty selection for a click on a `Heatmap` trace, so a
    `Scatter` of square markers sits over the cells. Plotly.js draws one of them
    (`marker.maxdisplayed`) but hovers and selects all. Each marker covers one
    column, or a group of adjacent columns when there are more than
    `max_click_columns`, and carries one number, which `clicked_cell` turns back
    into the device, the group's start and end, and the incident that covers it. A
    click between markers prefers an incident's marker, because those come last in
    the trace and Plotly picks the last marker in reach.

    The y axis is a category axis in row order, so device names that look like
    numbers ("10", "1E1") stay separate text labels of equal height instead of
    being placed, or merged, on a numeric axis. Shapes address rows by their
    category index.

    Args:
        matrix: a `core.views.HeatmapMatrix`.
        member_cells: (incident_id, start, end, device) rows from
            `core.views.member_cells`.
        incidents: the run's incidents from `core.views.incidents`.
        periods: (period, start, end) rows from `core.views.periods`. The training
            period, which has no evidence, is shaded and labelled.
        max_markers: most click markers; beyond it only incident cells and the
            strongest cells get one.
        max_click_columns: most click markers per row.
    """
    if matrix.empty:
        return _empty_figure("No evidence in this window.")
    if not np.isfinite(matrix.evidence).any():
        return _empty_figure(_no_evidence_message(matrix, periods))

    figure = go.Figure()
    labels = [escape_label(d) for d in matrix.devices]
    figure.add_trace(go.Heatmap(
        # float32 halves the bytes sent and keeps the two decimals the hover shows.
        z=matrix.evidence.astype(np.float32),
        x=column_edges(matrix.starts, matrix.ends),
        y=labels,
        colorscale=COLORSCALE,
        zmin=0.0,
        zmax=max(4.0, float(np.nanmax(matrix.evidence, initial=0.0))),
        colorbar={"title": {"text": "evidence<br>-log10 p", "side": "right"}},
        hovertemplate="%{y}<br>%{x}<br>evidence %{z:.2f}<extra></extra>",
        hoverongaps=False,
        name="evidence",
    ))

    figure.add_trace(_click_layer(matrix, member_cells, max_markers, max_click_columns))
    if periods is not None:
        _shade_training(figure, periods, matrix.starts[0], matrix.ends[-1])
    for shape, label in _incident_outlines(matrix, member_cells, incidents):
        figure.add_shape(shape)
        if label is not None:
            figure.add_annotation(label)

    figure.update_layout(
        height=max(320, 120 + ROW_HEIGHT * len(matrix.devices)),
        margin=_heatmap_margin(matrix.devices),
        # An explicit range, because the markers' padding would widen the axis and
        # the last column can reach past the window's end (`column_edges`).
        xaxis={"title": "time (UTC)", "type": "date",
               "range": [matrix.starts[0], matrix.ends[-1]]},
        yaxis={
            "type": "category",
            "categoryorder": "array",
            "categoryarray": labels,
            "autorange": "reversed",
            "showgrid": False,
            "zeroline": False,
        },
        showlegend=False,
        clickmode="event+select",
        dragmode="zoom",
    )
    return figure


def _heatmap_margin(devices: list[str]) -> dict[str, int]:
    """Return margins wide enough for the device labels, the colour bar and the date
    ticks, so that Plotly.js draws the heatmap once.

    Plotly.js draws a figure, measures its labels and draws it again when they need
    wider margins than the layout gives. In a CPU profile of a page of 200 devices,
    the second draw took about half of the drawing time. A margin that is too narrow
    still works: Plotly.js widens it and draws again.
    """
    longest = max((len(str(device)) for device in devices), default=0)
    left = min(HEATMAP_MAX_LEFT_MARGIN, LABEL_PADDING + LABEL_CHARACTER_WIDTH * longest)
    return {"l": left, "r": HEATMAP_RIGHT_MARGIN, "t": 40, "b": HEATMAP_BOTTOM_MARGIN}


def subgraph_figure(members: pd.DataFrame, edges: pd.DataFrame) -> go.Figure:
    """Draw an incident's devices and pairs with their one-hop context.

    Member devices and pairs are red, targets orange, context grey. A pair that
    went missing (no events where the model expected them) is a dashed line
    without an arrow. A mark at the middle of two devices names each missing
    direction between them with its expected events on hover. Nodes sit on a
    circle, members first, so the figure stays readable without a layout engine.

    Args:
        members: rows of `core.views.incident_members`.
        edges: rows of `core.views.context_edges` (src, dst, evidence, weight and,
            from runs that store them, expected and missing).
    """
    member_devices = _unique(members.loc[members["role"].isin(
        ["device", "sensor"]), "device"])
    pairs = members.loc[members["role"] == "pair", ["device", "peer"]]
    member_pairs = {(s, d) for s, d in zip(pairs["device"], pairs["peer"])}
    member_devices += [d for d in _unique(list(pairs["device"]) + list(pairs["peer"]))
                       if d not in member_devices]
    targets = [d for d in _unique(members.loc[members["role"] == "target", "device"])
               if d not in member_devices]
    context = [d for d in _unique(list(edges["src"]) + list(edges["dst"]))
               if d not in member_devices and d not in targets]
    nodes = member_devices + targets + context
    if not nodes:
        return _empty_figure("This incident lists no devices.")
    position = _circle(nodes)

    figure = go.Figure()
    all_pairs = list(zip(edges["src"], edges["dst"]))
    all_pairs += [p for p in member_pairs if p not in set(all_pairs)]
    missing = _missing_pairs(edges)
    # Both directions between two devices go with the member pair, if either is one.
    member_ends = {frozenset(pair) for pair in member_pairs}
    for flagged in (True, False):
        lost = [p for p in missing if ((frozenset(p) in member_ends) == flagged
                                       and p[0] in position and p[1] in position)]
        if lost:
            figure.add_traces(_missing_traces(lost, missing, position, flagged))
    for src, dst in all_pairs:
        if src not in position or dst not in position or (src, dst) in missing:
            continue
        flagged = (src, dst) in member_pairs
        figure.add_annotation(
            x=position[dst][0], y=position[dst][1],
            ax=position[src][0], ay=position[src][1],
            xref="x", yref="y", axref="x", ayref="y",
            showarrow=True, arrowhead=3, arrowsize=1.2, standoff=14, startstandoff=14,
            arrowwidth=3 if flagged else 1,
            arrowcolor=MEMBER_COLOR if flagged else CONTEXT_COLOR,
            text="",
        )

    groups = (
        ("abnormal device", member_devices, MEMBER_COLOR),
        ("target", targets, TARGET_COLOR),
        ("context", context, CONTEXT_COLOR),
    )
    for name, group, color in groups:
        if not group:
            continue
        figure.add_trace(go.Scatter(
            x=[position[d][0] for d in group],
            y=[position[d][1] for d in group],
            mode="markers+text",
            marker={"size": 22, "color": color, "line": {"width": 1, "color": "#333"}},
            text=[escape_label(d) for d in group],
            # Labels point away from the centre, where the arrows run.
            textposition=[_outward(position[d]) for d in group],
            hovertext=[escape_label(d) for d in group],
            hovertemplate="%{hovertext}<extra>" + name + "</extra>",
            name=name,
        ))
    figure.update_layout(
        # A taller figure spreads many nodes far enough apart for their labels.
        height=int(np.clip(NODE_SPACING * len(nodes), 460, 900)),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"visible": False, "range": [-1.6, 1.6]},
        yaxis={"visible": False, "range": [-1.4, 1.4], "scaleanchor": "x"},
        legend={"orientation": "h", "y": -0.02},
    )
    return figure


def missing_links(edges: pd.DataFrame) -> int:
    """Return how many dashed lines `subgraph_figure` draws for `edges`: the pairs
    of devices with a missing link in either direction."""
    return len({frozenset(pair) for pair in _missing_pairs(edges)})


def _missing_pairs(edges: pd.DataFrame) -> dict[tuple[str, str], float]:
    """Return the expected events per bin of each missing pair in `edges`."""
    if "missing" not in edges or edges.empty:
        return {}
    lost = edges[edges["missing"].fillna(False).astype(bool)]
    return {(src, dst): float(expected)
            for src, dst, expected in zip(lost["src"], lost["dst"], lost["expected"])}


def _missing_traces(
    pairs: list[tuple[str, str]], expected: dict[tuple[str, str], float],
    position: dict[str, tuple[float, float]], flagged: bool,
) -> list[go.Scatter]:
    """Return a dashed line per missing pair and a hover mark at the middle of each
    pair of devices, which names every missing direction between them."""
    color = MEMBER_COLOR if flagged else CONTEXT_COLOR
    name = "missing link" + (" (abnormal)" if flagged else "")
    xs, ys = [], []
    directions: dict[frozenset, list[str]] = {}
    for src, dst in pairs:
        xs += [position[src][0], position[dst][0], None]
        ys += [position[src][1], position[dst][1], None]
        directions.setdefault(frozenset((src, dst)), []).append(
            f"{escape_label(src)} to {escape_label(dst)}: no events, "
            f"{expected[(src, dst)]:.1f} a bin expected")
    # A self-loop's two ends are one device, so its mark sits on the device.
    ends = [sorted(devices) if len(devices) == 2 else list(devices) * 2
            for devices in directions]
    middle_x = [(position[a][0] + position[b][0]) / 2 for a, b in ends]
    middle_y = [(position[a][1] + position[b][1]) / 2 for a, b in ends]
    hover = ["<br>".join(lines) for lines in directions.values()]
    return [
        go.Scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip",
                   line={"color": color, "width": 3 if flagged else 1.5, "dash": "dash"}),
        go.Scatter(x=middle_x, y=middle_y, mode="markers", showlegend=False,
                   marker={"size": 9, "color": color, "symbol": "x"},
                   hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
                   name=name),
    ]


def series_figure(
    series: pd.DataFrame,
    title: str,
    y_label: str,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> go.Figure:
    """Draw observed against expected over time, with the incident interval shaded.

    Args:
        series: rows of `core.views.sensor_series` or `core.views.pair_series`.
        title: figure title (escaped here).
        y_label: y axis title, such as the unit.
        start: incident start, shaded with `end` when both are given.
        end: incident end (exclusive).
    """
    if series.empty:
        return _empty_figure("No values stored for this element.")
    middle = series["start"] + (series["end"] - series["start"]) / 2
    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=middle, y=series["expected"], name="expected", mode="lines",
        line={"color": EXPECTED_COLOR, "dash": "dash"},
    ))
    figure.add_trace(go.Scatter(
        x=middle, y=series["observed"], name="observed", mode="lines+markers",
        line={"color": OBSERVED_COLOR}, marker={"size": 4},
        customdata=np.stack([series["p_value"].to_numpy(dtype=float)], axis=-1),
        hovertemplate="%{y:.3g}<br>p-value %{customdata[0]:.2g}<extra>observed</extra>",
    ))
    if start is not None and end is not None:
        figure.add_vrect(
            x0=start, x1=end, fillcolor=MEMBER_COLOR, opacity=0.12, line_width=0,
        )
    figure.update_layout(
        title={"text": escape_label(title), "font": {"size": 14}},
        height=300,
        margin={"l": 10, "r": 10, "t": 40, "b": 30},
        xaxis={"title": "time (UTC)"},
        yaxis={"title": escape_label(y_label)},
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
    )
    return figure


def loss_figure(loss: pd.DataFrame) -> go.Figure:
    """Draw training and validation loss per epoch."""
    if loss.empty:
        return _empty_figure("The run stored no training loss.")
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=loss["epoch"], y=loss["loss"], name="training"))
    figure.add_trace(go.Scatter(
        x=loss["epoch"], y=loss["validation_loss"], name="validation",
        line={"dash": "dash"},
    ))
    figure.update_layout(
        height=260, margin={"l": 10, "r": 10, "t": 20, "b": 30},
        xaxis={"title": "epoch"}, yaxis={"title": "loss"},
    )
    return figure


def column_edges(starts: pd.DatetimeIndex, ends: pd.DatetimeIndex) -> list:
    """Return the x edges of a heatmap's columns, evenly spaced where they can be.

    Plotly.js, as bundled with Streamlit 1.67, draws a heatmap whose edges are evenly
    spaced as an image of one pixel per cell that the browser scales up
    (`tests/app/test_browser.py` checks the image size). With uneven edges it fills
    each cell on a canvas the size of the plot and then encodes that canvas as a PNG.
    In headless Chromium on the development machine, 200 x 917 cells took about a
    second longer that way.

    The last column of a window often covers fewer bins than the others. So when
    the columns touch and all but the last are one step wide, the last edge is
    put a full step after the last start. That cell then reaches past the
    window's end, where the x axis range cuts it off.

    NOTE: Plotly.js gives a cell's hover time as the middle of its edges, so the
    hover of a widened last cell can show a time after the window's end.

    Args:
        starts: shape [num_columns], the start of each column.
        ends: shape [num_columns], the end of each column.

    Returns:
        num_columns + 1 edges: the starts, then the end of the last column,
        widened to a full step where the columns allow it.
    """
    edges = list(starts) + [ends[-1]]
    if len(starts) < 2:
        return edges
    step = starts[1] - starts[0]
    touching = (ends[:-1] == starts[1:]).all()
    even = (starts[1:] - starts[:-1] == step).all()
    if touching and even and ends[-1] - starts[-1] <= step:
        edges[-1] = starts[-1] + step
    return edges


def _empty_figure(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=escape_label(message), showarrow=False,
                          x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(height=200, xaxis={"visible": False},
                         yaxis={"visible": False})
    return figure


def _no_evidence_message(matrix: HeatmapMatrix, periods: pd.DataFrame | None) -> str:
    """Explain a window without evidence, naming the training period where it lies."""
    if periods is not None:
        training = periods[periods["period"] == TRAINING_PERIOD]
        overlaps = ((training["end"] > matrix.starts[0])
                    & (training["start"] < matrix.ends[-1])).any()
        if overlaps:
            return ("No evidence in this window: the model trained on this time, so it "
                    "is not scored. Pick a later time range.")
    return "No evidence in this window."


def _unique(values) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            seen.setdefault(str(value), None)
    return list(seen)


def _outward(point: tuple[float, float]) -> str:
    """Return the Plotly text position that points away from the circle's centre."""
    x, y = point
    if abs(x) < 0.4:
        return "top center" if y >= 0 else "bottom center"
    vertical = "middle"
    if y > 0.4:
        vertical = "top"
    elif y < -0.4:
        vertical = "bottom"
    horizontal = "right" if x > 0 else "left"
    return f"{vertical} {horizontal}"


def _circle(nodes: list[str]) -> dict[str, tuple[float, float]]:
    angles = np.linspace(0.0, 2.0 * np.pi, num=len(nodes), endpoint=False)
    return {
        node: (float(np.cos(a + np.pi / 2)), float(np.sin(a + np.pi / 2)))
        for node, a in zip(nodes, angles)
    }


def _cell_incidents(
    devices: list[str],
    starts: pd.DatetimeIndex,
    ends: pd.DatetimeIndex,
    member_cells: pd.DataFrame,
) -> np.ndarray:
    """Return the incident id flagged at each cell ("" where none), highest rank wins.

    `member_cells` arrives ranked best first (`core.views.member_cells`), so later
    rows never overwrite a cell that an earlier incident already claimed.
    """
    labels = np.full((len(devices), len(starts)), "", dtype=object)
    row_of = {device: i for i, device in enumerate(devices)}
    for cell in member_cells.itertuples(index=False):
        row = row_of.get(cell.device)
        if row is None:
            continue
        begin = pd.Timestamp(cell.start).tz_convert("UTC")
        finish = pd.Timestamp(cell.end).tz_convert("UTC")
        columns = np.flatnonzero((ends > begin) & (starts < finish))
        free = columns[labels[row, columns] == ""]
        labels[row, free] = cell.incident_id
    return labels


def _click_groups(
    matrix: HeatmapMatrix, max_click_columns: int
) -> tuple[np.ndarray, pd.DatetimeIndex, pd.DatetimeIndex]:
    """Merge adjacent columns into at most `max_click_columns` groups.

    Returns:
        The maximum evidence per row and group (NaN where no column has any), and
        each group's start and end.
    """
    firsts, lasts = _group_columns(len(matrix.starts), max_click_columns)
    evidence = np.fmax.reduceat(matrix.evidence, firsts, axis=1)
    return evidence, matrix.starts[firsts], matrix.ends[lasts]


def _group_columns(columns: int, max_click_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the first and last column of each group of `_click_groups`."""
    size = max(1, math.ceil(columns / max(1, max_click_columns)))
    firsts = np.arange(0, columns, size)
    return firsts, np.minimum(firsts + size, columns) - 1


def _click_layer(
    matrix: HeatmapMatrix,
    member_cells: pd.DataFrame,
    max_markers: int,
    max_click_columns: int,
) -> go.Scatter:
    evidence, group_starts, group_ends = _click_groups(matrix, max_click_columns)
    incident_of = _cell_incidents(matrix.devices, group_starts, group_ends, member_cells)
    rows, columns = np.nonzero(~np.isnan(evidence))
    values = evidence[rows, columns]
    # Keep incident markers, then the strongest others, and draw them in reverse so
    # that the last marker in reach of a click is the most relevant one.
    order = np.lexsort((-values, incident_of[rows, columns] == ""))[:max_markers]
    order = order[::-1]
    if len(order) == 0:
        # Without evidence or with max_markers=0 there is no cell to click.
        return go.Scatter(x=[], y=[], mode="markers", name="cells")
    rows, columns, values = rows[order], columns[order], values[order]

    starts = _utc_naive(group_starts[columns])
    ends = _utc_naive(group_ends[columns])
    # A date axis reads numbers as milliseconds since the epoch, and numbers go to
    # the browser as packed binary. 4,000 ISO strings took 132 kB.
    middle = ((starts + (ends - starts) / 2).astype("datetime64[ms]")
              .astype(np.int64).astype(np.float64))
    labels = np.asarray([escape_label(device) for device in matrix.devices],
                        dtype=object)[rows]
    incident_ids = incident_of[rows, columns].astype(str)
    start_text = np.char.replace(np.datetime_as_string(starts, unit="m"), "T", " ")
    end_text = np.datetime_as_string(ends, unit="m")
    # The device comes from the y label, so the text contains only what varies per
    # cell.
    text = np.array([
        f"{start} to {end[-5:]} UTC<br>evidence {value:.2f}"
        + (f"<br>incident {escape_label(incident_id)}" if incident_id else "")
        for start, end, value, incident_id in zip(
            start_text, end_text, values, incident_ids)
    ], dtype=object)
    return go.Scatter(
        x=middle,
        y=labels,
        mode="markers",
        # Plotly.js draws only `maxdisplayed` markers but hovers and selects every
        # point. Drawing all 4,000 as SVG paths took 0.3 to 0.6 s in headless Chromium.
        marker={"symbol": "square", "size": CLICK_MARKER_SIZE,
                "color": "rgba(255,255,255,0.06)",
                "line": {"width": 0}, "maxdisplayed": 1},
        # One number names the marker's cell for `clicked_cell`. Strings for the
        # device, both ends and the incident took 304 kB for a page of 4,000.
        customdata=(rows * evidence.shape[1] + columns).astype(np.int32),
        text=text,
        hovertemplate="%{y}<br>%{text}<extra></extra>",
        name="cells",
    )


@dataclass(frozen=True)
class ClickedCell:
    """The group of heatmap cells under a click, and the incident that covers it."""

    device: str
    start: pd.Timestamp
    end: pd.Timestamp
    incident_id: str


def clicked_cell(
    matrix: HeatmapMatrix,
    member_cells: pd.DataFrame,
    point: dict,
    max_click_columns: int = MAX_CLICK_COLUMNS,
) -> ClickedCell | None:
    """Return the cell group of a selected click-layer point of `heatmap_figure`.

    `point` is one of the selection points that Streamlit returns. The figure must
    have been drawn from the same matrix, member cells and `max_click_columns`.
    Returns None for a point of another trace, or one whose row label does not
    match the matrix (a selection left over from another figure).
    """
    key = point.get("customdata")
    if isinstance(key, list):
        key = key[0] if len(key) == 1 else None
    if isinstance(key, bool) or not isinstance(key, int | float) or key < 0:
        return None
    firsts, lasts = _group_columns(len(matrix.starts), max_click_columns)
    row, group = divmod(int(key), len(firsts))
    if row >= len(matrix.devices):
        return None
    device = matrix.devices[row]
    if point.get("y") not in (None, escape_label(device)):
        return None
    start = matrix.starts[firsts[group : group + 1]]
    end = matrix.ends[lasts[group : group + 1]]
    incident_of = _cell_incidents([device], start, end, member_cells)
    return ClickedCell(device=device, start=start[0], end=end[0],
                       incident_id=str(incident_of[0, 0]))


def _utc_naive(stamps: pd.DatetimeIndex) -> np.ndarray:
    """Return UTC timestamps as a datetime64[ns] array without a zone."""
    return stamps.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _shade_training(
    figure: go.Figure,
    periods: pd.DataFrame,
    window_start: pd.Timestamp,
    window_end: pd.Timestamp,
) -> None:
    """Shade the training period, where the run stores no evidence, and label it."""
    training = periods[periods["period"] == TRAINING_PERIOD]
    for index, period in enumerate(training.itertuples(index=False)):
        start = max(pd.Timestamp(period.start).tz_convert("UTC"), window_start)
        end = min(pd.Timestamp(period.end).tz_convert("UTC"), window_end)
        if start >= end:
            continue
        figure.add_vrect(
            x0=start, x1=end, fillcolor=TRAINING_COLOR, opacity=0.5, line_width=0,
            layer="below",
        )
        if index == 0:
            figure.add_annotation(
                x=start + (end - start) / 2, y=0.5, xref="x", yref="paper",
                text="training period:<br>no evidence", showarrow=False,
                font={"color": "#4a5260", "size": 12}, bgcolor=LABEL_BACKGROUND,
            )


def _incident_outlines(
    matrix: HeatmapMatrix, member_cells: pd.DataFrame, incidents: pd.DataFrame
):
    """Yield a rectangle per run of adjacent member rows, labelled once per incident."""
    row_of = {device: i for i, device in enumerate(matrix.devices)}
    window_start, window_end = matrix.starts[0], matrix.ends[-1]
    for incident in incidents.itertuples(index=False):
        start = max(pd.Timestamp(incident.start).tz_convert("UTC"), window_start)
        end = min(pd.Timestamp(incident.end).tz_convert("UTC"), window_end)
        if start >= end:
            continue
        devices = member_cells.loc[
            member_cells["incident_id"] == incident.incident_id, "device"]
        rows = sorted({row_of[d] for d in devices if d in row_of})
        for index, block in enumerate(_runs(rows)):
            shape = {
                "type": "rect", "xref": "x", "yref": "y",
                "x0": start, "x1": end, "y0": block[0] - 0.5, "y1": block[-1] + 0.5,
                "line": {"color": INCIDENT_COLOR, "width": 2},
                "fillcolor": "rgba(0,0,0,0)",
            }
            label = None if index else {
                "x": start, "y": block[0] - 0.5, "xref": "x", "yref": "y",
                "text": escape_label(incident.incident_id),
                "showarrow": False, "xanchor": "left", "yanchor": "bottom",
                "font": {"color": INCIDENT_LABEL_COLOR, "size": 11},
                "bgcolor": LABEL_BACKGROUND,
            }
            yield shape, label


def _runs(rows: list[int]) -> list[list[int]]:
    blocks: list[list[int]] = []
    for row in rows:
        if blocks and row == blocks[-1][-1] + 1:
            blocks[-1].append(row)
        else:
            blocks.append([row])
    return blocks


def p_value_histogram_figure(histogram: pd.DataFrame) -> go.Figure:
    """Draw reference p-value counts per bucket, one bar series per element kind.

    A dotted line marks the count per bucket of a uniform distribution.
    """
    if histogram.empty:
        return _empty_figure("The run has no calibration bins at this scale.")
    figure = go.Figure()
    for kind, rows in histogram.groupby("kind", sort=True):
        figure.add_trace(go.Bar(
            x=(rows["lower"] + rows["upper"]) / 2, y=rows["elements"],
            width=rows["upper"] - rows["lower"], name=escape_label(kind),
        ))
    buckets = histogram["bucket"].nunique()
    uniform = histogram["elements"].sum() / buckets
    figure.add_hline(y=uniform, line={"dash": "dot", "color": EXPECTED_COLOR},
                     annotation_text="uniform", annotation_position="top left")
    figure.update_layout(
        barmode="stack", height=300, margin={"l": 10, "r": 10, "t": 20, "b": 30},
        xaxis={"title": "p-value", "range": [0, 1]}, yaxis={"title": "elements"},
    )
    return figure


def other_label(count: int, axis_names: list[str | None], noun: str) -> str:
    """Return the label of a group of `count` devices, unlike every axis name.

    Device names are free text, so a device could be called "other (3 sources)".
    A star is appended until the label differs from every name on the axis.
    """
    label = f"other ({count} {noun})"
    names = {name for name in axis_names if name is not None}
    while label in names:
        label += "*"
    return label


def pair_matrix_figure(
    matrix: PairMatrix,
    colour: str = "events",
    selected: tuple[str, str] | None = None,
    max_markers: int = MAX_MARKERS,
) -> go.Figure:
    """Draw a source x destination grid, coloured by events or by evidence.

    Events are coloured on a log scale, because a few busy pairs carry most of a
    plant's traffic. A `Scatter` of light markers, one per cell with pairs, carries
    the clicks (Streamlit 1.67 returns no selection for a `Heatmap` click), with
    customdata `[source, destination, source grouped, destination grouped]`: the
    name, or "" with the flag 1 for the "other" row or column.

    Args:
        matrix: a `core.pair_views.PairMatrix`.
        colour: "events" or "evidence" (-log10 p-value, higher is more anomalous).
        selected: (source, destination) to outline, when it has a cell.
        max_markers: most click markers; the cells with most events keep theirs.

    Raises:
        ValueError: `colour` is neither "events" nor "evidence".
    """
    if colour not in ("events", "evidence"):
        raise ValueError(f"invalid colour {colour!r}; expected 'events' or 'evidence'")
    if matrix.empty:
        return _empty_figure("No pair carried an element in this window.")
    rows = _matrix_labels(matrix.sources, matrix.grouped_sources, "sources")
    columns = _matrix_labels(matrix.destinations, matrix.grouped_destinations,
                             "destinations")
    figure = go.Figure()
    if colour == "events":
        top = max(1.0, float(np.nanmax(matrix.events, initial=0.0)))
        ticks = [0.0] + [10.0 ** k for k in range(int(math.log10(top)) + 1)]
        figure.add_trace(go.Heatmap(
            z=np.log10(1.0 + matrix.events), x=columns, y=rows,
            colorscale=EVENTS_COLORSCALE, zmin=0.0, zmax=math.log10(1.0 + top),
            colorbar={"title": {"text": "events", "side": "right"},
                      "tickvals": [math.log10(1.0 + t) for t in ticks],
                      "ticktext": [f"{t:,.0f}" for t in ticks]},
            hoverinfo="skip", name="events",
        ))
    else:
        figure.add_trace(go.Heatmap(
            z=matrix.evidence, x=columns, y=rows, colorscale=COLORSCALE, zmin=0.0,
            zmax=max(4.0, float(np.nanmax(matrix.evidence, initial=0.0))),
            colorbar={"title": {"text": "evidence<br>-log10 p", "side": "right"}},
            hoverinfo="skip", name="evidence",
        ))
    figure.add_trace(_matrix_click_layer(matrix, rows, columns, max_markers))
    if selected is not None and selected[0] in matrix.sources and (
            selected[1] in matrix.destinations):
        row = matrix.sources.index(selected[0])
        column = matrix.destinations.index(selected[1])
        figure.add_shape(type="rect", xref="x", yref="y", x0=column - 0.5,
                         x1=column + 0.5, y0=row - 0.5, y1=row + 0.5,
                         line={"color": SELECTED_COLOR, "width": 3})
    figure.update_layout(
        height=max(360, 160 + MATRIX_ROW_HEIGHT * len(rows)),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"type": "category", "categoryorder": "array", "categoryarray": columns,
               "title": "destination", "side": "top", "showgrid": False,
               "tickangle": -45},
        yaxis={"type": "category", "categoryorder": "array", "categoryarray": rows,
               "title": "source", "autorange": "reversed", "showgrid": False},
        showlegend=False, clickmode="event+select", dragmode="zoom",
    )
    return figure


def _matrix_labels(names: list[str | None], grouped: int, noun: str) -> list[str]:
    group = other_label(grouped, names, noun)
    return [escape_label(name) if name is not None else escape_label(group)
            for name in names]


def _matrix_click_layer(matrix: PairMatrix, rows: list[str], columns: list[str],
                        max_markers: int) -> go.Scatter:
    row_index, column_index = np.nonzero(matrix.pairs > 0)
    events = np.nan_to_num(matrix.events[row_index, column_index])
    keep = np.argsort(-events, kind="stable")[:max_markers]
    row_index, column_index = row_index[keep], column_index[keep]
    customdata, hovertext = [], []
    for r, c in zip(row_index, column_index):
        src, dst = matrix.sources[r], matrix.destinations[c]
        customdata.append([src or "", dst or "", int(src is None), int(dst is None)])
        evidence = matrix.evidence[r, c]
        hovertext.append(
            f"{rows[r]} → {columns[c]}<br>{matrix.events[r, c]:,.0f} events"
            + (f"<br>evidence {evidence:.2f}" if not np.isnan(evidence) else "")
            + (f"<br>{matrix.pairs[r, c]} pairs" if matrix.pairs[r, c] > 1 else ""))
    return go.Scatter(
        x=[columns[c] for c in column_index], y=[rows[r] for r in row_index],
        mode="markers",
        marker={"symbol": "square", "size": CLICK_MARKER_SIZE,
                "color": "rgba(255,255,255,0.06)", "line": {"width": 0}},
        customdata=customdata, hovertext=hovertext,
        hovertemplate="%{hovertext}<extra></extra>", name="pairs",
    )
