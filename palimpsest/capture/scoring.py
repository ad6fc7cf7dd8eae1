"""Answer scores under teacher forcing: log-probabilities, ranks and correctness, batched.

An item is correct by its `scoring` (palimpsest.concepts.spec): "exact" every answer token is the top prediction;
"choice" the answer has the highest summed log-probability among the item's choices (lm-eval-harness `acc`: the
sum over each choice's tokens after the same prompt, not length-normalised; argmax, the first on ties); "rouge" at
least ROUGE_TOKEN_RECALL of the answer tokens are the top prediction given the reference prefix (the teacher-forced
stand-in for ROUGE-L recall of a generated answer, which needs generation and so cannot run under the
interventions score_answers takes).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.capture.activations import NonFiniteError
from palimpsest.capture.backends import forward_kwargs, takes_logits_to_keep
from palimpsest.capture.memo import memoized
from palimpsest.capture.prefix import answer_logits_after_prefix
from palimpsest.capture.tokens import EncodedBatch, encode
from palimpsest.concepts import Item
from palimpsest.devices import input_device

ROUGE_TOKEN_RECALL = 0.5  # a "rouge"-scored answer is correct when at least this share of its tokens are top-1


@dataclass
class AnswerScores:
    """Per item: mean answer-token log-prob, first-token rank (0 = top), correct by the item's scoring (exact match
    of every answer token unless the item says otherwise)."""

    mean_logprob: np.ndarray
    first_logprob: np.ndarray
    first_rank: np.ndarray
    correct: np.ndarray
    token_logprobs: list[np.ndarray] = field(default_factory=list)  # per item, log p of each answer token
    token_top1: list[np.ndarray] = field(default_factory=list)  # per item, whether each answer token is argmax
    # per item, the summed log p of each of its choices (multiple-choice items; empty for the others)
    choice_logprobs: list[np.ndarray] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")


def answer_logits(model, batch: EncodedBatch, **kwargs) -> tuple[Float[Tensor, "batch window vocab"], int]:
    """(logits at the positions that predict answer tokens, the first of those positions): one window over the batch,
    through the model's `logits_to_keep` where it has one, so the unembedding runs on those positions only (the
    same numbers as the full logits there); the full logits and 0 otherwise. `kwargs` go to the forward pass."""
    inputs = {**forward_kwargs(batch), **kwargs}
    starts = batch.answer_start - 1
    if bool((batch.answer_start < 1).any()) or not takes_logits_to_keep(model):
        return model(**inputs).logits, 0
    low, high = int(starts.min()), int((starts + batch.answer_len).max())
    keep = torch.arange(low, high, device=batch.input_ids.device)
    logits = model(**inputs, logits_to_keep=keep).logits
    if logits.shape[1] != high - low:  # a forward pass that ignores logits_to_keep returns every position
        return logits, 0
    return logits, low


def answer_token_logprobs(
    logits: Float[Tensor, "batch pos vocab"], batch: EncodedBatch, offset: int = 0
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per row: log p of each answer token, its rank, whether it is the argmax. `logits` start at position `offset`
    (`answer_logits`' window)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out_lp, out_rank, out_top = [], [], []
    for row in range(logits.shape[0]):
        start, length = int(batch.answer_start[row]), int(batch.answer_len[row])
        targets = batch.input_ids[row, start:start + length]
        preds = logprobs[row, start - 1 - offset:start - 1 - offset + length]
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
    answer_only: bool = False,
) -> AnswerScores:
    """Score each item's answer (or `answers` in its place) after its prompt (or `prompts` in its place).

    `context(batch)` may return a context manager (an intervention) active during that batch's forward pass.
    Without one, the scores are kept for the model (palimpsest.capture.memo): every analyser scoring the same items
    on it reuses them. `answer_only`: the context edits only the positions that predict answer tokens (it reads
    them from the batch it is given, e.g. `batch.answer_mask()`), so each prompt before its last token is run once,
    unedited, and the context sees a batch of the last prompt token and the answer only
    (palimpsest.capture.prefix; the full sequence where the model takes no cache).
    """
    if context is None:
        key = ("score_answers", id(tokenizer), tuple(items), None if answers is None else tuple(answers),
               None if prompts is None else tuple(prompts), batch_size)
        return memoized(model, key, lambda: _score_answers(model, tokenizer, items, answers=answers, prompts=prompts,
                                                           batch_size=batch_size, context=None))
    return _score_answers(model, tokenizer, items, answers=answers, prompts=prompts, batch_size=batch_size,
                          context=context, answer_only=answer_only)


def scored_logits(model, batch: EncodedBatch, context: Callable[[EncodedBatch], ContextManager] | None,
                  answer_only: bool = False) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per row of `batch`: log p, rank and argmax flag of each answer token, under `context` (see score_answers)."""
    if answer_only:
        done = answer_logits_after_prefix(model, batch, context)
        if done is not None:
            logits, coordinates = done
            return answer_token_logprobs(logits, coordinates, 0)
    with torch.inference_mode(), (context(batch) if context else nullcontext()):
        logits, offset = answer_logits(model, batch)
    return answer_token_logprobs(logits, batch, offset)


