"""The behavioural metrics open-unlearning reports: exact memorization, extraction strength, truth ratio and
forget quality (KS test of the truth-ratio distribution against the floor/oracle model's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Bool, Float
from pydantic import Field
from scipy.stats import ks_2samp

from palimpsest.audit.finalize import Measurement
from palimpsest.behavioural.utility import (
    EPSILON,
    greedy_answers,
    model_utility,
    truth_ratio_true_better,
    utility_components,
)
from palimpsest.capture import score_answers
from palimpsest.capture.scoring import AnswerScores
from palimpsest.stats import bootstrap_mean_ci
from palimpsest.types import Analyser, AnalyserConfig, Result, register

SETS = ("forget", "retain")


class MemorizationConfig(AnalyserConfig):
    """The metrics are open-unlearning's, scored on the concept's forget and retain items (and neighbours for
    model utility)."""

    # greedy answer length for model utility's ROUGE-L (open-unlearning's generation_args.max_new_tokens)
    max_new_tokens: int = Field(200, ge=1)
    utility: bool = True  # compute model utility (it generates an answer per retain-side item and model)
    # prompts per greedy generation batch (the retain and neighbour sets share batches): a decoding step costs
    # about the same at 8 rows as at 32 on a CPU, and a row's greedy answer does not depend on the others
    generation_batch_size: int = Field(32, ge=1)


def exact_memorization(top1: Bool[np.ndarray, " answer"]) -> float:
    """Fraction of answer tokens that are the model's top prediction under teacher forcing."""
    return float(np.mean(top1)) if len(top1) else float("nan")


def extraction_strength(top1: Bool[np.ndarray, " answer"]) -> float:
    """1 − k*/|y|, k* the first position from which every remaining answer token is the top prediction (Wang et
    al. 2025, "Towards Effective Evaluations and Comparisons for LLM Unlearning Methods"; open-unlearning's loop
    stops at |y| − 1 and so gives 1/|y|, not 0, when not even the last token is predicted: this follows the paper)."""
    top1 = np.asarray(top1, dtype=bool)
    if len(top1) == 0:
        return float("nan")
    misses = np.flatnonzero(~top1)
    k_star = 0 if len(misses) == 0 else int(misses[-1]) + 1
    return 1.0 - k_star / len(top1)


@dataclass(frozen=True)
class TruthRatios:
    """Per item with perturbed answers, R = P(perturbed) / P(paraphrased), two ways (see `truth_ratios`)."""

    geometric: Float[np.ndarray, " used"]  # open-unlearning / TOFU code: exp(−mean_k L_k) / (exp(−L_para) + 1e-10)
    arithmetic: Float[np.ndarray, " used"]  # TOFU paper's formula: mean_k P(perturbed_k)^(1/|y_k|) / P(para)^(1/|y|)
    used: list[int]  # indices of the items with perturbed answers
    fell_back: bool  # some item had no paraphrased answer and used its own answer


def truth_ratios(model, tokenizer, items, batch_size: int) -> TruthRatios:
    """Truth ratios of the items that have perturbed answers. The standard one is open-unlearning's `truth_ratio`
    (TOFU's code): the geometric mean over perturbed answers of their length-normalised probability exp(−L_k), L the
    mean answer-token NLL, over exp(−L_paraphrased) + 1e-10. The arithmetic mean of the same probabilities (the TOFU
    paper's equation) is palimpsest's variant, reported beside it."""
    used = [i for i, it in enumerate(items) if it.perturbed_answers]
    if not used:
        return TruthRatios(np.zeros(0), np.zeros(0), [], False)
    chosen = [items[i] for i in used]
    fell_back = any(it.paraphrased_answer is None for it in chosen)
    true_answers = [it.paraphrased_answer or it.answer for it in chosen]
    true_lp = score_answers(model, tokenizer, chosen, answers=true_answers, batch_size=batch_size).mean_logprob
    flat_items = [it for it in chosen for _ in it.perturbed_answers]
    owner = np.array([j for j, it in enumerate(chosen) for _ in it.perturbed_answers])
    wrong_lp = score_answers(model, tokenizer, flat_items, answers=[a for it in chosen for a in it.perturbed_answers],
                             batch_size=batch_size).mean_logprob.astype(np.float64)
    counts = np.bincount(owner, minlength=len(chosen))
    true_prob = np.exp(true_lp.astype(np.float64))
    geometric = np.exp(np.bincount(owner, weights=wrong_lp, minlength=len(chosen)) / counts) / (true_prob + EPSILON)
    arithmetic = np.bincount(owner, weights=np.exp(wrong_lp), minlength=len(chosen)) / counts / true_prob
    return TruthRatios(geometric, arithmetic, used, fell_back)


