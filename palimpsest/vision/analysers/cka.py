"""Linear CKA per layer between the pre model's and another model's features, forget class vs the other classes."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.stats import calibrate_value
from palimpsest.types import AuditConfig, Result, inconclusive
from palimpsest.vision.analysers.common import FLOOR_SOURCE
from palimpsest.vision.registry import register_vision


def linear_cka(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"]) -> float:
    """Linear CKA (Kornblith et al. 2019); hand-written because it is three lines and no installed library has it."""
    return gram_cka(gram(x), gram(y))


def gram(x: Float[Tensor, "n d"]) -> Float[Tensor, "n n"]:
    x = x.double()
    return x @ x.T


def gram_cka(k: Float[Tensor, "n n"], m: Float[Tensor, "n n"]) -> float:
    """CKA from Gram matrices (n x n: cheap to bootstrap by indexing rows and columns)."""
    def centre(g):
        return g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()
    kc, lc = centre(k), centre(m)
    den = kc.norm() * lc.norm()
    return float((kc * lc).sum() / den) if den > 0 else float("nan")


@register_vision
class CKA:
    name = "cka"
    kind = "residue"
    title = "CKA (representation similarity)"
    description = ("Linear CKA between the pre model's features and the post (or floor) model's features of the same "
                   "held-out images, per layer, separately for the forget class and the other classes. Residue = the "
                   "forget class's CKA averaged over layers, between the floor model's CKA with pre and 1 (pre with "
                   "itself); the bootstrap resamples images.")

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        n_boot = int(config.option(self.name, "n_bootstrap", min(config.n_bootstrap, 200)))
        mask = acts.forget_mask("test")
        if int(mask.sum()) < max(config.min_items, 5):
            return inconclusive(self.name, f"only {int(mask.sum())} forget-class test images")
        if pair.floor is None:
            return inconclusive(self.name, "no floor model: CKA between different networks has no chance level")
        feats = {m: {s: acts.flat(m, "test", s) for s in acts.sites} for m in ("pre", "post", "floor")}
        rows = []
        for site in acts.sites:
            for group, sel in (("forget class", mask), ("other classes", ~mask)):
                rows.append({"site": site, "images": group,
                             **{f"cka_pre_{m}": linear_cka(feats["pre"][site][sel], feats[m][site][sel])
                                for m in ("post", "floor")}})
        forget_idx = mask.nonzero().flatten()

        grams = {m: {s: gram(feats[m][s][forget_idx]) for s in acts.sites} for m in feats}
        all_idx = torch.arange(len(forget_idx))

        def mean_cka(model: str, idx: Tensor) -> float:
            return float(np.mean([gram_cka(grams["pre"][s][idx][:, idx], grams[model][s][idx][:, idx])
                                  for s in acts.sites]))

        post, floor = mean_cka("post", all_idx), mean_cka("floor", all_idx)
        residue = calibrate_value(post, floor, 1.0)
        summary = {"cka_forget_post": post, "cka_forget_floor": floor,
                   "cka_other_post": float(np.mean([r["cka_pre_post"] for r in rows if r["images"] != "forget class"]))}
        if residue is None:
            return inconclusive(self.name, f"the floor model's CKA with pre ({floor:.3f}) is already 1",
                                summary=summary, tables={"per_layer": rows})
        gen = torch.Generator().manual_seed(config.seed)
        samples = []
        for _ in range(n_boot):
            idx = torch.randint(0, len(forget_idx), (len(forget_idx),), generator=gen)
            value = calibrate_value(mean_cka("post", idx), mean_cka("floor", idx), 1.0)
            samples.append(residue if value is None else value)
        alpha = (1 - config.ci_level) / 2
        lo, hi = np.quantile(samples, [alpha, 1 - alpha])
        evidence = (f"forget-class CKA(pre, post) {post:.3f} vs CKA(pre, floor) {floor:.3f} (1 = identical) "
                    f"-> residue {residue:.2f}")
        return Result(name=self.name, residue=residue, ci=(float(lo), float(hi)), floor=floor, ceiling=1.0, post=post,
                      floor_source=FLOOR_SOURCE, summary=summary, tables={"per_layer": rows}, evidence=evidence)
