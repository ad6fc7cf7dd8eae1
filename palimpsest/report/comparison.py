"""The demo's comparison page: one row per post-model, its verdict and every residue score."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from palimpsest.audit.runner import AuditResult
from palimpsest.io import atomic_write_text
from palimpsest.report.html import FigureCounter, badge, esc, fmt, page


def render_comparison(results: dict[str, AuditResult], *, title: str, expected: dict[str, str] | None = None,
                      notes: list[str] | None = None) -> str:
    expected = expected or {}
    analyses = list(dict.fromkeys(name for r in results.values() for name, a in r.analyses.items()
                                  if a.kind == "residue"))
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
    z = [[(r.analyses[n].residue if n in r.analyses and r.analyses[n].residue is not None else None)
          for n in analyses] for r in results.values()]
    fig = go.Figure(go.Heatmap(z=z, x=analyses, y=list(results), colorscale="RdYlGn_r", zmin=0, zmax=1,
                               colorbar=dict(title="residue")))
    fig.update_layout(height=120 + 40 * len(results), margin=dict(l=90, r=20, t=20, b=120))
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


def write_comparison(results: dict[str, AuditResult], out_dir: Path, **kwargs) -> Path:
    return atomic_write_text(Path(out_dir) / "index.html", render_comparison(results, **kwargs))
