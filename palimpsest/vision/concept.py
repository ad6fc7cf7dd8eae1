"""A ConceptSpec describing the forgotten class, so vision audits fit the shared AuditResult and report."""

from __future__ import annotations

from palimpsest.concepts import ConceptSpec, Item
from palimpsest.vision.data import Digits


def digits_concept(data: Digits, forget_class: int, *, n_retain_per_class: int = 3) -> ConceptSpec:
    """Forget items: every held-out image of the class; retain items: a few held-out images of each other class."""
    forget, retain = [], []
    counts: dict[int, int] = {}
    for index, label in zip(data.test_index.tolist(), data.test_y.tolist(), strict=True):
        item = Item(prompt=f"digits test image {index}", answer=str(label), subject=f"image {index}",
                    attribute="digit", fact_id=f"digits-{index}")
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
