"""The behavioural metrics open-unlearning reports: exact memorization, extraction strength, truth ratio and
forget quality (KS test of the truth-ratio distribution against the floor/oracle model's)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Bool, Float
from scipy.stats import ks_2samp

from palimpsest.audit.finalize import Measurement
from palimpsest.capture import score_answers
from palimpsest.stats import bootstrap_mean_ci
from palimpsest.types import Analyser, AnalyserConfig, Result, register

SETS = ("forget", "retain")


class MemorizationConfig(AnalyserConfig):
    """No options: the metrics are open-unlearning's, scored on the concept's forget and retain items."""


def exact_memorization(top1: Bool[np.ndarray, " answer"]) -> float:
    """Fraction of answer tokens that are the model's top prediction under teacher forcing."""
    return float(np.mean(top1)) if len(top1) else float("nan")


def extraction_strength(top1: Bool[np.ndarray, " answer"]) -> float:
    """1 − k*/|y|, k* the first position from which every remaining answer token is the top prediction."""
    top1 = np.asarray(top1, dtype=bool)
    if len(top1) == 0:
        return float("nan")
    misses = np.flatnonzero(~top1)
    k_star = 0 if len(misses) == 0 else int(misses[-1]) + 1
    return 1.0 - k_star / len(top1)


def truth_ratios(model, tokenizer, items, batch_size: int) -> tuple[Float[np.ndarray, " n"], list[int], bool]:
    """Per item with perturbed answers: R = mean_k P(perturbed_k)^(1/|y_k|) / P(paraphrased)^(1/|y|).

    Returns (R, indices of the items used, whether any item lacked a paraphrased answer and used its answer).
    """
    used = [i for i, it in enumerate(items) if it.perturbed_answers]
    if not used:
        return np.zeros(0), [], False
    chosen = [items[i] for i in used]
    fell_back = any(it.paraphrased_answer is None for it in chosen)
    true_answers = [it.paraphrased_answer or it.answer for it in chosen]
    true_lp = score_answers(model, tokenizer, chosen, answers=true_answers, batch_size=batch_size).mean_logprob
    flat_items = [it for it in chosen for _ in it.perturbed_answers]
    owner = np.array([j for j, it in enumerate(chosen) for _ in it.perturbed_answers])
    wrong_lp = score_answers(model, tokenizer, flat_items, answers=[a for it in chosen for a in it.perturbed_answers],
                             batch_size=batch_size).mean_logprob
    wrong_prob = np.bincount(owner, weights=np.exp(wrong_lp), minlength=len(chosen)) / np.bincount(owner)
    return wrong_prob / np.exp(true_lp), used, fell_back


def item_scores(loaded, items, batch_size: int) -> tuple[Float[np.ndarray, " n"], Float[np.ndarray, " n"],
                                                        Float[np.ndarray, " used"], list[int], bool]:
    """Per item: exact memorization and extraction strength; and the truth ratios (see `truth_ratios`)."""
    scores = score_answers(loaded.model, loaded.tokenizer, items, batch_size=batch_size)
    em = np.array([exact_memorization(t) for t in scores.token_top1])
    ext = np.array([extraction_strength(t) for t in scores.token_top1])
    ratios, used, fell_back = truth_ratios(loaded.model, loaded.tokenizer, items, batch_size)
    return em, ext, ratios, used, fell_back


def set_row(item_set: str, model_name: str, em: Float[np.ndarray, " n"], ext: Float[np.ndarray, " n"],
            ratios: Float[np.ndarray, " used"]) -> dict:
    """The per_set table row: mean scores, the truth ratio as open-unlearning reports it (where there are any)."""
    row = {"set": item_set, "model": model_name, "n": len(em), "exact_memorization": float(em.mean()),
           "extraction_strength": float(ext.mean())}
    if len(ratios):
        stat = np.minimum(ratios, 1 / ratios) if item_set == "forget" else np.maximum(0, 1 - ratios)
        row["truth_ratio"] = float(stat.mean())
    return row


def add_item_scores(per_item: list[dict], items, model_name: str, em: Float[np.ndarray, " n"],
                    ext: Float[np.ndarray, " n"], ratios: Float[np.ndarray, " used"], used: list[int]) -> None:
    """Add `model_name`'s rounded scores to the per-item rows (created on the first model, pre)."""
    for i, it in enumerate(items):
        if model_name == "pre":
            per_item.append({"index": i, "prompt": it.prompt, "answer": it.answer})
        per_item[i][f"em_{model_name}"] = round(float(em[i]), 4)
        per_item[i][f"es_{model_name}"] = round(float(ext[i]), 4)
        if i in used:
            per_item[i][f"truth_ratio_{model_name}"] = round(float(ratios[used.index(i)]), 4)


def _figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    colours = {"pre": "#4C78A8", "post": "#E45756", "floor": "#9D9D9D"}
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        fig.add_bar(name=model, x=[f"{r['set']}: {r['metric']}" for r in sel], y=[r["value"] for r in sel],
                    marker_color=colours.get(model))
    fig.update_layout(barmode="group", yaxis=dict(title="score", range=[0, 1.05]), height=360,
                      margin=dict(l=50, r=20, t=30, b=80))
    return fig


