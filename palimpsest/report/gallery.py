"""Every figure of a finished run, styled, by name, from its saved results alone (no model needed).

Names are 'analysis/title' for an audit ('overview/...' for the residue overview), 'method/analysis/title' for each
method of a demo plus 'comparison/...', and 'validate/...' for a validation run. The same functions serve the
HTML report, `--figures`, `palimpsest figures RUN_DIR` and notebooks.
"""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
from pydantic import ValidationError

from palimpsest.audit.runner import AuditResult
from palimpsest.report.style import style_figure

OVERVIEW = "overview/Calibrated residue per analysis"
RESULTS_JSON, VALIDATION_JSON = "results.json", "validation.json"


class RunDirError(ValueError):
    """RUN_DIR is not a finished audit, demo or validate run (or lacks what a figure needs); one line."""


def _key(*parts: str) -> str:
    return "/".join(part.replace("/", "-") for part in parts)


def _rebuilt(result) -> dict[str, go.Figure]:
    """Figures drawn again from the saved tables where that shows more than the stored figure (the probes'
    per-layer accuracy with Wilson bands over its test items); {} when the tables are not the expected ones."""
    if result.name != "probes":
        return {}
    from palimpsest.probes.figures import probe_accuracy_figures

    rows = result.tables.get("per_layer") or []
    need = {"layer", "position", "variant", "accuracy"}
    if not rows or not all(need <= set(row) for row in rows):
        return {}
    n = result.summary.get("n_test_items")
    positions = list(dict.fromkeys(row["position"] for row in rows))
    figures = probe_accuracy_figures(rows, positions, n=n if isinstance(n, int) else None)
    return {title: fig for title, fig in figures.items() if title in result.figures}


def audit_figures(result: AuditResult) -> dict[str, go.Figure]:
    """Every figure of one audit, styled: the residue overview, then behaviour, then each analysis in order."""
    from palimpsest.report.audit_report import residue_figure

    figures = {OVERVIEW: residue_figure(result)}
    for r in ([result.behaviour] if result.behaviour else []) + list(result.analyses.values()):
        rebuilt = _rebuilt(r)
        for title, figure_json in r.figures.items():
            redrawn = rebuilt.get(title)
            figures[_key(r.name, title)] = style_figure(figure_json if redrawn is None else redrawn)
    return figures


def figure_names(figures: dict[str, go.Figure]) -> str:
    return ", ".join(figures) or "(none)"


def pick(figures: dict[str, go.Figure], name: str) -> go.Figure:
    """The figure called `name`: its full name, or a title (or the end of a name) that only one figure has."""
    if name in figures:
        return figures[name]
    matches = [key for key in figures if key.endswith("/" + name) or key.split("/")[-1] == name]
    if len(matches) == 1:
        return figures[matches[0]]
    if matches:
        raise KeyError(f"{name!r} names {len(matches)} figures: {', '.join(matches)}")
    raise KeyError(f"no figure {name!r}; there are: {figure_names(figures)}")


def figure(result: AuditResult, name: str) -> go.Figure:
    """One styled figure of an audit result, e.g. figure(result, 'probes/Probe accuracy per layer (last position)')
    or by its title alone when unique; `audit_figures(result)` lists them all."""
    return pick(audit_figures(result), name)


def _load_result(path: Path) -> AuditResult:
    try:
        return AuditResult.load(path)
    except (ValidationError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunDirError(f"{path} is not an audit's results.json this palimpsest can read ({first}); re-run "
                          "the audit") from None


def _demo_methods(run_dir: Path) -> list[str]:
    from palimpsest.report.comparison import COMPARISON_JSON

    listed = run_dir / COMPARISON_JSON
    if listed.is_file():
        try:
            methods = json.loads(listed.read_text(encoding="utf-8"))["methods"]
        except (ValueError, KeyError, TypeError) as error:
            raise RunDirError(f"{listed} is unreadable ({type(error).__name__}); re-run the demo") from None
        missing = [m for m in methods if not (run_dir / m / RESULTS_JSON).is_file()]
        if missing:
            raise RunDirError(f"{run_dir}: comparison.json lists {', '.join(missing)} without a results.json")
        return list(methods)
    # a demo written before comparison.json existed: its methods' folders, in name order
    return sorted(p.name for p in run_dir.iterdir() if (p / RESULTS_JSON).is_file())


def run_kind(run_dir: str | Path) -> str:
    """'audit', 'demo' or 'validate'; RunDirError when RUN_DIR is none of them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    if (run_dir / VALIDATION_JSON).is_file():
        return "validate"
    if (run_dir / RESULTS_JSON).is_file():
        return "audit"
    if _demo_methods(run_dir):
        return "demo"
    if (run_dir / "metrics.json").is_file() or (run_dir / "report.html").is_file():
        raise RunDirError(f"{run_dir} has no results.json (written by an older palimpsest, which saved only "
                          "metrics.json): re-run the audit to redraw its figures")
    raise RunDirError(f"{run_dir} is not a finished audit, demo or validate run: it has no results.json, no "
                      "validation.json and no method folders with results.json")


def run_figures(run_dir: str | Path) -> dict[str, go.Figure]:
    """Every figure of a finished audit, demo or validate run, styled, by name (see the module docstring)."""
    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    if kind == "audit":
        return audit_figures(_load_result(run_dir / RESULTS_JSON))
    if kind == "validate":
        from palimpsest.report.validation_figures import validation_figures

        try:
            report = json.loads((run_dir / VALIDATION_JSON).read_text(encoding="utf-8"))
            return validation_figures(report)
        except (ValueError, AttributeError, TypeError, KeyError) as error:
            raise RunDirError(f"{run_dir / VALIDATION_JSON}: {str(error).splitlines()[0] if str(error) else error!r}"
                              ) from None
    from palimpsest.report.comparison import comparison_figure

    results = {m: _load_result(run_dir / m / RESULTS_JSON) for m in _demo_methods(run_dir)}
    figures = {"comparison/Residue per method and analysis": comparison_figure(results)}
    for method, result in results.items():
        figures.update({f"{method}/{name}": fig for name, fig in audit_figures(result).items()})
    return figures
