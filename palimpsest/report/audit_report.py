"""report.html + metrics.json (+ results.json, figures/) for one audit, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go

from palimpsest.audit.registry import load_analysers
from palimpsest.audit.runner import AuditResult, metrics_json
from palimpsest.io import atomic_dir
from palimpsest.report.figures import FigureExportError, check_static_export, export_figures, parse_formats
from palimpsest.report.html import FigureCounter, badge, esc, key_values, page, result_section, table
from palimpsest.report.style import OKABE_ITO, style_figure, threshold_line


def residue_figure(result: AuditResult) -> go.Figure:
    """Calibrated residue per residue analysis with its 95% CI, the verdict's two thresholds drawn; grey bars did
    not conclude (their residue, if any, is not evidence)."""
    names, values, lows, highs, colours = [], [], [], [], []
    for name, r in result.analyses.items():
        if r.kind != "residue" or r.residue is None:
            continue
        names.append(name)
        values.append(r.residue)
        lo, hi = r.ci if r.ci else (r.residue, r.residue)
        lows.append(r.residue - lo)
        highs.append(hi - r.residue)
        colours.append(OKABE_ITO["blue"] if r.status == "ok" else "#bbbbbb")
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colours, name="residue",
                           error_y=dict(type="data", symmetric=False, array=highs, arrayminus=lows)))
    cfg = result.config
    threshold_line(fig, "suppressed_min_residue", cfg.suppressed_min_residue)
    threshold_line(fig, "deleted_max_residue", cfg.deleted_max_residue)
    fig.update_layout(yaxis=dict(title="calibrated residue (0 = floor, 1 = pre)", range=[0, 1.05]), height=420,
                      xaxis=dict(title="analysis", tickangle=-40), showlegend=False,
                      margin=dict(l=60, r=150, t=30, b=110))
    return style_figure(fig)


def config_section(config) -> str:
    """The resolved config: thresholds and knobs, the shared SAE config, and every analyser's options (with
    defaults), collapsible; `palimpsest audit --config FILE` reads the same schema (palimpsest config show)."""
    resolved = config.resolved()
    options = resolved.pop("options", {})
    sae = resolved.pop("sae", {})
    parts = ["<h2>Thresholds and configuration</h2>",
             key_values({**resolved, "thresholds_source": config.thresholds_source()}),
             f"<details><summary>SAE config ({len(sae)} fields)</summary>{key_values(sae)}</details>"]
    defaults = {name: analyser.Config().model_dump(mode="json") for name, analyser in load_analysers().items()}
    rows = [{"analyser": name, "option": key, "value": value,
             "from": "default" if defaults.get(name, {}).get(key) == value else "config"}
            for name, fields in options.items() for key, value in fields.items()]
    body = table(rows) if rows else '<p class="muted">no analyser has options</p>'
    parts.append(f"<details><summary>Analyser options ({len(rows)} across {len(options)} analysers; "
                 f"{sum(r['from'] == 'config' for r in rows)} set by the config)</summary>{body}</details>")
    return "\n".join(parts)


def render_report(result: AuditResult, analysers: dict | None = None) -> str:
    """`analysers` gives section titles and descriptions (default: the language-model registry)."""
    from palimpsest.report.gallery import OVERVIEW, audit_figures

    analysers = load_analysers() if analysers is None else analysers
    figures = FigureCounter()
    styled = audit_figures(result)

    def shown(r) -> dict:
        return {key.split("/", 1)[1]: fig for key, fig in styled.items() if key.split("/", 1)[0] == r.name}

    concept = result.concept
    parts = [
        f"<h1>palimpsest audit: {esc(concept.name)}</h1>",
        f'<p>Verdict: {badge(result.verdict)}' + (' <span class="badge" style="background:#b00">collateral</span>'
                                                  if result.collateral else "") + "</p>",
        "<div class=\"card\"><b>Why</b><ul>" + "".join(f"<li>{esc(r)}</li>" for r in result.reasons) + "</ul>",
    ]
    if result.missing_evidence:
        parts.append(f"<p class=\"muted\">Analyses without a conclusion: {esc(', '.join(result.missing_evidence))}</p>")
    parts.append("</div>")
    parts.append(key_values({"models": result.models, "concept description": concept.description,
                             "keywords": list(concept.keywords), "forget items": len(concept.forget),
                             "paraphrases": len(concept.paraphrases), "neighbours": len(concept.neighbours),
                             "retain": len(concept.retain), "holdout": len(concept.holdout),
                             "palimpsest": result.version}))
    overview = []
    for name, r in result.analyses.items():
        overview.append({"analysis": name, "kind": r.kind, "status": r.status, "residue": r.residue,
                         "ci": list(r.ci) if r.ci else None, "floor source": r.floor_source, "evidence": r.evidence})
    parts.append("<h2>Residue overview</h2>")
    parts.append(figures.div(styled[OVERVIEW].to_json(), "Calibrated residue per analysis (95% bootstrap CI)"))
    parts.append(table(overview))
    if result.behaviour is not None:
        analyser = analysers.get("behaviour")
        parts.append(result_section(result.behaviour, "Behaviour", getattr(analyser, "description", ""), figures,
                                    shown(result.behaviour)))
    for name, r in result.analyses.items():
        analyser = analysers.get(name)
        parts.append(result_section(r, getattr(analyser, "title", name), getattr(analyser, "description", ""), figures,
                                    shown(r)))
    parts.append(config_section(result.config))
    parts.append("<h2>Concept items</h2>")
    for item_set, items in (("forget", concept.forget), ("paraphrases", concept.paraphrases),
                            ("neighbours", concept.neighbours), ("retain", concept.retain),
                            ("holdout", concept.holdout)):
        rows = [{"prompt": it.prompt, "answer": it.answer, "form": it.form, "subject": it.subject} for it in items]
        parts.append(f"<details><summary>{esc(item_set)} ({len(rows)})</summary>{table(rows)}</details>")
    parts.append(f'<p class="muted">Timings (s): {esc(json.dumps(result.timings))}</p>')
    return page(f"palimpsest audit: {concept.name}", "\n".join(parts))


def write_audit(result: AuditResult, out_dir: str | Path, *, figure_formats: tuple[str, ...] = (),
                analysers: dict | None = None) -> Path:
    """Write report.html, metrics.json and results.json into `out_dir` (replaced whole, never half-written), then
    the figures in `figure_formats` into out_dir/figures (all or none). A figure that cannot be exported raises
    FigureExportError after the report is written: `palimpsest figures DIR` redraws them once fixed."""
    out_dir = Path(out_dir)
    formats = parse_formats(figure_formats)
    with atomic_dir(out_dir) as tmp:
        (tmp / "report.html").write_text(render_report(result, analysers), encoding="utf-8")
        (tmp / "metrics.json").write_text(metrics_json(result), encoding="utf-8")
        (tmp / "results.json").write_text(result.model_dump_json(), encoding="utf-8")
    if formats:
        try:
            check_static_export(formats, what=f"the figures of {out_dir}")
            with atomic_dir(out_dir / "figures") as tmp:
                export_figures(result, tmp, formats)
        except FigureExportError as error:
            raise FigureExportError(f"{error} (the report is written; then run `palimpsest figures {out_dir} "
                                    f"--format {','.join(formats)}`)") from None
    return out_dir
