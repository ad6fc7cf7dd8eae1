"""Behaviour: does the post model still produce the answers, in the trained form and in every other form?"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import plotly.graph_objects as go
from pydantic import Field

from palimpsest.capture import score_answers
from palimpsest.stats import bootstrap_mean_ci
from palimpsest.types import Analyser, AnalyserConfig, Result, register

BEHAVIOUR_SETS = ("forget", "paraphrases", "neighbours", "retain")
SET_KEYS = {"forget": "forget", "paraphrases": "paraphrase", "neighbours": "neighbour", "retain": "retain"}


class BehaviourConfig(AnalyserConfig):
    """The forgotten bounds the verdict applies are AuditConfig.forgotten_max_relative_acc and forgotten_max_acc
    (the verdict's first gate, not this analyser's). The options only concern items scored "rouge" (long answers):
    their greedy answers' ROUGE-L recall is reported beside the accuracy (info; the accuracy stays teacher-forced)."""

    rouge_generation: bool = True  # generate a greedy answer per "rouge" item and model, for ROUGE-L recall
    # greedy answer length (open-unlearning's generation_args.max_new_tokens)
    max_new_tokens: int = Field(200, ge=1)


@register
class Behaviour(Analyser):
    name = "behaviour"
    kind = "behaviour"
    title = "Behaviour"
    description = (
        "Exact-match accuracy (every answer token is the model's top prediction under teacher forcing) and the mean "
        "answer log-probability, for the forget items in their trained form, the same facts in other forms "
        "(paraphrases), neighbouring facts that must stay, and unrelated retain facts; pre vs post (and the floor "
        "model when there is one), with bootstrap 95% intervals. Items may say how they are scored: multiple "
        "choice (correct when the correct choice has the highest summed log-probability, lm-eval-harness acc; "
        "chance reported) or long answers (correct when at least half the answer tokens are the top prediction; "
        "the greedy answer's ROUGE-L recall is reported beside it)."
    )
    Config = BehaviourConfig
    modalities = frozenset({"text", "image"})
    needs = frozenset()  # teacher-forced scoring of every item set

    def run(self, ctx) -> Result:
        """Not calibrated and never guarded by min_items: the verdict's gate reads its accuracies."""
        if ctx.modality == "image":  # the digits models: per-image accuracy (vision adapter)
            from palimpsest.vision import measures

            return measures.behaviour(self, ctx)
        pair, concept, config = ctx.pair, ctx.concept, ctx.config
        models = pair.models()
        opts = ctx.opts if isinstance(ctx.opts, BehaviourConfig) else BehaviourConfig()
        summary: dict = {}
        per_item = []
        figure_rows = []
        for item_set in BEHAVIOUR_SETS:
            items = concept.items(item_set)
            if not items:
                continue
            key = SET_KEYS[item_set]
            for model_name, loaded in models.items():
                scores = score_answers(loaded.model, loaded.tokenizer, items, batch_size=config.batch_size)
                acc = float(scores.correct.mean())
                lo, hi = bootstrap_mean_ci(scores.correct, n_bootstrap=config.n_bootstrap, seed=config.seed)
                summary[f"{key}_acc_{model_name}"] = acc
                summary[f"{key}_acc_{model_name}_ci"] = [lo, hi]
                summary[f"{key}_logprob_{model_name}"] = float(scores.mean_logprob.mean())
                figure_rows.append((key, model_name, acc, lo, hi))
                for i, item in enumerate(items):
                    if model_name == "pre":
                        per_item.append({"set": item_set, "index": i, "prompt": item.prompt, "answer": item.answer,
                                         "form": item.form, "fact_id": item.fact_id})
                        if item.scoring != "exact":
                            per_item[-1]["scoring"] = item.scoring
                    row = next(r for r in per_item if r["set"] == item_set and r["index"] == i)
                    row[f"correct_{model_name}"] = bool(scores.correct[i])
                    row[f"logprob_{model_name}"] = round(float(scores.mean_logprob[i]), 4)
                if opts.rouge_generation and any(it.scoring == "rouge" for it in items):
                    summary[f"{key}_rougeL_recall_{model_name}"] = _rouge(loaded, items, item_set, per_item,
                                                                         model_name, opts, config.batch_size)
            # the set's chance accuracy: 1/k for a k-way choice item, 0 for a generated answer
            chance = [1.0 / len(it.choices) if it.scoring == "choice" else 0.0 for it in items]
            if any(chance):
                summary[f"{key}_chance"] = float(np.mean(chance))
            if item_set == "paraphrases":
                summary["paraphrase_acc_by_form"] = _by_form(items, per_item, models)
        summary["n_forget"] = len(concept.forget)
        result = Result(name=self.name, kind="behaviour", summary=summary, per_item=per_item)
        for title, figure in self.figures(figure_rows, ctx).items():
            result.add_figure(title, figure)
        result.evidence = (
            f"forget accuracy {summary.get('forget_acc_pre', float('nan')):.2f} -> "
            f"{summary.get('forget_acc_post', float('nan')):.2f}; other forms "
            f"{summary.get('paraphrase_acc_pre', float('nan')):.2f} -> {summary.get('paraphrase_acc_post', float('nan')):.2f}; "
            f"retain {summary.get('retain_acc_pre', float('nan')):.2f} -> {summary.get('retain_acc_post', float('nan')):.2f}"
        )
        return result


    def figures(self, measured, ctx) -> dict:
        return {"Accuracy per item set": _accuracy_figure(measured)}


def _rouge(loaded, items, item_set: str, per_item: list[dict], model_name: str, opts: BehaviourConfig,
           batch_size: int) -> float:
    """Mean ROUGE-L recall of the greedy answers to the "rouge" items of a set (per item in per_item)."""
    from palimpsest.behavioural.utility import greedy_answers, rouge_l_recall

    chosen = [i for i, it in enumerate(items) if it.scoring == "rouge"]
    answers = greedy_answers(loaded, [items[i].prompt for i in chosen], opts.max_new_tokens, batch_size)
    recall = rouge_l_recall([items[i].answer for i in chosen], answers)
    rows = {r["index"]: r for r in per_item if r["set"] == item_set}
    for i, value in zip(chosen, recall):
        rows[i][f"rougeL_recall_{model_name}"] = round(float(value), 4)
    return float(np.mean(recall))


def _by_form(items, per_item, models) -> dict:
    table: dict = defaultdict(dict)
    rows = [r for r in per_item if r["set"] == "paraphrases"]
    for model_name in models:
        forms = defaultdict(list)
        for row in rows:
            forms[row["form"]].append(row[f"correct_{model_name}"])
        for form, values in forms.items():
            table[form][model_name] = float(np.mean(values))
    return dict(table)


def _accuracy_figure(rows) -> go.Figure:
    fig = go.Figure()
    colours = {"pre": "#4C78A8", "post": "#E45756", "floor": "#9D9D9D"}
    for model_name in dict.fromkeys(r[1] for r in rows):
        sel = [r for r in rows if r[1] == model_name]
        fig.add_bar(name=model_name, x=[r[0] for r in sel], y=[r[2] for r in sel],
                    marker_color=colours.get(model_name),
                    error_y=dict(type="data", symmetric=False, array=[r[4] - r[2] for r in sel],
                                 arrayminus=[r[2] - r[3] for r in sel]))
    fig.update_layout(barmode="group", yaxis=dict(title="exact-match accuracy", range=[0, 1.05]),
                      height=360, margin=dict(l=50, r=20, t=30, b=40))
    return fig
