"""Attribution units: the whitespace-separated words of a prompt, how to delete them, which tokens they cover.

For a word-level tokenizer a word is one token; for BPE a word is several tokens, and occlusion deletes the whole
word (its preceding space included), so the model never sees half a word. Special tokens (BOS) are never units and
are never deleted: `encode` adds them back to every variant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

_WORD = re.compile(r"\S+")
_PUNCT = re.compile(r"^\W+$")


@dataclass(frozen=True)
class Words:
    """The words of a prompt and their character spans."""

    prompt: str
    words: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.words)


def split_words(prompt: str) -> Words:
    matches = list(_WORD.finditer(prompt))
    return Words(prompt, tuple(m.group() for m in matches), tuple(m.span() for m in matches))


def delete_words(words: Words, indices: Iterable[int]) -> str:
    """The prompt with the given words removed, each with the whitespace before it (after it, for the first word)."""
    text, cursor, out = words.prompt, 0, []
    for i in sorted(set(indices)):
        start, end = words.spans[i]
        if i == 0:
            cut_start, cut_end = start, (words.spans[1][0] if len(words) > 1 else len(text))
        else:
            cut_start, cut_end = words.spans[i - 1][1], end
        cut_start = max(cut_start, cursor)
        out.append(text[cursor:cut_start])
        cursor = max(cursor, cut_end)
    out.append(text[cursor:])
    result = "".join(out)
    return result.lstrip() if not text[:1].isspace() else result


def token_word_index(tokenizer, prompt: str, words: Words) -> list[int]:
    """For each token of `tokenizer(prompt, add_special_tokens=True)`: the index of the word it belongs to, or -1
    for special tokens (BOS) and tokens that cover no word character."""
    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    return word_owners(enc["offset_mapping"], enc["special_tokens_mask"], words)


def word_owners(offsets: Sequence[tuple[int, int]], special: Sequence[int], words: Words) -> list[int]:
    """The word index of each token given its character offsets and special-token flags (-1: no word)."""
    out = []
    for (start, end), is_special in zip(offsets, special):
        index = -1
        if not is_special and end > start:
            for w, (ws, we) in enumerate(words.spans):
                if start < we and end > ws:
                    index = w
                    break
        out.append(index)
    return out


def normalise(word: str) -> str:
    """Lower case without surrounding punctuation (so 'Trelax,' matches the keyword 'trelax')."""
    stripped = re.sub(r"^\W+|\W+$", "", word)
    return (stripped or word).lower()


def keyword_mask(words: Words, keywords: Iterable[str]) -> list[bool]:
    """Which words are keywords (case-insensitive; a multi-word keyword counts word by word)."""
    wanted = {normalise(part) for kw in keywords if kw for part in kw.split()}
    return [normalise(w) in wanted and not _PUNCT.match(w) for w in words.words]


def item_keywords(item, concept_keywords: Sequence[str] = ()) -> list[str]:
    """An item's keywords: the words of its subject plus the concept's keywords that occur in its prompt."""
    out = list(item.subject.split()) if item.subject else []
    prompt_words = {normalise(w) for w in item.prompt.split()}
    for kw in concept_keywords:
        if all(normalise(part) in prompt_words for part in kw.split()):
            out.extend(kw.split())
    return out


def final_cue(words: Words, protected: Sequence[bool], cue_words: int = 2) -> int:
    """Index of the first word of the final cue: the longest suffix of at most `cue_words` words that holds no
    protected (keyword) word. The cue is the part right before the answer; rewrites keep it last."""
    start = len(words)
    while start > 0 and len(words) - start < cue_words and not protected[start - 1]:
        start -= 1
    if start == len(words) and len(words) > 0:  # the last word is a keyword: it is the cue on its own
        start = len(words) - 1
    return start
