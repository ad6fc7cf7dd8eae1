"""Truth probes (palimpsest.probes.truth): statements, shuffled control and per-item scores, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from palimpsest.concepts import Item
from palimpsest.probes.truth import (
    answer_pool,
    fit_truth_probe,
    item_scores,
    shuffled_labels,
    statements,
    truth_items,
)


def _capitals():
    return [Item(prompt="The capital of France is", answer="Paris", subject="France", attribute="capital",
                 perturbed_answers=("Lyon", "Nice")),
            Item(prompt="The capital of Peru is", answer="Lima", subject="Peru", attribute="capital"),
            Item(prompt="The capital of Chad is", answer="Lima", subject="Chad", attribute="capital"),
            Item(prompt="Alice works as a", answer="pilot", subject="Alice", attribute="job")]


def test_statements_use_perturbed_answers_else_other_answers_to_the_attribute():
    items = _capitals()
    pool = answer_pool(items)
    assert pool == {"capital": ["Paris", "Lima", "Lima"], "job": ["pilot"]}
    st = statements(items, pool, n_false=3, seed=0)
    # France: its own perturbed answers; Peru and Chad: the other capital answer (Paris), never their own;
    # Alice: no other job in the concept, so no false statement, and she is left out
    assert st.kept == (0, 1, 2) and st.n_items == 3
    assert st.texts[:3] == ("The capital of France is Paris", "The capital of France is Lyon",
                            "The capital of France is Nice")
    assert st.texts[3:] == ("The capital of Peru is Lima", "The capital of Peru is Paris",
                            "The capital of Chad is Lima", "The capital of Chad is Paris")
    assert st.labels.tolist() == [1, 0, 0, 1, 0, 1, 0] and st.item.tolist() == [0, 0, 0, 1, 1, 2, 2]
    # at most n_false candidates, drawn without replacement
    assert len(statements(items[:1], pool, n_false=1).texts) == 2


def test_shuffled_labels_keep_one_true_statement_per_item_and_lose_the_truth():
    items = [Item(prompt=f"p{i} is", answer="a", attribute="x", perturbed_answers=("b", "c", "d")) for i in range(40)]
    st = statements(items, answer_pool(items), n_false=3)
    shuffled = shuffled_labels(st, seed=0)
    for i in range(st.n_items):
        assert shuffled[st.item == i].sum() == 1
    # the true statement is the first of each item's four; a random one is picked: about a quarter agree
    agree = np.mean([shuffled[st.item == i][0] == 1 for i in range(st.n_items)])
    assert 0.05 < agree < 0.6, agree  # measured 0.25 at seed 0


def test_item_scores_are_a_softmax_over_each_items_candidates():
    rng = np.random.default_rng(0)
    items = [Item(prompt=f"p{i} is", answer="a", attribute="x", perturbed_answers=("b", "c")) for i in range(30)]
    st = statements(items, answer_pool(items), n_false=2)
    # a feature that carries the truth, plus noise: the probe learns it
    x = np.c_[st.labels * 2.0 - 1.0 + 0.1 * rng.normal(size=len(st)), rng.normal(size=(len(st), 3))]
    probe = fit_truth_probe(x, st.labels, c=1.0)
    prob, correct, chance = item_scores(probe, x, st)
    logits = probe.decision_function(x)
    first = logits[:3] - logits[:3].max()
    assert prob[0] == pytest.approx(np.exp(first[0]) / np.exp(first).sum())
    assert prob.min() > 0.9 and correct.all() and np.allclose(chance, 1 / 3)
    # features without the truth: the probe is at chance
    noise = rng.normal(size=(len(st), 4))
    prob, _, _ = item_scores(fit_truth_probe(noise, st.labels), noise, st)
    assert abs(prob.mean() - 1 / 3) < 0.1, prob.mean()


def test_truth_items_train_on_other_subjects_only():
    from palimpsest.concepts import ConceptSpec

    forget = _capitals()[:2]
    retain = [*_capitals()[2:], Item(prompt="France is in", answer="Europe", subject="France", attribute="x")]
    concept = ConceptSpec(name="c", forget=forget, retain=retain)
    train, test = truth_items(concept, ("forget", "paraphrases"), ("retain", "neighbours"))
    assert test == forget and [it.subject for it in train] == ["Chad", "Alice"]
