"""Small scoring helpers: next-token answer accuracy and answer log-probabilities for a list of Items.

Self-contained on purpose (the organism and unlearn packages must not depend on `capture/`).
The answer is tokenized with a leading space and without special tokens; the prompt with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from palimpsest.concepts.spec import Item


def answer_text(answer: str) -> str:
    return answer if answer.startswith(" ") else " " + answer


def encode_items(tokenizer, items: Sequence[Item]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per item."""
    out = []
    for item in items:
        prompt_ids = list(tokenizer(item.prompt).input_ids)
        answer_ids = list(tokenizer(answer_text(item.answer), add_special_tokens=False).input_ids)
        if not answer_ids:
            raise ValueError(f"answer {item.answer!r} of prompt {item.prompt!r} tokenizes to nothing")
        out.append((prompt_ids, answer_ids))
    return out


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of prompt+answer with labels only on the answer tokens (-100 elsewhere)."""
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for row, (p, a) in enumerate(pairs):
        seq = p + a
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(p): len(seq)] = torch.tensor(a)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of the labelled tokens of each row (differentiable)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * keep).sum(-1)


@torch.no_grad()
def answer_scores(model, tokenizer, items: Sequence[Item], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per item: `correct` (greedy first answer token == answer's first token) and `logprob` (whole answer)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    pairs = encode_items(tokenizer, items)
    correct, logprob = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start: start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        pos = torch.tensor([len(p) - 1 for p, _ in chunk], device=device)
        first = torch.tensor([a[0] for _, a in chunk], device=device)
        pred = logits[torch.arange(len(chunk), device=device), pos].argmax(-1)
        correct.append((pred == first).cpu())
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        logprob.append((lp * keep).sum(-1).cpu())
    model.train(was_training)
    if not pairs:
        return {"correct": torch.zeros(0, dtype=torch.bool), "logprob": torch.zeros(0)}
    return {"correct": torch.cat(correct), "logprob": torch.cat(logprob)}


def accuracy(model, tokenizer, items: Sequence[Item]) -> float:
    """Fraction of items whose answer is the model's greedy next token (nan for no items)."""
    if not items:
        return float("nan")
    correct = answer_scores(model, tokenizer, items)["correct"]
    # an exact fraction: a float32 mean puts 12/60 just above 0.2, so "at most the target" would miss the target
    return int(correct.sum()) / len(correct)
