"""Plotly figures of the restoration analysers."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go


def curves_figure(x: Sequence[int | float], curves: Mapping[str, Sequence[float] | np.ndarray], ceiling: float | None, x_title: str,
                  y_title: str, log_x: bool = False) -> go.Figure:
    """One line per curve against a swept parameter, with the pre model's accuracy as a dashed ceiling."""
    fig = go.Figure()
    for name, values in curves.items():
        fig.add_trace(go.Scatter(x=list(x), y=[float(v) for v in np.asarray(values)], mode="lines+markers",
                                 name=name))
    if ceiling is not None:
        fig.add_hline(y=float(ceiling), line_dash="dash", line_color="#4C78A8", annotation_text="pre (ceiling)")
    fig.update_layout(xaxis_title=x_title, yaxis=dict(title=y_title, range=[0, 1.05]),
                      height=360, margin=dict(l=50, r=20, t=30, b=40))
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def per_layer_figure(table: list[dict], keys: Sequence[str], y_title: str) -> go.Figure:
    fig = go.Figure()
    for key in keys:
        fig.add_trace(go.Bar(x=[row["layer"] for row in table], y=[row.get(key) for row in table], name=key))
    fig.update_layout(barmode="group", xaxis_title="layer", yaxis_title=y_title,
                      height=340, margin=dict(l=50, r=20, t=30, b=40))
    return fig


def bars_figure(labels: Sequence[str], series: Mapping[str, Sequence[float] | np.ndarray], y_title: str) -> go.Figure:
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Bar(x=list(labels), y=[float(v) for v in values], name=name))
    fig.update_layout(barmode="group", yaxis=dict(title=y_title, range=[0, 1.05]),
                      height=340, margin=dict(l=50, r=20, t=30, b=40))
    return fig
