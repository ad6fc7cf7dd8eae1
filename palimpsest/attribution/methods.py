"""Per-word prompt attributions of the answer's mean log-probability: occlusion (unPact) and integrated gradients.

The attributed quantity is always LP(x, y) = the mean log-probability of the answer tokens after prompt x, under
teacher forcing (the same number `palimpsest.capture.score_answers` reports as `mean_logprob`).

- occlusion: C(x_i, y) = LP(x, y) - LP(x without word i, y). Needs only log-probabilities (works on closed models).
- integrated gradients: Captum's IntegratedGradients on the input embeddings (`inputs_embeds`), from a baseline in
  which every prompt word's embedding (BOS excepted) is replaced by a neutral vector (see `baseline_vector`). By
  completeness the word attributions sum to LP(x, y) - LP(baseline, y), up to the integral's approximation error
  (`delta`).
Both are batched over prompts: occlusion scores every deleted variant of every prompt in shared forward passes,
integrated gradients pushes `batch_size` prompts x `n_steps` interpolation steps through one forward/backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from palimpsest.attribution.units import Words, delete_words, split_words, token_word_index
from palimpsest.capture import encode, score_answers
from palimpsest.concepts import Item

Method = Literal["occlusion", "integrated_gradients"]
METHODS: tuple[str, ...] = ("occlusion", "integrated_gradients")


@dataclass
class TokenAttribution:
    """One prompt's attribution: a score per word (= per token for word-level tokenizers; whole words for BPE)."""

    prompt: str
    answer: str
    tokens: list[str]
    scores: np.ndarray
    target: float  # LP(x, y): the answer's mean log-probability after the full prompt
    method: str
    reference: float | None = None  # integrated gradients: LP(baseline, y)
    delta: float | None = None  # integrated gradients: sum(scores) - (target - reference)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"prompt": self.prompt, "answer": self.answer, "tokens": list(self.tokens),
               "scores": [round(float(s), 5) for s in self.scores], "target": float(self.target),
               "method": self.method}
        if self.reference is not None:
            out["reference"] = float(self.reference)
            out["delta"] = float(self.delta)
        return out


def _answers(items: Sequence[Item]) -> list[str]:
    return [it.answer for it in items]


def occlusion(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    prompts: Sequence[str] | None = None,
    batch_size: int = 64,
) -> list[TokenAttribution]:
    """Occlusion per word: C(x_i, y) = LP(x, y) - LP(x without word i, y); BOS is kept. All variants of all
    prompts are scored together in batches of `batch_size` sequences."""
    prompts = list(prompts) if prompts is not None else [it.prompt for it in items]
    words = [split_words(p) for p in prompts]
    full = score_answers(model, tokenizer, items, prompts=prompts, batch_size=batch_size)
    can_empty = bool(tokenizer("", add_special_tokens=True)["input_ids"])
    var_items, var_prompts, owners = [], [], []
    for row, (item, w) in enumerate(zip(items, words)):
        for i in range(len(w)):
            text = delete_words(w, [i])
            if not text.strip() and not can_empty:
                continue  # a one-word prompt without BOS: nothing would be left to condition on
            var_items.append(item)
            var_prompts.append(text)
            owners.append((row, i))
    scores = [np.full(len(w), np.nan) for w in words]
    if var_prompts:
        occluded = score_answers(model, tokenizer, var_items, prompts=var_prompts, batch_size=batch_size)
        for (row, i), value in zip(owners, occluded.mean_logprob):
            scores[row][i] = full.mean_logprob[row] - value
    return [TokenAttribution(prompt=p, answer=it.answer, tokens=list(w.words), scores=s,
                             target=float(full.mean_logprob[row]), method="occlusion")
            for row, (p, it, w, s) in enumerate(zip(prompts, items, words, scores))]


