"""Per-word prompt attributions of the answer's mean log-probability: occlusion (unPact) and integrated gradients.

The attributed quantity is always LP(x, y) = the mean log-probability of the answer tokens after prompt x, under
teacher forcing (the same number `palimpsest.capture.score_answers` reports as `mean_logprob`).

- occlusion: C(x_i, y) = LP(x, y) - LP(x without word i, y). Needs only log-probabilities (works on closed models).
- integrated gradients: Captum's IntegratedGradients on the input embeddings (`inputs_embeds`), from a baseline in
  which every prompt word's embedding (BOS excepted) is replaced by a neutral vector (see `baseline_vector`). By
  completeness the word attributions sum to LP(x, y) - LP(baseline, y), up to the integral's approximation error
  (`delta`).
Both are batched over prompts: occlusion scores every deleted variant of every prompt in shared forward passes,
integrated gradients tokenises every prompt once and pushes chunks of prompts (of similar length, sized to the model)
x `n_steps` interpolation steps through one forward/backward each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from palimpsest.attribution.units import Words, delete_words, split_words, word_owners
from palimpsest.capture import answer_ids, score_answers
from palimpsest.concepts import Item
from palimpsest.devices import input_device, read_tensor

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
    weight = read_tensor(model.get_input_embeddings())  # loaded from accelerate's offload when on the meta device
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


@dataclass
class _Prompt:
    """One prompt tokenised once: the model's input ids (prompt with special tokens, then the answer without its
    last token, which predicts nothing that is scored), the answer ids, and each prompt token's word (-1: none)."""

    ids: list[int]
    answer: list[int]
    owner: list[int]

    @property
    def n_prompt(self) -> int:
        return len(self.owner)


def _tokenise(tokenizer, prompt: str, words: Words, answer: str) -> _Prompt:
    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    if not enc["input_ids"]:
        raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
    extra = answer_ids(tokenizer, answer, prompt)
    owner = word_owners(enc["offset_mapping"], enc["special_tokens_mask"], words)
    return _Prompt(list(enc["input_ids"]) + extra[:-1], extra, owner)


