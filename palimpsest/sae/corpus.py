"""The SAE's self-generated corpus: text sampled from the pre model itself, cached on disk per model.

A concept's own prompts are a few hundred tokens, far too few for an SAE of a real model to explain its
activations (SmolLM2's middle layer: 0.50 explained variance). Samples of the model's own distribution are the
text it represents best, need no data set download, and are the same for every audit of that pre model.
"""

from __future__ import annotations

import json
from pathlib import Path

from palimpsest.io import atomic_write_text

_MEMO: dict[tuple, list[str]] = {}


def self_corpus(model, n_texts: int, max_new_tokens: int, *, seed: int = 0, cache_dir: str | Path | None = None
                ) -> list[str]:
    """`n_texts` samples of `max_new_tokens` from `model` (a LoadedModel), from its start-of-text token (the same
    sampler as the RA-SAE's generations), cached under `<cache>/sae_corpus/` by model hash and settings."""
    from palimpsest.sae.blindspots import generate_texts
    from palimpsest.sae.train import cache_root, model_hash

    if n_texts <= 0:
        return []
    key = (model_hash(model.model), n_texts, max_new_tokens, seed)
    if key in _MEMO:
        return _MEMO[key]
    from palimpsest.kernels import kernel_tag

    path = cache_root(cache_dir) / "sae_corpus" / f"{key[0]}-{n_texts}-{max_new_tokens}-{seed}-{kernel_tag()}.json"
    texts = None
    if path.is_file():
        try:
            texts = json.loads(path.read_text())
        except (OSError, ValueError):
            texts = None  # a damaged cache file: sample again
    if not (isinstance(texts, list) and len(texts) == n_texts and all(isinstance(t, str) for t in texts)):
        texts = generate_texts(model, n_texts, max_new_tokens=max_new_tokens, seed=seed, batch_size=64)
        atomic_write_text(path, json.dumps(texts))
    _MEMO[key] = texts
    return texts
