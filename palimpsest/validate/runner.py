"""`palimpsest validate`: audit every ground-truth case, score the verdict, fit its thresholds on half the worlds.

DIR/cases/<case_id>/ holds each case's report.html, metrics.json and results.json (a finished case is not audited
again: the run resumes from there); DIR/validation.json and DIR/index.html sum the run up.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import as_completed
from pathlib import Path
from typing import Callable

from palimpsest.io import atomic_write_text
from palimpsest.validate.cases import CONTROLS, Case, forget_people, gated_truth, population

Progress = Callable[..., None]  # (message, units of work finished)
_WORKER_MODELS: dict = {}  # per process: (pre, floor) of the setups it audited, loaded once


def _setup(world: int, forget_set: int, cache: str):
    from palimpsest.demo import organism_setup

    return organism_setup(world, cache, forget_people=forget_people(world, forget_set), parallel=False)


def build_setups(cases: list[Case], cache: str, workers: int, progress: Progress) -> None:
    """Every pre organism, oracle and floor the cases need, trained side by side (one thread each)."""
    from palimpsest.demo import FLOOR_DATA_SEED, _build
    from palimpsest.kernels import submit_all
    from palimpsest.organism import is_complete
    from palimpsest.organism.build import organism_dir

    wanted: dict[tuple, None] = {}
    for case in cases:
        forget = forget_people(case.world, case.forget_set)
        targets = {"pre": organism_dir(case.world, cache),
                   "oracle": organism_dir(case.world, cache, exclude_people=forget),
                   "floor": organism_dir(case.world, cache, exclude_people=forget, data_seed=FLOOR_DATA_SEED)}
        for kind, target in targets.items():
            if not is_complete(target):
                wanted[(kind, case.world, forget if kind != "pre" else ())] = None
    if not wanted:
        return
    progress(f"training {len(wanted)} organisms (pre models, oracles, floors; cached after the first run)", 0)
    pool, futures = submit_all(_build, [(kind, world, forget, cache) for kind, world, forget in wanted],
                               max(1, min(workers, len(wanted))))
    with pool:
        for future in as_completed(futures):
            future.result()


def case_post(case: Case, setup, pre):
    """The post-model of `case` on its world's pre model (weight edits cached on disk, hooks built here)."""
    from palimpsest.demo import organism_post_dir, sauce_post
    from palimpsest.models import load_model
    from palimpsest.organism.concept import retain_training_items

    if case.control == "pre":
        return load_model(setup.pre_dir, name="post")
    if case.control == "sauce":
        return sauce_post(pre, setup.concept, setup.world)
    if case.control == "logit_bias":
        from palimpsest.unlearn.controls import LogitBiasConfig, logit_bias

        retain = retain_training_items(setup.world, setup.concept, max_items=256)
        return logit_bias(pre, list(setup.concept.forget), retain, LogitBiasConfig())
    return load_model(organism_post_dir(case.control, setup), name="post")


def audit_case(world: int, forget_set: int, control: str, cache: str, config_json: str, out_dir: str,
               threads: int | None = None) -> str:
    """Audit one case against its world's independent floor, write its report; returns its CaseOutcome JSON."""
    import torch

    from palimpsest.audit import audit
    from palimpsest.models import ModelPair, load_model
    from palimpsest.report import write_audit
    from palimpsest.types import AuditConfig

    if threads:
        torch.set_num_threads(threads)
    if threads is not None:  # a worker process: its pre and floor stay loaded, so their results are kept too
        from palimpsest.capture import memo

        memo.hold_for_process()
    case = Case(world, forget_set, control)
    setup = _setup(world, forget_set, cache)
    key = (str(setup.pre_dir), str(setup.floor_dir))
    if key not in _WORKER_MODELS:
        if len(_WORKER_MODELS) >= 2:
            _WORKER_MODELS.pop(next(iter(_WORKER_MODELS)))
        _WORKER_MODELS[key] = (load_model(setup.pre_dir, name="pre"), load_model(setup.floor_dir, name="floor"))
    pre, floor = _WORKER_MODELS[key]
    post = case_post(case, setup, pre)
    result = audit(ModelPair(pre=pre, post=post, floor=floor), setup.concept,
                   AuditConfig.model_validate_json(config_json))
    folder = Path(out_dir) / "cases" / case.case_id
    write_audit(result, folder)
    atomic_write_text(folder / AUDITED_BY, json.dumps(audited_by(result.config)))
    return outcome_of(case, result).model_dump_json()


AUDITED_BY = "audited_by.json"


