"""The field's published metrics as classifiers of the validation population: how well each separates suppressed
from deleted cases on ground truth, read in the direction the field reads it (docs/metrics.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "grad_norm", "reference")


@dataclass(frozen=True)
class StandardMetric:
    name: str  # the key in validation.json's standard_metric_auc
    analyser: str
    path: tuple[str, ...]  # into that analyser's summary
    # which way the field reads "less forgotten": the AUC is of the value (higher) or of its negation (lower)
    less_forgotten: Literal["higher", "lower"]
    published: bool = True  # False: palimpsest's variant, reported beside the published one


STANDARD_METRICS: tuple[StandardMetric, ...] = (
    *(StandardMetric(f"privleak.{a}", "mia", ("privleak", a), "lower") for a in MIA_ATTACKS),
    StandardMetric("uds", "depth", ("uds",), "lower"),
    StandardMetric("depth_capped", "depth", ("depth_capped",), "lower", published=False),
    StandardMetric("forget_quality", "memorization", ("forget_quality",), "lower"),
    StandardMetric("forget_quality_arithmetic", "memorization", ("forget_quality_arithmetic",), "lower",
                   published=False),
    StandardMetric("forget_truth_ratio", "memorization", ("forget_truth_ratio_post",), "lower"),
    StandardMetric("forget_truth_ratio_arithmetic", "memorization", ("forget_truth_ratio_arithmetic_post",), "lower",
                   published=False),
    StandardMetric("extraction_strength", "memorization", ("forget_es_post",), "higher"),
    StandardMetric("exact_memorization", "memorization", ("forget_em_post",), "higher"),
    StandardMetric("jaccard_top200", "concept_vectors", ("jaccard_top200_post",), "higher"),
    StandardMetric("jaccard_top_lens", "concept_vectors", ("jaccard_top_lens_post",), "higher", published=False),
)


def _lookup(summary: dict, path: tuple[str, ...]) -> float | None:
    value: Any = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def standard_values(analyses: dict) -> dict[str, float | None]:
    """Each standard metric's value in one audit (`analyses`: name -> Result), None where it was not computed."""
    out: dict[str, float | None] = {}
    for metric in STANDARD_METRICS:
        result = analyses.get(metric.analyser)
        out[metric.name] = _lookup(result.summary, metric.path) if result is not None else None
    return out


def oriented(metric: StandardMetric, value: float) -> float:
    """The value as a suppression score: higher = less forgotten, as the field reads this metric."""
    return value if metric.less_forgotten == "higher" else -value
