"""The item/label adapter: the forgotten class as a ConceptSpec whose items name held-out digits images.

Each item is one test image: `fact_id` "digits-{row}" (its row in `load_digits()`), `answer` its label. So
`len(concept.forget)` counts the forget class's test images, and `item_rows` maps any item set back to the images
(ImageActivations.images / labels / get read through it)."""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from palimpsest.concepts import ConceptSpec, Item
from palimpsest.vision.data import Digits

FACT_PREFIX = "digits-"


def digits_concept(data: Digits, forget_class: int, *, n_retain_per_class: int = 3) -> ConceptSpec:
    """Forget items: every held-out image of the class; retain items: a few held-out images of each other class."""
    forget, retain = [], []
    counts: dict[int, int] = {}
    for index, label in zip(data.test_index.tolist(), data.test_y.tolist(), strict=True):
        item = Item(prompt=f"digits test image {index}", answer=str(label), subject=f"image {index}",
                    attribute="digit", fact_id=f"{FACT_PREFIX}{index}")
        if label == forget_class:
            forget.append(item)
        elif counts.get(label, 0) < n_retain_per_class:
            counts[label] = counts.get(label, 0) + 1
            retain.append(item)
    return ConceptSpec(
        name=f"digits class {forget_class}",
        description=(f"class unlearning in a digits classifier (scikit-learn load_digits, 8x8 images): the model should "
                     f"no longer recognise the digit {forget_class}; the other digits must stay"),
        keywords=(f"digit {forget_class}",), forget=tuple(forget), retain=tuple(retain))


def item_rows(data: Digits, items, split: str = "test") -> Int[Tensor, " n"]:
    """The rows of `split` holding each item's image, in item order (ValueError for an item naming no image)."""
    index = data.test_index if split == "test" else data.train_index
    where = {int(row): i for i, row in enumerate(index.tolist())}
    rows = []
    for item in items:
        fact = item.fact_id or ""
        if not fact.startswith(FACT_PREFIX) or int(fact[len(FACT_PREFIX):]) not in where:
            raise ValueError(f"item {item.prompt!r} (fact_id {item.fact_id!r}) names no {split} image")
        rows.append(where[int(fact[len(FACT_PREFIX):])])
    return torch.tensor(rows, dtype=torch.long)
