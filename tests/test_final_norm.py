"""The final norm is read through the model's own module (never by multiplying its `weight`), and ConceptVectors'
Jaccard is the published one: top 200 tokens of v · Eᵀ, each model's own E, no norm. Every expected value below is
written out and derived by hand in the comment above it."""

from __future__ import annotations

import math

import pytest
import torch

from palimpsest.probes.lens import Readout
from palimpsest.probes.vectors import (
    JACCARD_TOP_N,
    VocabStats,
    compare_vectors,
    concept_scores,
    jaccard_top,
    unembed_projection,
    vocab_projection,
)

# a 6-token, 4-dim unembedding: the four unit vectors, e0 + e1 and e2 + e3
E4 = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]])


def _llama(hidden: int, vocab: int = 6) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=8,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _gemma_norm(weight: list[float]) -> torch.nn.Module:
    """Gemma's RMSNorm, (1 + weight) ⊙ x / rms(x): transformers' own class when it is there."""
    try:
        from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    except ImportError:  # the same computation, hand-written
        class GemmaRMSNorm(torch.nn.Module):
            def __init__(self, dim: int, eps: float = 1e-6):
                super().__init__()
                self.eps = eps
                self.weight = torch.nn.Parameter(torch.zeros(dim))

            def forward(self, x):
                out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
                return (out * (1.0 + self.weight.float())).type_as(x)
    norm = GemmaRMSNorm(len(weight), eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(weight))
    return norm


# two vectors with rms 1 and rms 2 that point the same way
VECTORS = torch.tensor([[1.0, -1, 1, -1], [2, -2, 2, -2]])
GEMMA_WEIGHT = [0.0, 1.0, -0.5, 2.0]


def test_gemma_rmsnorm_read_through_the_module_is_one_plus_weight():
    norm = _gemma_norm(GEMMA_WEIGHT)
    # x = [1, -1, 1, -1]: mean(x^2) = 1, rms = 1, x / rms = x; (1 + w) = [1, 2, 0.5, 3] -> [1, -2, 0.5, -3].
    # x = [2, -2, 2, -2]: rms = 2, x / rms = [1, -1, 1, -1] -> the same [1, -2, 0.5, -3].
    expected = torch.tensor([[1.0, -2, 0.5, -3], [1, -2, 0.5, -3]])
    assert torch.allclose(norm(VECTORS), expected)
    # multiplying by the weight by hand is something else: w ⊙ x = [0, -1, -0.5, -2] for the first vector
    hand = VECTORS * norm.weight.detach()
    assert torch.allclose(hand[0], torch.tensor([0.0, -1, -0.5, -2]))
    assert not torch.allclose(hand, expected)


def test_vocab_projection_and_vocab_stats_read_a_gemma_norm_through_the_module():
    model = _llama(4)
    model.model.norm = _gemma_norm(GEMMA_WEIGHT)
    with torch.no_grad():
        model.lm_head.weight.copy_(E4)
    assert torch.allclose(Readout.of(model).normalise(VECTORS), torch.tensor([[1.0, -2, 0.5, -3]] * 2))
    # norm(v) = [1, -2, 0.5, -3] for both; through E4 (e0, e1, e2, e3, e0 + e1, e2 + e3):
    # [1, -2, 0.5, -3, 1 - 2, 0.5 - 3] = [1, -2, 0.5, -3, -1, -2.5]
    expected = torch.tensor([[1.0, -2, 0.5, -3, -1, -2.5]] * 2)
    projection = vocab_projection(model, VECTORS)
    assert torch.allclose(projection, expected)
    # the old hand-applied gain, (w ⊙ v) · Eᵀ = [0, -1, -0.5, -2, -1, -2.5] for the first vector, is not it
    assert not torch.allclose(projection[0], torch.tensor([0.0, -1, -0.5, -2, -1, -2.5]))
    # z-scores of p = [1, -2, 0.5, -3, -1, -2.5]: mean -7/6; 6 (p - mean) = [13, -5, 10, -11, 1, -8], whose squares sum
    # to 480, so sum (p - mean)^2 = 480 / 36 = 40 / 3 and the unbiased std is sqrt(40 / 3 / 5) = sqrt(8 / 3); the best
    # of tokens 0 and 2 is token 0: z = (13 / 6) / sqrt(8 / 3), for both vectors (the 1 / rms scale cancels)
    z = (13 / 6) / math.sqrt(8 / 3)
    assert torch.allclose(concept_scores(projection, [0, 2]), torch.tensor([z, z]), atol=1e-5)
    assert torch.allclose(VocabStats.of(model).concept_scores(VECTORS, [0, 2]), torch.tensor([z, z]), atol=1e-5)
    # and VocabStats agrees with the module-applied reference on any vectors
    other = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    reference = concept_scores(model.model.norm(other) @ E4.T, [1, 3, 5])
    assert torch.allclose(VocabStats.of(model).concept_scores(other, [1, 3, 5]), reference, atol=1e-5)


def _gpt2_with_layernorm(weight: list[float], bias: list[float]) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=6, n_embd=4, n_layer=1, n_head=1, n_positions=8, layer_norm_epsilon=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.copy_(E4)  # tied: the lm_head reads the same matrix
        model.transformer.ln_f.weight.copy_(torch.tensor(weight))
        model.transformer.ln_f.bias.copy_(torch.tensor(bias))
    return model


