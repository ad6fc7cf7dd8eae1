"""The `attribution` analyser: unPact prompt attribution pre vs post, and keyword-emphasis recovery (the residue)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from palimpsest.attribution.figures import recovery_bars, share_distribution, token_heatmaps
from palimpsest.attribution.keytokens import KeyTokens, select_key_tokens
from palimpsest.attribution.methods import TokenAttribution, attribute, occlusion
from palimpsest.attribution.recovery import RewriteScores, kind_table, score_rewrites
from palimpsest.attribution.rewrites import emphasis_rewrites, pick_marker
from palimpsest.attribution.tracking import keyword_share, keyword_table, nanmean, profile_shift, scale_ratio
from palimpsest.attribution.units import item_keywords
from palimpsest.audit.finalize import Measurement, finalize
from palimpsest.capture import score_answers
from palimpsest.concepts import Item
from palimpsest.stats import calibrate_value
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

TRACKED_SETS = ("forget", "neighbours", "retain")


def _spread(items: Sequence[Item], cap: int) -> list[int]:
    """At most `cap` indices spread evenly over the set (deterministic, covers every part of it)."""
    if len(items) <= cap:
        return list(range(len(items)))
    return sorted({int(round(x)) for x in np.linspace(0, len(items) - 1, cap)})


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


class AttributionConfig(AnalyserConfig):
    method: Literal["occlusion", "integrated_gradients"] = "occlusion"  # attribution method for contribution tracking
    max_items: int = 24  # at most this many prompts per tracked set (forget, neighbours, retain), spread evenly
    max_recovery_items: int = 128  # at most this many forget (and holdout) items in the recovery test
    batch_size: int | None = None  # scoring batch size (None: the audit's batch_size, at least 64)
    n_steps: int = 32  # integrated gradients: Riemann steps of the path integral
    # integrated gradients: the embedding every prompt word is replaced by on the baseline (or a token id)
    baseline: Literal["mean", "zero", "pad", "unk", "eos"] | int = "mean"
    ig_batch_size: int | None = None  # integrated gradients: interpolation points per batch (None: sized to the model)
    key_fraction: float = 0.8  # key tokens: the fewest top words whose occlusion removes this share of the answer LP
    max_key_tokens: int = 4  # key tokens: at most this many words
    cue_words: int = 2  # the prompt's last words (the cue for the answer) are never key tokens and stay last
    min_gap: float = 0.05  # the rewrites must score higher on pre than on the floor by this for a residue
    lost_fraction: float = 0.5  # a keyword is "lost" when its attribution falls by at least this share
    # what the residue calibrates: the answer's mean log-probability under the rewrites ("logprob"), or the share of
    # rewrite kinds that make it top-1 ("top1", coarse: a floor model guesses frequent answers)
    measure: Literal["logprob", "top1"] = "logprob"
    # retain prompts' profile shift at least this share of the forget prompts': indiscriminate penalisation
    indiscriminate_ratio: float = 0.5
    heatmap_prompts: int = 4  # prompts in the token-attribution heatmap figure


@dataclass
class _Recovery:
    """The keyword-emphasis recovery test: known items (pre answers them), their key tokens, rewrites and scores."""

    known: list[Item]
    keys: list[KeyTokens]
    rewrites: list[dict[str, str]]
    forgotten: list[bool]
    scores: dict[str, RewriteScores]
    top1: dict[str, np.ndarray]  # model -> per known item: share of rewrite kinds with the answer top-1
    logprob: dict[str, np.ndarray]  # model -> per known item: mean answer log-probability under the rewrites
    floor_top1: np.ndarray
    floor_logprob: np.ndarray
    floor_source: str
    paired: bool
    marker: str
    gain: dict[str, float | None]  # model -> what the rewrites add over the original prompt (mean log-prob)


@register
class PromptAttribution(Analyser):
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
    Config = AttributionConfig
    modalities = frozenset({"text"})
    # integrated gradients backpropagates to the input embeddings; reads no captures (the floor is optional: the
    # holdout items stand in)
    needs = frozenset({"gradients"})

    def run(self, ctx) -> Result:
        """Overridden only to skip the base forget-count guard: the known-items guard in `measure` subsumes it (the
        pre model cannot answer more items than there are), and contribution tracking is reported either way."""
        measured = self.measure(ctx)
        if isinstance(measured, Result):
            return measured
        result = finalize(self, measured, ctx)
        for title, figure in self.figures(measured, ctx).items():
            result.add_figure(title, figure)
        return result

    def measure(self, ctx) -> Measurement | Result:
        opts: AttributionConfig = ctx.opts
        batch = _batch(ctx)
        tracked, per_item, summary, kw_rows = _track(ctx, batch)
        rec = _recover(ctx, batch, summary)
        values = rec.logprob if opts.measure == "logprob" else rec.top1
        floor_values = rec.floor_logprob if opts.measure == "logprob" else rec.floor_top1
        per_item += _recovery_rows(rec)
        kinds = kind_table(rec.scores, rec.forgotten)
        _recovery_summary(ctx, rec, summary)
        measured = Measurement(
            post=values["post"], floor=floor_values, ceiling=values["pre"], floor_source=rec.floor_source,
            paired=rec.paired, min_gap=opts.min_gap, evidence="", summary=_finite(summary),
            per_item=_finite(per_item), tables=_finite({"keywords": kw_rows, "rewrite_kinds": kinds}),
            degenerate=(f"the rewrites do not bring back more answers on the pre model ({{ceiling:.2f}}) than on the "
                        f"floor ({{floor:.2f}}; min_gap={opts.min_gap}): the recovery rate cannot be calibrated"),
            extra={"heat": _heatmap_pairs(tracked, opts.heatmap_prompts), "kinds": kinds,
                   "models": list(rec.scores)})
        if len(rec.known) < ctx.config.min_items:
            return self._inconclusive(ctx, measured, f"the pre model answers only {len(rec.known)} forget items "
                                      f"correctly (< min_items={ctx.config.min_items}): nothing to recover")
        if len(floor_values) == 0:
            return self._inconclusive(ctx, measured, "no floor: no floor model and no holdout items to calibrate the "
                                                     "recovery rate against")
        measured.notes, measured.evidence = _notes(opts, rec, summary), _evidence(opts, rec, summary)
        return measured

    def _inconclusive(self, ctx, measured: Measurement, reason: str) -> Result:
        """A guard failed before calibration: the tracking and recovery tables and the figures are still reported."""
        result = inconclusive(self.name, reason, kind=self.kind, summary=measured.summary,
                              per_item=measured.per_item, tables=measured.tables, floor_source=measured.floor_source)
        for title, figure in self.figures(measured, ctx).items():
            result.add_figure(title, figure)
        return result

    def figures(self, measured: Measurement, ctx) -> dict:
        out = {}
        if measured.extra["heat"]:
            out["Token attribution pre vs post"] = token_heatmaps(measured.extra["heat"], ctx.opts.method)
        out["Keyword share of attribution"] = share_distribution(measured.per_item)
        if measured.extra["kinds"]:
            out["Recovery per rewrite kind"] = recovery_bars(measured.extra["kinds"], measured.extra["models"])
        return out


def _batch(ctx) -> int:
    return ctx.opts.batch_size if ctx.opts.batch_size is not None else max(64, ctx.config.batch_size)


def _track(ctx, batch: int) -> tuple[dict, list[dict], dict, list[dict]]:
    """Contribution tracking: attribution pre vs post on forget, neighbour and retain prompts. Returns the
    attributions per set, the per-prompt rows, the summary so far and the forget keywords' table."""
    opts: AttributionConfig = ctx.opts
    keywords = tuple(ctx.concept.keywords)
    ig_kwargs = {"n_steps": opts.n_steps, "baseline": opts.baseline, "batch_size": opts.ig_batch_size}
    kwargs = {"batch_size": batch} if opts.method == "occlusion" else ig_kwargs

    def attr(loaded, items) -> list[TokenAttribution]:
        return attribute(loaded.model, loaded.tokenizer, items, opts.method, **kwargs) if items else []

    tracked: dict[str, tuple[list[Item], list[TokenAttribution], list[TokenAttribution]]] = {}
    per_item: list[dict] = []
    for item_set in TRACKED_SETS:
        items = list(ctx.concept.items(item_set))
        chosen = [items[i] for i in _spread(items, opts.max_items)]
        a_pre, a_post = attr(ctx.pair.pre, chosen), attr(ctx.pair.post, chosen)
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
    summary: dict = {"method": opts.method}
    for item_set in TRACKED_SETS:
        rows = [r for r in per_item if r["set"] == item_set]
        key = {"neighbours": "neighbour"}.get(item_set, item_set)
        summary[f"{key}_n_tracked"] = len(rows)
        summary[f"{key}_keyword_share_pre"] = nanmean(r["keyword_share_pre"] for r in rows)
        summary[f"{key}_keyword_share_post"] = nanmean(r["keyword_share_post"] for r in rows)
        summary[f"{key}_profile_shift"] = nanmean(r["profile_shift"] for r in rows)
    f_items, f_pre, f_post = tracked["forget"]
    kw_rows = keyword_table(f_pre, f_post, [item_keywords(it, keywords) for it in f_items],
                            lost_fraction=opts.lost_fraction)
    summary["keywords_lost"] = [r["keyword"] for r in kw_rows if r["lost"]]
    forget_shift, retain_shift = summary["forget_profile_shift"], summary["retain_profile_shift"]
    summary["indiscriminate_penalisation"] = bool(
        np.isfinite(retain_shift) and np.isfinite(forget_shift) and forget_shift > 0
        and retain_shift >= opts.indiscriminate_ratio * forget_shift)
    return tracked, per_item, summary, kw_rows


