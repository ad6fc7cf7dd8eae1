"""Plotly figures: token heatmaps pre vs post, keyword-share distributions, recovery per rewrite kind."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from palimpsest.attribution.methods import TokenAttribution

COLOURS = {"pre": "#1f77b4", "post": "#d62728", "floor": "#7f7f7f"}


def token_heatmaps(pairs: Sequence[tuple[str, TokenAttribution, TokenAttribution]], method: str) -> go.Figure:
    """One panel per prompt: rows pre and post, one cell per word with the word written in it, on a diverging
    scale centred on zero (red = raises the answer's log-probability, blue = lowers it)."""
    n = max(1, len(pairs))
    fig = make_subplots(rows=n, cols=1, subplot_titles=[f"[{label}] {pre.prompt} → {pre.answer}"
                                                        for label, pre, _ in pairs] or [""],
                        vertical_spacing=min(0.12, 0.5 / n))
    vmax = max([float(np.nanmax(np.abs(np.r_[a.scores, b.scores]))) for _, a, b in pairs if len(a.scores)] + [1e-6])
    for row, (_, pre, post) in enumerate(pairs, start=1):
        z = np.vstack([np.nan_to_num(pre.scores), np.nan_to_num(post.scores)])
        text = [list(pre.tokens), list(post.tokens)]
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(len(pre.tokens))), y=["pre", "post"], text=text, texttemplate="%{text}",
            textfont={"size": 13}, colorscale="RdBu", reversescale=True, zmid=0, zmin=-vmax, zmax=vmax,
            showscale=row == 1, colorbar={"title": "attribution"},
            hovertemplate="%{text}: %{z:.3f}<extra>%{y}</extra>"), row=row, col=1)
        fig.update_xaxes(showticklabels=False, row=row, col=1)
    fig.update_layout(title=f"Prompt attribution ({method}) of the answer's mean log-probability, pre vs post",
                      height=170 * n + 80, margin={"l": 50, "r": 20, "t": 80, "b": 20})
    return fig


def share_distribution(rows: Sequence[dict]) -> go.Figure:
    """Box plot of the keyword share per item set (forget, neighbours, retain), pre vs post."""
    fig = go.Figure()
    for model in ("pre", "post"):
        xs, ys = [], []
        for r in rows:
            value = r.get(f"keyword_share_{model}")
            if value is not None and np.isfinite(value):
                xs.append(r["set"])
                ys.append(value)
        fig.add_trace(go.Box(x=xs, y=ys, name=model, marker_color=COLOURS[model], boxpoints="all", jitter=0.3))
    fig.update_layout(boxmode="group", title="Share of attribution on the item's keywords (subject + concept keywords)",
                      yaxis={"title": "keyword share of |attribution|", "range": [0, 1.05]},
                      height=380)
    return fig


def recovery_bars(rows: Sequence[dict], models: Sequence[str]) -> go.Figure:
    """Top-1 rate of the answers under each rewrite kind, per model."""
    fig = go.Figure()
    for model in models:
        fig.add_bar(name=model, x=[r["kind"] for r in rows], y=[r.get(f"top1_{model}") for r in rows],
                    marker_color=COLOURS.get(model))
    fig.update_layout(barmode="group", title="Answers recovered by keyword-emphasis rewrites (top-1 rate)",
                      yaxis={"title": "top-1 rate", "range": [0, 1.05]}, height=360)
    return fig
