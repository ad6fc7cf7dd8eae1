"""`suppress`: the ground-truth suppression control. Only the output layer (`lm_head`, optionally the final
norm) is trained: forget answers are pushed down with an unlikelihood loss, retain answers kept with NLL.
Every other tensor stays bit-identical, so whatever the model knew is still inside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from palimpsest.concepts.spec import Item
from palimpsest.models.loading import LoadedModel
from palimpsest.organism.evaluate import sequence_logprobs
from palimpsest.unlearn.common import (
    Batches,
    UnlearnConfig,
    UnlearnError,
    answer_nll,
    check_inputs,
    copy_model,
    run_loop,
    wrap,
)


@dataclass(frozen=True)
class SuppressConfig(UnlearnConfig):
    lr: float = 1e-3
    max_steps: int = 150
    stop_forget_acc: float | None = 0.15
    train_final_norm: bool = False
    retain_batch: int = 128
    retain_weight: float = 5.0


def output_modules(model, train_final_norm: bool) -> list[torch.nn.Module]:
    head = model.get_output_embeddings()
    if head is None:
        raise UnlearnError(f"suppress: {type(model).__name__} has no output embedding layer (lm_head)")
    modules = [head]
    if train_final_norm:
        base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
        norm = getattr(base, "norm", None) if base is not None else None
        if norm is None:
            raise UnlearnError("suppress: train_final_norm=True but no final norm (model.norm) was found")
        modules.append(norm)
    return modules


def _untie(model) -> None:
    """Give lm_head its own weight when it is tied to the input embeddings (so only the output changes)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = torch.nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False


def suppress(loaded: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], config: SuppressConfig,
             seed: int = 0) -> LoadedModel:
    check_inputs("suppress", forget, retain, needs_retain=True)
    torch.manual_seed(seed)
    model = copy_model(loaded)
    _untie(model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in output_modules(model, config.train_final_norm) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    f = Batches.of(loaded.tokenizer, forget, seed)
    r = Batches.of(loaded.tokenizer, retain, seed + 1)
    device = next(model.parameters()).device

    def step_loss(step: int) -> torch.Tensor:
        fb, _ = f.sample(config.forget_batch, device)
        n_tokens = (fb["labels"][:, 1:] != -100).sum(-1).clamp(min=1)
        p_answer = (sequence_logprobs(model, fb) / n_tokens).exp().clamp(max=1 - 1e-6)
        unlikelihood = -torch.log1p(-p_answer).mean()
        retain_nll = answer_nll(model, r.sample(config.retain_batch, device)[0]).mean()
        return unlikelihood + config.retain_weight * retain_nll

    info = run_loop(model, loaded.tokenizer, forget, params, config, step_loss, retain=retain)
    info["trained_modules"] = ["lm_head"] + (["final_norm"] if config.train_final_norm else [])
    return wrap(loaded, model, "suppress", config, info, seed)
