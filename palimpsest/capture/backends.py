"""Run a forward pass and read named sites: plain torch hooks, TransformerLens's TransformerBridge, or nnsight."""

from __future__ import annotations

import inspect
import weakref
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.capture.sites import SiteTarget, execution_key, get_module, resolve
from palimpsest.capture.tokens import EncodedBatch
from palimpsest.devices import input_device

Backend = Literal["torch", "transformer_lens", "nnsight"]
BACKENDS: tuple[str, ...] = ("torch", "transformer_lens", "nnsight")


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _shape(target: SiteTarget, tensor: Tensor) -> Tensor:
    if target.n_heads:
        return tensor.reshape(*tensor.shape[:-1], target.n_heads, tensor.shape[-1] // target.n_heads)
    return tensor


def forward_kwargs(batch: EncodedBatch) -> dict:
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}


def takes_logits_to_keep(model) -> bool:
    """Whether the model's forward pass can unembed a subset of positions (HF `logits_to_keep`)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _torch_capture(model, batch: EncodedBatch, sites: list[str],
                   all_logits: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    store: dict[str, Tensor] = {}
    handles = []
    try:
        for site in sites:
            target = resolve(model, site)
            module = get_module(model, target.module_path)
            if target.io == "output":
                def hook(_mod, _args, output, target=target):
                    store[target.site] = _shape(target, _first(output).detach())
                handles.append(module.register_forward_hook(hook))
            else:
                def pre_hook(_mod, args, kwargs, target=target):
                    value = args[0] if args else kwargs["hidden_states"]
                    store[target.site] = _shape(target, value.detach())
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        # without all_logits the unembedding runs at the last position only (the captures are the same)
        keep = {} if all_logits or not takes_logits_to_keep(model) else {"logits_to_keep": 1}
        logits = model(**forward_kwargs(batch), **keep).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, store


_BRIDGES: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def bridge_for(model, tokenizer):
    """A TransformerBridge around the already-loaded HF model (no download); built once per model.

    The bridge wraps the model's modules in place; palimpsest's own hooks reach through those wrappers.
    """
    bridge = _BRIDGES.get(model)
    if bridge is None:
        from transformer_lens.model_bridge import TransformerBridge

        name = getattr(model.config, "_name_or_path", "") or "local-model"
        bridge = TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)
        _BRIDGES[model] = bridge
    return bridge


# the bridge's ln_final.hook_normalized is x / rms(x) before the gain (HookedTransformer's folded-LN convention);
# palimpsest's is the final norm's output, what the unembedding reads, so the bridge is read at its hook_out
_BRIDGE_NAMES = {"ln_final.hook_normalized": "ln_final.hook_out"}


def _tl_capture(model, tokenizer, batch: EncodedBatch, sites: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    if (batch.attention_mask[:, 0] == 0).any():
        raise ValueError("the transformer_lens backend needs right padding")
    for site in sites:
        resolve(model, site)  # the same SiteError as the other backends (e.g. no hook_resid_mid on a parallel block)
    bridge = bridge_for(model, tokenizer)
    names = {site: _BRIDGE_NAMES.get(site, site) for site in sites}
    wanted = set(names.values())
    logits, cache = bridge.run_with_cache(batch.input_ids, names_filter=lambda name: name in wanted,
                                          attention_mask=batch.attention_mask)
    missing = wanted - set(cache.keys())
    if missing:
        raise ValueError(f"TransformerBridge produced no activations for {sorted(missing)}")
    return logits, {site: cache[name] for site, name in names.items()}


_NNSIGHT: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def _envoy(root, path: str):
    envoy = root
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _nnsight_capture(model, batch: EncodedBatch, sites: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    from nnsight import NNsight

    wrapped = _NNSIGHT.get(model)
    if wrapped is None:
        wrapped = NNsight(model)
        _NNSIGHT[model] = wrapped
    ordered = sorted(sites, key=execution_key)  # nnsight must read modules in the order they run
    targets = [resolve(model, site) for site in ordered]
    saved = {}
    with wrapped.trace(**forward_kwargs(batch)):
        for target in targets:
            envoy = _envoy(wrapped, target.module_path)
            saved[target.site] = (envoy.input if target.io == "input" else envoy.output).save()
        logits = wrapped.output.logits.save()
    return logits, {t.site: _shape(t, _first(saved[t.site])) for t in targets}


def run_and_capture(
    model, tokenizer, batch: EncodedBatch, sites: list[str], backend: Backend = "torch", *, all_logits: bool = True
) -> tuple[Float[Tensor, "batch pos vocab"], dict[str, Tensor]]:
    """One forward pass of `batch`; returns the logits and each site's activation [batch, pos, ...]. With
    `all_logits=False` the torch backend may return the logits of the last position only (for callers that read
    the activations alone: the unembedding of every position is most of a small model's forward pass)."""
    batch = batch.to(input_device(model))
    with torch.inference_mode():
        if backend == "torch":
            return _torch_capture(model, batch, sites, all_logits)
        if backend == "transformer_lens":
            return _tl_capture(model, tokenizer, batch, sites)
        if backend == "nnsight":
            return _nnsight_capture(model, batch, sites)
    raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
