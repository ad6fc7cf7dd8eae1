"""Truth probes, for facts whose answers never recur across subjects (a country's capital, an author's birthplace).

An answer-class probe trained on other subjects cannot name an answer it never saw as a label. A truth probe
instead learns, on other subjects' statements, whether "prompt + candidate answer" is true (the candidate is the
answer) or false (a perturbed answer, else another item's answer to the same attribute), read at the statement's
last token, as in Marks & Tegmark's "Geometry of Truth" (their probes transfer across topics). An item's score is
the probe's probability that its true statement is the true one among its candidates (softmax over the probe's
logits; chance 1 / number of candidates).

Floors that need no floor model: the same probe on never-known holdout facts (the model's own level for a fact it
never knew) and a probe trained on labels shuffled within each item (which candidate is "true" is random).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from jaxtyping import Float, Int
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from palimpsest.capture.tokens import continuation
from palimpsest.concepts import Item
from palimpsest.probes.data import attribute_of, group_of, label_of


@dataclass(frozen=True)
class Statements:
    """Candidate statements of some items: text, true (1) / false (0), and the item each belongs to."""

    texts: tuple[str, ...]
    labels: Int[np.ndarray, " s"]
    item: Int[np.ndarray, " s"]
    kept: tuple[int, ...]  # the index, among the items given, of each item that has statements

    @property
    def n_items(self) -> int:
        return len(self.kept)

    def __len__(self) -> int:
        return len(self.texts)


def false_candidates(item: Item, pool: dict[str, list[str]], n_false: int, rng: np.random.Generator) -> list[str]:
    """The item's perturbed answers, else other answers to the same attribute (drawn without replacement)."""
    own = label_of(item)
    if item.perturbed_answers:
        return [a.strip() for a in item.perturbed_answers if a.strip() != own][:n_false]
    others = sorted({a for a in pool.get(attribute_of(item), []) if a != own})
    if not others:
        return []
    picked = rng.choice(len(others), size=min(n_false, len(others)), replace=False)
    return [others[i] for i in sorted(picked)]


def answer_pool(items: Sequence[Item]) -> dict[str, list[str]]:
    """Every answer per attribute, over all the concept's items: the false candidates of items without their own."""
    pool: dict[str, list[str]] = {}
    for item in items:
        pool.setdefault(attribute_of(item), []).append(label_of(item))
    return pool


def statements(items: Sequence[Item], pool: dict[str, list[str]], *, n_false: int = 3, seed: int = 0) -> Statements:
    """The true statement and up to `n_false` false ones per item; items with no false candidate are left out."""
    rng = np.random.default_rng(seed)
    texts, labels, owner, kept = [], [], [], []
    for index, item in enumerate(items):
        wrong = false_candidates(item, pool, n_false, rng)
        if not wrong:
            continue
        for answer, label in [(label_of(item), 1), *((w, 0) for w in wrong)]:
            texts.append(item.prompt + continuation(answer, item.prompt))
            labels.append(label)
            owner.append(len(kept))
        kept.append(index)
    return Statements(tuple(texts), np.asarray(labels, dtype=np.int64), np.asarray(owner, dtype=np.int64),
                      tuple(kept))


def shuffled_labels(stmts: Statements, seed: int = 0) -> Int[np.ndarray, " s"]:
    """Within each item, a random candidate is labelled true: the 1-of-k structure stays, the truth goes."""
    rng = np.random.default_rng(seed)
    labels = np.zeros_like(stmts.labels)
    for i in range(stmts.n_items):
        rows = np.flatnonzero(stmts.item == i)
        labels[rng.choice(rows)] = 1
    return labels


def fit_truth_probe(x: Float[np.ndarray, "s d"], labels: Int[np.ndarray, " s"], *, c: float = 0.1) -> Pipeline:
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500, class_weight="balanced"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x, labels)
    return probe


def item_scores(probe: Pipeline, x: Float[np.ndarray, "s d"], stmts: Statements
                ) -> tuple[Float[np.ndarray, " n"], Float[np.ndarray, " n"], Float[np.ndarray, " n"]]:
    """Per item: P(its true statement is the true one) (softmax over its candidates' logits), 1.0 where the true
    statement has the highest logit, and chance (1 / its number of candidates)."""
    logits = probe.decision_function(x)
    prob, correct, chance = (np.zeros(stmts.n_items) for _ in range(3))
    for i in range(stmts.n_items):
        rows = np.flatnonzero(stmts.item == i)
        z = logits[rows] - logits[rows].max()
        p = np.exp(z) / np.exp(z).sum()
        true = int(np.flatnonzero(stmts.labels[rows] == 1)[0])
        prob[i], correct[i], chance[i] = p[true], float(np.argmax(logits[rows]) == true), 1.0 / len(rows)
    return prob, correct, chance


def truth_items(concept, test_sets: Sequence[str], train_sets: Sequence[str]) -> tuple[list[Item], list[Item]]:
    """(train items, test items): training items of other subjects than any test item, and other prompts."""
    test = [it for name in test_sets for it in concept.items(name)]
    groups, prompts = {group_of(it) for it in test}, {it.prompt for it in test}
    train = [it for name in train_sets for it in concept.items(name)
             if group_of(it) not in groups and it.prompt not in prompts]
    return train, test
