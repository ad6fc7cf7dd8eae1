"""Audit a vision (pre, post[, floor]) pair with the vision analysers; same AuditResult and verdict as the LM audit."""

from __future__ import annotations

import time
from typing import Callable

from palimpsest.audit.runner import AuditResult, run_analyser
from palimpsest.audit.verdict import decide
from palimpsest.types import AuditConfig, Result
from palimpsest.vision.concept import digits_concept
from palimpsest.vision.context import VisionActs
from palimpsest.vision.data import Digits
from palimpsest.vision.organism import VisionPair
from palimpsest.vision.registry import load_vision_analysers

ProgressFn = Callable[[str, int, int], None]


def vision_config(**overrides) -> AuditConfig:
    """The digits audit's defaults: the shared thresholds, the nnsight backend, a smaller bootstrap."""
    return AuditConfig(**{"backend": "nnsight", "n_bootstrap": 500, **overrides})


def audit_vision(pair: VisionPair, data: Digits, config: AuditConfig | None = None, *, shared: dict | None = None,
                 progress: ProgressFn | None = None) -> AuditResult:
    """Run every vision analyser on `pair` and decide the verdict with palimpsest.audit.verdict.decide."""
    config = config or vision_config()
    if config.backend not in ("nnsight", "torch"):
        raise ValueError(f"backend {config.backend!r} does not apply to vision models: use 'nnsight' or 'torch'")
    analysers = load_vision_analysers()
    if config.analysers is not None:
        unknown = sorted(set(config.analysers) - set(analysers))
        if unknown:
            raise ValueError(f"unknown vision analysers {unknown}; available: {', '.join(analysers)}")
        analysers = {n: a for n, a in analysers.items() if n in config.analysers or n == "behaviour"}
    concept = digits_concept(data, pair.forget_class)
    acts = VisionActs(pair, data, backend=config.backend, shared=shared if shared is not None else {})
    results: dict[str, Result] = {}
    timings: dict[str, float] = {}
    for index, (name, analyser) in enumerate(analysers.items()):
        if progress:
            progress(name, index, len(analysers))
        start = time.perf_counter()
        results[name] = run_analyser(analyser, pair, concept, acts, config)
        timings[name] = round(time.perf_counter() - start, 3)
    behaviour = results.pop("behaviour", None)
    verdict = decide(behaviour, results, config)
    return AuditResult(
        verdict=verdict.verdict, collateral=verdict.collateral, behaviour_forgotten=verdict.behaviour_forgotten,
        reasons=verdict.reasons, missing_evidence=verdict.missing, strongest_evidence=verdict.strongest,
        behaviour=behaviour, analyses=results, config=config, concept=concept,
        models={name: m.source for name, m in pair.models().items()}, timings=timings)
