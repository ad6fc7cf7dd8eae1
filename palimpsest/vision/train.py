"""Training and evaluation loops for the digits classifiers (full control of seeds: deterministic on CPU)."""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


def predict(model: nn.Module, x: Float[Tensor, "n 1 8 8"], batch_size: int = 512) -> Int[Tensor, " n"]:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch_size].to(device)).argmax(-1).cpu()
                          for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: Float[Tensor, "n 1 8 8"], y: Int[Tensor, " n"]) -> float:
    return float((predict(model, x) == y).float().mean()) if len(y) else float("nan")


def train_classifier(
    model: nn.Module, x: Float[Tensor, "n 1 8 8"], y: Int[Tensor, " n"], *, seed: int, epochs: int = 40,
    lr: float = 2e-3, batch_size: int = 64, weight_decay: float = 1e-4,
) -> nn.Module:
    """Adam on cross-entropy; the seed fixes the shuffling (the caller seeds the initialisation)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


LossFn = Callable[[nn.Module, int], Tensor]


def fine_tune(model: nn.Module, loss_fn: LossFn, *, steps: int, lr: float,
              params: list[nn.Parameter] | None = None) -> nn.Module:
    """`steps` Adam steps on `loss_fn(model, step)`; only `params` (default: all) move."""
    opt = torch.optim.Adam(params if params is not None else list(model.parameters()), lr=lr)
    model.train()
    for step in range(steps):
        loss = loss_fn(model, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
