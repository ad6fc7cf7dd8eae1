"""scikit-learn's bundled digits images (1797 real 8x8 scans, no download), split once and for all by a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

FORGET_CLASS = 3
N_CLASSES = 10
# the train/test split never depends on the model seed: every model of the organism sees the same images
SPLIT_SEED = 0
TEST_FRACTION = 0.3


@dataclass(frozen=True)
class Digits:
    """Images scaled to [0, 1] as [n, 1, 8, 8]; `index` is the row in `load_digits()` (stable item ids)."""

    train_x: Float[Tensor, "n_train 1 8 8"]
    train_y: Int[Tensor, " n_train"]
    train_index: Int[Tensor, " n_train"]
    test_x: Float[Tensor, "n_test 1 8 8"]
    test_y: Int[Tensor, " n_test"]
    test_index: Int[Tensor, " n_test"]

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in ("train", "test"):
            raise ValueError(f"unknown split {name!r}: use 'train' or 'test'")
        return (self.train_x, self.train_y) if name == "train" else (self.test_x, self.test_y)

    def without(self, classes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """The training images of every class except `classes`."""
        keep = ~torch.isin(self.train_y, torch.tensor(classes, dtype=torch.long))
        return self.train_x[keep], self.train_y[keep]


@lru_cache(maxsize=1)
def load_digits_data() -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    index = np.arange(len(y))
    tr, te = train_test_split(index, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=bunch.target)
    tr, te = np.sort(tr), np.sort(te)
    return Digits(x[tr], y[tr], torch.as_tensor(tr), x[te], y[te], torch.as_tensor(te))
