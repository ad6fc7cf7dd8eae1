"""The gradient-norm attack's grouped per-sample path (`behavioural.grad_norms.gradient_norms`) against the per-text loop it replaces
(`grad_norms._gradient_norms_loop`, the reference): the same numbers (rtol 1e-4) on tiny Llamas with untied and tied
embeddings, on a toy LM that exercises the hand-written per-sample gradients (a Linear called twice, biases, an
Embedding with padding_idx tied to the head, an unrecognised parameter, an unused module), and on the organism;
the model left as found; and the loop's own numbers whenever the grouped path cannot be taken."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from palimpsest.behavioural import grad_norms, mia

# 2 to 7 tokens with <bos>: several length groups, most with more than one text; "<pad>" is the embedding's
# padding_idx (its row gets no gradient)
PROMPTS = ["alice lives in paris", "carol lives in rome", "bob lives in oslo", "the city of oslo is",
           "bob works as a pilot", "alice", "<pad> alice", "q : where does carol work ?"]
ANSWERS = ["paris", "rome", "oslo", "oslo", "pilot", "bob", "bob .", "baker"]
ORDERS = (1, 2, "inf")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much when another process holds the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grouped(model, tokenizer, prompts, answers, p):
    """`gradient_norms`, failing if it fell back to the loop (which would make the comparison vacuous)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return grad_norms.gradient_norms(model, tokenizer, prompts, answers, p)


@pytest.fixture(scope="module")
def tied_tiny(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(**{**tiny.model.config.to_dict(), "tie_word_embeddings": True})).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


@pytest.mark.parametrize("p", ORDERS)
@pytest.mark.parametrize("with_answers", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_grouped_equals_the_loop_on_tiny(tiny, tied_tiny, tied, with_answers, p):
    model = tied_tiny if tied else tiny.model
    answers = ANSWERS if with_answers else None
    expected = grad_norms._gradient_norms_loop(model, tiny.tokenizer, PROMPTS, answers, p)
    got = grouped(model, tiny.tokenizer, PROMPTS, answers, p)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_the_model_is_left_as_found(tiny_dir):
    from palimpsest.models import load_model

    loaded = load_model(tiny_dir)
    model = loaded.model
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)  # a frozen weight stays frozen
    held = model.model.norm.weight
    held.grad = torch.full_like(held, 0.5)  # a .grad the caller holds stays
    before = {n: (q.detach().clone(), q.requires_grad, None if q.grad is None else q.grad.clone())
              for n, q in model.named_parameters()}
    for p in ORDERS:
        grouped(model, loaded.tokenizer, PROMPTS, ANSWERS, p)
    assert not model.training
    for n, q in model.named_parameters():
        value, requires_grad, grad = before[n]
        assert torch.equal(q, value) and q.requires_grad == requires_grad, n
        assert (q.grad is None) if grad is None else torch.equal(q.grad, grad), n
    assert held.grad is not None and torch.all(held.grad == 0.5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _Scale(torch.nn.Module):
    """An elementwise weight the grouped path does not recognise: its per-sample gradient comes from vmap."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, h):
        return h * self.weight


class _ScaledEmbedding(torch.nn.Embedding):
    """Gemma's kind: an Embedding subclass with its own forward (not recognised), here tied to a stock head."""

    def forward(self, input_ids):
        return super().forward(input_ids) * self.embedding_dim ** 0.5


class ToyLM(torch.nn.Module):
    """A causal LM of stock modules: one Linear applied twice (its per-sample gradient sums both calls), biases, an
    Embedding with padding_idx whose weight the head shares, a module never called (no gradient: left out of the
    mean, as the loop leaves it). `scaled`: the embedding is a `_ScaledEmbedding`; `hand_tied`: the head unembeds
    with the embedding weight by hand."""

    def __init__(self, vocab: int, d: int = 8, hand_tied: bool = False, scaled: bool = False):
        super().__init__()
        self.hand_tied = hand_tied
        self.embed = (_ScaledEmbedding if scaled else torch.nn.Embedding)(vocab, d, padding_idx=0)
        self.mix = torch.nn.Linear(d, d)
        self.scale = _Scale(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.unused = torch.nn.Linear(d, d)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        h = self.embed(input_ids)
        h = h + torch.tanh(self.mix(h))
        h = h.cumsum(1) / torch.arange(1, h.shape[1] + 1)[:, None]  # causal: position t sees tokens <= t
        h = self.scale(h + torch.tanh(self.mix(h)))
        logits = torch.nn.functional.linear(h, self.embed.weight) if self.hand_tied else self.head(h)
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("p", ORDERS)
@pytest.mark.parametrize("with_answers", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_grouped_equals_the_loop_on_a_toy_lm(tiny, scaled, with_answers, p):
    torch.manual_seed(0)
    model = ToyLM(len(tiny.tokenizer.get_vocab()), scaled=scaled).eval()
    answers = ANSWERS if with_answers else None
    expected = grad_norms._gradient_norms_loop(model, tiny.tokenizer, PROMPTS, answers, p)
    np.testing.assert_allclose(grouped(model, tiny.tokenizer, PROMPTS, answers, p), expected, rtol=1e-4)


def test_a_weight_used_outside_its_module_falls_back_to_the_loop(tiny):
    """The head unembeds with the embedding's weight by hand: the grouped path would miss that use, so it refuses
    and the loop's numbers come back."""
    torch.manual_seed(0)
    model = ToyLM(len(tiny.tokenizer.get_vocab()), hand_tied=True).eval()
    expected = grad_norms._gradient_norms_loop(model, tiny.tokenizer, PROMPTS, None, 2)
    with pytest.warns(RuntimeWarning, match="outside its module"):
        got = grad_norms.gradient_norms(model, tiny.tokenizer, PROMPTS, None, 2)
    assert np.array_equal(got, expected)


def test_the_loop_answers_when_the_grouped_path_raises(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("vmap: data-dependent control flow")

    monkeypatch.setattr(grad_norms, "_gradient_norms_grouped", broken)
    for p in ORDERS:
        expected = grad_norms._gradient_norms_loop(tiny.model, tiny.tokenizer, PROMPTS, ANSWERS, p)
        with pytest.warns(RuntimeWarning, match="data-dependent control flow"):
            got = grad_norms.gradient_norms(tiny.model, tiny.tokenizer, PROMPTS, ANSWERS, p)
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("text", ["full", "answer"])
def test_grouped_equals_the_loop_on_the_organism(organism_pair_ga, organism_concept, text):
    loaded = organism_pair_ga.post
    prompts, answers = mia.scored_texts(list(organism_concept.forget)[:6], text)
    for p in ORDERS:
        expected = grad_norms._gradient_norms_loop(loaded.model, loaded.tokenizer, prompts, answers, p)
        got = grouped(loaded.model, loaded.tokenizer, prompts, answers, p)
        np.testing.assert_allclose(got, expected, rtol=1e-4)