def test_layernorm_with_bias_is_read_through_the_module():
    model = _gpt2_with_layernorm([1.0, 2.0, 0.5, 3.0], [0.5, 0.0, 0.0, -1.0])
    assert model.get_output_embeddings().weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    vectors = torch.tensor([[3.0, 1, 3, 1], [0, -2, 0, -2]])
    # x = [3, 1, 3, 1]: mean 2, centred [1, -1, 1, -1], biased variance 1, so LN(x) = [1, -1, 1, -1];
    # x = [0, -2, 0, -2]: mean -1, the same centred vector. Then w ⊙ . + b = [1 + 0.5, -2, 0.5, -3 - 1]
    normed = torch.tensor([[1.5, -2, 0.5, -4]] * 2)
    assert torch.allclose(model.transformer.ln_f(vectors), normed)
    assert torch.allclose(Readout.of(model).normalise(vectors), normed)
    # through E4: [1.5, -2, 0.5, -4, 1.5 - 2, 0.5 - 4] = [1.5, -2, 0.5, -4, -0.5, -3.5]
    expected = torch.tensor([[1.5, -2, 0.5, -4, -0.5, -3.5]] * 2)
    projection = vocab_projection(model, vectors)
    assert torch.allclose(projection, expected)
    # the weight by hand: w ⊙ x = [3, 2, 1.5, 3] -> [3, 2, 1.5, 3, 5, 4.5], no centring, no bias
    assert not torch.allclose(projection[0], torch.tensor([3.0, 2, 1.5, 3, 5, 4.5]))
    # z-scores of p = [1.5, -2, 0.5, -4, -0.5, -3.5]: mean -4/3; 6 (p - mean) = [17, -4, 11, -16, 5, -13], squares
    # summing to 876, so sum (p - mean)^2 = 876 / 36 and the unbiased std is sqrt(876 / 36 / 5) = sqrt(73 / 15);
    # token 0 beats token 2: z = (17 / 6) / sqrt(73 / 15)
    z = (17 / 6) / math.sqrt(73 / 15)
    assert torch.allclose(concept_scores(projection, [0, 2]), torch.tensor([z, z]), atol=1e-5)
    assert torch.allclose(VocabStats.of(model).concept_scores(vectors, [0, 2]), torch.tensor([z, z]), atol=1e-5)


# a 6-token, 2-dim unembedding for the Jaccard overlaps
E2 = torch.tensor([[1.0, 0], [0, 1], [1, 1], [-1, 0], [0, -1], [3, -1]])
V_PRE, V_POST = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])


def test_jaccard_top_with_and_without_the_gain():
    model = _llama(2)
    with torch.no_grad():
        model.lm_head.weight.copy_(E2)
        model.model.norm.weight.copy_(torch.tensor([1.0, 0.1]))  # Llama's RMSNorm: gain ⊙ v / rms(v)
    raw_pre, raw_post = unembed_projection(model, V_PRE[None])[0], unembed_projection(model, V_POST[None])[0]
    # no norm (published): v · Eᵀ with v_pre = [2, 1] -> [2, 1, 3, -2, -1, 6 - 1 = 5];
    # v_post = [1, 3] -> [1, 3, 4, -1, -3, 3 - 3 = 0]
    assert torch.allclose(raw_pre, torch.tensor([2.0, 1, 3, -2, -1, 5]))
    assert torch.allclose(raw_post, torch.tensor([1.0, 3, 4, -1, -3, 0]))
    # top 2: {5, 2} vs {2, 1} -> 1 shared of 3 = 1/3; top 3: {5, 2, 0} vs {2, 1, 0} -> 2 shared of 4 = 1/2
    assert jaccard_top(raw_pre, raw_post, 2) == pytest.approx(1 / 3)
    assert jaccard_top(raw_pre, raw_post, 3) == pytest.approx(1 / 2)
    lens_pre, lens_post = vocab_projection(model, V_PRE[None])[0], vocab_projection(model, V_POST[None])[0]
    # through the gain [1, 0.1] (and 1 / rms, a positive per-vector scale that keeps the order):
    # v_pre -> ∝ [2, 0.1] -> [2, 0.1, 2.1, -2, -0.1, 5.9]: top 2 {5, 2}, top 3 {5, 2, 0};
    # v_post -> ∝ [1, 0.3] -> [1, 0.3, 1.3, -1, -0.3, 2.7]: top 2 {5, 2}, top 3 {5, 2, 0}: the same sets, Jaccard 1
    assert lens_pre.argsort(descending=True)[:3].tolist() == [5, 2, 0]
    assert jaccard_top(lens_pre, lens_post, 2) == pytest.approx(1.0)
    assert jaccard_top(lens_pre, lens_post, 3) == pytest.approx(1.0)
    # the analyser's comparison: jaccard_top200 takes 200 tokens, here the whole 6-token vocabulary on both sides
    # (6 shared of 6 = 1); jaccard_top_lens over the top 2 through the norm = 1 (above)
    assert JACCARD_TOP_N == 200
    stats = compare_vectors(V_PRE, V_POST, lens_pre, lens_post, [5], 2, pre_unembed=raw_pre, post_unembed=raw_post)
    assert stats["jaccard_top200"] == pytest.approx(1.0) and stats["jaccard_top_lens"] == pytest.approx(1.0)
    # concept token 5 is in both lens top-2 sets: kept = 1
    assert stats["concept_tokens_kept"] == pytest.approx(1.0)
