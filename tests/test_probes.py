"""palimpsest.probes: probes, logit/tuned lens, CKA, concept vectors; unit tests on tiny models, truth on the organism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import palimpsest.probes as probes  # noqa: E402  (registers the analysers)
from palimpsest.concepts import ConceptSpec, Item
from palimpsest.probes.data import probe_splits  # noqa: E402
from palimpsest.probes.lens import Readout, TunedLens  # noqa: E402
from palimpsest.probes.linear import shuffle_by_group  # noqa: E402
from palimpsest.probes.similarity import linear_cka  # noqa: E402
from palimpsest.probes.vectors import ablate_vectors, value_vectors  # noqa: E402
from palimpsest.types import REGISTRY, AuditConfig

NAMES = ("probes", "logit_lens", "cka", "concept_vectors")
CONFIG = AuditConfig(n_bootstrap=200)


def test_importing_registers_the_four_analysers():
    for name in NAMES:
        assert name in REGISTRY and REGISTRY[name].name == name


# ------------------------------------------------------------------ CKA


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-6)  # rotation, scale and shift invariant


def test_cka_of_unrelated_representations_is_low():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=gen), torch.randn(400, 8, generator=gen)
    assert linear_cka(x, y) < 0.1


# ------------------------------------------------------------------ probe splits and controls


def _synthetic_concept() -> ConceptSpec:
    def items(people, start=0):
        return [Item(prompt=f"{p} lives in", answer=["oslo", "rome"][(i + start) % 2], subject=p, attribute="city")
                for i, p in enumerate(people)]
    return ConceptSpec(name="s", forget=items(["alice", "bob"]),
                       paraphrases=[Item(prompt="where does alice live ?", answer="oslo", subject="alice",
                                         attribute="city")],
                       retain=items(["carol", "dave", "erin", "alice"]) + [Item(prompt="alice lives in", answer="x",
                                                                                 subject="zed", attribute="city")],
                       neighbours=items(["fay", "gus"]))


def test_probe_splits_never_share_a_subject_or_prompt():
    for split in probe_splits(_synthetic_concept()):
        assert not set(split.train_groups) & set(split.test_groups)
        concept = _synthetic_concept()
        train_prompts = {concept.items(s)[i].prompt for s, i in split.train}
        test_prompts = {concept.items(s)[i].prompt for s, i in split.test}
        assert not train_prompts & test_prompts
        assert not set(split.train) & set(split.test)
        assert ("paraphrases", 0) in split.test and len(split.train) == 5  # carol dave erin fay gus


def test_shuffled_labels_stay_consistent_within_a_subject():
    labels = ["a", "a", "b", "b", "c", "c", "d"]
    groups = ["p", "p", "q", "q", "r", "r", "s"]
    shuffled = shuffle_by_group(labels, groups, seed=3)
    for g in set(groups):
        assert len({lab for lab, gg in zip(shuffled, groups, strict=True) if gg == g}) == 1
    assert sorted(set(shuffled)) <= sorted(set(labels))


# ------------------------------------------------------------------ lens and vectors on a tiny random model


def test_logit_lens_at_the_last_layer_is_the_model_output(tiny):
    from palimpsest.capture import capture, resid_post_sites

    prompts = ["alice lives in", "q : where does bob live ?"]
    last = resid_post_sites(tiny.model)[-1]
    resid = capture(tiny.model, tiny.tokenizer, prompts, [last], position="last")[last]
    with torch.inference_mode():
        out = tiny.model(**tiny.tokenizer(prompts[:1], return_tensors="pt")).logits[0, -1]
    torch.testing.assert_close(Readout.of(tiny.model).logits(resid)[0], out, atol=1e-4, rtol=1e-4)


def test_tuned_lens_recovers_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    h0 = torch.randn(500, 8, generator=gen)
    w = torch.randn(8, 8, generator=gen)
    lens = TunedLens.fit([h0, h0 @ w + 1.0], ridge=1e-6)
    torch.testing.assert_close(lens.translate(0, h0[:5]), h0[:5] @ w + 1.0, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(lens.translate(1, h0[:5]), h0[:5])  # the last layer is already final


@pytest.mark.parametrize("mode", ["zero", "noise"])
def test_ablating_value_vectors_changes_output_and_leaves_the_model_untouched(tiny, mode):
    ids = tiny.tokenizer(["alice lives in paris"], return_tensors="pt")
    before = [p.clone() for p in tiny.model.parameters()]
    with torch.inference_mode():
        clean = tiny.model(**ids).logits
        with ablate_vectors(tiny.model, {0: list(range(16)), 1: [1, 2]}, mode=mode, noise_scale=5.0):
            edited = tiny.model(**ids).logits
        again = tiny.model(**ids).logits
    assert not torch.allclose(clean, edited)
    torch.testing.assert_close(clean, again)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.model.parameters(), strict=True))
    assert value_vectors(tiny.model, 0).shape == (tiny.model.config.intermediate_size, tiny.d_model)


# ------------------------------------------------------------------ ground truth on the organism


def _run(name, pair, concept):
    from palimpsest.capture import Activations

    return REGISTRY[name].run(pair, concept, Activations.for_pair(pair, concept), CONFIG)


@pytest.fixture(scope="module")
def suppress_results(organism_pair_suppress, organism_concept):
    from palimpsest.capture import Activations

    acts = Activations.for_pair(organism_pair_suppress, organism_concept)
    return {name: REGISTRY[name].run(organism_pair_suppress, organism_concept, acts, CONFIG) for name in NAMES}


@pytest.mark.slow
def test_organism_probe_splits_share_no_item(organism_concept):
    splits = probe_splits(organism_concept)
    assert splits
    for split in splits:
        assert not set(split.train_groups) & set(split.test_groups)
        prompts = lambda refs: {organism_concept.items(s)[i].prompt + "|" + str(organism_concept.items(s)[i].subject)  # noqa: E731
                                for s, i in refs}
        assert not prompts(split.train) & prompts(split.test)


@pytest.mark.slow
def test_suppress_keeps_probe_and_vector_residue(suppress_results):
    probe, vectors = suppress_results["probes"], suppress_results["concept_vectors"]
    assert probe.status == "ok", probe.notes
    assert probe.residue >= 0.8
    assert probe.summary["acc_pre"] > probe.summary["acc_shuffled"] + 0.2  # the probe really reads the answer
    assert vectors.status == "ok", vectors.notes
    assert vectors.residue >= 0.9 and vectors.summary["cosine_post"] >= 0.9


@pytest.mark.slow
def test_suppress_answer_still_forms_at_intermediate_layers(suppress_results):
    lens = suppress_results["logit_lens"]
    assert lens.status == "ok", lens.notes
    assert lens.residue >= 0.6
    sig = lens.summary["signature"][f"post_{lens.summary['lens']}"]
    assert sig["best_mid_rank_median"] < sig["output_rank_median"]


@pytest.mark.slow
def test_suppress_cka_keeps_forget_representations(suppress_results):
    cka = suppress_results["cka"]
    assert cka.status == "ok" and cka.residue >= 0.9


@pytest.mark.slow
def test_oracle_probe_near_the_shuffled_floor(organism_pair_oracle, organism_concept):
    result = _run("probes", organism_pair_oracle, organism_concept)
    assert result.summary["acc_post"] <= result.summary["acc_shuffled"] + 0.2
    assert result.summary["acc_pre"] >= result.summary["acc_post"] + 0.3
    assert result.status == "ok" and result.residue <= 0.3


@pytest.mark.slow
def test_oracle_concept_vectors_are_gone(organism_pair_oracle, organism_concept):
    result = _run("concept_vectors", organism_pair_oracle, organism_concept)
    assert result.status == "ok" and result.residue <= 0.3


@pytest.mark.slow
def test_list_concept_vectors_on_the_organism(organism_dir, organism_concept):
    from palimpsest.models import load_model

    rows = probes.list_concept_vectors(load_model(organism_dir), organism_concept, top_k=5)
    assert len(rows) == 5
    assert {"layer", "index", "top_tokens", "causal_effect"} <= set(rows[0])
    assert rows == sorted(rows, key=lambda r: -r["score"])
    assert np.mean([r["causal_effect"] for r in rows]) > 0


def test_gram_concept_scores_equal_the_full_vocabulary_projection(tiny):
    from palimpsest.probes.vectors import VocabStats, concept_scores, vocab_projection

    vectors = value_vectors(tiny.model, 1)
    token_ids = [3, 7, 11]
    full = concept_scores(vocab_projection(tiny.model, vectors), token_ids)
    fast = VocabStats.of(tiny.model).concept_scores(vectors, token_ids)
    assert torch.allclose(fast, full, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fast, VocabStats.of(tiny.model).concept_scores(vectors, [4, 8]), atol=1e-3)
