"""MLP value vectors (ConceptVectors): read them through the unembedding, score them for a concept, ablate them."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.capture import AnswerTokenError, answer_ids, intervene, n_layers, score_answers
from palimpsest.capture.sites import get_module, resolve
from palimpsest.devices import read_tensor
from palimpsest.probes.lens import Readout


def down_proj(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    return get_module(model, resolve(model, f"blocks.{layer}.mlp.hook_post").module_path)


def value_vectors(model: torch.nn.Module, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """The rows of the MLP's output projection: what each hidden unit writes to the residual stream."""
    module = down_proj(model, layer)
    weight = read_tensor(module).float().cpu()  # loaded from accelerate's offload when it is on the meta device
    d_model = int(model.config.hidden_size)
    # nn.Linear stores [d_model, d_mlp]; GPT-2's Conv1D stores [d_mlp, d_model]
    return weight.T if isinstance(module, torch.nn.Linear) else weight if weight.shape[1] == d_model else weight.T


def all_value_vectors(model: torch.nn.Module) -> list[Float[Tensor, "d_mlp d_model"]]:
    return [value_vectors(model, layer) for layer in range(n_layers(model))]


def vocab_projection(model: torch.nn.Module, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k vocab"]:
    """Each vector as the output layer reads the residual stream: norm(v) · Eᵀ, `norm` the final norm module itself.

    The module, never a hand-applied `weight`: RMSNorm gives gain ⊙ v / rms(v) (Gemma's (1 + gain) ⊙ v / rms(v)),
    the gain and a per-vector scale that z-scores and top-k ignore; LayerNorm (GPT-2, NeoX) also centres v and adds
    its bias.
    """
    return Readout.of(model).normalise(vectors) @ unembedding(model).T


def unembedding(model: torch.nn.Module) -> Float[Tensor, "vocab d_model"]:
    """The model's own unembedding matrix E (the output embedding's weight), float32 on the CPU."""
    return read_tensor(model.get_output_embeddings()).float().cpu()


def unembed_projection(model: torch.nn.Module, vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "k vocab"]:
    """v · Eᵀ with the model's own unembedding and no final norm: ConceptVectors' projection (Hong et al. 2024)."""
    return vectors.float() @ unembedding(model).T


def concept_token_ids(tokenizer, concept) -> list[int]:
    """First tokens of the forget answers and of the concept's keywords (those the tokenizer can produce)."""
    ids: dict[int, None] = {}
    for text in [it.answer for it in concept.forget] + list(concept.keywords):
        try:
            ids[answer_ids(tokenizer, text)[0]] = None
        except AnswerTokenError:
            continue
    return list(ids)


def concept_scores(projection: Float[Tensor, "k vocab"], token_ids: Sequence[int]) -> Float[Tensor, " k"]:
    """The highest z-score (across the vocabulary) of any concept token in each vector's projection.

    The max, not the mean: a concept's answers are different words (a city, a job...), and one value vector
    usually promotes one of them.
    """
    z = (projection - projection.mean(1, keepdim=True)) / projection.std(1, keepdim=True).clamp(min=1e-8)
    return z[:, list(token_ids)].max(1).values


@dataclass(frozen=True)
class VocabStats:
    """What the vocabulary z-scores of `vocab_projection` need: the final norm and the unembedding's column mean and
    Gram matrix."""

    readout: Readout
    unembed: Tensor  # [vocab, d_model], float64 (sum-of-squares below cancels in float32)
    column_mean: Tensor
    gram: Tensor

    @classmethod
    def of(cls, model: torch.nn.Module) -> VocabStats:
        unembed = unembedding(model).double()
        return cls(Readout.of(model), unembed, unembed.mean(0), unembed.T @ unembed)

    def concept_scores(self, vectors: Float[Tensor, "k d_model"], token_ids: Sequence[int]) -> Float[Tensor, " k"]:
        """`concept_scores(vocab_projection(model, vectors), token_ids)` without the [k, vocab] projection.

        The vectors go through the final norm module first (as in `vocab_projection`); each projection's vocabulary
        mean and (unbiased) std then follow from the column mean and Gram matrix, so a real model's ~50k value
        vectors x ~50k tokens never materialise (O(d^2) per vector instead of O(V d)).
        """
        normed = self.readout.normalise(vectors).double()
        n_vocab = self.unembed.shape[0]
        mean = normed @ self.column_mean
        sum_sq = ((normed @ self.gram) * normed).sum(1)
        std = ((sum_sq - n_vocab * mean**2).clamp(min=0) / (n_vocab - 1)).sqrt().clamp(min=1e-8)
        picked = normed @ self.unembed[list(token_ids)].T
        return ((picked - mean[:, None]) / std[:, None]).max(1).values.float()


# ConceptVectors' Jaccard: the top 200 tokens of each model's v · Eᵀ
# (Hong et al. 2024, evaluate_util.jaccard_similarity)
JACCARD_TOP_N = 200


def top_token_ids(projection: Float[Tensor, " vocab"], n: int) -> list[int]:
    """The ids of the n highest entries (all of them when the vocabulary is smaller)."""
    return projection.topk(min(n, projection.shape[0])).indices.tolist()


def jaccard_top(a: Float[Tensor, " vocab"], b: Float[Tensor, " vocab"], n: int) -> float:
    """|A ∩ B| / |A ∪ B| of the two projections' top-n token sets."""
    top_a, top_b = set(top_token_ids(a, n)), set(top_token_ids(b, n))
    return len(top_a & top_b) / len(top_a | top_b)


def compare_vectors(pre: Float[Tensor, " d"], post: Float[Tensor, " d"], pre_proj: Float[Tensor, " vocab"],
                    post_proj: Float[Tensor, " vocab"], concept_ids: Sequence[int], n_top: int, *,
                    pre_unembed: Float[Tensor, " vocab"], post_unembed: Float[Tensor, " vocab"]) -> dict:
    """ConceptVectors' comparisons: cosine, L2 distance, Jaccard of the top tokens, concept tokens kept.

    jaccard_top200: as published, Jaccard of the top 200 tokens of v · Eᵀ, each model's own E, no norm
    (`pre_unembed`, `post_unembed` from `unembed_projection`). jaccard_top_lens and concept_tokens_kept: palimpsest's
    variant, over the top `n_top` tokens of `vocab_projection` (read through the final norm module).
    """
    cos = float(torch.nn.functional.cosine_similarity(pre[None], post[None]).item())
    top_pre, top_post = set(top_token_ids(pre_proj, n_top)), set(top_token_ids(post_proj, n_top))
    concept_in_pre = top_pre & set(concept_ids)
    kept = len(concept_in_pre & top_post) / len(concept_in_pre) if concept_in_pre else None
    return {"cosine": cos, "distance": float((pre - post).norm()), "relative_distance":
            float((pre - post).norm() / pre.norm().clamp(min=1e-12)),
            "jaccard_top200": jaccard_top(pre_unembed, post_unembed, JACCARD_TOP_N),
            "jaccard_top_lens": len(top_pre & top_post) / len(top_pre | top_post), "concept_tokens_kept": kept}


@contextmanager
def ablate_vectors(model: torch.nn.Module, picks: Mapping[int, Sequence[int]], *, mode: str = "zero",
                   noise_scale: float = 1.0, seed: int = 0) -> Iterator[None]:
    """Inside the block, the picked value vectors (layer -> unit indices) are zeroed or get Gaussian noise added.

    zero: the units' activations are zeroed at the MLP output projection's input (same as zeroing the rows).
    noise (ConceptVectors): v <- v + eps, |eps| ~ noise_scale |v|, applied as a hook adding act_j * eps_j to the
    output so that no weight is touched.
    """
    if mode == "zero":
        def zero_units(idx: list[int]):
            def edit(h: Tensor) -> Tensor:
                h = h.clone()
                h[..., idx] = 0
                return h
            return edit
        with intervene(model, {f"blocks.{layer}.mlp.hook_post": zero_units(list(idx))
                               for layer, idx in picks.items() if len(idx)}):
            yield
        return
    if mode != "noise":
        raise ValueError(f"unknown ablation mode {mode!r}: use 'zero' or 'noise'")
    gen = torch.Generator().manual_seed(seed)
    handles = []
    try:
        for layer, idx in picks.items():
            idx = list(idx)
            if not idx:
                continue
            vectors = value_vectors(model, layer)[idx]
            d = vectors.shape[1]
            noise = (torch.randn(vectors.shape, generator=gen) * vectors.norm(dim=1, keepdim=True) * noise_scale
                     / d ** 0.5)
            module = down_proj(model, layer)

            def hook(_mod, args, output, idx=idx, noise=noise):
                acts = args[0][..., idx]
                return output + acts @ noise.to(output.device, output.dtype)
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _log_odds(logprob: np.ndarray) -> np.ndarray:
    # log-odds instead of log-prob: a confidently known answer (p ~ 1) still shows how much an ablation costs
    return logprob - np.log(-np.expm1(np.minimum(logprob, -1e-7)))


def answer_log_odds(loaded, items, *, picks: Mapping[int, Sequence[int]] | None = None, mode: str = "zero",
                   noise_scale: float = 1.0, seed: int = 0, batch_size: int = 32) -> Float[np.ndarray, " n"]:
    """Log-odds of each item's first answer token, optionally with value vectors ablated."""
    if picks is None:
        return _log_odds(score_answers(loaded.model, loaded.tokenizer, items, batch_size=batch_size).first_logprob)
    with ablate_vectors(loaded.model, picks, mode=mode, noise_scale=noise_scale, seed=seed):
        return _log_odds(score_answers(loaded.model, loaded.tokenizer, items, batch_size=batch_size).first_logprob)


def random_picks(picks: Mapping[int, Sequence[int]], d_mlp: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """As many random units per layer as `picks` has there, avoiding the picked ones."""
    out = {}
    for layer, idx in picks.items():
        pool = np.setdiff1d(np.arange(d_mlp), np.asarray(list(idx), dtype=int))
        out[layer] = rng.choice(pool, size=min(len(idx), len(pool)), replace=False).tolist()
    return out
