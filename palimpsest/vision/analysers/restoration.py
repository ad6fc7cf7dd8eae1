"""SAE-feature restoration ("Suppression or Deletion", restoration-based analysis) of the forget class."""

from __future__ import annotations

import torch

from palimpsest.types import AuditConfig, Result, inconclusive
from palimpsest.vision.analysers.common import (
    FLOOR_SOURCE,
    calibrated_result,
    correct,
    logits_of,
    pre_saes,
    unchanged_sites,
)
from palimpsest.vision.capture import logits_with_edits
from palimpsest.vision.registry import register_vision


def restored_correct(model, x, site, layer_sae, features, z_u, z_o, alpha, backend):
    """Forget-class correctness after z_r[e] = z_u[e] + alpha (z_o[e] - z_u[e]) at `features`, decoded and written back."""
    delta = alpha * (z_o[:, features] - z_u[:, features])
    return lambda target: correct(logits_with_edits(
        model, x, {site: lambda h: layer_sae.move_features(h, features, delta)}, backend=backend), target)


@register_vision
class SAERestoration:
    name = "sae_restoration"
    kind = "residue"
    title = "SAE-feature restoration"
    description = ("At each intermediate layer, the post model's codes of the forget class's expert SAE features are "
                   "moved toward the pre model's codes of the same images, z_r = z_u + alpha (z_o - z_u), decoded and "
                   "written back (nnsight), and the forget-class accuracy measured; alpha is swept. The same number of "
                   "random features is the control. Residue = restored accuracy at alpha = `alpha` on the best layer, "
                   "between the floor model's (same procedure) and pre's accuracy.")

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        alphas = tuple(config.option(self.name, "alphas", (0.25, 0.5, 1.0, 2.0)))
        alpha = float(config.option(self.name, "alpha", 1.0))
        mask = acts.forget_mask("test")
        if int(mask.sum()) < config.min_items:
            return inconclusive(self.name, f"only {int(mask.sum())} forget-class test images")
        saes = pre_saes(acts, config)
        same = unchanged_sites(acts, list(saes))
        if len(same) == len(saes):
            return inconclusive(self.name, "the post model's activations at every SAE layer equal the pre model's: the "
                                "change is downstream, so restoring features there cannot act (see probes, CKA)")
        x = acts.data.test_x[mask]
        target = pair.forget_class
        models = [m for m in ("post", "floor") if m in pair.models()]
        gen = torch.Generator().manual_seed(config.seed)
        rows, best = [], None
        for site, (layer_sae, experts, _score) in saes.items():
            if len(experts) == 0:
                continue
            z_o = layer_sae.encode(acts.get("pre", "test")[site][mask])
            alive = torch.tensor([i for i in (z_o > 0).any(0).nonzero().flatten().tolist()
                                  if i not in set(experts.tolist())])
            randoms = alive[torch.randperm(len(alive), generator=gen)[:len(experts)]] if len(alive) else experts
            per_alpha = {}
            for m in models:
                model = pair.models()[m].model
                z_u = layer_sae.encode(acts.get(m, "test")[site][mask])
                for a in alphas:
                    values = restored_correct(model, x, site, layer_sae, experts, z_u, z_o, a, acts.backend)(target)
                    per_alpha[(m, a)] = values
                    rows.append({"site": site, "model": m, "alpha": a, "features": "experts",
                                 "forget_acc": float(values.mean())})
                rand = restored_correct(model, x, site, layer_sae, randoms, z_u, z_o, alpha, acts.backend)(target)
                per_alpha[(m, "random")] = rand
                rows.append({"site": site, "model": m, "alpha": alpha, "features": "random",
                             "forget_acc": float(rand.mean())})
            score = float(per_alpha[("post", alpha)].mean())
            if best is None or score > best[0]:
                best = (score, site, per_alpha)
        if best is None:
            return inconclusive(self.name, "no SAE feature is specific to the forget class at any layer")
        _, site, per_alpha = best
        pre_correct = correct(logits_of(pair.pre.model, x), target)
        summary = {"best_site": site, "alpha": alpha, "restored_acc_post": float(per_alpha[("post", alpha)].mean()),
                   "random_feature_restored_acc_post": float(per_alpha[("post", "random")].mean()),
                   "unchanged_sites": same}
        if "floor" in models:
            floor, source = per_alpha[("floor", alpha)], FLOOR_SOURCE + " (restored the same way)"
            summary["restored_acc_floor"] = float(floor.mean())
        else:
            floor, source = per_alpha[("post", "random")], "random SAE features restored on the post model"
        return calibrated_result(self.name, per_alpha[("post", alpha)], floor, pre_correct, config,
                                 floor_source=source, summary=summary,
                                 evidence_what=f"forget accuracy after restoring expert features at {site}",
                                 tables={"sweep": rows})
