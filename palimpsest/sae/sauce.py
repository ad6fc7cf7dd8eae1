"""SAUCE as an unlearning method: clamp the concept's SAE features at inference with a hook; weights untouched.

By construction this is suppression: the knowledge stays in the weights, and the stream arriving at the site is
unchanged; only what leaves the site is edited.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor

from palimpsest.capture import resolve
from palimpsest.capture.sites import get_module


def _feature_list(features) -> list[int]:
    indices = getattr(features, "indices", features)
    out = [int(i) for i in indices]
    if not out:
        raise ValueError("no concept features to clamp: concept_features found none above min_selectivity; "
                         "lower it or train a larger SAE")
    return out


def clamp_edit(sae, features: Sequence[int], clamp_value: float):
    """h -> h + decode(f') - decode(f), with f = encode(h) and f' = f where each concept feature that fires is set
    to clamp_value x its activation: only the concept features' contribution changes; the SAE's reconstruction
    error stays in the stream."""
    idx = torch.tensor(list(features), dtype=torch.long)

    @torch.no_grad()
    def edit(h: Tensor) -> Tensor:
        x = h.to(sae.W_dec.dtype)
        f = sae.encode(x)
        chosen = f[..., idx.to(f.device)]
        delta_f = torch.zeros_like(f)
        delta_f[..., idx.to(f.device)] = torch.where(chosen > 0, (clamp_value - 1.0) * chosen, torch.zeros_like(chosen))
        delta = sae.decode(f + delta_f) - sae.decode(f)
        return h + delta.to(h.dtype)
    return edit


def sauce_clamp(model, sae, site: str, features, clamp_value: float = -3.0, *, share_weights: bool = False,
                name: str = "sauce"):
    """A new LoadedModel: a copy of `model` with a persistent forward hook at `site` that clamps the concept
    `features` (a ConceptFeatures or feature indices) of `sae`; the reference model is left as it was.

    Copy: by default a deep copy (own modules and weights, so fine-tuning it later cannot touch the reference);
    `share_weights=True` builds new modules that share the reference's parameter tensors (no extra memory; then do
    not train either model in place). The hook handle is kept in `meta["sauce"]["handle"]`.
    """
    from palimpsest.models import LoadedModel

    indices = _feature_list(features)
    memo = {}
    if share_weights:
        memo = {id(t): t for t in (*model.model.parameters(), *model.model.buffers())}
    clone = copy.deepcopy(model.model, memo)
    clone.eval()
    target = resolve(clone, site)
    module = get_module(clone, target.module_path)
    edit = clamp_edit(sae, indices, clamp_value)
    if target.io == "output":
        def hook(_mod, _args, output):
            if isinstance(output, tuple):
                return (edit(output[0]), *output[1:])
            return edit(output)
        handle = module.register_forward_hook(hook)
    else:
        def pre_hook(_mod, args, kwargs):
            if args:
                return (edit(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}
        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    meta = {**model.meta, "method": "sauce", "sauce": {"site": site, "features": indices, "clamp_value": clamp_value,
                                                       "share_weights": share_weights, "sae": sae, "handle": handle}}
    return LoadedModel(model=clone, tokenizer=model.tokenizer, source=model.source, name=name, meta=meta)