def _rewrites_for(ctx, items: list[Item], batch: int, marker: str) -> tuple[list[KeyTokens], list[dict[str, str]]]:
    """Key tokens (occlusion on the pre model) and their emphasis rewrites, per item."""
    if not items:
        return [], []
    opts: AttributionConfig = ctx.opts
    pre, keywords = ctx.pair.pre, tuple(ctx.concept.keywords)
    paraphrases = _by_fact(ctx.concept.paraphrases)
    occ = occlusion(pre.model, pre.tokenizer, items, batch_size=batch)
    keys = select_key_tokens(pre.model, pre.tokenizer, items, occ, fraction=opts.key_fraction,
                             max_tokens=opts.max_key_tokens, cue_words=opts.cue_words, concept_keywords=keywords,
                             batch_size=batch)
    return keys, [emphasis_rewrites(it, k.words, marker=marker, cue_words=opts.cue_words,
                                    paraphrases=paraphrases.get(it.fact_id or "", []))
                  for it, k in zip(items, keys)]


def _recover(ctx, batch: int, summary: dict) -> _Recovery:
    """Score the emphasis rewrites of the forget items the pre model answers on pre, post (and floor); without a
    floor model the floor is the same rewrites of the holdout items on the post model."""
    opts: AttributionConfig = ctx.opts
    pair, concept = ctx.pair, ctx.concept
    forget = [concept.forget[i] for i in _spread(concept.forget, opts.max_recovery_items)]
    original = {name: score_answers(m.model, m.tokenizer, forget, batch_size=batch)
                for name, m in pair.models().items()}
    known_idx = [i for i, ok in enumerate(original["pre"].correct) if ok]
    known = [forget[i] for i in known_idx]
    forgotten = [not bool(original["post"].correct[i]) for i in known_idx]
    summary.update({"n_forget_scored": len(forget), "n_known_pre": len(known),
                    "n_forgotten_post": int(sum(forgotten))})
    marker = pick_marker(pair.pre.tokenizer)
    keys, rewrites = _rewrites_for(ctx, known, batch, marker)
    models = {"pre": pair.pre, "post": pair.post} | ({"floor": pair.floor} if pair.floor is not None else {})
    scores = {name: score_rewrites(m.model, m.tokenizer, known, rewrites, batch_size=batch)
              for name, m in models.items()}
    top1 = {name: np.array([s.recovery(i) for i in range(len(known))]) for name, s in scores.items()}
    logprob = {name: np.array([s.recovery_logprob(i) for i in range(len(known))]) for name, s in scores.items()}
    if pair.floor is not None:
        floor_top1, floor_lp = top1["floor"], logprob["floor"]
        floor_source, paired = "floor model (never learned the items)", True
    else:
        holdout = [concept.holdout[i] for i in _spread(concept.holdout, opts.max_recovery_items)]
        _, h_rewrites = _rewrites_for(ctx, holdout, batch, marker)
        h_scores = score_rewrites(pair.post.model, pair.post.tokenizer, holdout, h_rewrites, batch_size=batch)
        floor_top1 = np.array([h_scores.recovery(i) for i in range(len(holdout))])
        floor_lp = np.array([h_scores.recovery_logprob(i) for i in range(len(holdout))])
        floor_source, paired = "the same rewrites of the concept's holdout items on the post model", False
    gain = {name: float(np.nanmean(logprob[name] - np.array([original[name].mean_logprob[i] for i in known_idx])))
            if len(known) else None for name in scores}
    return _Recovery(known, keys, rewrites, forgotten, scores, top1, logprob, floor_top1, floor_lp, floor_source,
                     paired, marker, gain)


