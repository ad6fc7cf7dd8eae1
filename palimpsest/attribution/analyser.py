"""The `attribution` analyser: unPact prompt attribution pre vs post, and keyword-emphasis recovery (the residue)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from palimpsest.attribution.figures import recovery_bars, share_distribution, token_heatmaps
from palimpsest.attribution.keytokens import KeyTokens, select_key_tokens
from palimpsest.attribution.methods import METHODS, TokenAttribution, attribute, occlusion
from palimpsest.attribution.recovery import RewriteScores, kind_table, score_rewrites
from palimpsest.attribution.rewrites import emphasis_rewrites, pick_marker
from palimpsest.attribution.tracking import keyword_share, keyword_table, nanmean, profile_shift, scale_ratio
from palimpsest.attribution.units import item_keywords
from palimpsest.capture import score_answers
from palimpsest.concepts import Item
from palimpsest.stats import calibrate, calibrate_value
from palimpsest.types import AuditConfig, Result, inconclusive, register

TRACKED_SETS = ("forget", "neighbours", "retain")


def _spread(items: Sequence[Item], cap: int) -> list[int]:
    """At most `cap` indices spread evenly over the set (deterministic, covers every part of it)."""
    if len(items) <= cap:
        return list(range(len(items)))
    return sorted({int(round(x)) for x in np.linspace(0, len(items) - 1, cap)})


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def _finite(value):
    """nan/inf -> None, recursively: metrics.json must be strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _by_fact(paraphrases: Sequence[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for para in paraphrases:
        if para.fact_id:
            out.setdefault(para.fact_id, []).append(para)
    return out


@register
class PromptAttribution:
    name = "attribution"
    kind = "residue"
    title = "Prompt attribution and keyword-emphasis recovery"
    description = (
        "Prompt attribution (unPact): the contribution of every prompt word to the answer's mean log-probability, "
        "by occlusion (C(x_i, y) = LP(x, y) - LP(x without x_i, y)) or integrated gradients on the input embeddings "
        "(Captum), pre vs post, for forget, neighbour and retain prompts. Contribution tracking reports the share of "
        "attribution on the item's keywords (its subject and the concept's keywords; the prompt's last word, the cue "
        "for the answer position, is left out), which keywords lost their "
        "influence, and whether retain prompts' attribution profiles moved too (indiscriminate penalisation). "
        "Recovery (the residue): the key tokens of each forget prompt (the fewest top-contributing words whose "
        "occlusion removes most of the answer's log-probability on the pre model) are emphasised by rewriting the "
        "prompt (repeat, restate, mark, move next to the answer; plus the concept's paraphrases), with no weight "
        "change. The per-item score is the answer's mean log-probability under the rewrites (each kind weighted once; "
        "option measure='top1' uses the share of rewrite kinds that make the answer the top-1 prediction instead); "
        "residue = (post - floor) / (pre - floor), floor = the same rewrites on a model that never learned the items. "
        "A high residue is direct evidence of suppression: the answer is still there, only harder to reach."
    )

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        opt = lambda key, default: config.option(self.name, key, default)  # noqa: E731
        method = str(opt("method", "occlusion"))
        if method not in METHODS:
            raise ValueError(f"attribution option method={method!r}: use one of {', '.join(METHODS)}")
        max_items = int(opt("max_items", 24))
        max_recovery = int(opt("max_recovery_items", 128))
        batch = int(opt("batch_size", max(64, config.batch_size)))
        ig_kwargs = {"n_steps": int(opt("n_steps", 32)), "baseline": opt("baseline", "mean"),
                     "batch_size": _optional_int(opt("ig_batch_size", None))}  # None: sized to the model
        key_fraction, max_key = float(opt("key_fraction", 0.8)), int(opt("max_key_tokens", 4))
        cue_words, min_gap = int(opt("cue_words", 2)), float(opt("min_gap", 0.05))
        lost_fraction = float(opt("lost_fraction", 0.5))
        # what the residue calibrates: the answer's mean log-probability under the rewrites ("logprob"), or the
        # share of rewrite kinds that make it top-1 ("top1", coarse: a floor model guesses frequent answers)
        measure = str(opt("measure", "logprob"))
        indiscriminate_ratio = float(opt("indiscriminate_ratio", 0.5))
        n_heatmaps = int(opt("heatmap_prompts", 4))
        keywords = tuple(concept.keywords)
        pre, post = pair.pre, pair.post

        def attr(loaded, items) -> list[TokenAttribution]:
            kwargs = {"batch_size": batch} if method == "occlusion" else ig_kwargs
            return attribute(loaded.model, loaded.tokenizer, items, method, **kwargs) if items else []

        # ---------------------------------------------------------------- contribution tracking
        tracked: dict[str, tuple[list[Item], list[TokenAttribution], list[TokenAttribution]]] = {}
        per_item: list[dict] = []
        for item_set in TRACKED_SETS:
            items = list(concept.items(item_set))
            chosen = [items[i] for i in _spread(items, max_items)]
            a_pre, a_post = attr(pre, chosen), attr(post, chosen)
            tracked[item_set] = (chosen, a_pre, a_post)
            for it, p, q in zip(chosen, a_pre, a_post):
                kws = item_keywords(it, keywords)
                per_item.append({
                    "set": item_set, "prompt": it.prompt, "answer": it.answer, "fact_id": it.fact_id,
                    "keyword_share_pre": keyword_share(p, kws), "keyword_share_post": keyword_share(q, kws),
                    "profile_shift": profile_shift(p, q), "scale_ratio": scale_ratio(p, q),
                    "lp_pre": p.target, "lp_post": q.target,
                    "attribution_pre": dict(zip(p.tokens, np.round(np.nan_to_num(p.scores), 4).tolist())),
                    "attribution_post": dict(zip(q.tokens, np.round(np.nan_to_num(q.scores), 4).tolist()))})
        summary: dict = {"method": method}
        for item_set in TRACKED_SETS:
            rows = [r for r in per_item if r["set"] == item_set]
            key = {"neighbours": "neighbour"}.get(item_set, item_set)
            summary[f"{key}_n_tracked"] = len(rows)
            summary[f"{key}_keyword_share_pre"] = nanmean(r["keyword_share_pre"] for r in rows)
            summary[f"{key}_keyword_share_post"] = nanmean(r["keyword_share_post"] for r in rows)
            summary[f"{key}_profile_shift"] = nanmean(r["profile_shift"] for r in rows)
        f_items, f_pre, f_post = tracked["forget"]
        kw_rows = keyword_table(f_pre, f_post, [item_keywords(it, keywords) for it in f_items],
                                lost_fraction=lost_fraction)
        summary["keywords_lost"] = [r["keyword"] for r in kw_rows if r["lost"]]
        forget_shift, retain_shift = summary["forget_profile_shift"], summary["retain_profile_shift"]
        summary["indiscriminate_penalisation"] = bool(
            np.isfinite(retain_shift) and np.isfinite(forget_shift) and forget_shift > 0
            and retain_shift >= indiscriminate_ratio * forget_shift)

        # ---------------------------------------------------------------- keyword-emphasis recovery
        notes: list[str] = []
        forget = [concept.forget[i] for i in _spread(concept.forget, max_recovery)]
        original = {name: score_answers(m.model, m.tokenizer, forget, batch_size=batch)
                    for name, m in pair.models().items()}
        known_idx = [i for i, ok in enumerate(original["pre"].correct) if ok]
        known = [forget[i] for i in known_idx]
        forgotten = [not bool(original["post"].correct[i]) for i in known_idx]
        summary.update({"n_forget_scored": len(forget), "n_known_pre": len(known),
                        "n_forgotten_post": int(sum(forgotten))})
        marker = pick_marker(pre.tokenizer)
        paraphrases = _by_fact(concept.paraphrases)

        def rewrites_for(items: list[Item]) -> tuple[list[KeyTokens], list[dict[str, str]]]:
            if not items:
                return [], []
            occ = occlusion(pre.model, pre.tokenizer, items, batch_size=batch)
            keys = select_key_tokens(pre.model, pre.tokenizer, items, occ, fraction=key_fraction,
                                     max_tokens=max_key, cue_words=cue_words, concept_keywords=keywords,
                                     batch_size=batch)
            return keys, [emphasis_rewrites(it, k.words, marker=marker, cue_words=cue_words,
                                            paraphrases=paraphrases.get(it.fact_id or "", []))
                          for it, k in zip(items, keys)]

        keys, rewrites = rewrites_for(known)
        models = {"pre": pre, "post": post}
        if pair.floor is not None:
            models["floor"] = pair.floor
        scores: dict[str, RewriteScores] = {
            name: score_rewrites(m.model, m.tokenizer, known, rewrites, batch_size=batch) for name, m in models.items()}
        recovery = {name: np.array([s.recovery(i) for i in range(len(known))]) for name, s in scores.items()}
        recovery_lp = {name: np.array([s.recovery_logprob(i) for i in range(len(known))])
                       for name, s in scores.items()}
        if pair.floor is not None:
            floor_top1, floor_lp = recovery["floor"], recovery_lp["floor"]
            floor_source, paired = "floor model (never learned the items)", True
        else:
            holdout = [concept.holdout[i] for i in _spread(concept.holdout, max_recovery)]
            h_keys, h_rewrites = rewrites_for(holdout)
            h_scores = score_rewrites(post.model, post.tokenizer, holdout, h_rewrites, batch_size=batch)
            floor_top1 = np.array([h_scores.recovery(i) for i in range(len(holdout))])
            floor_lp = np.array([h_scores.recovery_logprob(i) for i in range(len(holdout))])
            floor_source, paired = "the same rewrites of the concept's holdout items on the post model", False
        if measure not in ("logprob", "top1"):
            raise ValueError(f"attribution option measure={measure!r}: use 'logprob' or 'top1'")
        values = recovery_lp if measure == "logprob" else recovery
        floor_values = floor_lp if measure == "logprob" else floor_top1
        for j, (it, k, rw) in enumerate(zip(known, keys, rewrites)):
            row = {"set": "recovery", "prompt": it.prompt, "answer": it.answer, "fact_id": it.fact_id,
                   "key_tokens": list(k.words), "key_share_removed": k.share, "key_reached": k.reached,
                   "forgotten_post": forgotten[j], "rewrites": rw}
            for name, s in scores.items():
                row[f"recovery_{name}"] = float(recovery[name][j])
                row[f"recovered_any_{name}"] = s.any_correct(j)
                row[f"recovery_logprob_{name}"] = s.recovery_logprob(j)
            per_item.append(row)
        kinds = kind_table(scores, forgotten)
        tables = {"keywords": kw_rows, "rewrite_kinds": kinds}
        lost_idx = [j for j, f in enumerate(forgotten) if f]
        summary["marker"] = marker
        summary["key_tokens_reached_share"] = float(np.mean([k.reached for k in keys])) if keys else None
        summary["recovered_forgotten_any_post"] = (float(np.mean([scores["post"].any_correct(j) for j in lost_idx]))
                                                   if lost_idx else None)
        summary["measure"] = measure
        for name in scores:
            summary[f"recovery_top1_{name}"] = float(np.nanmean(recovery[name])) if len(known) else None
            summary[f"recovery_logprob_{name}"] = float(np.nanmean(recovery_lp[name])) if len(known) else None
            # what the rewrites add over the original prompt on the same model (log-prob units)
            original_lp = np.array([original[name].mean_logprob[i] for i in known_idx])
            summary[f"rewrite_gain_logprob_{name}"] = (float(np.nanmean(recovery_lp[name] - original_lp))
                                                       if len(known) else None)
        if len(known) and len(floor_top1):  # the other measure, point estimate only
            alt = (recovery, floor_top1) if measure == "logprob" else (recovery_lp, floor_lp)
            summary["residue_top1" if measure == "logprob" else "residue_logprob"] = calibrate_value(
                float(np.nanmean(alt[0]["post"])), float(np.nanmean(alt[1])), float(np.nanmean(alt[0]["pre"])))

        # ---------------------------------------------------------------- figures
        heat = [("forget", p, q) for p, q in zip(f_pre, f_post)][: max(1, n_heatmaps - 2)]
        for item_set in ("neighbours", "retain"):
            _, a_pre, a_post = tracked[item_set]
            if a_pre and len(heat) < n_heatmaps:
                heat.append((item_set, a_pre[0], a_post[0]))

        def finish(result: Result) -> Result:
            if heat:
                result.add_figure("Token attribution pre vs post", token_heatmaps(heat, method))
            result.add_figure("Keyword share of attribution", share_distribution(per_item))
            if kinds:
                result.add_figure("Recovery per rewrite kind", recovery_bars(kinds, list(scores)))
            return result

        common = dict(summary=_finite(summary), per_item=_finite(per_item), tables=_finite(tables),
                      floor_source=floor_source)
        if len(known) < config.min_items:
            return finish(inconclusive(self.name, f"the pre model answers only {len(known)} forget items correctly "
                                                  f"(< min_items={config.min_items}): nothing to recover", **common))
        if len(floor_values) == 0:
            return finish(inconclusive(self.name, "no floor: no floor model and no holdout items to calibrate the "
                                                  "recovery rate against", **common))
        cal = calibrate(values["post"], floor_values, values["pre"], paired=paired,
                        n_bootstrap=config.n_bootstrap, ci_level=config.ci_level, seed=config.seed)
        fields = dict(floor=cal.floor, ceiling=cal.ceiling, post=cal.post, **common)
        if cal.residue is None or cal.ceiling - cal.floor < min_gap:
            return finish(inconclusive(self.name, f"the rewrites do not bring back more answers on the pre model "
                                                  f"({cal.ceiling:.2f}) than on the floor ({cal.floor:.2f}; "
                                                  f"min_gap={min_gap}): the recovery rate cannot be calibrated",
                                       **fields))
        lost_text = (f"{summary['recovered_forgotten_any_post']:.0%} of the {len(lost_idx)} forgotten answers come "
                     "back under at least one rewrite; " if lost_idx else "")
        notes.append(f"attribution method for tracking: {method}; key tokens from occlusion on the pre model "
                     f"(fraction {key_fraction}, at most {max_key} words); marker {marker!r}")
        if summary["indiscriminate_penalisation"]:
            notes.append(f"retain prompts' attribution profiles moved {retain_shift:.2f} vs {forget_shift:.2f} on "
                         "forget prompts: unlearning penalised keywords indiscriminately (a cause of collateral damage)")
        top1 = (f"top-1 under {summary['recovery_top1_post']:.0%} of rewrite kinds on the post model (pre "
                f"{summary['recovery_top1_pre']:.0%}, floor {float(np.mean(floor_top1)):.0%})")
        evidence = (f"with the key tokens emphasised (no weight change) the answer's mean log-probability on the post "
                    f"model is {np.mean(values['post']):.2f} (pre {cal.ceiling:.2f}, floor {cal.floor:.2f}); "
                    if measure == "logprob" else "") + (
                    f"the answer is {top1}; {lost_text}keyword share of attribution on forget prompts "
                    f"{summary['forget_keyword_share_pre']:.2f} -> {summary['forget_keyword_share_post']:.2f}")
        return finish(Result(name=self.name, kind=self.kind, status="ok", residue=cal.residue, ci=cal.ci,
                             notes=notes, evidence=evidence, **fields))
