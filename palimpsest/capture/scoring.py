"""Answer scores under teacher forcing: log-probabilities, ranks and exact match, batched."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.capture.activations import NonFiniteError
from palimpsest.capture.backends import forward_kwargs
from palimpsest.capture.tokens import EncodedBatch, encode
from palimpsest.concepts import Item


@dataclass
class AnswerScores:
    """Per item: mean answer-token log-prob, first-token rank (0 = top), exact match of every answer token."""

    mean_logprob: np.ndarray
    first_logprob: np.ndarray
    first_rank: np.ndarray
    correct: np.ndarray
    token_logprobs: list[np.ndarray] = field(default_factory=list)  # per item, log p of each answer token
    token_top1: list[np.ndarray] = field(default_factory=list)  # per item, whether each answer token is argmax

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")


def answer_token_logprobs(
    logits: Float[Tensor, "batch pos vocab"], batch: EncodedBatch
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per row: log p of each answer token, its rank, whether it is the argmax."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out_lp, out_rank, out_top = [], [], []
    for row in range(logits.shape[0]):
        start, length = int(batch.answer_start[row]), int(batch.answer_len[row])
        targets = batch.input_ids[row, start:start + length]
        preds = logprobs[row, start - 1:start - 1 + length]
        lp = preds.gather(-1, targets[:, None]).squeeze(-1)
        rank = (preds > lp[:, None]).sum(-1)
        out_lp.append(lp.cpu())
        out_rank.append(rank.cpu())
        out_top.append((rank == 0).cpu())
    return out_lp, out_rank, out_top


def score_answers(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    answers: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    batch_size: int = 32,
    context: Callable[[EncodedBatch], ContextManager] | None = None,
) -> AnswerScores:
    """Score each item's answer (or `answers` in its place) after its prompt (or `prompts` in its place).

    `context(batch)` may return a context manager (an intervention) active during that batch's forward pass.
    """
    prompts = list(prompts) if prompts is not None else [it.prompt for it in items]
    answers = list(answers) if answers is not None else [it.answer for it in items]
    subjects = [it.subject for it in items] if items else None
    device = next(model.parameters()).device
    mean_lp, first_lp, first_rank, correct, tok_lp, tok_top = [], [], [], [], [], []
    for start in range(0, len(prompts), batch_size):
        stop = min(len(prompts), start + batch_size)
        batch = encode(tokenizer, prompts[start:stop], answers[start:stop], subjects[start:stop] if subjects else None)
        batch = batch.to(device)
        with torch.inference_mode(), (context(batch) if context else nullcontext()):
            logits = model(**forward_kwargs(batch)).logits
        lps, ranks, tops = answer_token_logprobs(logits, batch)
        broken = sum(bool(torch.isnan(lp).any()) for lp in lps)
        if broken:  # NaN (or +inf) logits: an accuracy of 0 here would read as "forgotten"
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            raise NonFiniteError(f"{name}: non-finite (NaN/inf) logits on {broken} of {len(lps)} answers; the "
                                 "checkpoint is broken or its dtype overflows: load it in float32 (--dtype float32) "
                                 "or check the weights")
        for lp, rank, top in zip(lps, ranks, tops):
            mean_lp.append(float(lp.mean()))
            first_lp.append(float(lp[0]))
            first_rank.append(int(rank[0]))
            correct.append(bool(top.all()))
            tok_lp.append(lp.numpy())
            tok_top.append(top.numpy())
    return AnswerScores(np.array(mean_lp), np.array(first_lp), np.array(first_rank), np.array(correct, dtype=bool),
                        tok_lp, tok_top)
