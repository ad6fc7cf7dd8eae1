"""Keyword-emphasis rewrites of a prompt (no weight changes): repeat, restate, mark, move, and the concept's own
paraphrases. Every rewrite keeps the prompt's final cue (the words right before the answer) last, so the answer
position still makes sense.
"""

from __future__ import annotations

from typing import Sequence

from palimpsest.attribution.units import Words, final_cue, keyword_mask, split_words
from palimpsest.concepts import Item

REWRITE_KINDS: tuple[str, ...] = ("repeat", "restate", "mark", "move", "paraphrase")
MARKERS: tuple[str, ...] = ('"', "*", "'", ",")


def pick_marker(tokenizer, candidates: Sequence[str] = MARKERS) -> str:
    """The first marker the tokenizer knows (a word-level vocabulary may lack quotes)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for marker in candidates:
        ids = tokenizer(" " + marker, add_special_tokens=False)["input_ids"]
        if ids and (unk is None or unk not in ids):
            return marker
    return candidates[0]


def _phrases(indices: Sequence[int]) -> list[list[int]]:
    """Maximal runs of consecutive word indices."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _locate(words: Words, key_tokens: Sequence[str], cue: int) -> list[int]:
    """Indices of the key words before the cue (first occurrence of each, compared like keywords)."""
    mask = keyword_mask(Words(words.prompt, words.words[:cue], words.spans[:cue]), key_tokens)
    return [i for i, hit in enumerate(mask) if hit]


def emphasis_rewrites(
    item: Item,
    key_tokens: Sequence[str],
    *,
    marker: str = '"',
    cue_words: int = 2,
    paraphrases: Sequence[Item] = (),
) -> dict[str, str]:
    """Rewrites of `item.prompt` that emphasise `key_tokens` (words of the prompt), keyed by kind:
    'repeat' (each key phrase said twice in place), 'restate' (the key phrases stated before the prompt),
    'mark' (key phrases between markers), 'move' (key phrases moved right before the final cue; left out when
    that changes nothing), and 'paraphrase_<i>' for the given paraphrase items of the same fact.
    Kinds whose key tokens are not found in the prompt are left out."""
    words = split_words(item.prompt)
    protected = keyword_mask(words, key_tokens)
    cue = final_cue(words, protected, cue_words)
    keys = _locate(words, key_tokens, cue)
    out: dict[str, str] = {}
    if keys:
        w = list(words.words)
        phrases = _phrases(keys)
        start_of = {p[0]: p for p in phrases}
        key_set = set(keys)
        repeat, mark = [], []
        i = 0
        while i < len(w):
            if i in start_of:
                phrase = [w[j] for j in start_of[i]]
                repeat += phrase + phrase
                mark += [marker, *phrase, marker]
                i = start_of[i][-1] + 1
                continue
            repeat.append(w[i])
            mark.append(w[i])
            i += 1
        said = [" ".join(w[j] for j in p) for p in phrases]
        out["repeat"] = " ".join(repeat)
        out["restate"] = " , ".join(said) + " . " + item.prompt.strip()
        out["mark"] = " ".join(mark)
        moved = [w[j] for j in range(cue) if j not in key_set] + [w[j] for j in keys] + w[cue:]
        if moved != w:
            out["move"] = " ".join(moved)
        cue_text = " ".join(w[cue:])
        for kind, text in out.items():
            if cue_text and not text.endswith(cue_text):  # a rewrite must end with the original final cue
                raise AssertionError(f"rewrite {kind!r} lost the final cue {cue_text!r}: {text!r}")
    for i, para in enumerate(paraphrases):
        out[f"paraphrase_{i}"] = para.prompt
    return out


def rewrite_kind(key: str) -> str:
    """'paraphrase_3' -> 'paraphrase'; other keys are their own kind."""
    return "paraphrase" if key.startswith("paraphrase_") else key