def _chunks(lengths: Sequence[int], n_steps: int, max_prompts: int, max_tokens: int,
            pass_cost: int = 256) -> list[tuple[int, int]]:
    """Split prompts sorted by length into consecutive chunks, one forward/backward each, minimising the tokens
    computed (rows x padded width, padding included) plus `pass_cost` token-equivalents of fixed cost per pass;
    a chunk holds at most `max_prompts` prompts and `max_tokens` tokens (all its interpolation steps)."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for stop in range(1, n + 1):
        for start in range(stop - 1, -1, -1):
            tokens = (stop - start) * n_steps * lengths[stop - 1]
            if stop - start > max_prompts or (tokens > max_tokens and stop - start > 1):
                break
            cost = best[start] + tokens + pass_cost
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    out, stop = [], n
    while stop > 0:
        out.append((cut[stop], stop))
        stop = cut[stop]
    return out[::-1]


def _token_budget(model, device: torch.device) -> int:
    """Tokens (rows x positions) per integrated-gradients pass: the activations the backward pass keeps, about
    4 (12 d_model + 4 d_mlp) bytes per token and layer in float32 (measured on a Llama), within 1 GiB on the CPU
    (a quarter of the free memory, at most 4 GiB, on a GPU). The organism's shape fits 25k tokens, SmolLM2-135M 680;
    a pass always holds at least one prompt."""
    cfg = getattr(model, "config", None)
    d_model = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 1024)
    d_mlp = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "n_inner", 0) or 4 * d_model)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0) or 24)
    budget = 1 << 30
    if device.type == "cuda":
        budget = min(4 << 30, torch.cuda.mem_get_info(device)[0] // 4)
    return max(1, budget // (4 * layers * (12 * d_model + 4 * d_mlp)))


def integrated_gradients(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    prompts: Sequence[str] | None = None,
    n_steps: int = 50,
    baseline: str | int = "mean",
    batch_size: int | None = None,
    method: str = "gausslegendre",
) -> list[TokenAttribution]:
    """Integrated gradients of LP(x, y) w.r.t. the input embeddings (Captum IntegratedGradients on
    `inputs_embeds`), summed over the embedding dimension and over the tokens of each word. On the baseline every
    prompt word's embedding is replaced by `baseline_vector` (BOS, answer and padding stay as they are, so they get
    exactly zero).

    Batching: every prompt is tokenised once; prompts sorted by length are cut into chunks (at most `batch_size`
    prompts each, None: as many as a memory budget for the model allows, with as little padding as pays), and
    each chunk's prompts x `n_steps` interpolation points go through one forward/backward. Rows are right-padded
    and run without an attention mask: causal attention never looks ahead, so the padding changes nothing and
    every row is computed exactly as it would be alone (one set of positions, no mask to build). LP(x) and
    LP(baseline) of a chunk come from one more forward, without gradients."""
    from captum.attr import IntegratedGradients

    prompts = list(prompts) if prompts is not None else [it.prompt for it in items]
    answers = _answers(items)
    if not prompts:
        return []
    device = input_device(model)
    embed = model.get_input_embeddings()
    base_vec = baseline_vector(model, tokenizer, baseline).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    words = [split_words(p) for p in prompts]
    encoded = [_tokenise(tokenizer, p, w, a) for p, w, a in zip(prompts, words, answers)]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i].ids))
    max_prompts = batch_size if batch_size is not None else len(prompts)
    budget = _token_budget(model, device) if batch_size is None else 1 << 62

    def forward(embeds, pick, targets, weights, keep: int):
        # pick[r, j]: which of the last `keep` positions predicts answer token j of row r
        logits = model(inputs_embeds=embeds, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        rows = torch.arange(len(pick), device=pick.device)[:, None]
        return (logprobs[rows, pick, targets] * weights).sum(-1) / weights.sum(-1)

    ig = IntegratedGradients(forward)
    out: dict[int, TokenAttribution] = {}
    for start, stop in _chunks([len(encoded[i].ids) for i in order], n_steps, max(1, max_prompts), budget):
        rows = order[start:stop]
        chunk = [encoded[i] for i in rows]
        width = max(len(e.ids) for e in chunk)
        n_answer = max(len(e.answer) for e in chunk)
        first = min(e.n_prompt - 1 for e in chunk)  # the first position whose logits are needed
        keep = width - first
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        owner = torch.full((len(rows), width), -1, dtype=torch.long)
        pick = torch.zeros((len(rows), n_answer), dtype=torch.long)
        targets = torch.zeros((len(rows), n_answer), dtype=torch.long)
        weights = torch.zeros((len(rows), n_answer))
        for r, e in enumerate(chunk):
            ids[r, :len(e.ids)] = torch.tensor(e.ids)
            owner[r, :e.n_prompt] = torch.tensor(e.owner)
            n = len(e.answer)
            pick[r, :n] = torch.arange(n) + (e.n_prompt - 1 - first)
            targets[r, :n] = torch.tensor(e.answer)
            weights[r, :n] = 1.0
        args = (pick.to(device), targets.to(device), weights.to(device), keep)
        with torch.no_grad():
            embeds = embed(ids.to(device))
        base = torch.where((owner >= 0).to(device)[..., None], base_vec.to(embeds.dtype), embeds)
        attributions = ig.attribute(embeds, baselines=base, additional_forward_args=args, n_steps=n_steps,
                                    method=method)
        per_token = attributions.sum(-1).detach().cpu().double()
        n_words = max(len(words[i]) for i in rows)
        scores = torch.zeros((len(rows), n_words + 1), dtype=torch.float64)
        scores.scatter_add_(1, torch.where(owner >= 0, owner, n_words), per_token)  # column n_words: no word
        scores = scores[:, :n_words].numpy()
        with torch.inference_mode():  # LP(x) and LP(baseline) in one forward
            both = forward(torch.cat([embeds, base]), *(torch.cat([a, a]) for a in args[:3]), keep).cpu()
        for r, i in enumerate(rows):
            target, reference = float(both[r]), float(both[len(rows) + r])
            s = scores[r, :len(words[i])].copy()
            out[i] = TokenAttribution(
                prompt=prompts[i], answer=answers[i], tokens=list(words[i].words), scores=s, target=target,
                method="integrated_gradients", reference=reference, delta=float(s.sum() - (target - reference)))
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
