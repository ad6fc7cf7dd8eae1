"""Answer scoring with each prompt computed once: an edit confined to the positions that predict the answer
(steering, depth's answer-span patching) leaves every earlier position as the unedited model computes it (attention
is causal), so those positions are run once, clean, into the key/value cache, and every edited variant runs only
the last prompt token and the answer tokens on top of it.

A steering sweep over 30 layers x 9 strengths of a 12-token prompt with a 2-token answer then runs 2 tokens per
variant instead of 14. The numbers are those of the full forward pass up to float rounding (the same keys and
values, computed in another batch shape); `tests/test_prefix.py` checks them against it.

Used only where the model's forward pass takes a cache (HF `cache`, or `past_key_values` before transformers 5.x
renamed it), the batch is right-padded (`encode`'s default) and every row has an answer; otherwise callers run the
full sequence as before.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from jaxtyping import Float, Int
from torch import Tensor

from palimpsest.capture.backends import forward_kwargs, takes_logits_to_keep
from palimpsest.capture.memo import memoized
from palimpsest.capture.tokens import EncodedBatch

KeyValues = list[tuple[Tensor, Tensor]]  # per layer (keys, values), [prefixes, heads, pos, head_dim]


def cache_argument(model) -> str | None:
    """The name under which the model's forward pass takes a key/value cache (None: it takes none)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


@dataclass
class SplitBatch:
    """A batch cut before each row's last prompt token. `prefix`: the distinct prompt heads (right-padded);
    `rows[b]`: row b's head in `prefix`; `run`: the rest in its own coordinates (the last prompt token at 0, the
    answer from 1, without the last answer token, which predicts nothing): what the model reads and an edit sees;
    `score`: `run` with the last answer token, whose ids are the scored targets. `start[b]`: where `run` row b
    starts in the full batch (its last prompt token)."""

    prefix: EncodedBatch
    rows: Int[Tensor, " batch"]
    run: EncodedBatch
    score: EncodedBatch
    start: Int[Tensor, " batch"]

    def to_run(self, values: Tensor, fill: float | bool = 0) -> Tensor:
        """A full-batch tensor [batch, pos, ...] at `run`'s positions [batch, run_pos, ...] (`fill` past a row's end)."""
        width = self.run.input_ids.shape[1]
        index = self.start.to(values.device)[:, None] + torch.arange(width, device=values.device)[None, :]
        inside = index < values.shape[1]
        index = index.clamp(max=values.shape[1] - 1)
        picked = values.gather(1, index.reshape(*index.shape, *([1] * (values.ndim - 2))).expand(
            -1, -1, *values.shape[2:]))
        keep = (inside & self.run.attention_mask.bool().to(values.device)).reshape(
            *index.shape, *([1] * (values.ndim - 2)))
        return torch.where(keep, picked, torch.full_like(picked, fill))


