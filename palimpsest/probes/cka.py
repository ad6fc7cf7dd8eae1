"""The `cka` analyser: are the post model's representations of the forget items still those of the pre model?"""

from __future__ import annotations

import numpy as np
import torch

from palimpsest.capture import layer_of, resid_post_sites
from palimpsest.probes.figures import per_layer_figure
from palimpsest.probes.similarity import linear_cka
from palimpsest.stats import calibrate_value
from palimpsest.types import AuditConfig, Result, inconclusive, register

SETS = ("forget", "paraphrases", "neighbours", "retain")


def _mismatched_cka(x: torch.Tensor, y: torch.Tensor, seed: int, repeats: int = 5) -> float:
    """CKA with the rows of y shuffled: the similarity two unrelated item orderings reach by chance."""
    gen = torch.Generator().manual_seed(seed)
    return float(np.mean([linear_cka(x, y[torch.randperm(len(y), generator=gen)]) for _ in range(repeats)]))


@register
class CKA:
    name = "cka"
    kind = "residue"
    title = "CKA (representation similarity)"
    description = (
        "Linear CKA between the pre and the post model's residual streams per layer, on the same items, separately "
        "for forget, paraphrase, neighbour and retain items (as in 'Are We Truly Forgetting?'). Deleting knowledge "
        "changes the forget representations while keeping the retain ones; an output-only change keeps both at 1. "
        "Residue = the forget items' CKA averaged over layers and positions, between the floor (CKA of pre with the "
        "floor model) and 1 (CKA of pre with itself). Without a floor model the result is inconclusive (option "
        "allow_chance_floor uses CKA on mismatched items instead, a floor far too low for a related model)."
    )

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        opt = lambda key, default: config.option(self.name, key, default)  # noqa: E731
        positions = tuple(opt("positions", ("last", "subject")))
        min_gap = float(opt("min_gap", 0.05))
        n_boot = int(opt("n_bootstrap", min(config.n_bootstrap, 200)))
        n_forget = len(concept.forget)
        if n_forget < max(config.min_items, 3):
            return inconclusive(self.name, f"only {n_forget} forget items: CKA needs several items to compare")
        sites = list(opt("sites", resid_post_sites(pair.pre.model)))
        sets = [s for s in SETS if len(acts.items(s)) >= 3]
        others = ["post"] + (["floor"] if pair.floor is not None else [])
        rows = []
        forget = {}  # (model, site, position) -> (pre acts, other acts) on forget items
        for position in positions:
            for site in sites:
                pre = {s: acts.get("pre", site, s, position) for s in sets}
                for m in others:
                    for s in sets:
                        other = acts.get(m, site, s, position)
                        rows.append({"layer": layer_of(site), "site": site, "position": position, "set": s,
                                     "pair": f"pre-{m}", "cka": linear_cka(pre[s], other)})
                        if s == "forget":
                            forget[(m, site, position)] = (pre[s], other)
        keys = [(site, position) for position in positions for site in sites]

        def mean_cka(model: str, idx=None) -> float:
            vals = []
            for site, position in keys:
                x, y = forget[(model, site, position)]
                if idx is not None:
                    x, y = x[idx], y[idx]
                vals.append(linear_cka(x, y))
            return float(np.nanmean(vals))

        post = mean_cka("post")
        if pair.floor is not None:
            floor, floor_source = mean_cka("floor"), "CKA of pre with the floor model (never learned the items)"
        else:
            floor = float(np.mean([_mismatched_cka(*forget[("post", site, position)], seed=config.seed)
                                   for site, position in keys]))
            floor_source = "CKA of pre with post on mismatched (shuffled) forget items"
        residue = calibrate_value(post, floor, 1.0)
        rng = np.random.default_rng(config.seed)
        samples = []
        for _ in range(n_boot):
            idx = torch.as_tensor(rng.integers(0, n_forget, n_forget))
            f = mean_cka("floor", idx) if pair.floor is not None else floor
            value = calibrate_value(mean_cka("post", idx), f, 1.0)
            if value is not None:
                samples.append(value)
        alpha = (1 - config.ci_level) / 2
        ci = tuple(float(q) for q in np.quantile(samples, [alpha, 1 - alpha])) if samples else None

        def set_mean(s: str, m: str = "post") -> float | None:
            vals = [r["cka"] for r in rows if r["set"] == s and r["pair"] == f"pre-{m}"]
            return float(np.nanmean(vals)) if vals else None

        summary = {f"cka_{s}_post": set_mean(s) for s in sets}
        if pair.floor is not None:
            summary.update({f"cka_{s}_floor": set_mean(s, "floor") for s in sets})
        if "retain" in sets:
            # deletion signature: the forget representations moved more than the retain ones
            summary["retain_minus_forget_post"] = summary["cka_retain_post"] - summary["cka_forget_post"]
        common = dict(floor=floor, ceiling=1.0, post=post, floor_source=floor_source, summary=summary,
                      tables={"per_layer": rows})
        if pair.floor is None and not opt("allow_chance_floor", False):
            # a post model that shares pre's architecture and data keeps CKA far above the mismatched-items chance
            # level even when it never learned the items (oracle retrain: ~0.5 on the organism), so no verdict
            result = inconclusive(self.name, "no floor model: CKA needs a model that never learned the items to say "
                                             "what 'deleted' looks like (mismatched-item chance CKA "
                                             f"{floor:.3f} is not one); per-layer CKA is reported", **common)
        elif residue is None or 1.0 - floor < min_gap:
            result = inconclusive(self.name, f"the floor CKA ({floor:.3f}) is within {min_gap} of 1: CKA cannot "
                                             "separate a model that never learned the items from the pre model",
                                  **common)
        else:
            result = Result(name=self.name, kind=self.kind, status="ok", residue=residue,
                            ci=ci if ci else (residue, residue),
                            evidence=(f"forget-item representations of post vs pre: CKA {post:.3f} (floor "
                                      f"{floor:.3f}); retain items {summary.get('cka_retain_post') or float('nan'):.3f}"),
                            **common)
        for position in positions:
            result.add_figure(f"CKA per layer ({position} position)", per_layer_figure(
                [dict(r, series=f"{r['pair'].split('-')[1]} {r['set']}") for r in rows if r["position"] == position],
                x="layer", y="cka", series="series", title=f"Linear CKA with the pre model, {position} position",
                y_title="CKA"))
        return result