@register
class Memorization(Analyser):
    name = "memorization"
    kind = "info"
    title = "Memorization, extraction strength and truth ratio"
    description = (
        "The behavioural metrics of open-unlearning, for forget and retain items under pre, post and the floor model: "
        "exact memorization (share of answer tokens that are the top prediction under teacher forcing), extraction "
        "strength (1 − k*/|y|, k* the first answer position from which every remaining token is predicted), the truth "
        "ratio R = P(perturbed)/P(paraphrased) with per-token normalised probabilities (reported as min(R, 1/R) on "
        "forget, max(0, 1 − R) on retain, as open-unlearning does), and forget quality: the KS-test p-value of the "
        "post model's forget truth ratios against the floor model's (high = indistinguishable from the oracle). The "
        "calibrated extraction strength (floor → 0, pre → 1) is shown as a residue but, being behaviour, is info only."
    )
    Config = MemorizationConfig
    modalities = frozenset({"text"})
    needs = frozenset()  # teacher-forced scoring only; the floor is optional (without it: not calibrated)

    def measure(self, ctx) -> Measurement | Result:
        pair, concept, config = ctx.pair, ctx.concept, ctx.config
        models = pair.models()
        summary: dict = {}
        tables: dict[str, list] = {"per_set": []}
        figure_rows, per_item = [], []
        es: dict[tuple[str, str], np.ndarray] = {}
        tr: dict[tuple[str, str], np.ndarray] = {}
        fell_back = False
        for item_set in SETS:
            items = list(concept.items(item_set))
            if not items:
                continue
            for model_name, loaded in models.items():
                em, ext, ratios, used, fb = item_scores(loaded, items, config.batch_size)
                es[(item_set, model_name)], tr[(item_set, model_name)] = ext, ratios
                fell_back |= fb
                row = set_row(item_set, model_name, em, ext, ratios)
                summary[f"{item_set}_em_{model_name}"] = row["exact_memorization"]
                summary[f"{item_set}_es_{model_name}"] = row["extraction_strength"]
                if "truth_ratio" in row:
                    summary[f"{item_set}_truth_ratio_{model_name}"] = row["truth_ratio"]
                tables["per_set"].append(row)
                figure_rows += [{"set": item_set, "model": model_name, "metric": m, "value": row[m]}
                                for m in ("exact_memorization", "extraction_strength", "truth_ratio") if m in row]
                if item_set == "forget":
                    add_item_scores(per_item, items, model_name, em, ext, ratios, used)
        notes = []
        if fell_back:
            notes.append("items without a paraphrased answer use their own answer as the true answer of the truth ratio")
        floor = pair.floor is not None
        if floor and len(tr.get(("forget", "floor"), [])) >= 2:
            summary["forget_quality"] = float(ks_2samp(tr[("forget", "post")], tr[("forget", "floor")]).pvalue)
            summary["forget_quality_pre"] = float(ks_2samp(tr[("forget", "pre")], tr[("forget", "floor")]).pvalue)
        summary["n_forget"] = len(concept.forget)
        lo, hi = bootstrap_mean_ci(es[("forget", "post")], n_bootstrap=config.n_bootstrap, seed=config.seed)
        summary["forget_es_post_ci"] = [lo, hi]
        if not floor:
            return self._uncalibrated(summary, tables, per_item, notes, figure_rows, ctx)
        fq = summary.get("forget_quality")
        return Measurement(
            post=es[("forget", "post")], floor=es[("forget", "floor")], ceiling=es[("forget", "pre")],
            floor_source="floor model (oracle) extraction strength", paired=True,
            evidence=("extraction strength on the forget items {ceiling:.2f} (pre) -> {post:.2f} (post), floor "
                      "{floor:.2f}" + (f"; forget quality (KS p vs floor) {fq:.3g}" if fq is not None else "")),
            degenerate="the pre model's extraction strength ({ceiling:.2f}) is not above the floor model's "
                       "({floor:.2f}): nothing to calibrate",
            summary=summary, tables=tables, per_item=per_item, notes=notes, extra={"rows": figure_rows})

    def _uncalibrated(self, summary: dict, tables: dict, per_item: list[dict], notes: list[str],
                      figure_rows: list[dict], ctx) -> Result:
        """The info result without a floor model: the scores, not calibrated."""
        result = Result(name=self.name, kind="info", summary=summary, tables=tables, per_item=per_item,
                        notes=notes,
                        evidence=f"extraction strength on the forget items {summary['forget_es_pre']:.2f} -> "
                                 f"{summary['forget_es_post']:.2f} (no floor model: not calibrated)")
        for title, figure in self.figures(Measurement(0, 0, 0, "", "", extra={"rows": figure_rows}), ctx).items():
            result.add_figure(title, figure)
        return result

    def figures(self, measured, ctx) -> dict:
        return {"Memorization metrics": _figure(measured.extra["rows"])}
