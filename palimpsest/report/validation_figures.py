"""Figures of a validation report (validation.json): confusion matrices, per-analyser AUC and ROC curves."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from palimpsest.report.style import GREY, OKABE_ITO, SEQUENTIAL_SCALE, style_figure


def confusion_figure(conf: dict, title: str = "") -> go.Figure:
    labels = conf.get("labels", {})
    truths, verdicts = list(labels.get("truth", [])), list(labels.get("verdict", []))
    z = conf.get("matrix", [])
    fig = go.Figure(go.Heatmap(z=z, x=verdicts, y=truths, colorscale=SEQUENTIAL_SCALE, text=z,
                               texttemplate="%{text}", textfont={"size": 14}, xgap=2, ygap=2,
                               colorbar={"title": {"text": "cases"}},
                               hovertemplate="truth %{y}, verdict %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title or None, height=340, margin={"l": 110, "r": 20, "t": 50 if title else 20, "b": 60},
                      xaxis={"title": "verdict", "showgrid": False},
                      yaxis={"title": "ground truth", "autorange": "reversed", "showgrid": False})
    return style_figure(fig)


def auc_rows(aucs: dict[str, dict]) -> list[tuple[str, dict]]:
    return sorted(aucs.items(), key=lambda kv: (kv[1].get("auc") is None, -(kv[1].get("auc") or 0.0), kv[0]))


def auc_figure(rows: list[tuple[str, dict]]) -> go.Figure:
    names, values, lows, highs = [], [], [], []
    for name, entry in rows:
        auc = entry.get("auc")
        if auc is None:
            continue
        lo, hi = entry.get("ci") or (auc, auc)
        names.append(name)
        values.append(auc)
        lows.append(auc - lo)
        highs.append(hi - auc)
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=OKABE_ITO["blue"], name="ROC AUC",
                           error_y={"type": "data", "symmetric": False, "array": highs, "arrayminus": lows}))
    fig.add_hline(y=0.5, line_dash="dot", line_color=GREY)
    fig.add_annotation(text="chance<br>(0.5)", xref="paper", x=1.01, xanchor="left", yref="y", y=0.5,
                       showarrow=False, align="left", font={"color": GREY, "size": 10})
    fig.update_layout(yaxis={"title": "ROC AUC, suppressed vs deleted (95% CI)", "range": [0, 1.05]}, height=400,
                      xaxis={"title": "analysis", "tickangle": -40}, margin={"l": 60, "r": 70, "t": 30, "b": 120},
                      showlegend=False)
    return style_figure(fig)


Scores = dict[str, dict[str, list[float]]]


def _scores(cases: list[dict]) -> Scores:
    """Per analyser, the residues (and their CI lower bounds) of the suppressed and deleted cases where it
    concluded, as analyser_auc reads them; only analysers with at least 2 of each."""
    scores: Scores = {}
    for case in cases:
        for name, entry in (case.get("residues") or {}).items():
            s = scores.setdefault(name, {"pos": [], "neg": [], "pos_low": [], "neg_low": []})
            value = entry.get("residue")
            if case.get("truth") not in ("suppressed", "deleted") or entry.get("status") != "ok" \
                    or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            side = "pos" if case["truth"] == "suppressed" else "neg"
            s[side].append(float(value))
            s[f"{side}_low"].append(float((entry.get("ci") or (value, value))[0]))
    return {name: s for name, s in sorted(scores.items()) if len(s["pos"]) >= 2 and len(s["neg"]) >= 2}


def _roc(pos: list[float], neg: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, thresholds = roc_curve(labels, np.r_[pos, neg], drop_intermediate=False)
    return fpr, tpr, thresholds


def roc_figure(cases: list[dict], aucs: dict[str, dict] | None = None, *,
               suppressed_min_residue: float | None = None, columns: int = 4) -> go.Figure:
    """One ROC panel per analyser (suppressed = positive, deleted = negative), its AUC [95% CI] in the panel title;
    where the threshold is given, the verdict's own operating point: CI lower bound >= suppressed_min_residue."""
    aucs = aucs or {}
    scores = _scores(cases)
    if not scores:
        raise ValueError("no analyser has a residue on at least 2 suppressed and 2 deleted cases: no ROC curve")
    names = sorted(scores, key=lambda n: (-(aucs.get(n, {}).get("auc") or 0.0), n))
    rows = math.ceil(len(names) / columns)

    def label(name: str) -> str:
        entry = aucs.get(name) or {}
        if entry.get("auc") is None:
            return name
        ci = entry.get("ci")
        return f"{name}: AUC {entry['auc']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[label(n) for n in names],
                        horizontal_spacing=0.07, vertical_spacing=0.16 if rows < 4 else 0.1)
    for index, name in enumerate(names):
        row, col = index // columns + 1, index % columns + 1
        s = scores[name]
        fpr, tpr, _ = _roc(s["pos"], s["neg"])
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": GREY, "dash": "dot", "width": 1},
                                 name="chance", legendgroup="chance", showlegend=index == 0, hoverinfo="skip"),
                      row=row, col=col)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line={"color": OKABE_ITO["blue"], "width": 2},
                                 name="ROC", legendgroup="roc", showlegend=index == 0,
                                 hovertemplate=f"{name}<br>FPR %{{x:.2f}}, TPR %{{y:.2f}}<extra></extra>"),
                      row=row, col=col)
        if suppressed_min_residue is not None:
            tp = float(np.mean(np.asarray(s["pos_low"]) >= suppressed_min_residue))
            fp = float(np.mean(np.asarray(s["neg_low"]) >= suppressed_min_residue))
            fig.add_trace(go.Scatter(x=[fp], y=[tp], mode="markers",
                                     marker={"color": OKABE_ITO["vermillion"], "size": 9, "symbol": "diamond"},
                                     name=f"verdict rule: CI lower bound ≥ suppressed_min_residue = "
                                          f"{suppressed_min_residue:g}",
                                     legendgroup="threshold", showlegend=index == 0,
                                     hovertemplate=f"{name}: FPR %{{x:.2f}}, TPR %{{y:.2f}}<extra></extra>"),
                          row=row, col=col)
    fig.update_annotations(font_size=11)
    fig.update_xaxes(range=[-0.02, 1.02], tickvals=[0, 0.5, 1], constrain="domain")
    fig.update_yaxes(range=[-0.02, 1.02], tickvals=[0, 0.5, 1])
    for col in range(1, min(columns, len(names)) + 1):  # under the lowest panel of each column
        last_row = (len(names) - col) // columns + 1
        fig.update_xaxes(title_text="false-positive rate", row=last_row, col=col, title_font_size=11)
    for row in range(1, rows + 1):
        fig.update_yaxes(title_text="true-positive rate", row=row, col=1, title_font_size=11)
    fig.update_layout(height=230 * rows + 120, width=230 * columns + 120, margin={"l": 70, "r": 20, "t": 40, "b": 110},
                      legend={"y": -0.08 if rows > 2 else -0.15})
    return style_figure(fig)