def split_at_answer(batch: EncodedBatch) -> SplitBatch | None:
    """`batch` cut before each row's last prompt token, or None when it cannot be (left padding, a row without an
    answer, a one-token prompt)."""
    if len(batch) == 0 or bool((batch.answer_start < 1).any()) or bool((batch.answer_len < 1).any()):
        return None
    if not bool(batch.attention_mask[:, 0].bool().all()):  # left-padded
        return None
    cut = batch.prompt_last  # the prefix is every position before the last prompt token
    if bool((cut < 1).any()):  # a one-token prompt: nothing to cache (a fully masked head would read as NaN)
        return None
    heads: dict[tuple[int, ...], int] = {}
    rows = []
    ids = batch.input_ids.cpu()
    for b in range(len(batch)):
        head = tuple(ids[b, :int(cut[b])].tolist())
        rows.append(heads.setdefault(head, len(heads)))
    device = batch.input_ids.device
    width = max(len(h) for h in heads)
    prefix_ids = torch.zeros(len(heads), width, dtype=torch.long)
    prefix_mask = torch.zeros(len(heads), width, dtype=torch.long)
    for head, u in heads.items():
        prefix_ids[u, :len(head)] = torch.tensor(head, dtype=torch.long)
        prefix_mask[u, :len(head)] = 1
    prefix = EncodedBatch(input_ids=prefix_ids, attention_mask=prefix_mask,
                          position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0),
                          prompt_last=(prefix_mask.sum(1) - 1).clamp(min=0), subject_last=torch.zeros(len(heads),
                                                                                                        dtype=torch.long),
                          answer_start=torch.full((len(heads),), -1), answer_len=torch.zeros(len(heads),
                                                                                             dtype=torch.long)).to(device)
    length = batch.answer_len + 1  # the last prompt token and the answer
    score_width = int(length.max())
    pos = torch.arange(score_width, device=device)[None, :]
    index = (cut[:, None] + pos).clamp(max=batch.input_ids.shape[1] - 1)
    inside = pos < length[:, None]
    score_ids = torch.where(inside, batch.input_ids.gather(1, index), torch.zeros_like(index))
    n = len(batch)
    score = EncodedBatch(input_ids=score_ids, attention_mask=inside.long(), position_ids=cut[:, None] + pos,
                         prompt_last=torch.zeros(n, dtype=torch.long, device=device),
                         subject_last=torch.zeros(n, dtype=torch.long, device=device),
                         answer_start=torch.ones(n, dtype=torch.long, device=device), answer_len=batch.answer_len)
    run = EncodedBatch(input_ids=score.input_ids[:, :-1], attention_mask=score.attention_mask[:, :-1],
                       position_ids=score.position_ids[:, :-1], prompt_last=score.prompt_last,
                       subject_last=score.subject_last, answer_start=score.answer_start, answer_len=score.answer_len)
    return SplitBatch(prefix=prefix, rows=torch.tensor(rows, dtype=torch.long, device=device), run=run, score=score,
                      start=cut)


def prefix_key_values(model, prefix: EncodedBatch) -> KeyValues:
    """Keys and values of every layer over the prompt heads, unedited (kept per model: capture.memo)."""
    name = cache_argument(model)
    key = ("prefix.key_values", tuple(map(tuple, prefix.input_ids.cpu().tolist())),
           tuple(map(tuple, prefix.attention_mask.cpu().tolist())))

    def compute() -> KeyValues:
        kwargs = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
        with torch.inference_mode():
            out = model(**forward_kwargs(prefix), use_cache=True, **kwargs)
        cache = getattr(out, name, None)
        if cache is None:
            cache = getattr(out, "past_key_values" if name == "cache" else "cache", None)
        if hasattr(cache, "layers"):
            return [(layer.keys, layer.values) for layer in cache.layers]
        return [(k, v) for k, v, *_ in cache]
    return memoized(model, key, compute, share=True)


def _cache_for_rows(model, key_values: KeyValues, rows: Tensor):
    from transformers import DynamicCache

    picked = [(k.index_select(0, rows.to(k.device)), v.index_select(0, rows.to(v.device))) for k, v in key_values]
    return DynamicCache(ddp_cache_data=picked, config=getattr(model, "config", None))


def run_logits(model, split: SplitBatch, key_values: KeyValues) -> Float[Tensor, "batch run_pos vocab"]:
    """The model's logits at `split.run`'s positions, on top of the cached prompt heads."""
    mask = torch.cat([split.prefix.attention_mask.index_select(0, split.rows), split.run.attention_mask], dim=1)
    out = model(input_ids=split.run.input_ids, attention_mask=mask, position_ids=split.run.position_ids,
                use_cache=True, **{cache_argument(model): _cache_for_rows(model, key_values, split.rows)})
    return out.logits


def answer_logits_after_prefix(model, batch: EncodedBatch,
                               context: Callable[[EncodedBatch], ContextManager] | None = None
                               ) -> tuple[Float[Tensor, "batch run_pos vocab"], EncodedBatch] | None:
    """(logits predicting each row's answer tokens, the batch in their coordinates for answer_token_logprobs), with
    the prompt heads run once, unedited, and `context(run_batch)` active over the rest only; None where this cannot
    be done (the caller runs the full sequence)."""
    if cache_argument(model) is None:
        return None
    split = split_at_answer(batch)
    if split is None:
        return None
    key_values = prefix_key_values(model, split.prefix)
    from contextlib import nullcontext

    with torch.inference_mode(), (context(split.run) if context else nullcontext()):
        logits = run_logits(model, split, key_values)
    return logits, split.score
