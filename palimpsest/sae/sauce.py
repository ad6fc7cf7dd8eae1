"""SAUCE as an unlearning method: clamp the concept's SAE features at inference with a hook; weights untouched.

By construction this is suppression: the knowledge stays in the weights, and the stream arriving at the site is
unchanged; only what leaves the site is edited.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor

from palimpsest.capture.interventions import install_edit
from palimpsest.sae.config import SAEConfig


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
    error stays in the stream. The SAE computes on its own device; the edited stream is on the device and in the
    dtype of `h` (the hooked activation)."""
    idx = torch.tensor(list(features), dtype=torch.long)

    @torch.no_grad()
    def edit(h: Tensor) -> Tensor:
        x = h.to(sae.W_dec.device, sae.W_dec.dtype)
        f = sae.encode(x)
        chosen = f[..., idx.to(f.device)]
        delta_f = torch.zeros_like(f)
        delta_f[..., idx.to(f.device)] = torch.where(chosen > 0, (clamp_value - 1.0) * chosen, torch.zeros_like(chosen))
        delta = sae.decode(f + delta_f) - sae.decode(f)
        return h + delta.to(h.device, h.dtype)
    return edit


def _clone(model, share_weights: bool):
    memo = {}
    if share_weights:
        memo = {id(t): t for t in (*model.model.parameters(), *model.model.buffers())}
    clone = copy.deepcopy(model.model, memo)
    clone.eval()
    return clone


def sauce_clamp(model, sae, site: str, features, clamp_value: float | None = None, *, share_weights: bool = False,
                name: str = "sauce"):
    """A new LoadedModel: a copy of `model` with a persistent forward hook at `site` that clamps the concept
    `features` (a ConceptFeatures or feature indices) of `sae`; the reference model is left as it was.
    `clamp_value` defaults to SAEConfig().clamp_value.

    Copy: by default a deep copy (own modules and weights, so fine-tuning it later cannot touch the reference);
    `share_weights=True` builds new modules that share the reference's parameter tensors (no extra memory; then do
    not train either model in place). The hook handle is kept in `meta["sauce"]["handle"]`.
    """
    from palimpsest.models import LoadedModel

    clamp_value = SAEConfig().clamp_value if clamp_value is None else float(clamp_value)
    indices = _feature_list(features)
    clone = _clone(model, share_weights)
    handle = install_edit(clone, site, clamp_edit(sae, indices, clamp_value))
    meta = {**model.meta, "method": "sauce", "sauce": {"site": site, "sites": [site], "features": indices,
                                                       "clamp_value": clamp_value, "share_weights": share_weights,
                                                       "sae": sae, "handle": handle, "handles": [handle]}}
    return LoadedModel(model=clone, tokenizer=model.tokenizer, source=model.source, name=name, meta=meta)