def _recovery_rows(rec: _Recovery) -> list[dict]:
    rows = []
    for j, (it, k, rw) in enumerate(zip(rec.known, rec.keys, rec.rewrites)):
        row = {"set": "recovery", "prompt": it.prompt, "answer": it.answer, "fact_id": it.fact_id,
               "key_tokens": list(k.words), "key_share_removed": k.share, "key_reached": k.reached,
               "forgotten_post": rec.forgotten[j], "rewrites": rw}
        for name, s in rec.scores.items():
            row[f"recovery_{name}"] = float(rec.top1[name][j])
            row[f"recovered_any_{name}"] = s.any_correct(j)
            row[f"recovery_logprob_{name}"] = s.recovery_logprob(j)
        rows.append(row)
    return rows


def _recovery_summary(ctx, rec: _Recovery, summary: dict) -> None:
    """The recovery keys of the summary (in place), with the other measure's residue as a point estimate."""
    measure, n_known = ctx.opts.measure, len(rec.known)
    lost_idx = [j for j, f in enumerate(rec.forgotten) if f]
    summary["marker"] = rec.marker
    summary["key_tokens_reached_share"] = float(np.mean([k.reached for k in rec.keys])) if rec.keys else None
    summary["recovered_forgotten_any_post"] = (float(np.mean([rec.scores["post"].any_correct(j) for j in lost_idx]))
                                               if lost_idx else None)
    summary["measure"] = measure
    for name in rec.scores:
        summary[f"recovery_top1_{name}"] = float(np.nanmean(rec.top1[name])) if n_known else None
        summary[f"recovery_logprob_{name}"] = float(np.nanmean(rec.logprob[name])) if n_known else None
        # what the rewrites add over the original prompt on the same model (log-prob units)
        summary[f"rewrite_gain_logprob_{name}"] = rec.gain[name]
    if n_known and len(rec.floor_top1):  # the other measure, point estimate only
        alt = (rec.top1, rec.floor_top1) if measure == "logprob" else (rec.logprob, rec.floor_logprob)
        summary["residue_top1" if measure == "logprob" else "residue_logprob"] = calibrate_value(
            float(np.nanmean(alt[0]["post"])), float(np.nanmean(alt[1])), float(np.nanmean(alt[0]["pre"])))


