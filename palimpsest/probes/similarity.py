"""Linear CKA between two sets of representations of the same items (Kornblith et al. 2019)."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


def linear_cka(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"]) -> float:
    """||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F); 1 for identical (up to rotation and scale) representations.

    Hand-written: neither scikit-learn nor TransformerLens ships CKA, and it is three matrix products.
    """
    xc = x.double() - x.double().mean(0, keepdim=True)
    yc = y.double() - y.double().mean(0, keepdim=True)
    cross = (yc.T @ xc).pow(2).sum()
    norm = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    if norm <= 1e-24:
        return float("nan")
    return float(cross / norm)


def bootstrap_cka(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"], indices: list[np.ndarray]) -> np.ndarray:
    """CKA on each bootstrap resample of the rows (the same rows of x and y)."""
    return np.array([linear_cka(x[torch.as_tensor(idx)], y[torch.as_tensor(idx)]) for idx in indices])
