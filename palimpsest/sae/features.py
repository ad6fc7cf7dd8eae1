"""SAUCE concept features: the SAE features that fire selectively on the concept's prompts."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from palimpsest.sae.config import SAEConfig
from palimpsest.sae.data import site_inputs


class ConceptFeatures(BaseModel):
    """The concept's SAE features, with how selectively each fires (JSON round-trips)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: str
    indices: list[int]
    selectivity: list[float]  # (mean forget - mean other) / (std other + eps), per kept feature
    mean_forget: list[float]  # mean per-prompt max activation on forget prompts
    mean_neighbour: list[float]
    mean_retain: list[float]
    firing_forget: list[float]  # share of forget prompts on which the feature fires
    top_tokens: list[list[dict]]  # per feature: [{"token", "activation", "prompt"}]
    min_selectivity: float
    n_candidates_above_threshold: int

    def __len__(self) -> int:
        return len(self.indices)

    def table(self) -> list[dict]:
        return [{"feature": i, "selectivity": s, "mean_forget": f, "mean_neighbour": n, "mean_retain": r,
                 "firing_forget": ff, "top_tokens": ", ".join(t["token"] for t in tops)}
                for i, s, f, n, r, ff, tops in zip(self.indices, self.selectivity, self.mean_forget,
                                                   self.mean_neighbour, self.mean_retain, self.firing_forget,
                                                   self.top_tokens, strict=True)]


@torch.no_grad()
def encode_prompts(sae, model, site: str, prompts: Sequence[str], *, batch_size: int = 32
                   ) -> tuple[Float[Tensor, "n d_sae"], list[tuple[list[int], Tensor]]]:
    """Per prompt, the max activation of each SAE feature over its tokens (special tokens skipped), and the
    per-token feature activations. `model` is a LoadedModel; the stream is read before any hook at `site`."""
    rows = site_inputs(model.model, model.tokenizer, list(prompts), site, batch_size=batch_size)
    d_sae = int(sae.W_dec.shape[0])
    per_prompt, per_token = [], []
    for ids, acts in rows:
        feats = sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu() if len(ids) else \
            torch.zeros(0, d_sae)
        per_prompt.append(feats.max(0).values if len(ids) else torch.zeros(d_sae))
        per_token.append((ids, feats))
    return (torch.stack(per_prompt) if per_prompt else torch.zeros(0, d_sae)), per_token


def selectivity_scores(forget: Float[Tensor, "n d_sae"], other: Float[Tensor, "m d_sae"], eps: float
                       ) -> Float[Tensor, " d_sae"]:
    """(mean on forget - mean on other) / (std on other + eps): a z-score of the concept prompts' activation."""
    std = other.std(0) if other.shape[0] > 1 else torch.zeros(other.shape[1])
    return (forget.mean(0) - other.mean(0)) / (std + eps)


def _top_tokens(tokenizer, prompts: Sequence[str], per_token, feature: int, n: int) -> list[dict]:
    found = []
    for prompt, (ids, feats) in zip(prompts, per_token, strict=True):
        for pos, token_id in enumerate(ids):
            value = float(feats[pos, feature])
            if value > 0:
                found.append((value, token_id, prompt))
    found.sort(key=lambda t: -t[0])
    return [{"token": tokenizer.convert_ids_to_tokens(tid), "activation": round(v, 4), "prompt": p}
            for v, tid, p in found[:n]]


def concept_features(sae, model, site: str, concept, config: SAEConfig | None = None) -> ConceptFeatures:
    """Rank the SAE's features by selectivity for the concept's forget prompts against its neighbour and retain
    prompts (on `model`, normally the pre model); keep the top `n_features` above `min_selectivity` that fire on
    at least `min_forget_firing` of the forget prompts."""
    config = config or SAEConfig()
    sets = {name: [it.prompt for it in concept.items(name)] for name in ("forget", "neighbours", "retain")}
    enc = {name: encode_prompts(sae, model, site, prompts) for name, prompts in sets.items() if prompts}
    if "neighbours" not in enc and "retain" not in enc:
        raise ValueError(f"concept {concept.name!r} has no neighbour or retain items: selectivity needs prompts "
                         "the concept features should NOT fire on")
    forget = enc["forget"][0]
    other = torch.cat([enc[n][0] for n in ("neighbours", "retain") if n in enc])
    scores = selectivity_scores(forget, other, config.selectivity_eps)
    firing = (forget > 0).float().mean(0)
    eligible = (scores >= config.min_selectivity) & (firing >= config.min_forget_firing)
    order = [int(i) for i in torch.argsort(scores, descending=True) if eligible[i]]
    keep = order[:config.n_features]
    all_prompts = [p for name in ("forget", "neighbours", "retain") if name in enc for p in sets[name]]
    all_tokens = [t for name in ("forget", "neighbours", "retain") if name in enc for t in enc[name][1]]

    def mean_of(name: str, i: int) -> float:
        return float(enc[name][0][:, i].mean()) if name in enc else float("nan")

    return ConceptFeatures(
        site=site, indices=keep, selectivity=[float(scores[i]) for i in keep],
        mean_forget=[mean_of("forget", i) for i in keep], mean_neighbour=[mean_of("neighbours", i) for i in keep],
        mean_retain=[mean_of("retain", i) for i in keep], firing_forget=[float(firing[i]) for i in keep],
        top_tokens=[_top_tokens(model.tokenizer, all_prompts, all_tokens, i, config.n_top_tokens) for i in keep],
        min_selectivity=config.min_selectivity, n_candidates_above_threshold=int(eligible.sum()))


def concept_score(per_prompt: Float[Tensor, "n d_sae"], baseline: Float[Tensor, "m d_sae"],
                  features: Sequence[int]) -> np.ndarray:
    """Per prompt: the mean over `features` of (activation - the feature's mean on `baseline` prompts of the same
    model): how much more the concept features fire on these prompts than on unrelated ones."""
    idx = list(features)
    return (per_prompt[:, idx] - baseline[:, idx].mean(0)).mean(1).numpy()