def sauce_unlearn(model, concept, config: SAEConfig | None = None, *, corpus: Sequence[str] = (), cache_dir=None,
                  share_weights: bool = False, name: str = "sauce", retain_items: Sequence | None = None):
    """SAUCE as an unlearning method: at each of `config.sauce_sites` (early by default), a sae-lens SAE trained on
    `model` (cached) and its concept features for `concept` (selected on `model`); a copy of `model` whose hooks
    clamp those features. Weights untouched: suppression by construction.

    Clamp strength and feature count follow a stopping rule, like the weight-editing methods: candidates from
    `config.sauce_selectivities` x `config.sauce_clamps` x `config.sauce_feature_counts`, weakest first, and the
    first whose forget accuracy is at most `config.sauce_forget_target` while accuracy on `retain_items` (default:
    the concept's retain items) stays within `config.sauce_retain_tolerance` of the model's is taken; when none is,
    the one meeting the target with the best retain accuracy, else the one that forgets most. Every candidate tried
    is in `meta["sauce"]["stop"]["search"]`.

    `meta["sauce"]`: "site" (the first site: the stream arriving there is exactly the reference model's, so the
    sae_features analyser reads it there), "sites", "features" (per site), "clamp_value", "saes", "handles".
    """
    from palimpsest.capture.sites import valid_sites
    from palimpsest.models import LoadedModel
    from palimpsest.organism.evaluate import accuracy
    from palimpsest.sae.data import concept_corpus
    from palimpsest.sae.features import concept_features
    from palimpsest.sae.train import get_or_train_sae

    config = config or SAEConfig()
    known = set(valid_sites(model.model))
    sites = [site for site in dict.fromkeys(config.sauce_sites) if site in known]
    if not sites:
        raise ValueError(f"none of sauce_sites {list(config.sauce_sites)} exists in this model; pick from "
                         f"{sorted(known)[:6]}...")
    texts = concept_corpus(concept, corpus)
    saes = {site: get_or_train_sae(model, site, texts, config, cache_dir)[0] for site in sites}
    by_selectivity = {}  # min_selectivity -> {site: (sae, features)}: a lower bar admits more concept features
    for selectivity in config.sauce_selectivities:
        widest = config.model_copy(update={"n_features": max(config.sauce_feature_counts),
                                           "min_selectivity": selectivity})
        found = {site: (sae, concept_features(sae, model, site, concept, widest)) for site, sae in saes.items()}
        found = {site: pair for site, pair in found.items() if len(pair[1])}
        if found:
            by_selectivity[selectivity] = found
    if not by_selectivity:
        raise ValueError(f"no concept features to clamp at any of {sites}: concept_features found none above "
                         f"min_selectivity={min(config.sauce_selectivities)}; lower it or train a larger SAE")
    clone = _clone(model, share_weights)
    forget = list(concept.forget)
    retain = list(retain_items) if retain_items is not None else list(concept.retain)
    retain_start = accuracy(clone, model.tokenizer, retain) if retain else None

    def install(selectivity: float, clamp: float, count: int) -> list:
        return [install_edit(clone, site, clamp_edit(sae, feats.indices[:count], clamp))
                for site, (sae, feats) in by_selectivity[selectivity].items()]

    def done(row: dict) -> bool:
        return row["meets_target"] and row["within_tolerance"]

    search: list[dict] = []
    # weakest first: the most selective features, then a milder clamp, then more features
    candidates = [(sel, clamp, count) for sel in by_selectivity for clamp in config.sauce_clamps
                  for count in sorted(config.sauce_feature_counts)]
    for selectivity, clamp, count in candidates:
        handles = install(selectivity, clamp, count)
        try:
            row = {"min_selectivity": selectivity, "clamp_value": clamp, "n_features": count,
                   "forget_acc": round(accuracy(clone, model.tokenizer, forget), 4),
                   "retain_acc": round(accuracy(clone, model.tokenizer, retain), 4) if retain else None}
        finally:
            for handle in handles:
                handle.remove()
        row["meets_target"] = row["forget_acc"] <= config.sauce_forget_target
        row["within_tolerance"] = (retain_start is None
                                   or retain_start - row["retain_acc"] <= config.sauce_retain_tolerance)
        search.append(row)
        if done(row):
            break
    if done(search[-1]):
        pick, reason = search[-1], "target"
    elif any(r["meets_target"] for r in search):
        pick, reason = max((r for r in search if r["meets_target"]), key=lambda r: r["retain_acc"] or 0), \
            "target_outside_retain_tolerance"
    else:
        pick, reason = min(search, key=lambda r: r["forget_acc"]), "target_not_reached"
    selectivity, clamp_value, count = pick["min_selectivity"], float(pick["clamp_value"]), int(pick["n_features"])
    chosen = by_selectivity[selectivity]
    handles = install(selectivity, clamp_value, count)
    first = next(iter(chosen))
    stop = {"reason": reason, "min_selectivity": selectivity, "clamp_value": clamp_value, "n_features": count,
            "forget_acc": pick["forget_acc"], "retain_acc": pick["retain_acc"],
            "retain_acc_start": None if retain_start is None else round(retain_start, 4),
            "forget_target": config.sauce_forget_target, "retain_tolerance": config.sauce_retain_tolerance,
            "search": search}
    meta = {**model.meta, "method": "sauce",
            "sauce": {"site": first, "sites": list(chosen),
                      "features": {s: f.indices[:count] for s, (_, f) in chosen.items()},
                      "concept_features": {s: f for s, (_, f) in chosen.items()}, "clamp_value": clamp_value,
                      "n_features": count, "stop": stop, "share_weights": share_weights, "sae": chosen[first][0],
                      "saes": {s: sae for s, (sae, _) in chosen.items()}, "handle": handles[0], "handles": handles}}
    return LoadedModel(model=clone, tokenizer=model.tokenizer, source=model.source, name=name, meta=meta)
