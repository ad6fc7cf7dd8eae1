"""Shift-vector restoration: undo the post model's mean activation shift on the forget class at one layer."""

from __future__ import annotations

import torch

from palimpsest.types import AuditConfig, Result, inconclusive
from palimpsest.vision.analysers.common import (
    FLOOR_SOURCE,
    calibrated_result,
    correct,
    logits_of,
    unchanged_sites,
)
from palimpsest.vision.capture import logits_with_edits
from palimpsest.vision.registry import register_vision


@register_vision
class ShiftVectors:
    name = "shift_vectors"
    kind = "residue"
    title = "Shift-vector restoration"
    description = ("Per layer, the shift = mean(post) - mean(pre) activation of the forget class's training images; it "
                   "is subtracted from the post model's activations of the held-out forget images (nnsight) and the "
                   "forget-class accuracy measured. A random direction of equal norm is the control. Residue = the "
                   "best layer's restored accuracy, between the floor model's (its own shift subtracted) and pre's.")

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        mask_tr, mask = acts.forget_mask("train"), acts.forget_mask("test")
        if int(mask.sum()) < config.min_items:
            return inconclusive(self.name, f"only {int(mask.sum())} forget-class test images")
        same = unchanged_sites(acts, acts.sites)
        if len(same) == len(acts.sites):
            return inconclusive(self.name, "the post model's activations at every layer equal the pre model's: the "
                                "change is downstream of every site, so a shift there cannot act (see probes, CKA)")
        x, target = acts.data.test_x[mask], pair.forget_class
        models = [m for m in ("post", "floor") if m in pair.models()]
        gen = torch.Generator().manual_seed(config.seed)
        rows, results = [], {}
        pre_train = acts.get("pre", "train")
        for site in acts.sites:
            for m in models:
                shift = (acts.get(m, "train")[site][mask_tr].mean(0) - pre_train[site][mask_tr].mean(0))
                rand = torch.randn(shift.shape, generator=gen)
                rand = rand * shift.norm() / rand.norm()
                model = pair.models()[m].model
                for kind, vec in (("shift", shift), ("random", rand)):
                    values = correct(logits_with_edits(model, x, {site: lambda h, vec=vec: h - vec},
                                                       backend=acts.backend), target)
                    results[(site, m, kind)] = values
                    rows.append({"site": site, "model": m, "vector": kind, "norm": float(shift.norm()),
                                 "forget_acc": float(values.mean())})
        best = max(acts.sites, key=lambda s: results[(s, "post", "shift")].mean())
        pre_correct = correct(logits_of(pair.pre.model, x), target)
        summary = {"best_site": best, "restored_acc_post": float(results[(best, "post", "shift")].mean()),
                   "random_direction_acc_post": float(results[(best, "post", "random")].mean()),
                   "unchanged_sites": same}
        if "floor" in models:
            floor, source = results[(best, "floor", "shift")], FLOOR_SOURCE + " (its own shift subtracted)"
            summary["restored_acc_floor"] = float(floor.mean())
        else:
            floor, source = results[(best, "post", "random")], "random direction of equal norm on the post model"
        return calibrated_result(self.name, results[(best, "post", "shift")], floor, pre_correct, config,
                                 floor_source=source, summary=summary,
                                 evidence_what=f"forget accuracy after subtracting the shift at {best}",
                                 tables={"per_layer": rows})