def _heatmap_pairs(tracked: dict, n_heatmaps: int) -> list[tuple[str, TokenAttribution, TokenAttribution]]:
    _, f_pre, f_post = tracked["forget"]
    heat = [("forget", p, q) for p, q in zip(f_pre, f_post)][: max(1, n_heatmaps - 2)]
    for item_set in ("neighbours", "retain"):
        _, a_pre, a_post = tracked[item_set]
        if a_pre and len(heat) < n_heatmaps:
            heat.append((item_set, a_pre[0], a_post[0]))
    return heat


def _notes(opts: AttributionConfig, rec: _Recovery, summary: dict) -> list[str]:
    notes = [f"attribution method for tracking: {opts.method}; key tokens from occlusion on the pre model "
             f"(fraction {opts.key_fraction}, at most {opts.max_key_tokens} words); marker {rec.marker!r}"]
    if summary["indiscriminate_penalisation"]:
        notes.append(f"retain prompts' attribution profiles moved {summary['retain_profile_shift']:.2f} vs "
                     f"{summary['forget_profile_shift']:.2f} on forget prompts: unlearning penalised keywords "
                     "indiscriminately (a cause of collateral damage)")
    return notes


def _evidence(opts: AttributionConfig, rec: _Recovery, summary: dict) -> str:
    """The evidence template ({post} {floor} {ceiling} are filled in by finalize; the rest is written here)."""
    lost = sum(rec.forgotten)
    lost_text = (f"{summary['recovered_forgotten_any_post']:.0%} of the {lost} forgotten answers come "
                 "back under at least one rewrite; " if lost else "")
    top1 = (f"top-1 under {summary['recovery_top1_post']:.0%} of rewrite kinds on the post model (pre "
            f"{summary['recovery_top1_pre']:.0%}, floor {float(np.mean(rec.floor_top1)):.0%})")
    logprob = ("with the key tokens emphasised (no weight change) the answer's mean log-probability on the post "
               "model is {post:.2f} (pre {ceiling:.2f}, floor {floor:.2f}); " if opts.measure == "logprob" else "")
    return logprob + (f"the answer is {top1}; {lost_text}keyword share of attribution on forget prompts "
                      f"{summary['forget_keyword_share_pre']:.2f} -> {summary['forget_keyword_share_post']:.2f}")
