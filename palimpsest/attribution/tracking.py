"""Contribution tracking: how much attribution falls on an item's keywords, pre vs post, which keywords lost their
influence, and whether prompts that should be untouched (retain) had their attributions moved too."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
from jaxtyping import Float

from palimpsest.attribution.methods import TokenAttribution
from palimpsest.attribution.units import keyword_mask, normalise, split_words


def _clean(scores: Float[np.ndarray, " words"]) -> np.ndarray:
    return np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)


def keyword_share(attr: TokenAttribution, keywords: Sequence[str], *, skip_last: bool = True) -> float:
    """Share of the absolute attribution that falls on keyword words (nan when the prompt has none or the total
    attribution is zero). With `skip_last` the prompt's last word is left out: it is the cue that makes the answer
    position make sense (deleting it breaks the prompt whatever the fact), so it would dominate every share."""
    mask = np.array(keyword_mask(split_words(attr.prompt), keywords), dtype=bool)
    magnitude = np.abs(_clean(attr.scores))
    if skip_last and len(mask) > 1:
        mask, magnitude = mask[:-1], magnitude[:-1]
    total = magnitude.sum()
    if not mask.any() or total <= 0:
        return float("nan")
    return float(magnitude[mask].sum() / total)


def profile_shift(pre: TokenAttribution, post: TokenAttribution) -> float:
    """How far the attribution *profile* moved: half the L1 distance between the two score vectors, each divided
    by its L1 norm; 0 = same distribution over the words, 1 = disjoint or sign-flipped."""
    a, b = _clean(pre.scores), _clean(post.scores)
    na, nb = np.abs(a).sum(), np.abs(b).sum()
    if na <= 0 or nb <= 0:
        return float("nan")
    return float(0.5 * np.abs(a / na - b / nb).sum())


def scale_ratio(pre: TokenAttribution, post: TokenAttribution) -> float:
    """Total absolute attribution after / before."""
    na, nb = np.abs(_clean(pre.scores)).sum(), np.abs(_clean(post.scores)).sum()
    return float(nb / na) if na > 0 else float("nan")


def keyword_table(pre: Sequence[TokenAttribution], post: Sequence[TokenAttribution],
                  keywords: Sequence[Sequence[str]], *, lost_fraction: float = 0.5) -> list[dict]:
    """Per keyword (normalised word): mean attribution over its occurrences pre and post; `lost` when the post
    mean is at most (1 - lost_fraction) of a positive pre mean."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"pre": [], "post": []})
    for a_pre, a_post, kws in zip(pre, post, keywords):
        mask = keyword_mask(split_words(a_pre.prompt), kws)
        for i, hit in enumerate(mask):
            if hit:
                key = normalise(a_pre.tokens[i])
                values[key]["pre"].append(float(_clean(a_pre.scores)[i]))
                values[key]["post"].append(float(_clean(a_post.scores)[i]))
    rows = []
    for key, v in values.items():
        mean_pre, mean_post = float(np.mean(v["pre"])), float(np.mean(v["post"]))
        rows.append({"keyword": key, "n": len(v["pre"]), "attribution_pre": round(mean_pre, 4),
                     "attribution_post": round(mean_post, 4), "change": round(mean_post - mean_pre, 4),
                     "lost": bool(mean_pre > 0 and mean_post <= (1 - lost_fraction) * mean_pre)})
    return sorted(rows, key=lambda r: r["change"])


def nanmean(values) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if len(arr) else float("nan")
