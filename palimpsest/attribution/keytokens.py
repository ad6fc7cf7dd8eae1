"""Key tokens: the smallest set of top-contributing words whose joint occlusion removes most of the answer's
log-probability (on the pre model).

Candidates are the words outside the final cue (the cue is kept by every rewrite, so emphasising it means
nothing), ranked by their single-word occlusion score. The set grows in that order until deleting it together
removes at least `fraction` of what deleting every candidate removes (LP(x) - LP(x without all candidates));
when no set of at most `max_tokens` words gets there, the one that removes the most is kept and `reached` is False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from palimpsest.attribution.methods import TokenAttribution
from palimpsest.attribution.units import delete_words, final_cue, item_keywords, keyword_mask, split_words
from palimpsest.capture import score_answers
from palimpsest.concepts import Item


@dataclass(frozen=True)
class KeyTokens:
    words: tuple[str, ...]  # in prompt order
    indices: tuple[int, ...]
    cue_start: int  # index of the first word of the final cue
    removed: float  # LP(x) - LP(x without the key words)
    removed_all: float  # LP(x) - LP(x without every candidate word)
    reached: bool

    @property
    def share(self) -> float:
        return float(self.removed / self.removed_all) if self.removed_all > 0 else float("nan")


def select_key_tokens(
    model,
    tokenizer,
    items: Sequence[Item],
    occlusions: Sequence[TokenAttribution],
    *,
    fraction: float = 0.8,
    max_tokens: int = 4,
    cue_words: int = 2,
    concept_keywords: Sequence[str] = (),
    batch_size: int = 64,
) -> list[KeyTokens]:
    """Key tokens of each item, from its single-word occlusion scores on the pre model (one batched scoring pass
    over every candidate set of every item)."""
    plans = []
    var_items, var_prompts = [], []
    for item, occ in zip(items, occlusions):
        words = split_words(item.prompt)
        cue = final_cue(words, keyword_mask(words, item_keywords(item, concept_keywords)), cue_words)
        candidates = [i for i in range(cue) if np.isfinite(occ.scores[i])]
        ranked = sorted(candidates, key=lambda i: -occ.scores[i])[:max_tokens]
        sets = [sorted(ranked[:k]) for k in range(1, len(ranked) + 1)]
        plans.append((words, cue, candidates, sets, len(var_prompts)))
        for chosen in [*sets, candidates]:
            var_items.append(item)
            var_prompts.append(delete_words(words, chosen))
    scores = score_answers(model, tokenizer, var_items, prompts=var_prompts, batch_size=batch_size).mean_logprob \
        if var_prompts else np.zeros(0)
    out = []
    for (words, cue, _candidates, sets, offset), occ in zip(plans, occlusions):
        if not sets:
            out.append(KeyTokens((), (), cue, 0.0, 0.0, False))
            continue
        removed = [occ.target - scores[offset + k] for k in range(len(sets))]
        removed_all = occ.target - scores[offset + len(sets)]
        pick = next((k for k, r in enumerate(removed) if removed_all > 0 and r >= fraction * removed_all), None)
        reached = pick is not None
        if pick is None:
            pick = int(np.argmax(removed))
        chosen = tuple(sets[pick])
        out.append(KeyTokens(tuple(words.words[i] for i in chosen), chosen, cue, float(removed[pick]),
                             float(removed_all), reached))
    return out
