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
from palimpsest.audit.context import AuditContext, SAEStore
from palimpsest.audit.registry import load_analysers
from palimpsest.audit.verdict import decide
from palimpsest.capture import Activations, memo
from palimpsest.concepts import ConceptSpec
from palimpsest.devices import offloaded_models
from palimpsest.types import AuditConfig, Result, skipped


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
            "thresholds": {k: v for k, v in self.config.model_dump(mode="json").items()
                           if k not in ("options", "sae")},
            "config": self.config.resolved(),
            "thresholds_source": self.config.thresholds_source(),
            "timings_s": self.timings,
            "palimpsest_version": self.version,
        }

    @classmethod
    def load(cls, path: str | Path) -> "AuditResult":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


ProgressFn = Callable[[str, int, int], None]


def run_analyser(analyser, ctx: AuditContext) -> Result:
    torch.manual_seed(ctx.config.seed)
    if "floor" in analyser.needs and ctx.pair.floor is None:
        return skipped(analyser.name, "needs a floor model (a model that never learned the concept); none was given",
                       kind=analyser.kind)
    offloaded = offloaded_models(ctx.pair) if ctx.modality == "text" and ctx.pair is not None else []
    blocker = analyser.offload_blocker(ctx.for_analyser(analyser)) if offloaded else None
    if blocker:
        return skipped(analyser.name, f"{', '.join(offloaded)}: weights offloaded to disk (device_map); {blocker}: "
                                      "give --max-memory room for the whole model, or drop --device-map",
                       kind=analyser.kind)
    try:
        result = analyser.run(ctx.for_analyser(analyser))
    except Exception as error:  # one analyser failing must not lose the others; the report says what broke
        detail = traceback.format_exception_only(type(error), error)[-1].strip()
        return Result(name=analyser.name, kind=analyser.kind, status="error",
                      notes=[f"the analyser raised: {detail}"], evidence=f"error: {detail}")
    if result.name != analyser.name:
        result.name = analyser.name
    return result


def build_saes(analysers: dict, ctx: AuditContext) -> SAEStore:
    """Train or load, once, the SAE at every site some selected analyser reads one at (with config.sae).

    A key "archetypal:<site>" (palimpsest.sae.blindspots.ARCHETYPAL) asks for an RA-SAE (overcomplete) at the site
    instead, trained on the same corpus with the RA-SAE fields of the first analyser asking for it (RASAEConfig)."""
    from palimpsest.vision.measures import sae_sites as image_sae_sites

    requests: dict[str, Any] = {}  # key -> the options of the first analyser that asked for it
    for analyser in analysers.values():
        if "sae" in analyser.needs:
            actx = ctx.for_analyser(analyser)
            try:
                wanted = image_sae_sites(actx) if ctx.modality == "image" else analyser.sae_sites(actx)
            except Exception:  # noqa: BLE001 — an analyser that cannot name its sites reports why when it runs
                wanted = ()
            for key in wanted:
                requests.setdefault(key, actx.opts)
    if not requests:
        return SAEStore()
    from palimpsest.sae.blindspots import ARCHETYPAL

    sites = [key for key in requests if not key.startswith(ARCHETYPAL)]
    if ctx.modality == "image":
        from palimpsest.vision.sae import build_pre_saes

        return SAEStore(built=build_pre_saes(ctx, sites))
    from palimpsest.sae.blindspots import RASAEConfig, build_archetypal
    from palimpsest.sae.data import concept_corpus
    from palimpsest.sae.train import get_or_train_sae

    base = tuple(concept_corpus(ctx.concept, ctx.config.sae.corpus))
    corpus, held_out = base, ()
    sae_cfg = ctx.config.sae
    built = {}
    for key, opts in requests.items():
        try:
            if key.startswith(ARCHETYPAL):  # the RA-SAE reads the concept's corpus only (its archetypes are of it)
                built[key] = build_archetypal(ctx.pair.pre, key[len(ARCHETYPAL):], base,
                                              RASAEConfig.from_options(opts), ctx.config.seed)
            else:
                if sae_cfg.self_corpus_texts and corpus is base:
                    from palimpsest.sae.corpus import self_corpus

                    sampled = self_corpus(ctx.pair.pre, sae_cfg.self_corpus_texts, sae_cfg.self_corpus_tokens,
                                          seed=sae_cfg.seed, cache_dir=ctx.config.cache_dir)
                    n_held = int(round(len(sampled) * sae_cfg.held_out_share))
                    corpus = (*base, *sampled[:len(sampled) - n_held])
                    held_out = tuple(sampled[len(sampled) - n_held:])
                built[key] = get_or_train_sae(ctx.pair.pre, key, list(corpus), sae_cfg, ctx.config.cache_dir,
                                              batch_size=ctx.config.batch_size, held_out=held_out)
        except Exception as error:  # noqa: BLE001 — recorded; the analysers reading this site report it as an error
            built[key] = error
    return SAEStore(built=built, corpus=corpus)


