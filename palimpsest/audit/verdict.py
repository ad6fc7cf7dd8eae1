"""The verdict: behaviour forgotten? residue recoverable? -> not_forgotten | suppressed | deleted | inconclusive."""

from __future__ import annotations

from dataclasses import dataclass, field

from palimpsest.types import AuditConfig, Result

# the pre model must know the forget items at least this well, or there is nothing to audit
MIN_PRE_ACCURACY = 0.5


@dataclass
class Verdict:
    verdict: str
    collateral: bool
    behaviour_forgotten: bool | None
    reasons: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    strongest: str | None = None


def above_chance(accuracy: float | None, chance: float | None) -> float | None:
    """Multiple-choice accuracy as the share of the way from chance to 1, (acc − chance) / (1 − chance) clipped at
    0, so the forgotten bounds mean the same for 4-way choices (chance 0.25) as for generated answers (chance 0)."""
    if accuracy is None or not chance:
        return accuracy
    return max(0.0, (accuracy - chance) / (1.0 - chance))


def decide(behaviour: Result | None, analyses: dict[str, Result], config: AuditConfig) -> Verdict:
    reasons: list[str] = []
    if behaviour is None or behaviour.status != "ok":
        return Verdict("inconclusive", False, None, ["behaviour could not be measured"], ["behaviour"])
    s = behaviour.summary
    pre = above_chance(s.get("forget_acc_pre", 0.0), s.get("forget_chance"))
    post = above_chance(s.get("forget_acc_post", 0.0), s.get("forget_chance"))
    collateral = False
    for key in ("retain", "neighbour"):
        if f"{key}_acc_pre" in s:
            drop = s[f"{key}_acc_pre"] - s[f"{key}_acc_post"]
            if drop > config.collateral_max_drop:
                collateral = True
                reasons.append(f"collateral: {key} accuracy fell by {drop:.2f} (> collateral_max_drop="
                               f"{config.collateral_max_drop})")
    if pre < MIN_PRE_ACCURACY:
        reasons.append(f"the pre model answers only {pre:.0%} of the forget items (< {MIN_PRE_ACCURACY:.0%}): "
                       "there is no knowledge to audit")
        return Verdict("inconclusive", collateral, None, reasons)
    forgotten = post <= config.forgotten_max_acc and post <= config.forgotten_max_relative_acc * pre
    if not forgotten:
        reasons.insert(0, f"forget accuracy {pre:.2f} -> {post:.2f}: above forgotten_max_acc="
                          f"{config.forgotten_max_acc} or forgotten_max_relative_acc={config.forgotten_max_relative_acc}"
                          " x pre: the post model still produces the answers")
        return Verdict("not_forgotten", collateral, False, reasons)
    reasons.insert(0, f"forget accuracy {pre:.2f} -> {post:.2f}: forgotten in behaviour")

    residues = evidence_analyses(analyses, config)
    usable = {name: r for name, r in residues.items() if r.status == "ok" and r.residue is not None}
    missing = sorted(name for name, r in residues.items() if name not in usable)
    errors = sorted(name for name, r in residues.items() if r.status == "error")
    paraphrase_post = above_chance(s.get("paraphrase_acc_post"), s.get("paraphrase_chance"))
    paraphrase_pre = above_chance(s.get("paraphrase_acc_pre"), s.get("paraphrase_chance"))
    leaks = (paraphrase_post is not None and paraphrase_pre
             and paraphrase_post > config.forgotten_max_acc
             and paraphrase_post > config.forgotten_max_relative_acc * paraphrase_pre)
    strong = sorted(
        ((name, r) for name, r in usable.items() if r.ci is not None and r.ci[0] >= config.suppressed_min_residue),
        key=lambda kv: -kv[1].residue,
    )
    enough_strong = len(strong) >= config.suppressed_min_analyses
    if leaks:
        reasons.append(f"the answers still come out in other forms (paraphrase accuracy {paraphrase_pre:.2f} -> "
                       f"{paraphrase_post:.2f})")
    if enough_strong or leaks:
        for name, r in strong:
            reasons.append(f"{name}: residue {r.residue:.2f} [{r.ci[0]:.2f}, {r.ci[1]:.2f}] >= suppressed_min_residue="
                           f"{config.suppressed_min_residue}" + (f" — {r.evidence}" if r.evidence else ""))
        return Verdict("suppressed", collateral, True, reasons, missing, strong[0][0] if strong else "behaviour")
    if errors:
        reasons.append(f"analyses raised an error ({', '.join(errors)}): deleted needs every evidence analysis to "
                       "run; fix the error and audit again")
        return Verdict("inconclusive", collateral, True, reasons, missing)
    if len(usable) < config.min_residue_analyses:
        reasons.append(f"only {len(usable)} residue analyses reached a conclusion (need min_residue_analyses="
                       f"{config.min_residue_analyses}); missing: {', '.join(missing) or 'none registered'}")
        return Verdict("inconclusive", collateral, True, reasons, missing)
    # deleted: no analysis is significantly above the deletion bound (each interval reaches down to it)
    high = {name: r for name, r in usable.items() if _lower(r) > config.deleted_max_residue}
    if not high:
        reasons.append(f"all {len(usable)} residue scores are consistent with at most deleted_max_residue="
                       f"{config.deleted_max_residue} (each interval's lower bound is at or below it): nothing can "
                       "be read or restored beyond the floor")
        return Verdict("deleted", collateral, True, reasons, missing)
    for name, r in sorted(high.items(), key=lambda kv: -kv[1].residue):
        ci = f" [{r.ci[0]:.2f}, {r.ci[1]:.2f}]" if r.ci else ""
        reasons.append(f"{name}: residue {r.residue:.2f}{ci} is above deleted_max_residue={config.deleted_max_residue} "
                       f"but {len(strong)} analyses (need suppressed_min_analyses={config.suppressed_min_analyses}) "
                       f"lie wholly above suppressed_min_residue={config.suppressed_min_residue}")
    return Verdict("inconclusive", collateral, True, reasons, missing)


def evidence_analyses(analyses: dict[str, Result], config: AuditConfig) -> dict[str, Result]:
    """The residue analyses whose scores decide the verdict (`config.residue_evidence`, default every one)."""
    chosen = config.residue_evidence
    return {name: r for name, r in analyses.items()
            if r.kind == "residue" and (chosen is None or name in chosen)}


def _lower(result: Result) -> float:
    return result.ci[0] if result.ci is not None else float(result.residue)
