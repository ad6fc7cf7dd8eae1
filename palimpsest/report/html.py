"""Self-contained HTML report: plotly embedded once, every piece of user text escaped."""

from __future__ import annotations

import html
import json
from functools import lru_cache
from typing import Any, Iterable

from palimpsest.types import Result

# Okabe-Ito, as in the figures (palimpsest.report.style)
VERDICT_COLOURS = {"deleted": "#009E73", "suppressed": "#D55E00", "not_forgotten": "#CC79A7",
                   "inconclusive": "#6c757d"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:.2em 0} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
.badge{display:inline-block;padding:4px 12px;border-radius:14px;color:#fff;font-weight:600}
.muted{color:#666} .card{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;font-size:.88em;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f1f3f5} .num{text-align:right;font-variant-numeric:tabular-nums}
.status-ok{color:#2a9d8f} .status-inconclusive{color:#e9a23b} .status-skipped{color:#999} .status-error{color:#c00;font-weight:bold}
details summary{cursor:pointer;color:#345} .scroll{max-height:420px;overflow:auto}
"""


@lru_cache(maxsize=1)
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, (dict, list, tuple)):
        return esc(json.dumps(value, default=str)[:400])
    return esc(value)


def safe_json(text: str) -> str:
    """Figure JSON made safe inside <script>: '<', '>' and '&' become unicode escapes (same JSON value)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class FigureCounter:
    def __init__(self) -> None:
        self.count = 0

    def div(self, figure_json: str, title: str) -> str:
        self.count += 1
        div_id = f"fig{self.count}"
        return (f'<figure class="card"><figcaption>{esc(title)}</figcaption><div id="{div_id}"></div>'
                f'<script>(function(){{var f={safe_json(figure_json)};'
                f'Plotly.newPlot("{div_id}",f.data,f.layout||{{}},{{responsive:true,displaylogo:false}});}})();'
                f"</script></figure>")


def table(rows: Iterable[dict], max_rows: int = 200) -> str:
    rows = list(rows)
    if not rows:
        return '<p class="muted">(no rows)</p>'
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows[:max_rows]:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="muted">{len(rows) - max_rows} more rows in the JSON results</p>' if len(rows) > max_rows else ""
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>{more}'


def key_values(mapping: dict) -> str:
    return table([{"key": k, "value": v} for k, v in mapping.items()])


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style>"
            f"<script>{plotly_js()}</script></head><body><main>{body}</main></body></html>")


def badge(verdict: str) -> str:
    return f'<span class="badge" style="background:{VERDICT_COLOURS.get(verdict, "#444")}">{esc(verdict)}</span>'


def result_section(result: Result, title: str, description: str, figures: FigureCounter,
                   styled: dict[str, Any] | None = None) -> str:
    """`styled`: title -> the figure to show instead of the stored JSON (the report passes the styled ones)."""
    parts = [f'<h2 id="{esc(result.name)}">{esc(title)} <span class="muted">({esc(result.name)})</span></h2>']
    if description:
        parts.append(f"<p>{esc(description)}</p>")
    head = {"status": result.status}
    if result.residue is not None:
        head["residue"] = result.residue
        if result.ci:
            head["95% CI"] = list(result.ci)
    for key in ("post", "floor", "ceiling", "floor_source"):
        if getattr(result, key) is not None:
            head[key] = getattr(result, key)
    parts.append(f'<div class="card"><b class="status-{esc(result.status)}">{esc(result.status)}</b> '
                 f"{esc(result.evidence)}{key_values(head)}</div>")
    for note in result.notes:
        parts.append(f'<p class="muted">Note: {esc(note)}</p>')
    if result.summary:
        parts.append(f"<details open><summary>Summary</summary>{key_values(result.summary)}</details>")
    for name, figure_json in result.figures.items():
        shown = (styled or {}).get(name)
        parts.append(figures.div(figure_json if shown is None else shown.to_json(), name))
    for name, rows in result.tables.items():
        parts.append(f"<details><summary>Table: {esc(name)} ({len(rows)} rows)</summary>{table(rows)}</details>")
    if result.per_item:
        parts.append(f"<details><summary>Per item ({len(result.per_item)})</summary>{table(result.per_item)}</details>")
    return "\n".join(parts)
