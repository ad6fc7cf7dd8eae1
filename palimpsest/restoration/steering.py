"""Batched strength sweeps: every (item, strength) pair scored with one hooked forward per batch of rows."""

from __future__ import annotations

from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from palimpsest.capture import EncodedBatch, add_per_row, add_vector, intervene, score_answers
from palimpsest.concepts import Item
from palimpsest.restoration.common import answer_positions


def sweep_rows(loaded, items: Sequence[Item], values: Sequence[float],
               context: Callable[[EncodedBatch, Tensor], ContextManager], *,
               batch_size: int = 32, answer_only: bool = False,
               zero_is_identity: bool = False) -> Bool[np.ndarray, "values items"]:
    """Exact match of each item under `context(batch, per_row_values)`, for every value of a swept parameter.

    Rows are item-major (each item repeated once per value) so each batch holds whole items and row r carries
    value r % len(values): one forward per batch instead of one per (item, value). `answer_only`: the context
    edits only the answer-predicting positions (score_answers: each prompt head runs once, unedited).
    `zero_is_identity`: the value 0 edits nothing (a strength or alpha scaling the change), so its rows are the
    unedited model's scores (kept per model) rather than edited forward passes.
    """
    n_v = len(values)
    if not items or n_v == 0:
        return np.zeros((n_v, len(items)), dtype=bool)
    zero = [i for i, v in enumerate(values) if float(v) == 0.0] if zero_is_identity else []
    if zero:
        out = np.zeros((n_v, len(items)), dtype=bool)
        out[zero] = score_answers(loaded.model, loaded.tokenizer, list(items), batch_size=batch_size).correct
        rest = [i for i in range(n_v) if i not in zero]
        if rest:
            out[rest] = sweep_rows(loaded, items, [values[i] for i in rest], context, batch_size=batch_size,
                                   answer_only=answer_only)
        return out
    table = torch.tensor([float(v) for v in values], dtype=torch.float32)
    rows = [item for item in items for _ in range(n_v)]
    per_batch = max(1, batch_size // n_v) * n_v

    def row_context(batch: EncodedBatch) -> ContextManager:
        return context(batch, table.repeat(len(batch) // n_v))

    scores = score_answers(loaded.model, loaded.tokenizer, rows, batch_size=per_batch, context=row_context,
                           answer_only=answer_only)
    return scores.correct.reshape(len(items), n_v).T.copy()


def sweep(loaded, items: Sequence[Item], site: str, vector: Float[Tensor, " d"], strengths: Sequence[float], *,
          batch_size: int = 32) -> Bool[np.ndarray, "strengths items"]:
    """Exact match of each item with h <- h + s * vector at `site` (answer-predicting positions), for every s,
    batched with `add_per_row` (one strength per row)."""
    base = vector.detach().float().cpu()

    def context(batch: EncodedBatch, scales: Tensor) -> ContextManager:
        return intervene(loaded.model, {site: add_per_row(scales[:, None] * base[None, :],
                                                          positions=answer_positions(batch))})

    return sweep_rows(loaded, items, strengths, context, batch_size=batch_size, answer_only=True, zero_is_identity=True)


def sweep_one_by_one(loaded, items: Sequence[Item], site: str, vector: Float[Tensor, " d"],
                     strengths: Sequence[float]) -> Bool[np.ndarray, "strengths items"]:
    """The same sweep with one full forward per (item, strength): the reference the batched sweep (which runs each
    prompt head once, palimpsest.capture.prefix) is checked against."""
    out = np.zeros((len(strengths), len(items)), dtype=bool)
    for j, item in enumerate(items):
        for i, s in enumerate(strengths):
            def context(batch, s=s):
                return intervene(loaded.model, {site: add_vector(vector, float(s), positions=answer_positions(batch))})
            out[i, j] = score_answers(loaded.model, loaded.tokenizer, [item], batch_size=1, context=context).correct[0]
    return out


def best_setting(train_acc: Float[np.ndarray, " settings"]) -> int:
    """The setting with the highest training accuracy (the first, i.e. the gentlest, on ties)."""
    return int(np.argmax(train_acc))