def run_one(name: str, pair, concept: ConceptSpec, acts=None, config: AuditConfig | None = None) -> Result:
    """Run one analyser of the text registry on `pair` and `concept` (for notebooks and tests): builds what it needs
    (captures unless `acts` is given, its SAEs) as the full audit does, then runs it."""
    config = config or AuditConfig()
    analyser = load_analysers("text")[name]
    if acts is None:
        acts = Activations.for_pair(pair, concept, backend=config.backend, batch_size=config.batch_size)
    ctx = AuditContext(pair=pair, concept=concept, acts=acts, config=config, modality="text")
    ctx.saes = build_saes({name: analyser}, ctx)
    return run_analyser(analyser, ctx)


def check_answers(tokenizer, concept: ConceptSpec) -> None:
    """Every answer must be producible by the tokenizer; the error names the item set, index and answer."""
    from palimpsest.capture import AnswerTokenError, answer_ids

    for item_set, index, item in concept.all_items():
        try:
            answer_ids(tokenizer, item.answer, item.prompt)
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


def selected_analysers(config: AuditConfig, modality: str = "text") -> dict:
    """The analysers of `modality` that `config` asks for, in report order (behaviour always runs); unknown names
    are refused."""
    analysers = load_analysers(modality)
    if config.analysers is None:
        return analysers
    unknown = sorted(set(config.analysers) - set(analysers))
    if unknown:
        raise ValueError(f"unknown analysers {unknown} for {modality} models; available: {', '.join(analysers)}")
    return {n: a for n, a in analysers.items() if n in config.analysers or n == "behaviour"}


def audit(pair, concept: ConceptSpec, config: AuditConfig | None = None, *,
          progress: ProgressFn | None = None) -> AuditResult:
    """Audit `pair` (a ModelPair) on `concept`; returns the verdict with every analyser's Result."""
    config = config or AuditConfig()
    check_answers(pair.pre.tokenizer, concept)
    analysers = selected_analysers(config, modality="text")
    acts = Activations.for_pair(pair, concept, backend=config.backend, batch_size=config.batch_size)
    check_finite(pair, concept, acts)
    ctx = AuditContext(pair=pair, concept=concept, acts=acts, config=config, modality="text")
    return run_and_decide(analysers, ctx, progress=progress)


def run_and_decide(analysers: dict, ctx: AuditContext, *, progress: ProgressFn | None = None) -> AuditResult:
    """Build what the analysers need (SAEs), run them in order (timed, one failure never loses the others) and
    synthesise the verdict. Results of pure computations are kept for the audit (capture.memo): the analysers share
    them, and so do the audits of one pre model inside an outer `memo.session()` (the demo, validate)."""
    with memo.session():
        return _run_and_decide(analysers, ctx, progress=progress)


def _run_and_decide(analysers: dict, ctx: AuditContext, *, progress: ProgressFn | None) -> AuditResult:
    results: dict[str, Result] = {}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    ctx.saes = build_saes(analysers, ctx)
    if ctx.saes.built:
        timings["sae_build"] = round(time.perf_counter() - start, 3)
    pair, concept, config = ctx.pair, ctx.concept, ctx.config
    for index, (name, analyser) in enumerate(analysers.items()):
        if progress:
            progress(name, index, len(analysers))
        start = time.perf_counter()
        results[name] = run_analyser(analyser, ctx)
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
