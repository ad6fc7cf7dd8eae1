"""Gradient ascent (`ga`) and gradient difference (`graddiff`) on the answer tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from palimpsest.concepts.spec import Item
from palimpsest.models.loading import LoadedModel
from palimpsest.unlearn.common import (
    Batches,
    UnlearnConfig,
    answer_nll,
    check_inputs,
    copy_model,
    run_loop,
    wrap,
)


@dataclass(frozen=True)
class GAConfig(UnlearnConfig):
    """Gradient ascent: maximise the forget answers' NLL (no retain term)."""

    lr: float = 1e-4
    max_steps: int = 60
    stop_forget_acc: float | None = 0.25
    retain_tolerance: float | None = None  # no retain term: ascent only ever lowers retain, so stop at the target


@dataclass(frozen=True)
class GradDiffConfig(UnlearnConfig):
    """Gradient difference: ascend on forget, descend on retain (weighted by retain_weight)."""

    lr: float = 2e-4
    max_steps: int = 100  # a budget for the stopping rule (one of eight other-kernel builds needed all of 50)
    retain_batch: int = 128
    retain_weight: float = 10.0
    stop_forget_acc: float | None = 0.2


def _ga_loss(model, batch) -> torch.Tensor:
    # ascent, bounded per item so one already-forgotten answer cannot run to infinity
    return -answer_nll(model, batch).clamp(max=20.0).mean()


def ga(loaded: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], config: GAConfig, seed: int = 0) -> LoadedModel:
    check_inputs("ga", forget, retain, needs_retain=False)
    torch.manual_seed(seed)
    model = copy_model(loaded)
    f = Batches.of(loaded.tokenizer, forget, seed)
    device = next(model.parameters()).device

    def step_loss(step: int) -> torch.Tensor:
        return _ga_loss(model, f.sample(config.forget_batch, device)[0])

    info = run_loop(model, loaded.tokenizer, forget, list(model.parameters()), config, step_loss, retain=retain)
    return wrap(loaded, model, "ga", config, info, seed)


def graddiff(loaded: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], config: GradDiffConfig,
             seed: int = 0, *, trainable: Callable[[torch.nn.Module], list[torch.nn.Module]] | None = None,
             method: str = "graddiff") -> LoadedModel:
    """`trainable(model)` picks the modules to train (default: every parameter); the others stay bit-identical."""
    check_inputs(method, forget, retain, needs_retain=True)
    torch.manual_seed(seed)
    model = copy_model(loaded)
    params = list(model.parameters())
    if trainable is not None:
        for p in params:
            p.requires_grad_(False)
        params = [p for m in trainable(model) for p in m.parameters()]
        for p in params:
            p.requires_grad_(True)
    f = Batches.of(loaded.tokenizer, forget, seed)
    r = Batches.of(loaded.tokenizer, retain, seed + 1)
    device = next(model.parameters()).device

    def step_loss(step: int) -> torch.Tensor:
        retain_nll = answer_nll(model, r.sample(config.retain_batch, device)[0]).mean()
        return _ga_loss(model, f.sample(config.forget_batch, device)[0]) + config.retain_weight * retain_nll

    info = run_loop(model, loaded.tokenizer, forget, params, config, step_loss, retain=retain)
    return wrap(loaded, model, method, config, info, seed)
