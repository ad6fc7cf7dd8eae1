"""Train the organism: a small LlamaForCausalLM on the world's training corpus, on CPU, deterministically."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from palimpsest.organism.evaluate import accuracy
from palimpsest.organism.world import FORMS, World


@dataclass(frozen=True)
class TrainConfig:
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 64
    epochs: int = 16
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    # extra loss weight on the last word of each sentence (the attribute value in every fact sentence)
    value_weight: float = 2.0
    max_threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def model_config(cfg: TrainConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,  # the output layer can be edited alone (the `suppress` control)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
    )


def _batches(ids: list[list[int]], batch_size: int, pad_id: int, epoch_seed: int):
    """Shuffled batches of similar-length rows (less padding), in a deterministic order per epoch."""
    rng = random.Random(epoch_seed)
    order = list(range(len(ids)))
    rng.shuffle(order)
    groups = []
    chunk = batch_size * 8
    for start in range(0, len(order), chunk):
        block = sorted(order[start: start + chunk], key=lambda i: len(ids[i]))
        groups.extend(block[j: j + batch_size] for j in range(0, len(block), batch_size))
    rng.shuffle(groups)
    for group in groups:
        rows = [ids[i] for i in group]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        yield input_ids, mask, torch.tensor([len(r) for r in rows])


def evaluate_world(model, tokenizer, world: World, exclude_people: tuple[str, ...] = ()) -> dict[str, float]:
    """Accuracy per form on the trained (non-excluded) people, and on the excluded and holdout people."""
    excluded = set(exclude_people)
    kept = [p for p in world.names if p not in excluded]
    out = {}
    for form in FORMS:
        out[form] = accuracy(model, tokenizer, [it for n in kept for it in world.items(n, form)])
    if excluded:
        out["excluded_trained"] = accuracy(model, tokenizer, [it for n in exclude_people for it in world.items(n, "trained")])
    out["holdout_trained"] = accuracy(model, tokenizer, [it for n in world.holdout_names for it in world.items(n, "trained")])
    return {k: round(v, 4) for k, v in out.items()}


def train_organism(world: World, tokenizer, *, seed: int = 0, exclude_people: tuple[str, ...] = (),
                   config: TrainConfig | None = None, progress: Callable[[int, int, float], None] | None = None,
                   data_seed: int | None = None):
    """Train from scratch on `world.corpus(exclude_people)`; returns (model, info dict).

    `seed` fixes the initial weights, `data_seed` (default: `seed`) the order of the training batches: two
    retrains that differ only in `data_seed` are independent models equally far from the original organism.
    """
    order_seed = seed if data_seed is None else data_seed
    from transformers import LlamaForCausalLM

    cfg = config or TrainConfig()
    corpus = world.corpus(exclude_people)
    ids = [list(tokenizer(s).input_ids) + [tokenizer.eos_token_id] for s in corpus]
    unk = tokenizer.unk_token_id
    if any(unk in r for r in ids):
        raise RuntimeError("the organism corpus has words outside the tokenizer vocabulary")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(cfg.max_threads, os.cpu_count() or 1)))
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model_config(cfg, tokenizer))
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
        steps_per_epoch = math.ceil(len(ids) / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch

        def lr_at(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            progress_ = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress_))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        start = time.perf_counter()
        step = 0
        loss_value = float("nan")
        for epoch in range(cfg.epochs):
            for input_ids, mask, lengths in _batches(ids, cfg.batch_size, tokenizer.pad_token_id, order_seed * 1000 + epoch):
                logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
                targets = input_ids[:, 1:]
                weights = mask[:, 1:].float()
                # rows end "... value . <eos>": the value is the target at index length - 4 after the shift
                weights[torch.arange(len(lengths)), lengths - 4] += cfg.value_weight
                token_loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view_as(weights)
                loss = (token_loss * weights).sum() / weights.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                loss_value = loss.item()
            if progress is not None:
                progress(epoch + 1, cfg.epochs, loss_value)
        train_seconds = time.perf_counter() - start
        model.eval()
        acc = evaluate_world(model, tokenizer, world, tuple(exclude_people))
    finally:
        torch.set_num_threads(old_threads)
    info = {"seed": seed, "data_seed": order_seed, "exclude_people": list(exclude_people), "train_config": cfg.to_dict(),
            "n_params": sum(p.numel() for p in model.parameters()), "n_sentences": len(corpus), "steps": step,
            "final_loss": round(loss_value, 4), "train_seconds": round(train_seconds, 1), "accuracy": acc}
    return model, info
