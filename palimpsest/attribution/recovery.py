"""Keyword-emphasis recovery: score every rewrite of every item on several models in shared batches, and turn the
hits into per-item recovery scores (the share of rewrite kinds under which the answer is the top-1 prediction)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from palimpsest.attribution.rewrites import rewrite_kind
from palimpsest.capture import score_answers
from palimpsest.concepts import Item


@dataclass
class RewriteScores:
    """For one model: per item, per rewrite key, top-1 correctness and mean answer log-probability."""

    correct: list[dict[str, bool]]
    logprob: list[dict[str, float]]

    def per_kind(self, index: int) -> dict[str, tuple[float, float]]:
        """Item `index`: kind -> (share correct, mean log-prob) averaged over that kind's rewrites."""
        groups: dict[str, list[str]] = defaultdict(list)
        for key in self.correct[index]:
            groups[rewrite_kind(key)].append(key)
        return {kind: (float(np.mean([self.correct[index][k] for k in keys])),
                       float(np.mean([self.logprob[index][k] for k in keys]))) for kind, keys in groups.items()}

    def recovery(self, index: int) -> float:
        """Share of rewrite kinds (each kind weighted once) that bring the answer back as top-1; nan without any."""
        kinds = self.per_kind(index)
        return float(np.mean([v[0] for v in kinds.values()])) if kinds else float("nan")

    def recovery_logprob(self, index: int) -> float:
        kinds = self.per_kind(index)
        return float(np.mean([v[1] for v in kinds.values()])) if kinds else float("nan")

    def any_correct(self, index: int) -> bool:
        return bool(any(self.correct[index].values()))


def score_rewrites(model, tokenizer, items: Sequence[Item], rewrites: Sequence[dict[str, str]], *,
                   answers: Sequence[str] | None = None, batch_size: int = 64) -> RewriteScores:
    """One batched pass over every (item, rewrite) prompt."""
    answers = list(answers) if answers is not None else [it.answer for it in items]
    flat_items, flat_prompts, flat_answers, owners = [], [], [], []
    for i, (item, variants) in enumerate(zip(items, rewrites)):
        for key, prompt in variants.items():
            flat_items.append(item)
            flat_prompts.append(prompt)
            flat_answers.append(answers[i])
            owners.append((i, key))
    correct: list[dict[str, bool]] = [{} for _ in items]
    logprob: list[dict[str, float]] = [{} for _ in items]
    if flat_prompts:
        scores = score_answers(model, tokenizer, flat_items, prompts=flat_prompts, answers=flat_answers,
                               batch_size=batch_size)
        for (i, key), ok, lp in zip(owners, scores.correct, scores.mean_logprob):
            correct[i][key] = bool(ok)
            logprob[i][key] = float(lp)
    return RewriteScores(correct, logprob)


def kind_table(scores: dict[str, RewriteScores], forgotten: Sequence[bool]) -> list[dict]:
    """Per rewrite kind and model: top-1 rate and mean log-prob over all items, and the top-1 rate among the
    items the post model forgot under the original prompt (how many forgotten answers come back)."""
    rows = []
    kinds = sorted({rewrite_kind(k) for s in scores.values() for c in s.correct for k in c})
    for kind in kinds:
        row: dict = {"kind": kind}
        for name, s in scores.items():
            values = [s.per_kind(i).get(kind) for i in range(len(s.correct))]
            present = [(i, v) for i, v in enumerate(values) if v is not None]
            row["n"] = len(present)
            row[f"top1_{name}"] = round(float(np.mean([v[0] for _, v in present])), 4) if present else None
            row[f"logprob_{name}"] = round(float(np.mean([v[1] for _, v in present])), 4) if present else None
            lost = [v[0] for i, v in present if forgotten[i]]
            row[f"top1_forgotten_{name}"] = round(float(np.mean(lost)), 4) if lost else None
        rows.append(row)
    return rows
