"""SAE expert features: do the pre model's class-specific SAE features still fire on the post model's forget images?"""

from __future__ import annotations

import numpy as np
import torch

from palimpsest.types import AuditConfig, Result, inconclusive
from palimpsest.vision.analysers.common import FLOOR_SOURCE, calibrated_result, pre_saes
from palimpsest.vision.registry import register_vision


@register_vision
class SAEFeatures:
    name = "sae_features"
    kind = "residue"
    title = "SAE expert features"
    description = ("A TopK SAE (sae-lens) per intermediate layer, trained on the pre model's activations of the "
                   "training images; its expert features are the most specific to the forget class. Score per held-out "
                   "forget image = the experts' activation relative to their pre-model mean, averaged over experts and "
                   "layers. Residue = post's score between the floor model's and pre's; random features of the same "
                   "number are a control.")

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        mask = acts.forget_mask("test")
        if int(mask.sum()) < config.min_items:
            return inconclusive(self.name, f"only {int(mask.sum())} forget-class test images")
        saes = pre_saes(acts, config)
        models = [m for m in ("pre", "post", "floor") if m in pair.models()]
        per_model = {m: [] for m in models}
        control = {m: [] for m in models}
        rows = []
        gen = torch.Generator().manual_seed(config.seed)
        for site, (layer_sae, experts, _score) in saes.items():
            if len(experts) == 0:
                continue
            codes = {m: layer_sae.encode(acts.get(m, "test")[site][mask]) for m in models}
            alive = (layer_sae.encode(acts.get("pre", "train")[site]) > 0).any(0)
            pool = torch.tensor([i for i in alive.nonzero().flatten().tolist() if i not in set(experts.tolist())])
            randoms = pool[torch.randperm(len(pool), generator=gen)[:len(experts)]] if len(pool) else experts
            ref = codes["pre"][:, experts].mean(0).clamp_min(1e-6)
            ref_r = codes["pre"][:, randoms].mean(0).clamp_min(1e-6)
            row = {"site": site, "n_experts": len(experts), "expert_ids": experts.tolist()}
            for m in models:
                per_model[m].append((codes[m][:, experts] / ref).mean(1).numpy())
                control[m].append((codes[m][:, randoms] / ref_r).mean(1).numpy())
                row[f"relative_activation_{m}"] = float(per_model[m][-1].mean())
                row[f"random_features_{m}"] = float(control[m][-1].mean())
            rows.append(row)
        if not rows:
            return inconclusive(self.name, "no SAE feature is specific to the forget class at any layer")
        values = {m: np.mean(per_model[m], axis=0) for m in models}
        summary = {f"expert_activation_{m}": float(v.mean()) for m, v in values.items()}
        summary.update({f"random_feature_activation_{m}": float(np.mean(control[m])) for m in models})
        if "floor" in values:
            floor, source = values["floor"], FLOOR_SOURCE
        else:
            floor, source = float(np.mean(control["post"])), "random SAE features of the same number (post model)"
        return calibrated_result(self.name, values["post"], floor, values["pre"], config, floor_source=source,
                                 summary=summary, evidence_what="forget-class expert SAE features' activation",
                                 tables={"per_layer": rows})
