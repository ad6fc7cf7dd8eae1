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
    """Hyper-parameters every method shares, and the stopping rule.

    Every `check_every` steps the loop measures greedy accuracy on the forget items it trains on and on up to
    `monitor_items` of its retain items. It stops at the first check where forget accuracy is <= `stop_forget_acc`
    and retain accuracy is within `retain_tolerance` of where it started (None: retain is not a condition). Where no
    check meets both by `max_steps`, it keeps the checked state that met the forget target with the best retain
    accuracy (else the last one). The stopping point is reported in `meta["unlearn"]["stop"]`. So every build
    reaches comparable behaviour whatever its initial weights, instead of whatever a fixed step count gives."""

    lr: float = 1e-3
    max_steps: int = 40
    min_steps: int = 1
    forget_batch: int | None = None  # None: all forget items every step
    retain_batch: int = 64
    retain_weight: float = 1.0
    stop_forget_acc: float | None = 0.1
    check_every: int = 1
    max_grad_norm: float = 1.0
    retain_tolerance: float | None = 0.1
    monitor_items: int = 64

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
             cfg: UnlearnConfig, step_loss: Callable[[int], torch.Tensor], *, retain: Sequence[Item] = (),
             weight_decay: float = 0.0) -> dict:
    """Adam on `params`, minimising `step_loss(step)`, until the stopping rule of `cfg` (see UnlearnConfig)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=weight_decay)
    start = time.perf_counter()
    monitor = list(retain)[: cfg.monitor_items]
    watch_retain = cfg.retain_tolerance is not None and bool(monitor)

    def measure() -> tuple[float, float | None]:
        return (accuracy(model, tokenizer, forget),
                accuracy(model, tokenizer, monitor) if watch_retain else None)

    forget_acc, retain_acc = measure()
    retain_start = retain_acc
    history: list[float] = []
    checks: list[dict] = [{"step": 0, "forget_acc": round(forget_acc, 4),
                           "retain_acc": None if retain_acc is None else round(retain_acc, 4)}]
    best: tuple[float, int, dict] | None = None  # (retain acc, step, state) of the best state meeting the target

    def meets_target() -> bool:
        return cfg.stop_forget_acc is not None and forget_acc <= cfg.stop_forget_acc

    def within_tolerance() -> bool:
        return not watch_retain or retain_start - retain_acc <= cfg.retain_tolerance

    stop_reason = "max_steps"
    steps = 0
    for step in range(cfg.max_steps):
        if step >= cfg.min_steps and step % cfg.check_every == 0 and meets_target() and within_tolerance():
            stop_reason = "target"
            break
        if step >= cfg.min_steps and step % cfg.check_every == 0 and meets_target() and watch_retain:
            if best is None or retain_acc > best[0]:
                best = (retain_acc, step, {id(p): p.detach().clone() for p in params})
        model.train()
        loss = step_loss(step)
        if not torch.isfinite(loss):
            raise UnlearnError(f"loss became {float(loss)} at step {step}; lower the learning rate (lr={cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        steps += 1
        history.append(round(float(loss.detach()), 4))
        if cfg.stop_forget_acc is not None and (step + 1) % cfg.check_every == 0:
            forget_acc, retain_acc = measure()
            checks.append({"step": step + 1, "forget_acc": round(forget_acc, 4),
                           "retain_acc": None if retain_acc is None else round(retain_acc, 4)})
    else:
        if meets_target() and within_tolerance():
            stop_reason = "target"
        elif best is not None and (not meets_target() or retain_acc < best[0]):
            with torch.no_grad():  # back to the checked state that met the target with the best retain accuracy
                for p in params:
                    p.copy_(best[2][id(p)])
            steps = best[1]
            stop_reason = "best_checked_state"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    forget_final, retain_final = measure()
    stop = {"reason": stop_reason, "step": steps, "forget_acc": round(forget_final, 4),
            "forget_target": cfg.stop_forget_acc, "reached_target": cfg.stop_forget_acc is not None
            and forget_final <= cfg.stop_forget_acc,
            "retain_acc_start": None if retain_start is None else round(retain_start, 4),
            "retain_acc": None if retain_final is None else round(retain_final, 4),
            "retain_tolerance": cfg.retain_tolerance if watch_retain else None,
            "within_retain_tolerance": None if not watch_retain else retain_start - retain_final <= cfg.retain_tolerance}
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 2), "loss_history": history,
            "forget_acc_train": round(forget_final, 4), "stop": stop, "checks": checks}


def wrap(loaded: LoadedModel, model: torch.nn.Module, method: str, cfg: UnlearnConfig, info: dict,
         seed: int) -> LoadedModel:
    meta = {**loaded.meta, "unlearn": {"method": method, "config": cfg.to_dict(), "seed": seed, **info},
            "pre_source": loaded.source}
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, source=loaded.source,
                       name=f"{loaded.name}-{method}", meta=meta)
