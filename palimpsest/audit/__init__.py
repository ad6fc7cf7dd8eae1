"""audit: runs the analysers, calibrates each score, synthesises the verdict."""

from palimpsest.audit.runner import AuditResult, audit, metrics_json

__all__ = ["AuditResult", "audit", "metrics_json"]