def answer_mean_logprob(
    logits: Float[Tensor, "batch kept vocab"],
    input_ids: Int[Tensor, "batch pos"],
    answer_mask: Int[Tensor, "batch pos"],
) -> Float[Tensor, " batch"]:
    """Mean log-probability of the answer tokens per row. `logits` are the model's logits at the last `kept`
    positions (all of them, or fewer with `logits_to_keep`); `answer_mask[b, p]` = 1 where position p predicts an
    answer token (EncodedBatch.answer_mask)."""
    kept = logits.shape[1]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    next_lp = logprobs.gather(-1, input_ids[:, input_ids.shape[1] - kept + 1:, None]).squeeze(-1)
    mask = answer_mask[:, answer_mask.shape[1] - kept:-1].to(next_lp.dtype)
    return (next_lp * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def baseline_vector(model, tokenizer, baseline: str | int) -> Float[Tensor, " d_model"]:
    """The embedding every prompt word is replaced by on the integrated-gradients baseline.

    'mean' (default): the mean token embedding rescaled to the mean embedding norm, a 'no particular word' input
    whose norm is typical. Norm matters: RMSNorm makes a model nearly scale-invariant in its input, so a baseline
    at (or near) zero, such as a pad embedding, turns the path integral into a step at the origin that no
    quadrature resolves (completeness then fails). 'zero', 'pad', 'unk', 'eos' or a token id are also accepted."""
    weight = model.get_input_embeddings().weight.detach()
    if baseline == "mean":
        mean = weight.mean(0)
        return mean * (weight.norm(dim=-1).mean() / mean.norm().clamp(min=1e-12))
    if baseline == "zero":
        return torch.zeros_like(weight[0])
    if isinstance(baseline, int):
        return weight[baseline]
    ids = {"pad": tokenizer.pad_token_id, "unk": getattr(tokenizer, "unk_token_id", None),
           "eos": tokenizer.eos_token_id}
    if baseline not in ids:
        raise ValueError(f"unknown baseline {baseline!r}: use 'mean', 'zero', 'pad', 'unk', 'eos' or a token id")
    if ids[baseline] is None:
        raise ValueError(f"the tokenizer has no {baseline} token: choose another integrated-gradients baseline")
    return weight[int(ids[baseline])]


def integrated_gradients(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    prompts: Sequence[str] | None = None,
    n_steps: int = 50,
    baseline: str | int = "mean",
    batch_size: int = 16,
    method: str = "gausslegendre",
) -> list[TokenAttribution]:
    """Integrated gradients of LP(x, y) w.r.t. the input embeddings (Captum IntegratedGradients on
    `inputs_embeds`), summed over the embedding dimension and over the tokens of each word. On the baseline every
    prompt word's embedding is replaced by `baseline_vector` (BOS, answer and padding stay as they are, so they get
    exactly zero). `batch_size` prompts share each forward/backward (times `n_steps` interpolation points)."""
    from captum.attr import IntegratedGradients

    prompts = list(prompts) if prompts is not None else [it.prompt for it in items]
    answers = _answers(items)
    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    base_vec = baseline_vector(model, tokenizer, baseline).to(device)

    def forward(embeds, attention_mask, position_ids, input_ids, answer_mask, keep: int = 0):
        # left padding puts every answer at the end of its row: only the last `keep` positions need logits
        logits = model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=keep).logits
        return answer_mean_logprob(logits, input_ids, answer_mask)

    ig = IntegratedGradients(forward)
    # rows of similar length share a batch (less padding); results are put back in the callers' order
    order = sorted(range(len(prompts)), key=lambda i: len(tokenizer(prompts[i])["input_ids"]))
    out: dict[int, TokenAttribution] = {}
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        chunk_prompts = [prompts[i] for i in rows]
        batch = encode(tokenizer, chunk_prompts, [answers[i] for i in rows], padding="left").to(device)
        words = [split_words(p) for p in chunk_prompts]
        lengths = [len(tokenizer(p)["input_ids"]) for p in chunk_prompts]
        offsets = [int(last) + 1 - n for last, n in zip(batch.prompt_last.tolist(), lengths)]
        owner = [token_word_index(tokenizer, p, w) for p, w in zip(chunk_prompts, words)]
        word_pos = torch.zeros(batch.input_ids.shape, dtype=torch.bool, device=device)
        for row, index in enumerate(owner):
            for pos, w in enumerate(index):
                word_pos[row, offsets[row] + pos] = w >= 0
        with torch.no_grad():
            embeds = embed(batch.input_ids)
        base = torch.where(word_pos[..., None], base_vec.to(embeds.dtype), embeds)
        args = (batch.attention_mask, batch.position_ids, batch.input_ids, batch.answer_mask(),
                int(batch.answer_len.max()) + 1)
        attributions = ig.attribute(embeds, baselines=base, additional_forward_args=args, n_steps=n_steps,
                                    method=method)
        per_token = attributions.sum(-1).detach().float().cpu()
        with torch.inference_mode():  # LP(x) and LP(baseline) in one forward
            both = forward(torch.cat([embeds, base]), *(torch.cat([a, a]) for a in args[:4]), args[4]).cpu()
        target, reference = both[:len(rows)], both[len(rows):]
        for row, (w, index) in enumerate(zip(words, owner)):
            scores = np.zeros(len(w))
            for pos, word in enumerate(index):
                if word >= 0:
                    scores[word] += float(per_token[row, offsets[row] + pos])
            out[rows[row]] = TokenAttribution(
                prompt=chunk_prompts[row], answer=answers[rows[row]], tokens=list(w.words), scores=scores,
                target=float(target[row]), method="integrated_gradients", reference=float(reference[row]),
                delta=float(scores.sum() - (target[row] - reference[row])))
    return [out[i] for i in range(len(prompts))]


def attribute(model, tokenizer, items: Sequence[Item], method: str, **kwargs) -> list[TokenAttribution]:
    """Dispatch by method name ('occlusion' or 'integrated_gradients')."""
    if method == "occlusion":
        return occlusion(model, tokenizer, items, **kwargs)
    if method == "integrated_gradients":
        return integrated_gradients(model, tokenizer, items, **kwargs)
    raise ValueError(f"unknown attribution method {method!r}: use one of {', '.join(METHODS)}")


__all__ = ["METHODS", "TokenAttribution", "Words", "answer_mean_logprob", "attribute", "integrated_gradients",
           "occlusion"]
