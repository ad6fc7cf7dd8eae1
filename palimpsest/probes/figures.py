"""Plotly figures of per-layer curves, shared by the probes-stage analysers."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

COLOURS = {"pre": "#1f77b4", "post": "#d62728", "floor": "#7f7f7f", "shuffled": "#bcbd22", "transfer": "#9467bd"}


def per_layer_figure(rows: Sequence[dict], *, x: str, y: str, series: str, title: str, y_title: str,
                     facet: str | None = None, log_y: bool = False) -> go.Figure:
    """One line per value of `series` (and per `facet` value, dashed styles) over `x` (the layer)."""
    fig = go.Figure()
    facets = sorted({row[facet] for row in rows}) if facet else [None]
    dashes = ("solid", "dash", "dot", "dashdot")
    for f_index, f_value in enumerate(facets):
        subset = [row for row in rows if facet is None or row[facet] == f_value]
        for name in dict.fromkeys(row[series] for row in subset):
            points = sorted((row[x], row[y]) for row in subset if row[series] == name and row[y] is not None)
            if not points:
                continue
            label = f"{name}" if facet is None else f"{name} ({f_value})"
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=label,
                line={"color": COLOURS.get(str(name).split(" ")[0]), "dash": dashes[f_index % len(dashes)]},
            ))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=y_title, template="plotly_white",
                      legend={"orientation": "h", "y": -0.2})
    if log_y:
        fig.update_yaxes(type="log")
    return fig