def roc_threshold(report: dict) -> float | None:
    """The suppressed_min_residue the ROC panels mark: the fitted one, else the run's."""
    fitted = ((report.get("fit") or {}).get("values") or {}).get("suppressed_min_residue")
    return fitted if fitted is not None else (report.get("config") or {}).get("suppressed_min_residue")


def validation_figures(report: dict) -> dict[str, go.Figure]:
    """Every figure of a validation report, by name: confusion matrices, AUC per analyser, ROC curves."""
    figures: dict[str, go.Figure] = {}
    held = (report.get("held_out") or {}).get("confusion") or {}
    if held.get("labels"):
        figures["validate/Confusion matrix, held-out worlds"] = confusion_figure(held)
    everything = report.get("confusion") or {}
    if everything.get("labels"):
        figures["validate/Confusion matrix, all worlds (run thresholds)"] = confusion_figure(everything)
    rows = auc_rows(report.get("analyser_auc") or {})
    if any(entry.get("auc") is not None for _, entry in rows):
        figures["validate/Residue AUC per analyser"] = auc_figure(rows)
    cases = report.get("cases") or []
    if cases and not any("residues" in c for c in cases):
        raise ValueError("validation.json has no per-case residues (written by an older palimpsest): re-run "
                         "`palimpsest validate` to draw the ROC curves")
    if any(c.get("residues") for c in cases):
        try:
            figures["validate/ROC curve per analyser"] = roc_figure(cases, report.get("analyser_auc"),
                                                                    suppressed_min_residue=roc_threshold(report))
        except ValueError:
            pass  # fewer than 2 cases of each truth: the AUC table already says so
    return figures

