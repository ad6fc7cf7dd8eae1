"""Plotly figures of per-layer curves, shared by the probes-stage analysers."""

from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go

COLOURS = {"pre": "#0072B2", "post": "#D55E00", "floor": "#000000", "shuffled": "#E69F00", "transfer": "#009E73"}
Z95 = 1.959963984540054


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p over n items (stays inside [0, 1], sane at p = 0 or 1)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(row: dict, y: str, n: int | None) -> tuple[float, float] | None:
    if isinstance(row.get(f"{y}_ci"), (list, tuple)) and len(row[f"{y}_ci"]) == 2:
        return float(row[f"{y}_ci"][0]), float(row[f"{y}_ci"][1])
    count = row.get("n", n)
    if isinstance(count, int) and count > 0 and 0.0 <= row[y] <= 1.0:
        return wilson(float(row[y]), count)
    return None


def per_layer_figure(rows: Sequence[dict], *, x: str, y: str, series: str, title: str, y_title: str,
                     facet: str | None = None, log_y: bool = False, n: int | None = None) -> go.Figure:
    """One line per value of `series` (and per `facet` value, dashed styles) over `x` (the layer).

    A 95% band is drawn around a line whose rows carry `{y}_ci` ([lo, hi]) or, for a proportion, a count of items
    (`n` in the rows, or the `n` argument): the Wilson interval.
    """
    fig = go.Figure()
    facets = sorted({row[facet] for row in rows}) if facet else [None]
    dashes = ("solid", "dash", "dot", "dashdot")
    for f_index, f_value in enumerate(facets):
        subset = [row for row in rows if facet is None or row[facet] == f_value]
        for name in dict.fromkeys(row[series] for row in subset):
            points = sorted(((row[x], row[y], _interval(row, y, n)) for row in subset
                             if row[series] == name and row[y] is not None), key=lambda p: p[0])
            if not points:
                continue
            label = f"{name}" if facet is None else f"{name} ({f_value})"
            colour = COLOURS.get(str(name).split(" ")[0])
            if all(p[2] is not None for p in points):
                xs = [p[0] for p in points]
                fig.add_trace(go.Scatter(
                    x=xs + xs[::-1], y=[p[2][1] for p in points] + [p[2][0] for p in points][::-1], fill="toself",
                    mode="lines", line={"width": 0}, name=f"{label} 95% CI", legendgroup=label, showlegend=False,
                    hoverinfo="skip"))
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=label,
                legendgroup=label, line={"color": colour, "dash": dashes[f_index % len(dashes)]},
            ))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=y_title,
                      legend={"orientation": "h", "y": -0.2})
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def probe_accuracy_figures(rows: Sequence[dict], positions: Sequence[str], n: int | None = None) -> dict:
    """The probes analyser's figures: accuracy per layer at each token position (Wilson bands over n test items)."""
    return {f"Probe accuracy per layer ({position} position)": per_layer_figure(
        [r for r in rows if r["position"] == position], x="layer", y="accuracy", series="variant",
        title=f"Probe accuracy on forget items, {position} position",
        y_title="accuracy (fraction of items)" + (f"; band: 95% Wilson CI, n = {n}" if n else ""), n=n)
        for position in positions}