def truth_ratio_statistic(item_set: str, ratios: Float[np.ndarray, " used"]) -> float:
    """open-unlearning's aggregation: forget `closer_to_1_better` = mean min(R, 1/(R + 1e-10)); other sets
    `true_better` = mean max(0, 1 − R)."""
    if item_set == "forget":
        return float(np.mean(np.minimum(ratios, 1.0 / (ratios + EPSILON))))
    return truth_ratio_true_better(ratios)


def item_scores(loaded, items, batch_size: int) -> tuple[AnswerScores, Float[np.ndarray, " n"],
                                                        Float[np.ndarray, " n"], TruthRatios]:
    """Per item: the answer scores, exact memorization and extraction strength; and the truth ratios."""
    scores = score_answers(loaded.model, loaded.tokenizer, items, batch_size=batch_size)
    em = np.array([exact_memorization(t) for t in scores.token_top1])
    ext = np.array([extraction_strength(t) for t in scores.token_top1])
    return scores, em, ext, truth_ratios(loaded.model, loaded.tokenizer, items, batch_size)


def set_row(item_set: str, model_name: str, em: Float[np.ndarray, " n"], ext: Float[np.ndarray, " n"],
            ratios: TruthRatios) -> dict:
    """The per_set table row: mean scores, the truth ratio as open-unlearning aggregates it (where there are any),
    and palimpsest's arithmetic variant beside it."""
    row = {"set": item_set, "model": model_name, "n": len(em), "exact_memorization": float(em.mean()),
           "extraction_strength": float(ext.mean())}
    if len(ratios.used):
        row["truth_ratio"] = truth_ratio_statistic(item_set, ratios.geometric)
        row["truth_ratio_arithmetic"] = truth_ratio_statistic(item_set, ratios.arithmetic)
    return row


def add_item_scores(per_item: list[dict], items, model_name: str, em: Float[np.ndarray, " n"],
                    ext: Float[np.ndarray, " n"], ratios: TruthRatios) -> None:
    """Add `model_name`'s rounded scores to the per-item rows (created on the first model, pre)."""
    for i, it in enumerate(items):
        if model_name == "pre":
            per_item.append({"index": i, "prompt": it.prompt, "answer": it.answer})
        per_item[i][f"em_{model_name}"] = round(float(em[i]), 4)
        per_item[i][f"es_{model_name}"] = round(float(ext[i]), 4)
        if i in ratios.used:
            j = ratios.used.index(i)
            per_item[i][f"truth_ratio_{model_name}"] = round(float(ratios.geometric[j]), 4)
            per_item[i][f"truth_ratio_arithmetic_{model_name}"] = round(float(ratios.arithmetic[j]), 4)


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


def forget_quality_summary(tr: dict, floor: bool) -> dict:
    """TOFU's forget quality: the KS-test p-value of the post model's forget truth ratios against the floor
    (retain) model's (open-unlearning `ks_test` on `forget_truth_ratio`); the arithmetic variant beside it."""
    if not floor or len(tr.get(("forget", "floor"), TruthRatios(np.zeros(0), np.zeros(0), [], False)).used) < 2:
        return {}
    out = {}
    for model_name, suffix in (("post", ""), ("pre", "_pre")):
        mine, ref = tr[("forget", model_name)], tr[("forget", "floor")]
        out[f"forget_quality{suffix}"] = float(ks_2samp(mine.geometric, ref.geometric).pvalue)
        out[f"forget_quality_arithmetic{suffix}"] = float(ks_2samp(mine.arithmetic, ref.arithmetic).pvalue)
    return out


