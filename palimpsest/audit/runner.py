"""Run every registered analyser on a (pre, post[, floor]) pair and a concept, and synthesise the verdict."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from palimpsest import __version__
from palimpsest.audit.registry import load_analysers
from palimpsest.audit.verdict import decide
from palimpsest.capture import Activations
from palimpsest.concepts import ConceptSpec
from palimpsest.types import AuditConfig, Result


class AuditResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: str
    collateral: bool
    behaviour_forgotten: bool | None
    reasons: list[str]
    missing_evidence: list[str] = Field(default_factory=list)
    strongest_evidence: str | None = None
    behaviour: Result | None
    analyses: dict[str, Result]
    config: AuditConfig
    concept: ConceptSpec
    models: dict[str, str]
    timings: dict[str, float] = Field(default_factory=dict)
    version: str = __version__

    def metrics(self) -> dict[str, Any]:
        """The metrics.json contract (README documents every key)."""
        behaviour = {k: v for k, v in (self.behaviour.summary if self.behaviour else {}).items()}
        return {
            "verdict": self.verdict,
            "collateral": self.collateral,
            "behaviour_forgotten": self.behaviour_forgotten,
            "behaviour": behaviour,
            "analyses": {name: r.metrics() for name, r in self.analyses.items()},
            "reasons": self.reasons,
            "missing_evidence": self.missing_evidence,
            "strongest_evidence": self.strongest_evidence,
            "concept": self.concept.name,
            "models": self.models,
            "thresholds": {k: v for k, v in self.config.model_dump(mode="json").items() if k not in ("options",)},
            "thresholds_source": self.config.thresholds_source(),
            "timings_s": self.timings,
            "palimpsest_version": self.version,
        }

    @classmethod
    def load(cls, path: str | Path) -> "AuditResult":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


ProgressFn = Callable[[str, int, int], None]


def run_analyser(analyser, pair, concept, acts, config: AuditConfig) -> Result:
    torch.manual_seed(config.seed)
    try:
        result = analyser.run(pair, concept, acts, config)
    except Exception as error:  # one analyser failing must not lose the others; the report says what broke
        detail = traceback.format_exception_only(type(error), error)[-1].strip()
        return Result(name=analyser.name, kind=analyser.kind, status="error",
                      notes=[f"the analyser raised: {detail}"], evidence=f"error: {detail}")
    if result.name != analyser.name:
        result.name = analyser.name
    return result


def check_answers(tokenizer, concept: ConceptSpec) -> None:
    """Every answer must be producible by the tokenizer; the error names the item set, index and answer."""
    from palimpsest.capture import AnswerTokenError, answer_ids

    for item_set, index, item in concept.all_items():
        try:
            answer_ids(tokenizer, item.answer)
        except AnswerTokenError as error:
            raise AnswerTokenError(f"{item_set} item {index} ({item.prompt[:40]!r}): {error}") from None


def check_finite(pair, concept: ConceptSpec, acts: Activations) -> None:
    """Refuse a model whose residual stream is NaN/inf on the forget or retain prompts (NonFiniteError).

    A broken model is an input fault, not evidence: every analyser would read garbage (or fail one by one and leave
    an "inconclusive" that hides the cause), so the audit stops with the model, site and fix. The captures are the
    ones most analysers read next, so this costs nothing extra.
    """
    from palimpsest.capture import NonFiniteError

    for name in pair.models():
        for item_set in ("forget", "retain"):
            if not concept.items(item_set):
                continue
            try:
                acts.layers(name, item_set)
            except NonFiniteError:
                raise
            except Exception:  # noqa: BLE001 — any other capture failure is each analyser's to report, as before
                return


def selected_analysers(config: AuditConfig, available: dict | None = None, label: str = "analysers") -> dict:
    """The analysers of `available` (default: the language-model registry) that `config` asks for, in report order
    (behaviour always runs); unknown names are refused."""
    analysers = load_analysers() if available is None else available
    if config.analysers is None:
        return analysers
    unknown = sorted(set(config.analysers) - set(analysers))
    if unknown:
        raise ValueError(f"unknown {label} {unknown}; available: {', '.join(analysers)}")
    return {n: a for n, a in analysers.items() if n in config.analysers or n == "behaviour"}


def audit(pair, concept: ConceptSpec, config: AuditConfig | None = None, *,
          progress: ProgressFn | None = None) -> AuditResult:
    """Audit `pair` (a ModelPair) on `concept`; returns the verdict with every analyser's Result."""
    config = config or AuditConfig()
    check_answers(pair.pre.tokenizer, concept)
    analysers = selected_analysers(config)
    acts = Activations.for_pair(pair, concept, backend=config.backend, batch_size=config.batch_size)
    check_finite(pair, concept, acts)
    return run_and_decide(analysers, pair, concept, acts, config, progress=progress)


def run_and_decide(analysers: dict, pair, concept: ConceptSpec, acts, config: AuditConfig, *,
                   progress: ProgressFn | None = None) -> AuditResult:
    """Run `analysers` in order (timed, one failure never loses the others) and synthesise the verdict."""
    results: dict[str, Result] = {}
    timings: dict[str, float] = {}
    for index, (name, analyser) in enumerate(analysers.items()):
        if progress:
            progress(name, index, len(analysers))
        start = time.perf_counter()
        results[name] = run_analyser(analyser, pair, concept, acts, config)
        timings[name] = round(time.perf_counter() - start, 3)
    if progress:
        progress("verdict", len(analysers), len(analysers))
    behaviour = results.pop("behaviour", None)
    verdict = decide(behaviour, results, config)
    return AuditResult(
        verdict=verdict.verdict, collateral=verdict.collateral, behaviour_forgotten=verdict.behaviour_forgotten,
        reasons=verdict.reasons, missing_evidence=verdict.missing, strongest_evidence=verdict.strongest,
        behaviour=behaviour, analyses=results, config=config, concept=concept,
        models={name: m.source for name, m in pair.models().items()}, timings=timings,
    )


def metrics_json(result: AuditResult) -> str:
    return json.dumps(result.metrics(), indent=2, default=float)