def audited_by(config) -> dict:
    """What a case's audit depends on besides the case itself: the resolved config and palimpsest's source code."""
    import hashlib

    import palimpsest

    digest = hashlib.blake2b(digest_size=12)
    for path in sorted(Path(palimpsest.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    config_text = json.dumps(config.resolved(), sort_keys=True, default=str)
    return {"code": digest.hexdigest(), "config": hashlib.blake2b(config_text.encode(), digest_size=12).hexdigest()}


def outcome_of(case: Case, result):
    from palimpsest.validate.scoring import CaseOutcome
    from palimpsest.validate.standard import standard_values

    truth, weak = gated_truth(case.construction, result.behaviour_forgotten)
    residues = {name: {"residue": r.residue, "ci": list(r.ci) if r.ci else None, "status": r.status}
                for name, r in result.analyses.items() if r.kind == "residue"}
    return CaseOutcome(case_id=case.case_id, world=case.world, forget_set=case.forget_set, control=case.control,
                       construction=case.construction, truth=truth, weak_control=weak, verdict=result.verdict,
                       collateral=result.collateral, report=f"cases/{case.case_id}/report.html", residues=residues,
                       standard=standard_values(result.analyses))


def _finished(out_dir: Path, case: Case, expected: dict | None = None):
    """The AuditResult of a case already audited in `out_dir` by the same code and config (`expected`, from
    `audited_by`); None when missing, unreadable, or audited by other code or another config."""
    from palimpsest.audit.runner import AuditResult

    path = out_dir / "cases" / case.case_id / "results.json"
    if not (path.is_file() and (path.parent / "metrics.json").is_file()):
        return None
    try:
        if expected is not None and json.loads((path.parent / AUDITED_BY).read_text(encoding="utf-8")) != expected:
            return None
        return AuditResult.load(path)
    except (OSError, ValueError):
        return None


def run_validation(out_dir: str | Path, *, worlds: int | list[int] = 4, forget_sets: int = 2,
                   controls: tuple[str, ...] = CONTROLS, config=None, cache_dir=None, workers: int | None = None,
                   progress: Progress | None = None, total_hint: Callable[[int], None] | None = None) -> dict:
    """Audit the population, score it, fit the thresholds on the first half of the worlds and test them on the
    rest; writes DIR/validation.json and DIR/index.html and returns the validation report (a dict)."""
    from palimpsest.kernels import kernel_tag, submit_all
    from palimpsest.organism import cache_root
    from palimpsest.types import AuditConfig

    started = time.perf_counter()
    out_dir = Path(out_dir)
    config = config or AuditConfig()
    step = progress or (lambda message, done=0: None)
    cases = population(worlds, forget_sets, controls)
    if total_hint:
        total_hint(len(cases))
    cache = cache_root(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, min(len(cases), os.cpu_count() or 1))
    build_setups(cases, str(cache), workers, step)
    results = {}
    expected = audited_by(config)  # an earlier run's case is reused only when the same code and config audited it
    for case in cases:
        done = _finished(out_dir, case, expected)
        if done is not None:
            results[case.case_id] = done
            step(f"{case.case_id}: {done.verdict} (from an earlier run)", 1)
    todo = [case for case in cases if case.case_id not in results]
    args = (str(cache), config.model_dump_json(), str(out_dir))
    if todo and workers == 1:
        from palimpsest.capture import memo

        with memo.session():  # the cases of one world share its pre and floor models' results (capture.memo)
            for case in todo:
                audit_case(case.world, case.forget_set, case.control, *args)
                results[case.case_id] = _finished(out_dir, case)
                step(f"{case.case_id}: {results[case.case_id].verdict}", 1)
    elif todo:
        step(f"auditing {len(todo)} cases in {workers} processes", 0)
        pool, futures = submit_all(audit_case, [(c.world, c.forget_set, c.control, *args, 1) for c in todo], workers)
        by_future = dict(zip(futures, todo))
        with pool:
            for future in as_completed(by_future):
                case = by_future[future]
                future.result()
                results[case.case_id] = _finished(out_dir, case)
                step(f"{case.case_id}: {results[case.case_id].verdict}", 1)
    missing = [c.case_id for c in cases if results.get(c.case_id) is None]
    if missing:
        raise RuntimeError(f"cases without a readable result: {', '.join(missing)}")
    ordered = [(case, results[case.case_id]) for case in cases]
    report = score_population(ordered, config, seconds=time.perf_counter() - started, kernels=kernel_tag())
    write_validation(report, out_dir)
    return report


def score_population(cases: list[tuple[Case, object]], config, *, seconds: float, kernels: str) -> dict:
    """The validation report of audited cases: run-config scores on every case, thresholds fitted on the first half
    of the worlds, the fitted rule's scores on the second half, and each analyser's ROC AUC."""
    from palimpsest.validate.scoring import (
        analyser_auc,
        confusion,
        evaluate_config,
        fit_verdict,
        fitted_config,
        split_worlds,
        standard_metric_auc,
        summary,
    )

    outcomes = [outcome_of(case, result) for case, result in cases]
    split = split_worlds([case.world for case, _ in cases])
    fit_pairs = [(o.truth, result) for o, (case, result) in zip(outcomes, cases) if case.world in split.fit]
    fit = fit_verdict(fit_pairs, config)
    fit.train_worlds = list(split.fit)
    fitted = fitted_config(config, fit.values)
    test = [(o, result) for o, (case, result) in zip(outcomes, cases) if case.world in split.test]
    refit = [o.model_copy(update={"verdict": v})
             for o, v in zip([o for o, _ in test], evaluate_config([r for _, r in test], fitted))]
    everything_fitted = [o.model_copy(update={"verdict": v})
                         for o, v in zip(outcomes, evaluate_config([r for _, r in cases], fitted))]
    return {
        "summary": summary(outcomes),
        "confusion": confusion(outcomes),
        "held_out": {"summary": summary(refit), "confusion": confusion(refit), "worlds": list(split.test),
                     "held_out": split.held_out},
        "fitted_all": {"summary": summary(everything_fitted), "confusion": confusion(everything_fitted)},
        "fit": fit.model_dump(mode="json"),
        "analyser_auc": analyser_auc(outcomes, n_bootstrap=config.n_bootstrap, seed=config.seed),
        "standard_metric_auc": standard_metric_auc(outcomes, n_bootstrap=config.n_bootstrap, seed=config.seed),
        "cases": [o.model_dump(mode="json") for o in outcomes],
        "kernels": kernels,
        "seconds": round(seconds, 1),
        "config": config.model_dump(mode="json"),
    }


def write_validation(report: dict, out_dir: Path) -> None:
    from palimpsest.io import atomic_write_text
    from palimpsest.validate.page import write_validation_page

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "validation.json", json.dumps(report, indent=2, default=float))
    write_validation_page(report, out_dir)
