"""report: self-contained HTML report, metrics.json and figures; reads results only."""

from palimpsest.report.audit_report import render_report, write_audit

__all__ = ["render_report", "write_audit"]
