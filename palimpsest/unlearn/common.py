"""Shared pieces of the unlearning methods: configs, batching, the copy-train-stop loop."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import torch

from palimpsest.concepts.spec import Item
from palimpsest.models.loading import LoadedModel
from palimpsest.organism.evaluate import _pad_id, accuracy, collate, encode_items, sequence_logprobs


class UnlearnError(ValueError):
    """Bad input to an unlearning method; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class UnlearnConfig:
    """Hyper-parameters every method shares. Training stops after `max_steps`, or earlier once greedy
    accuracy on the forget items is <= `stop_forget_acc` (checked every `check_every` steps; None: never)."""

    lr: float = 1e-3
    max_steps: int = 40
    min_steps: int = 1
    forget_batch: int | None = None  # None: all forget items every step
    retain_batch: int = 64
    retain_weight: float = 1.0
    stop_forget_acc: float | None = 0.1
    check_every: int = 1
    max_grad_norm: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UnlearnConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UnlearnError(f"{cls.__name__}: unknown option(s) {unknown}; valid: {sorted(names)}")
        return cls(**data)


@dataclass
class Batches:
    """Items pre-tokenized once; `sample` draws a deterministic batch."""

    pairs: list[tuple[list[int], list[int]]]
    items: list[Item]
    pad_id: int
    rng: random.Random

    @classmethod
    def of(cls, tokenizer, items: Sequence[Item], seed: int) -> Batches:
        return cls(encode_items(tokenizer, items), list(items), _pad_id(tokenizer), random.Random(seed))

    def sample(self, size: int | None, device) -> tuple[dict[str, torch.Tensor], list[int]]:
        if size is None or size >= len(self.pairs):
            idx = list(range(len(self.pairs)))
        else:
            idx = self.rng.sample(range(len(self.pairs)), size)
        batch = collate([self.pairs[i] for i in idx], self.pad_id)
        return {k: v.to(device) for k, v in batch.items()}, idx


def answer_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row: mean negative log-likelihood of the answer tokens."""
    n_tokens = (batch["labels"][:, 1:] != -100).sum(-1).clamp(min=1)
    return -sequence_logprobs(model, batch) / n_tokens


def copy_model(loaded: LoadedModel) -> torch.nn.Module:
    model = copy.deepcopy(loaded.model)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def check_inputs(method: str, forget: Sequence[Item], retain: Sequence[Item], needs_retain: bool) -> None:
    if not forget:
        raise UnlearnError(f"{method}: the forget set is empty; give at least one item to unlearn")
    if needs_retain and not retain:
        raise UnlearnError(f"{method}: needs retain items (facts to keep); the retain set is empty")


def run_loop(model: torch.nn.Module, tokenizer, forget: Sequence[Item], params: list[torch.nn.Parameter],
             cfg: UnlearnConfig, step_loss: Callable[[int], torch.Tensor], *, weight_decay: float = 0.0) -> dict:
    """Adam on `params`, minimising `step_loss(step)`, with early stopping on forget accuracy."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=weight_decay)
    start = time.perf_counter()
    history = []
    steps = 0
    forget_acc = accuracy(model, tokenizer, forget)
    for step in range(cfg.max_steps):
        if (cfg.stop_forget_acc is not None and step >= cfg.min_steps and step % cfg.check_every == 0
                and forget_acc <= cfg.stop_forget_acc):
            break
        model.train()
        loss = step_loss(step)
        if not torch.isfinite(loss):
            raise UnlearnError(f"loss became {float(loss)} at step {step}; lower the learning rate (lr={cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        steps += 1
        if cfg.stop_forget_acc is not None and (step + 1) % cfg.check_every == 0:
            forget_acc = accuracy(model, tokenizer, forget)
        history.append(round(float(loss.detach()), 4))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 2), "loss_history": history,
            "forget_acc_train": round(accuracy(model, tokenizer, forget), 4)}


def wrap(loaded: LoadedModel, model: torch.nn.Module, method: str, cfg: UnlearnConfig, info: dict,
         seed: int) -> LoadedModel:
    meta = {**loaded.meta, "unlearn": {"method": method, "config": cfg.to_dict(), "seed": seed, **info},
            "pre_source": loaded.source}
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, source=loaded.source,
                       name=f"{loaded.name}-{method}", meta=meta)
