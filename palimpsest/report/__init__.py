"""report: self-contained HTML report, metrics.json and figures; reads results only."""

from palimpsest.report.audit_report import render_report, write_audit
from palimpsest.report.figures import FigureExportError, write_figures
from palimpsest.report.gallery import audit_figures, figure, run_figures

__all__ = ["FigureExportError", "audit_figures", "figure", "render_report", "run_figures", "write_audit",
           "write_figures"]
