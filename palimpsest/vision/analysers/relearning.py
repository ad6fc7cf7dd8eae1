"""Relearning: a few fine-tuning steps on half the forget class's images; how fast does the class come back?"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from palimpsest.types import AuditConfig, Result, inconclusive
from palimpsest.vision.analysers.common import FLOOR_SOURCE, calibrated_result, correct, logits_of
from palimpsest.vision.registry import register_vision


def relearn_curve(model: nn.Module, fx, fy, rx, ry, tx, target: int, *, steps: int, lr: float,
                  seed: int) -> np.ndarray:
    """[steps, n_test] forget-class correctness after each Adam step on forget + retain images (model copied)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = []
    for _ in range(steps):
        ri = torch.randint(0, len(ry), (len(fy),), generator=gen)
        x, y = torch.cat([fx, rx[ri]]), torch.cat([fy, ry[ri]])
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        curve.append(correct(logits_of(model, tx), target))
    return np.stack(curve)


@register_vision
class Relearning:
    name = "relearning"
    kind = "residue"
    title = "Relearning attack"
    description = ("A copy of each model is fine-tuned for a few steps on half of the forget class's training images "
                   "(mixed with as many other-class images); forget-class accuracy on the held-out test images is read "
                   "after every step. Score per image = its accuracy averaged over the steps (area under the "
                   "relearning curve). Residue = post's score between the floor model's (same attack) and pre's.")

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        steps = int(config.option(self.name, "steps", 8))
        lr = float(config.option(self.name, "lr", 1e-3))
        data, target = acts.data, pair.forget_class
        mask_tr, mask = acts.forget_mask("train"), acts.forget_mask("test")
        if int(mask.sum()) < config.min_items:
            return inconclusive(self.name, f"only {int(mask.sum())} forget-class test images")
        gen = torch.Generator().manual_seed(config.seed)
        forget_idx = mask_tr.nonzero().flatten()
        half = forget_idx[torch.randperm(len(forget_idx), generator=gen)[: len(forget_idx) // 2]]
        fx, fy = data.train_x[half], data.train_y[half]
        rx, ry = data.train_x[~mask_tr], data.train_y[~mask_tr]
        tx = data.test_x[mask]

        def curve(model_name: str) -> np.ndarray:
            return relearn_curve(pair.models()[model_name].model, fx, fy, rx, ry, tx, target, steps=steps, lr=lr,
                                 seed=config.seed)

        curves = {}
        for m in [m for m in ("pre", "post", "floor") if m in pair.models()]:
            key = ("relearn", id(pair.models()[m].model), steps, lr, config.seed)
            curves[m] = curve(m) if m == "post" else acts.memo(key, lambda m=m: curve(m))
        rows = [{"step": i + 1, **{f"forget_acc_{m}": float(c[i].mean()) for m, c in curves.items()}}
                for i in range(steps)]
        summary = {f"relearned_acc_{m}_final": float(c[-1].mean()) for m, c in curves.items()}
        summary.update({"steps": steps, "lr": lr, "n_finetune_images": len(half)})
        if "floor" in curves:
            floor, source = curves["floor"].mean(0), FLOOR_SOURCE + " (same attack)"
        else:
            return inconclusive(self.name, "no floor model: relearning speed has no reference", summary=summary,
                                tables={"curve": rows})
        return calibrated_result(self.name, curves["post"].mean(0), floor, curves["pre"].mean(0), config,
                                 floor_source=source, summary=summary,
                                 evidence_what=f"forget accuracy during {steps} relearning steps",
                                 tables={"curve": rows})
