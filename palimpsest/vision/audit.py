"""Audit a vision (pre, post[, floor]) pair with the vision analysers; same AuditResult and verdict as the LM audit."""

from __future__ import annotations

from typing import Callable

from palimpsest.audit.runner import AuditResult, run_and_decide, selected_analysers
from palimpsest.types import AuditConfig
from palimpsest.vision.concept import digits_concept
from palimpsest.vision.context import VisionActs
from palimpsest.vision.data import Digits
from palimpsest.vision.organism import VisionPair
from palimpsest.vision.registry import load_vision_analysers

ProgressFn = Callable[[str, int, int], None]


def vision_config(**overrides) -> AuditConfig:
    """The vision audit's config. `palimpsest validate` fitted the verdict on the language-model organism, whose audit
    has 13-14 residue analyses; the vision stack has fewer and no population of its own yet, so `deleted` here needs
    every vision residue analysis to conclude (metrics.json then says the thresholds are not the validated ones)."""
    residue = [name for name, a in load_vision_analysers().items() if a.kind == "residue"]
    defaults = {"backend": "nnsight", "n_bootstrap": 500, "min_residue_analyses": len(residue)}
    return AuditConfig(**{**defaults, **overrides})


def audit_vision(pair: VisionPair, data: Digits, config: AuditConfig | None = None, *, shared: dict | None = None,
                 progress: ProgressFn | None = None) -> AuditResult:
    """Run every vision analyser on `pair` and decide the verdict with palimpsest.audit.verdict.decide."""
    config = config or vision_config()
    if config.backend not in ("nnsight", "torch"):
        raise ValueError(f"backend {config.backend!r} does not apply to vision models: use 'nnsight' or 'torch'")
    analysers = selected_analysers(config, load_vision_analysers(), label="vision analysers")
    concept = digits_concept(data, pair.forget_class)
    acts = VisionActs(pair, data, backend=config.backend, shared=shared if shared is not None else {})
    return run_and_decide(analysers, pair, concept, acts, config, progress=progress)
