"""Activations for SAEs: token activations of a corpus, fixed-size shuffled batch iterators (in memory or from
safetensors shards), and the per-token stream an SAE at a site reads (before any hook already on that site)."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.capture import ShardedActivations, capture, encode, resolve
from palimpsest.capture.backends import forward_kwargs
from palimpsest.capture.sites import get_module
from palimpsest.devices import input_device


def corpus_activations(model, tokenizer, site: str, corpus: Sequence[str], *, batch_size: int = 32
                       ) -> Float[Tensor, "n_tokens d"]:
    """Every real token's activation at `site` over `corpus` (palimpsest's capture, position 'all')."""
    if not corpus:
        raise ValueError("the SAE corpus is empty: give at least a few texts to train on")
    return capture(model, tokenizer, list(corpus), [site], position="all", batch_size=batch_size)[site]


def training_activations(model, tokenizer, site: str, corpus: Sequence[str], *, skip_first: int = 0,
                         max_norm_ratio: float | None = None, batch_size: int = 32
                         ) -> tuple[Float[Tensor, "n_tokens d"], dict]:
    """The rows an SAE trains on: every real token's activation at `site`, without the first `skip_first`
    positions of each text and without tokens whose norm exceeds `max_norm_ratio` x the median; with the counts."""
    if not skip_first and max_norm_ratio is None:
        acts = corpus_activations(model, tokenizer, site, corpus, batch_size=batch_size)
        return acts, {"n_tokens": int(acts.shape[0])}
    if not corpus:
        raise ValueError("the SAE corpus is empty: give at least a few texts to train on")
    rows = [acts[skip_first:] for _, acts in site_inputs(model, tokenizer, list(corpus), site, batch_size=batch_size)]
    acts = torch.cat([r for r in rows if r.shape[0]]) if any(r.shape[0] for r in rows) else torch.empty(0)
    if acts.shape[0] == 0:
        raise ValueError(f"no SAE training rows left after skipping the first {skip_first} positions of each text")
    info = {"n_tokens": int(acts.shape[0]), "skipped_first_positions": skip_first}
    if max_norm_ratio is not None:
        norms = acts.norm(dim=-1)
        keep = norms <= max_norm_ratio * norms.median()
        info.update(n_massive_dropped=int((~keep).sum()), max_norm_ratio=max_norm_ratio)
        acts = acts[keep]
        info["n_tokens"] = int(acts.shape[0])
    return acts, info


def tensor_batches(acts: Float[Tensor, "n d"], batch_size: int, *, seed: int = 0) -> Iterator[Float[Tensor, "b d"]]:
    """Endless batches of exactly `batch_size` rows, a fresh shuffle every epoch (sae-lens needs fixed-size
    batches and an iterator that never runs out)."""
    if acts.shape[0] < batch_size:
        raise ValueError(f"only {acts.shape[0]} activation rows for batches of {batch_size}: give a larger corpus "
                         "or a smaller batch_size")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts.shape[0], generator=gen)
        for start in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[order[start:start + batch_size]]


def shard_batches(store: ShardedActivations, site: str, batch_size: int, *, buffer_size: int = 16_384,
                  seed: int = 0) -> Iterator[Float[Tensor, "b d"]]:
    """Endless shuffled batches streamed from a `capture_to_disk` store: one shard at a time through sae-lens's
    mixing buffer, so memory holds about `buffer_size` rows whatever the store's size."""
    from sae_lens.training.mixing_buffer import mixing_buffer

    if store.rows < batch_size:
        raise ValueError(f"the activation store has {store.rows} rows, fewer than one batch of {batch_size}")
    if store.rows <= buffer_size:  # it all fits in the buffer: shuffle it whole, every epoch
        yield from tensor_batches(store.load(site), batch_size, seed=seed)
        return
    epoch = 0
    while True:
        torch.manual_seed(seed + epoch)  # mixing_buffer shuffles with the global generator
        chunks = store.iter_batches(site, min(batch_size * 8, store.rows))
        for batch in mixing_buffer(max(buffer_size, 2 * batch_size), batch_size, chunks):
            if batch.shape[0] == batch_size:
                yield batch
        epoch += 1


def _special_ids(tokenizer) -> set[int]:
    return {i for i in (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None}


def site_inputs(model, tokenizer, prompts: Sequence[str], site: str, *, batch_size: int = 32,
                skip_special: bool = True) -> list[tuple[list[int], Float[Tensor, "pos d"]]]:
    """Per prompt: (token ids, activations at `site`) for every real token.

    Read with a hook *prepended* to the site's module, so it sees the stream as it arrives at the site, before any
    hook already registered there (e.g. a SAUCE clamp): what an SAE placed at this site encodes.
    """
    target = resolve(model, site)
    module = get_module(model, target.module_path)
    special = _special_ids(tokenizer) if skip_special else set()
    out: list[tuple[list[int], Tensor]] = []
    device = input_device(model)
    for start in range(0, len(prompts), batch_size):
        batch = encode(tokenizer, list(prompts[start:start + batch_size]))
        store: dict[str, Tensor] = {}
        if target.io == "output":
            def hook(_mod, _args, output, store=store):
                store["h"] = (output[0] if isinstance(output, tuple) else output).detach()
            handle = module.register_forward_hook(hook, prepend=True)
        else:
            def pre_hook(_mod, args, kwargs, store=store):
                store["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
        try:
            with torch.inference_mode():
                model(**forward_kwargs(batch.to(device)))
        finally:
            handle.remove()
        acts = store["h"].float().cpu()
        acts = acts.reshape(*acts.shape[:2], -1)
        for row in range(acts.shape[0]):
            keep = [p for p in range(acts.shape[1]) if batch.attention_mask[row, p]
                    and int(batch.input_ids[row, p]) not in special]
            out.append(([int(batch.input_ids[row, p]) for p in keep], acts[row, keep]))
    return out


def concept_corpus(concept, extra: Sequence[str] = ()) -> list[str]:
    """Every prompt + answer of the concept's item sets, then `extra` texts (e.g. the organism's training text)."""
    texts = [f"{it.prompt} {it.answer.strip()}" for _, _, it in concept.all_items()]
    return list(dict.fromkeys([*texts, *extra]))
