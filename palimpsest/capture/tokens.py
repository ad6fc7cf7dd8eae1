"""Tokenize prompts (+ answers) into padded batches that remember where each prompt, subject and answer sits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

Padding = Literal["right", "left"]


class AnswerTokenError(ValueError):
    """An answer cannot be produced by the model's tokenizer."""


@dataclass
class EncodedBatch:
    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]
    prompt_last: Int[Tensor, " batch"]  # index of the last prompt token (it predicts the first answer token)
    subject_last: Int[Tensor, " batch"]  # index of the last subject token (prompt_last when no subject)
    answer_start: Int[Tensor, " batch"]  # index of the first answer token (prompt_last + 1); -1 without answers
    answer_len: Int[Tensor, " batch"]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "EncodedBatch":
        return EncodedBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def answer_mask(self) -> Int[Tensor, "batch pos"]:
        """1 at the positions whose *next-token prediction* is an answer token (answer_start-1 ... end-1)."""
        pos = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)[None, :]
        start = (self.answer_start - 1)[:, None]
        return ((pos >= start) & (pos < start + self.answer_len[:, None]) & (self.answer_start[:, None] >= 0)).long()


def continuation(answer: str, prompt: str = "") -> str:
    """The answer as it continues `prompt`: with a leading space, unless it has one or the prompt ends in
    whitespace (chat templates end in a newline: the model was trained on the answer right after it)."""
    if answer.startswith(" ") or (prompt and prompt[-1].isspace()):
        return answer
    return " " + answer


def answer_ids(tokenizer, answer: str, prompt: str = "") -> list[int]:
    """Token ids of an answer as a continuation of `prompt` (see `continuation`; no special tokens)."""
    text = continuation(answer, prompt)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids):
        raise AnswerTokenError(
            f"answer {answer!r} cannot be produced by this tokenizer (it maps to the unknown token); "
            "use a word in the model's vocabulary"
        )
    return list(ids)


def _subject_last(tokenizer, prompt: str, subject: str | None, n_prompt: int) -> int:
    if not subject or subject not in prompt:
        return n_prompt - 1
    end = prompt.index(subject) + len(subject)
    ids = tokenizer(prompt[:end], add_special_tokens=True)["input_ids"]
    return min(len(ids), n_prompt) - 1


def encode(
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str] | None = None,
    subjects: Sequence[str | None] | None = None,
    *,
    padding: Padding = "right",
) -> EncodedBatch:
    """Prompt ids (with the tokenizer's special tokens) followed by answer ids; pad to the longest row."""
    rows, prompt_lens, answer_lens, subject_idx = [], [], [], []
    for i, prompt in enumerate(prompts):
        ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if not ids:
            raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
        prompt_lens.append(len(ids))
        subject_idx.append(_subject_last(tokenizer, prompt, subjects[i] if subjects else None, len(ids)))
        if answers is not None:
            extra = answer_ids(tokenizer, answers[i], prompt)
            ids = ids + extra
            answer_lens.append(len(extra))
        else:
            answer_lens.append(0)
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    offsets = []
    for i, ids in enumerate(rows):
        offset = width - len(ids) if padding == "left" else 0
        input_ids[i, offset:offset + len(ids)] = torch.tensor(ids)
        mask[i, offset:offset + len(ids)] = 1
        offsets.append(offset)
    offset_t = torch.tensor(offsets)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    prompt_last = offset_t + torch.tensor(prompt_lens) - 1
    has_answer = answers is not None
    return EncodedBatch(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids,
        prompt_last=prompt_last,
        subject_last=offset_t + torch.tensor(subject_idx),
        answer_start=prompt_last + 1 if has_answer else torch.full((batch,), -1),
        answer_len=torch.tensor(answer_lens),
    )


def batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))
