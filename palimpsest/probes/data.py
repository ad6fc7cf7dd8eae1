"""Which items a probe trains and tests on: split by subject, so a probe never sees the people it is tested on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.concepts import ConceptSpec, Item

# the probe learns the attribute -> answer readout on other people, and is tested on the forget people
TRAIN_SETS = ("retain", "neighbours")
TEST_SETS = ("forget", "paraphrases")
ANY_ATTRIBUTE = "answer"  # items without an attribute are probed together


def group_of(item: Item) -> str:
    """The unit a split never divides: the subject (a person), else the fact, else the prompt."""
    return item.subject or item.fact_id or item.prompt


def label_of(item: Item) -> str:
    return item.answer.strip()


def attribute_of(item: Item) -> str:
    return item.attribute or ANY_ATTRIBUTE


Ref = tuple[str, int]  # (item set, index in that set)


@dataclass(frozen=True)
class ProbeSplit:
    """Train/test items for one attribute; train groups and test groups are disjoint by construction."""

    attribute: str
    train: tuple[Ref, ...]
    test: tuple[Ref, ...]
    train_labels: tuple[str, ...]
    test_labels: tuple[str, ...]
    train_groups: tuple[str, ...]
    test_groups: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(set(self.train_labels))

    @property
    def test_labels_seen(self) -> float:
        """Share of test items whose answer occurs among the training labels (a probe cannot predict the rest)."""
        seen = set(self.train_labels)
        return float(np.mean([label in seen for label in self.test_labels])) if self.test_labels else 0.0


def probe_splits(concept: ConceptSpec, *, train_sets=TRAIN_SETS, test_sets=TEST_SETS) -> list[ProbeSplit]:
    """One split per attribute: test = forget (+ paraphrase) items; train = other-set items of *other* subjects.

    Any training item whose group (subject) or prompt also appears among the test items is dropped.
    """
    tests: dict[str, list[tuple[Ref, Item]]] = {}
    for name in test_sets:
        for index, item in enumerate(concept.items(name)):
            tests.setdefault(attribute_of(item), []).append(((name, index), item))
    test_groups = {group_of(item) for rows in tests.values() for _, item in rows}
    test_prompts = {item.prompt for rows in tests.values() for _, item in rows}
    splits = []
    for attribute, test_rows in tests.items():
        train_rows = [((name, index), item) for name in train_sets for index, item in enumerate(concept.items(name))
                      if attribute_of(item) == attribute and group_of(item) not in test_groups
                      and item.prompt not in test_prompts]
        splits.append(ProbeSplit(
            attribute=attribute,
            train=tuple(ref for ref, _ in train_rows), test=tuple(ref for ref, _ in test_rows),
            train_labels=tuple(label_of(it) for _, it in train_rows),
            test_labels=tuple(label_of(it) for _, it in test_rows),
            train_groups=tuple(group_of(it) for _, it in train_rows),
            test_groups=tuple(group_of(it) for _, it in test_rows),
        ))
    return splits


def gather(per_set: dict[str, Tensor], refs: tuple[Ref, ...]) -> Float[np.ndarray, "k d"]:
    """Rows of the per-set activation matrices that `refs` name, stacked, as float64 numpy."""
    if not refs:
        d = next(iter(per_set.values())).shape[-1]
        return np.zeros((0, d))
    rows = [per_set[name][index] for name, index in refs]
    return torch.stack(rows).double().numpy()
