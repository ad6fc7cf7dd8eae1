"""The demo's comparison page: one row per post-model, its verdict and every residue score."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go

from palimpsest.audit.runner import AuditResult
from palimpsest.io import atomic_write_text
from palimpsest.report.html import FigureCounter, badge, esc, fmt, page
from palimpsest.report.style import RESIDUE_SCALE, style_figure


def residue_analyses(results: dict[str, AuditResult]) -> list[str]:
    return list(dict.fromkeys(name for r in results.values() for name, a in r.analyses.items() if a.kind == "residue"))


def comparison_figure(results: dict[str, AuditResult]) -> go.Figure:
    """Residue per method (rows) and analysis (columns), the value in each cell; the colour bar marks the verdict's
    deleted_max_residue and suppressed_min_residue (of the first result's config)."""
    analyses = residue_analyses(results)
    z = [[(r.analyses[n].residue if n in r.analyses and r.analyses[n].residue is not None else None)
          for n in analyses] for r in results.values()]
    text = [["" if v is None else f"{v:.2f}" for v in row] for row in z]
    config = next(iter(results.values())).config if results else None
    ticks = {0.0: "0 (floor)", 1.0: "1 (pre)"}
    if config is not None:
        ticks[config.deleted_max_residue] = f"{config.deleted_max_residue:g} deleted_max_residue"
        ticks[config.suppressed_min_residue] = f"{config.suppressed_min_residue:g} suppressed_min_residue"
    fig = go.Figure(go.Heatmap(
        z=z, x=analyses, y=list(results), colorscale=RESIDUE_SCALE, zmin=0, zmax=1, text=text,
        texttemplate="%{text}", textfont={"size": 10}, xgap=1, ygap=1, hoverongaps=False,
        hovertemplate="%{y} · %{x}: residue %{z:.2f}<extra></extra>",
        colorbar={"title": {"text": "calibrated residue"}, "tickvals": sorted(ticks),
                  "ticktext": [ticks[v] for v in sorted(ticks)]}))
    fig.update_layout(height=160 + 34 * len(results), width=max(700, 90 + 52 * len(analyses) + 260),
                      margin={"l": 90, "r": 20, "t": 20, "b": 130},
                      xaxis={"title": "analysis (blank: no conclusion)", "tickangle": -45, "showgrid": False},
                      yaxis={"title": "unlearning method", "autorange": "reversed", "showgrid": False},
                      plot_bgcolor="#eeeeee")
    return style_figure(fig)


def render_comparison(results: dict[str, AuditResult], *, title: str, expected: dict[str, str] | None = None,
                      notes: list[str] | None = None) -> str:
    expected = expected or {}
    analyses = residue_analyses(results)
    head = ["method", "verdict", "expected", "collateral", "forget acc pre → post", "other forms", "retain"]
    rows = []
    for method, r in results.items():
        b = r.behaviour.summary if r.behaviour else {}
        cells = [f'<a href="{esc(method)}/report.html">{esc(method)}</a>', badge(r.verdict),
                 esc(expected.get(method, "—")) + (" ✓" if expected.get(method, "").split(" ")[0] == r.verdict else
                                                    (" ✗" if method in expected else "")),
                 "yes" if r.collateral else "no",
                 f"{fmt(b.get('forget_acc_pre'))} → {fmt(b.get('forget_acc_post'))}",
                 f"{fmt(b.get('paraphrase_acc_pre'))} → {fmt(b.get('paraphrase_acc_post'))}",
                 f"{fmt(b.get('retain_acc_pre'))} → {fmt(b.get('retain_acc_post'))}"]
        for name in analyses:
            a = r.analyses.get(name)
            if a is None or a.residue is None:
                cells.append(f'<span class="muted">{esc(a.status if a else "—")}</span>')
            else:
                cells.append(f"{a.residue:.2f}" + (f' <span class="muted">[{a.ci[0]:.2f}, {a.ci[1]:.2f}]</span>'
                                                   if a.ci else ""))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{esc(h)}</th>" for h in head + analyses)
    fig = comparison_figure(results)
    figures = FigureCounter()
    body = [f"<h1>{esc(title)}</h1>",
            "<p>Each row is one post-model audited against the same pre model and concept. Residue scores are "
            "calibrated: 0 = the floor (a model that never learned the concept), 1 = as before unlearning. "
            "Click a method for its full report.</p>",
            f'<div class="scroll"><table><tr>{header}</tr>{"".join(rows)}</table></div>',
            figures.div(fig.to_json(), "Residue per method and analysis")]
    for note in notes or []:
        body.append(f'<p class="muted">{esc(note)}</p>')
    return page(title, "\n".join(body))


COMPARISON_JSON = "comparison.json"


def write_comparison(results: dict[str, AuditResult], out_dir: Path, **kwargs) -> Path:
    """index.html, and comparison.json (the methods in order, each one's folder and expected verdict) for
    `palimpsest figures` to redraw the heatmap from the methods' results.json."""
    out_dir = Path(out_dir)
    expected = kwargs.get("expected") or {}
    atomic_write_text(out_dir / COMPARISON_JSON, json.dumps(
        {"title": kwargs.get("title"), "methods": list(results), "expected": expected}, indent=2))
    return atomic_write_text(out_dir / "index.html", render_comparison(results, **kwargs))