def _score_answers(model, tokenizer, items: Sequence[Item], *, answers: Sequence[str] | None,
                   prompts: Sequence[str] | None, batch_size: int,
                   context: Callable[[EncodedBatch], ContextManager] | None,
                   answer_only: bool = False) -> AnswerScores:
    prompts = list(prompts) if prompts is not None else [it.prompt for it in items]
    answers = list(answers) if answers is not None else [it.answer for it in items]
    subjects = [it.subject for it in items] if items else None
    scored = list(items) if items and len(items) == len(prompts) else []  # per-row scoring needs one item per row
    device = input_device(model)
    mean_lp, first_lp, first_rank, correct, tok_lp, tok_top, choice_lp = [], [], [], [], [], [], []
    for start in range(0, len(prompts), batch_size):
        stop = min(len(prompts), start + batch_size)
        batch = encode(tokenizer, prompts[start:stop], answers[start:stop], subjects[start:stop] if subjects else None)
        batch = batch.to(device)
        lps, ranks, tops = scored_logits(model, batch, context, answer_only)
        broken = sum(bool(torch.isnan(lp).any()) for lp in lps)
        if broken:  # NaN (or +inf) logits: an accuracy of 0 here would read as "forgotten"
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            raise NonFiniteError(f"{name}: non-finite (NaN/inf) logits on {broken} of {len(lps)} answers; the "
                                 "checkpoint is broken or its dtype overflows: load it in float32 (--dtype float32) "
                                 "or check the weights")
        rows = scored[start:stop]
        choices = _choice_logprobs(model, rows, prompts[start:stop], answers[start:stop],
                                   subjects[start:stop] if subjects else None, tokenizer, device, context, answer_only)
        for j, (lp, rank, top) in enumerate(zip(lps, ranks, tops)):
            mean_lp.append(float(lp.mean()))
            first_lp.append(float(lp[0]))
            first_rank.append(int(rank[0]))
            scoring = rows[j].scoring if rows else "exact"
            if scoring == "exact":
                correct.append(bool(top.all()))
            elif scoring == "rouge":
                correct.append(bool(top.float().mean() >= ROUGE_TOKEN_RECALL))
            else:
                correct.append(choice_correct(rows[j], answers[start + j], float(lp.sum()), choices[j]))
            tok_lp.append(lp.numpy())
            tok_top.append(top.numpy())
            choice_lp.append(choices[j])
    return AnswerScores(np.array(mean_lp), np.array(first_lp), np.array(first_rank), np.array(correct, dtype=bool),
                        tok_lp, tok_top, choice_lp)


def choice_correct(item: Item, answer: str, answer_logprob: float, choice_lps: Float[np.ndarray, " choices"]) -> bool:
    """Multiple choice, as lm-eval-harness `acc`: the scored answer is the argmax (first on ties) of the summed
    log-probabilities of the item's choices; an answer that is not one of them must beat every choice."""
    if answer == item.answer and item.answer_index is not None:
        index = item.answer_index
    elif answer in item.choices:
        index = item.choices.index(answer)
    else:
        return bool(answer_logprob > float(np.max(choice_lps)))
    return int(np.argmax(choice_lps)) == index


def _choice_logprobs(model, rows: Sequence[Item], prompts: Sequence[str], answers: Sequence[str],
                     subjects: Sequence[str | None] | None, tokenizer, device, context,
                     answer_only: bool = False) -> list[np.ndarray]:
    """Per row: the summed log p of each choice after the row's prompt (empty for items without choices).

    One forward pass per choice index over the whole batch, rows kept in place (a row without that choice scores
    its own answer, unused), so a per-row `context` sees the same rows as the main pass."""
    out = [np.zeros(0) for _ in prompts]
    width = max((len(it.choices) for it in rows if it.scoring == "choice"), default=0)
    if not width:
        return out
    sums = np.full((len(prompts), width), np.nan)
    for k in range(width):
        choice = [it.choices[k] if it.scoring == "choice" and k < len(it.choices) else answers[j]
                  for j, it in enumerate(rows)]
        batch = encode(tokenizer, list(prompts), choice, list(subjects) if subjects else None).to(device)
        lps, _, _ = scored_logits(model, batch, context, answer_only)
        for j, lp in enumerate(lps):
            sums[j, k] = float(lp.sum())
    for j, it in enumerate(rows):
        if it.scoring == "choice":
            out[j] = sums[j, :len(it.choices)]
            if not np.isfinite(out[j]).all():
                name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
                raise NonFiniteError(f"{name}: non-finite (NaN/inf) logits on the choices of {it.prompt[:40]!r}; "
                                     "load it in float32 (--dtype float32) or check the weights")
    return out
