"""Logistic-regression probes (scikit-learn): fit, score the true label, group-shuffled control, grouped CV."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from jaxtyping import Float
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def make_probe(c: float = 0.1, max_iter: int = 200) -> Pipeline:
    # newton-cg: about 10x faster than lbfgs on these small multinomial problems (hundreds of rows, <= 1k dims)
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, solver="newton-cg", tol=1e-3))


def fit_probe(x: Float[np.ndarray, "n d"], labels: Sequence[str], *, c: float = 0.1) -> Pipeline | None:
    """A fitted probe, or None when the labels have a single class (nothing to learn)."""
    if len(set(labels)) < 2:
        return None
    probe = make_probe(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x, np.asarray(labels))
    return probe


def true_label_scores(probe: Pipeline | None, x: Float[np.ndarray, "n d"], labels: Sequence[str]
                      ) -> tuple[Float[np.ndarray, " n"], Float[np.ndarray, " n"]]:
    """(probability of the true label, 1.0 where it is the argmax); 0 for labels the probe never saw."""
    n = len(labels)
    if probe is None or n == 0:
        return np.zeros(n), np.zeros(n)
    classes = list(probe.classes_)
    proba = probe.predict_proba(x)
    col = np.array([classes.index(label) if label in classes else -1 for label in labels])
    prob = np.where(col >= 0, proba[np.arange(n), np.maximum(col, 0)], 0.0)
    correct = (col >= 0) & (proba.argmax(1) == np.maximum(col, 0))
    return prob.astype(np.float64), correct.astype(np.float64)


def shuffle_by_group(labels: Sequence[str], groups: Sequence[str], seed: int = 0) -> list[str]:
    """Permute labels between groups (subjects), keeping each group's labels together.

    Shuffling whole groups keeps what a subject-level probe could fit while breaking subject -> answer: the
    chance control for "reads the attribute", not for "memorises the names".
    """
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    target = dict(zip(unique, rng.permutation(len(unique)), strict=True))
    first_label = {}
    for label, group in zip(labels, groups, strict=True):
        first_label.setdefault(group, label)
    return [first_label[unique[target[group]]] for group in groups]


def grouped_cv_accuracy(x: Float[np.ndarray, "n d"], labels: Sequence[str], groups: Sequence[str], *,
                        folds: int = 3, c: float = 0.1) -> float | None:
    """Cross-validated accuracy with folds split by group (subject); None when too few groups or classes."""
    n_groups = len(set(groups))
    if n_groups < 2 or len(set(labels)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cross_val_score(make_probe(c), x, np.asarray(labels), groups=np.asarray(groups),
                                 cv=GroupKFold(n_splits=min(folds, n_groups)), error_score=np.nan)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else None
