"""Negative Preference Optimization (Zhang et al. 2024) with the pre-unlearning model as reference,
plus a retain NLL term (the NPO+RT variant)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from palimpsest.concepts.spec import Item
from palimpsest.models.loading import LoadedModel
from palimpsest.organism.evaluate import sequence_logprobs
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
class NPOConfig(UnlearnConfig):
    lr: float = 2e-4
    max_steps: int = 100  # a budget for the stopping rule, as graddiff
    beta: float = 0.1
    retain_batch: int = 128
    retain_weight: float = 10.0
    stop_forget_acc: float | None = 0.2


def npo(loaded: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], config: NPOConfig, seed: int = 0) -> LoadedModel:
    check_inputs("npo", forget, retain, needs_retain=False)
    torch.manual_seed(seed)
    model = copy_model(loaded)
    reference = copy.deepcopy(loaded.model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    f = Batches.of(loaded.tokenizer, forget, seed)
    r = Batches.of(loaded.tokenizer, retain, seed + 1) if retain else None
    device = next(model.parameters()).device
    ref_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def step_loss(step: int) -> torch.Tensor:
        batch, idx = f.sample(config.forget_batch, device)
        key = tuple(idx)
        if key not in ref_cache:
            with torch.no_grad():
                ref_cache[key] = sequence_logprobs(reference, batch)
        log_ratio = sequence_logprobs(model, batch) - ref_cache[key]
        loss = -(2.0 / config.beta) * F.logsigmoid(-config.beta * log_ratio).mean()
        if r is not None and config.retain_weight > 0:
            loss = loss + config.retain_weight * answer_nll(model, r.sample(config.retain_batch, device)[0]).mean()
        return loss

    info = run_loop(model, loaded.tokenizer, forget, list(model.parameters()), config, step_loss, retain=retain)
    return wrap(loaded, model, "npo", config, info, seed)
