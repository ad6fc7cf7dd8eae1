"""The `cka` analyser: are the post model's representations of the forget items still those of the pre model?"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from palimpsest.audit.finalize import Measurement, finalize
from palimpsest.capture import layer_of, resid_post_sites
from palimpsest.probes.figures import per_layer_figure
from palimpsest.probes.similarity import linear_cka
from palimpsest.stats import bootstrap_ci, calibrate_value
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

SETS = ("forget", "paraphrases", "neighbours", "retain")


def _mismatched_cka(x: torch.Tensor, y: torch.Tensor, seed: int, repeats: int = 5) -> float:
    """CKA with the rows of y shuffled: the similarity two unrelated item orderings reach by chance."""
    gen = torch.Generator().manual_seed(seed)
    return float(np.mean([linear_cka(x, y[torch.randperm(len(y), generator=gen)]) for _ in range(repeats)]))


class CKAConfig(AnalyserConfig):
    # the token positions compared (last prompt token, last subject token, mean over the answer span)
    positions: tuple[Literal["last", "subject", "answer_mean"], ...] = ("last", "subject")
    min_gap: float = 0.05  # the floor CKA must be at least this far below 1 for a residue to be read
    n_bootstrap: int | None = None  # bootstrap draws for the CI (None: the audit's n_bootstrap, at most 200)
    sites: tuple[str, ...] | None = None  # the sites compared (None: every residual-stream site of the pre model)
    # without a floor model, calibrate against CKA on mismatched items (a floor far too low for a related model)
    allow_chance_floor: bool = False


@register
class CKA(Analyser):
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
    Config = CKAConfig
    modalities = frozenset({"text", "image"})  # image: palimpsest.vision.measures.cka (forget-class images)
    needs = frozenset({"activations"})  # captures of pre, post (and floor) at every residual-stream site

    def run(self, ctx) -> Result:
        """Overridden: CKA needs at least 3 forget items, its CI resamples items through CKA (not the mean of
        per-item values) and without a floor model it reports the per-layer CKA but no residue."""
        if ctx.modality == "image":  # the digits models (vision adapter: its own guards and item bootstrap)
            from palimpsest.vision import measures

            return measures.measure(self, ctx)
        n_forget = len(ctx.concept.forget)
        if n_forget < max(ctx.config.min_items, 3):
            return inconclusive(self.name, f"only {n_forget} forget items: CKA needs several items to compare")
        measured = self.measure(ctx)
        if ctx.pair.floor is None and not ctx.opts.allow_chance_floor:
            # a post model that shares pre's architecture and data keeps CKA far above the mismatched-items chance
            # level even when it never learned the items (oracle retrain: ~0.5 on the organism), so no verdict
            result = inconclusive(self.name, "no floor model: CKA needs a model that never learned the items to say "
                                             "what 'deleted' looks like (mismatched-item chance CKA "
                                             f"{measured.floor:.3f} is not one); per-layer CKA is reported. To make it conclusive: pass "
                                             "--floor MODEL (a model never trained on the items, e.g. the retain "
                                             "model)",
                                  floor=measured.floor, ceiling=measured.ceiling, post=measured.post[0],
                                  floor_source=measured.floor_source, summary=measured.summary,
                                  tables=measured.tables)
        else:
            result = finalize(self, measured, ctx)
            if result.status == "ok":  # the item bootstrap through CKA replaces finalize's (scalar) interval
                ci = self._bootstrap(ctx, measured.extra["forget"], measured.extra["keys"], measured.floor)
                result.ci = ci if ci else (result.residue, result.residue)
        for title, figure in self.figures(measured, ctx).items():
            result.add_figure(title, figure)
        return result

    def measure(self, ctx) -> Measurement:
        opts: CKAConfig = ctx.opts
        sites = list(opts.sites) if opts.sites is not None else list(resid_post_sites(ctx.pair.pre.model))
        sets = [s for s in SETS if len(ctx.acts.items(s)) >= 3]
        rows, forget = self._per_layer(ctx, sites, sets)
        keys = [(site, position) for position in opts.positions for site in sites]
        post = _mean_cka(forget, keys, "post")
        if ctx.pair.floor is not None:
            floor, floor_source = _mean_cka(forget, keys, "floor"), \
                "CKA of pre with the floor model (never learned the items)"
        else:
            floor = float(np.mean([_mismatched_cka(*forget[("post", site, position)], seed=ctx.config.seed)
                                   for site, position in keys]))
            floor_source = "CKA of pre with post on mismatched (shuffled) forget items"
        summary = _summary(rows, sets, ctx.pair.floor is not None)
        retain = summary.get("cka_retain_post") or float("nan")
        return Measurement(
            post=[post], floor=floor, ceiling=1.0, floor_source=floor_source, min_gap=opts.min_gap,
            degenerate=(f"the floor CKA ({{floor:.3f}}) is within {opts.min_gap} of 1: CKA cannot separate a model "
                        "that never learned the items from the pre model"),
            evidence=("forget-item representations of post vs pre: CKA {post:.3f} (floor {floor:.3f}); retain items "
                      f"{retain:.3f}"),
            summary=summary, tables={"per_layer": rows}, extra={"forget": forget, "keys": keys})

    @staticmethod
    def _per_layer(ctx, sites: list[str], sets: list[str]) -> tuple[list[dict], dict]:
        """The per-layer CKA rows, and (model, site, position) -> (pre acts, other acts) on the forget items."""
        others = ["post"] + (["floor"] if ctx.pair.floor is not None else [])
        rows, forget = [], {}
        for position in ctx.opts.positions:
            for site in sites:
                pre = {s: ctx.acts.get("pre", site, s, position) for s in sets}
                for m in others:
                    for s in sets:
                        other = ctx.acts.get(m, site, s, position)
                        rows.append({"layer": layer_of(site), "site": site, "position": position, "set": s,
                                     "pair": f"pre-{m}", "cka": linear_cka(pre[s], other)})
                        if s == "forget":
                            forget[(m, site, position)] = (pre[s], other)
        return rows, forget

    @staticmethod
    def _bootstrap(ctx, forget: dict, keys: list, floor: float) -> tuple[float, float] | None:
        """Percentile CI of the residue over forget items resampled jointly in every (site, position)."""
        has_floor = ctx.pair.floor is not None

        def residue(idx: np.ndarray) -> float | None:
            idx = torch.as_tensor(idx)
            f = _mean_cka(forget, keys, "floor", idx) if has_floor else floor
            return calibrate_value(_mean_cka(forget, keys, "post", idx), f, 1.0)

        n_boot = ctx.opts.n_bootstrap if ctx.opts.n_bootstrap is not None else min(ctx.config.n_bootstrap, 200)
        return bootstrap_ci(residue, np.arange(len(ctx.concept.forget)), n_bootstrap=n_boot,
                            ci_level=ctx.config.ci_level, seed=ctx.config.seed)

    def figures(self, measured: Measurement, ctx) -> dict:
        rows = measured.tables["per_layer"]
        return {f"CKA per layer ({position} position)": per_layer_figure(
            [dict(r, series=f"{r['pair'].split('-')[1]} {r['set']}") for r in rows if r["position"] == position],
            x="layer", y="cka", series="series", title=f"Linear CKA with the pre model, {position} position",
            y_title="CKA") for position in ctx.opts.positions}


def _mean_cka(forget: dict, keys: list, model: str, idx=None) -> float:
    """The forget items' CKA of pre with `model`, averaged over (site, position); `idx` resamples the items."""
    vals = []
    for site, position in keys:
        x, y = forget[(model, site, position)]
        if idx is not None:
            x, y = x[idx], y[idx]
        vals.append(linear_cka(x, y))
    return float(np.nanmean(vals))


def _summary(rows: list[dict], sets: list[str], has_floor: bool) -> dict:
    def set_mean(s: str, m: str = "post") -> float | None:
        vals = [r["cka"] for r in rows if r["set"] == s and r["pair"] == f"pre-{m}"]
        return float(np.nanmean(vals)) if vals else None

    summary = {f"cka_{s}_post": set_mean(s) for s in sets}
    if has_floor:
        summary.update({f"cka_{s}_floor": set_mean(s, "floor") for s in sets})
    if "retain" in sets:
        # deletion signature: the forget representations moved more than the retain ones
        summary["retain_minus_forget_post"] = summary["cka_retain_post"] - summary["cka_forget_post"]
    return summary
