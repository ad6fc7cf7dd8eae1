"""The `direction_ablation` analyser: project the unlearning direction out of the post model's residual stream
(orthogonalization, after "An adversarial perspective on machine unlearning", Lucki et al. 2024)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from sklearn.decomposition import PCA
from torch import Tensor

from palimpsest.capture import ablate_direction, resid_post_sites
from palimpsest.restoration.common import (
    MIN_RELATIVE_SHIFT,
    calibrated_result,
    correct,
    edited,
    item_rows,
    relative_shift,
    restoration_rate,
    split_items,
    too_few,
)
from palimpsest.restoration.figures import bars_figure
from palimpsest.types import AuditConfig, inconclusive, register

Variant = tuple[str, str]  # (how the direction is estimated, where it is ablated: a layer index or "all")


def unlearning_directions(after: Float[Tensor, "n d"], before: Float[Tensor, "n d"]) -> dict[str, Float[Tensor, " d"]]:
    """The mean difference (after - before) and the first principal component of the per-item differences."""
    diff = (after.float() - before.float()).numpy()
    out = {"mean": torch.from_numpy(diff.mean(0)).float()}
    if diff.shape[0] >= 2 and np.abs(diff).max() > 0:
        out["pc1"] = torch.from_numpy(PCA(n_components=1).fit(diff).components_[0].copy()).float()
    return out


def ablation_edits(sites: list[str], directions: list[dict[str, Tensor]], variant: Variant) -> list[tuple]:
    kind, where = variant
    layers = range(len(sites)) if where == "all" else [int(where)]
    return [(sites[i], ablate_direction(directions[i][kind])) for i in layers if kind in directions[i]]


def fit_directions(acts, model: str, sites: list[str], idx: Sequence[int]) -> list[dict[str, Tensor]]:
    index = torch.as_tensor(list(idx), dtype=torch.long)
    return [unlearning_directions(acts.get(model, site, "forget", "last")[index],
                                  acts.get("pre", site, "forget", "last")[index]) for site in sites]


def ablate_and_select(loaded, items, sites, directions, train, batch_size) -> tuple[Variant, np.ndarray, dict]:
    """Score every variant on all items; return the best on `train`, its per-item correctness, and all scores."""
    variants: list[Variant] = [(kind, str(layer)) for kind in ("mean", "pc1") for layer in range(len(sites))]
    variants += [("mean", "all"), ("pc1", "all")]
    # no ablation is always a candidate (first, so it wins ties): an ablation that only breaks the floor model
    # must not push the floor below what that model answers unattacked
    scores = {("none", "-"): correct(loaded, items, batch_size=batch_size)}
    for variant in variants:
        edits = ablation_edits(sites, directions, variant)
        if edits:
            scores[variant] = correct(loaded, items, batch_size=batch_size, context=edited(loaded.model, lambda b, e=edits: e))
    best = max(scores, key=lambda v: scores[v][train].mean())  # dict order breaks ties: single layers first
    return best, scores[best], scores


def forgotten_indices(pre_ok: np.ndarray, model_ok: np.ndarray, train: list[int]) -> list[int]:
    return [i for i in train if pre_ok[i] and not model_ok[i]]


@register
class DirectionAblation:
    name = "direction_ablation"
    kind = "residue"
    title = "Direction ablation (orthogonalization)"
    description = (
        "The unlearning direction at each layer is r = mean(h_post) - mean(h_pre) at the last prompt token over the "
        "forget items the post model gets wrong and the pre model right (fitting half of the facts); a variant uses "
        "the first principal component of the per-item differences. Projecting r out of the post model's residual "
        "stream (h <- h - (h.r)r, at one layer or at every layer with its own r) tests whether unlearning is a "
        "removable direction. The variant is chosen on the fitting half; residue = held-out accuracy of the ablated "
        "post model, between the floor (the same attack on the floor model, or random directions) and the pre model."
    )

    def run(self, pair, concept, acts, config: AuditConfig):
        opt = lambda key, default: config.option(self.name, key, default)  # noqa: E731
        n_random = int(opt("n_random", 2))
        items = list(concept.forget)
        train, held = split_items(items, config.seed, float(opt("test_size", 0.5)))
        if (few := too_few(self.name, len(train), len(held), config)) is not None:
            return few
        pre, post, floor = pair.pre, pair.post, pair.floor
        sites = resid_post_sites(pre.model)
        bs = config.batch_size
        ceiling = correct(pre, items, batch_size=bs)
        post_plain = correct(post, items, batch_size=bs)
        notes = []
        sel = forgotten_indices(ceiling, post_plain, train)
        if len(sel) < 2:
            notes.append(f"only {len(sel)} fitting items are forgotten (pre right, post wrong): directions from all "
                         f"{len(train)} fitting items")
            sel = train
        directions = fit_directions(acts, "post", sites, sel)
        rel = [relative_shift(d["mean"], acts.get("pre", site, "forget", "last")) for d, site in zip(directions, sites, strict=True)]
        if max(rel) < MIN_RELATIVE_SHIFT:
            return inconclusive(self.name, f"post and pre residual streams do not differ on the forget prompts "
                                           f"(largest |r|/|h| = {max(rel):.1e}): the change is after the last block, "
                                           "so there is no direction to ablate", summary={"relative_shift_max": max(rel)})
        variant, post_att, post_scores = ablate_and_select(post, items, sites, directions, train, bs)

        gen = torch.Generator().manual_seed(config.seed)
        d_model = directions[0]["mean"].shape[0]
        random_hits = []
        for _ in range(n_random):
            rand = [{"mean": torch.randn(d_model, generator=gen), "pc1": torch.randn(d_model, generator=gen)}
                    for _ in sites]
            random_hits.append(ablate_and_select(post, items, sites, rand, train, bs)[1])
        random_att = np.mean(random_hits, axis=0)

        if floor is not None:
            floor_plain = correct(floor, items, batch_size=bs)
            f_sel = forgotten_indices(ceiling, floor_plain, train)
            f_dirs = fit_directions(acts, "floor", sites, f_sel if len(f_sel) >= 2 else train)
            _, floor_att, _ = ablate_and_select(floor, items, sites, f_dirs, train, bs)
            floor_values, floor_source = floor_att[held], "the same ablation on the floor model (its own direction)"
            floor_base = floor_plain[held]
        else:
            floor_values, floor_source = random_att[held], "random directions at the same layers"
            floor_base = post_plain[held]

        table = []
        for (kind, where), hits in post_scores.items():
            table.append({"direction": kind, "layers": where, "train_acc": float(hits[train].mean()),
                          "held_out_acc": float(hits[held].mean())})
        per_layer = [{"layer": i, "site": s, "relative_norm_r": r} for i, (s, r) in enumerate(zip(sites, rel, strict=True))]
        summary = {
            "n_train": len(train), "n_held_out": len(held), "n_direction_items": len(sel),
            "variant": f"{variant[0]}@{variant[1]}",
            "held_out_acc_pre": float(ceiling[held].mean()), "held_out_acc_post": float(post_plain[held].mean()),
            "held_out_acc_ablated": float(post_att[held].mean()),
            "held_out_acc_random_control": float(random_att[held].mean()),
            "restoration_rate": restoration_rate(ceiling[held], post_plain[held], post_att[held]),
            "relative_shift_max": max(rel),
        }
        if floor is not None:
            summary["held_out_acc_floor_ablated"] = float(floor_values.mean())
        result = calibrated_result(
            self.name, post=post_att[held], floor=floor_values, ceiling=ceiling[held], post_base=post_plain[held],
            floor_base=floor_base,
            floor_source=floor_source, config=config, summary=summary,
            per_item=item_rows([items[i] for i in held], pre=ceiling[held], post=post_plain[held],
                               ablated=post_att[held], random=random_att[held], floor=floor_values),
            tables={"variants": table, "per_layer": per_layer},
            notes=notes + [f"{len(table)} variants (mean / PC1 direction, each layer or all layers) chosen on "
                           f"{len(train)} fitting items; {n_random} random-direction draws"],
            evidence=(f"projecting out the unlearning direction ({variant[0]} at layer {variant[1]}) brings held-out "
                      f"forget accuracy from {summary['held_out_acc_post']:.2f} to "
                      f"{summary['held_out_acc_ablated']:.2f} (pre {summary['held_out_acc_pre']:.2f}, random "
                      f"{summary['held_out_acc_random_control']:.2f})"))
        result.add_figure("Held-out accuracy per ablation variant",
                          bars_figure([f"{r['direction']}@{r['layers']}" for r in table],
                                      {"post, direction ablated": [r["held_out_acc"] for r in table]},
                                      "held-out forget accuracy"))
        return result