@register
class Memorization(Analyser):
    name = "memorization"
    kind = "info"
    title = "Memorization, extraction strength and truth ratio"
    description = (
        "The behavioural metrics of open-unlearning, for forget and retain items under pre, post and the floor model: "
        "exact memorization (share of answer tokens that are the top prediction under teacher forcing), extraction "
        "strength (1 − k*/|y|, k* the first answer position from which every remaining token is predicted), the truth "
        "ratio R = P(perturbed)/P(paraphrased) with per-token normalised probabilities, geometric mean over the "
        "perturbed answers as open-unlearning computes it (reported as min(R, 1/R) on forget, max(0, 1 − R) on "
        "retain; the paper's arithmetic mean beside it), forget quality: the KS-test p-value of the post model's "
        "forget truth ratios against the floor model's (high = indistinguishable from the retain model), and model "
        "utility: the harmonic mean of the retain-side probability, ROUGE-L recall and truth ratio (TOFU). The "
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
        tr: dict[tuple[str, str], TruthRatios] = {}
        answer_lp: dict[tuple[str, str], np.ndarray] = {}  # mean answer log-probs, reused by model utility
        fell_back = False
        for item_set in SETS:
            items = list(concept.items(item_set))
            if not items:
                continue
            for model_name, loaded in models.items():
                scores, em, ext, ratios = item_scores(loaded, items, config.batch_size)
                es[(item_set, model_name)], tr[(item_set, model_name)] = ext, ratios
                answer_lp[(item_set, model_name)] = scores.mean_logprob
                fell_back |= ratios.fell_back
                row = set_row(item_set, model_name, em, ext, ratios)
                summary[f"{item_set}_em_{model_name}"] = row["exact_memorization"]
                summary[f"{item_set}_es_{model_name}"] = row["extraction_strength"]
                for key in ("truth_ratio", "truth_ratio_arithmetic"):
                    if key in row:
                        summary[f"{item_set}_{key}_{model_name}"] = row[key]
                tables["per_set"].append(row)
                figure_rows += [{"set": item_set, "model": model_name, "metric": m, "value": row[m]}
                                for m in ("exact_memorization", "extraction_strength", "truth_ratio") if m in row]
                if item_set == "forget":
                    add_item_scores(per_item, items, model_name, em, ext, ratios)
        notes = []
        if fell_back:
            notes.append("items without a paraphrased answer use their own answer as the true answer of the truth ratio")
        floor = pair.floor is not None
        summary.update(forget_quality_summary(tr, floor))
        if ctx.opts.utility:
            summary.update(self._utility(ctx, tr, answer_lp, tables))
        summary["n_forget"] = len(concept.forget)
        lo, hi = bootstrap_mean_ci(es[("forget", "post")], n_bootstrap=config.n_bootstrap, seed=config.seed)
        summary["forget_es_post_ci"] = [lo, hi]
        if not floor:
            return self._uncalibrated(summary, tables, per_item, notes, figure_rows, ctx)
        fq = summary.get("forget_quality")
        notes.append("truth ratio: open-unlearning's geometric mean over perturbed answers (keys truth_ratio_*); the "
                     "TOFU paper's arithmetic mean is truth_ratio_arithmetic_*. Forget quality: KS-test p-value of the "
                     "post model's forget truth ratios against the floor model's (TOFU; high = like the retain model)")
        return Measurement(
            post=es[("forget", "post")], floor=es[("forget", "floor")], ceiling=es[("forget", "pre")],
            floor_source="floor model (oracle) extraction strength", paired=True,
            evidence=("extraction strength on the forget items {ceiling:.2f} (pre) -> {post:.2f} (post), floor "
                      "{floor:.2f}" + (f"; forget quality (KS p vs floor) {fq:.3g}" if fq is not None else "")),
            degenerate="the pre model's extraction strength ({ceiling:.2f}) is not above the floor model's "
                       "({floor:.2f}): nothing to calibrate",
            summary=summary, tables=tables, per_item=per_item, notes=notes, extra={"rows": figure_rows})

    def _utility(self, ctx, tr: dict, answer_lp: dict, tables: dict) -> dict:
        """Model utility per model (TOFU): harmonic mean of retain (probability, ROUGE-L, truth ratio) and
        neighbour (normalised probability, ROUGE-L, truth ratio) scores."""
        out: dict = {}
        rows = []
        sets = [(name, normalise, list(ctx.concept.items(name))) for name, normalise in (("retain", False),
                                                                                      ("neighbours", True))]
        sets = [entry for entry in sets if entry[2]]
        every = [it for _, _, items in sets for it in items]
        for model_name, loaded in ctx.pair.models().items():
            components: dict[str, float] = {}
            # one generation call for every retain-side prompt: the sets share decoding steps
            generated = greedy_answers(loaded, [it.prompt for it in every], ctx.opts.max_new_tokens,
                                       ctx.opts.generation_batch_size, references=[it.answer for it in every])
            offset = 0
            for item_set, normalise, items in sets:
                generations, offset = generated[offset:offset + len(items)], offset + len(items)
                ratios = tr.get((item_set, model_name))
                if ratios is None:
                    ratios = truth_ratios(loaded.model, loaded.tokenizer, items, ctx.config.batch_size)
                components.update(utility_components(
                    loaded, item_set, items, ratios.geometric, answer_lp.get((item_set, model_name)),
                    normalise=normalise, max_new_tokens=ctx.opts.max_new_tokens, batch_size=ctx.config.batch_size,
                    generations=generations))
            out[f"model_utility_{model_name}"] = model_utility(components)
            rows.append({"model": model_name, "model_utility": out[f"model_utility_{model_name}"], **components})
        tables["model_utility"] = rows
        return out

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
