"""The `direction_ablation` analyser: project the unlearning direction out of the post model's residual stream
(orthogonalization, after "An adversarial perspective on machine unlearning", Lucki et al. 2024)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from sklearn.decomposition import PCA
from torch import Tensor

from palimpsest.capture import ablate_direction, resid_post_sites
from palimpsest.restoration.common import (
    MIN_RELATIVE_SHIFT,
    RateMeasurement,
    calibrated_result,
    correct,
    edited,
    held_out_summary,
    item_rows,
    relative_shift,
    split_items,
    too_few,
)
from palimpsest.restoration.figures import bars_figure
from palimpsest.restoration.head_ablation import head_edit_basis, random_basis, subspace_candidates
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

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


def best_of(loaded, items, candidates: dict, train, held, batch_size) -> tuple[object, np.ndarray, dict]:
    """Score each candidate (label -> [(site, edit)]) on the fitting items `train`; the best there is then scored
    on the held-out items (no other candidate is). Returns the best label, its per-item correctness (train and held
    entries) and every candidate's fitting-half correctness. No edit is always a candidate (first, so it wins ties):
    an ablation that only breaks the floor model must not push the floor below what that model answers unattacked."""
    fitting = [items[i] for i in train]
    scores = {("none", "-"): correct(loaded, fitting, batch_size=batch_size)}
    scores.update(candidates_correct(loaded, fitting, {label: e for label, e in candidates.items() if e}))
    best = max(scores, key=lambda v: scores[v].mean())  # dict order breaks ties: earlier candidates first
    edits = candidates.get(best)
    values = np.zeros(len(items), dtype=bool)
    values[train] = scores[best]
    values[held] = correct(loaded, [items[i] for i in held], batch_size=batch_size,
                           context=edited(loaded.model, lambda b, e=edits: e) if edits else None)
    return best, values, scores


CANDIDATE_ROWS = 128  # rows per forward pass when candidates are scored side by side


def _then(first: Callable[[Tensor], Tensor], second: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Two edits at one site, in the order their hooks would run."""
    return lambda h: second(first(h))


def _per_copy(edits: dict[int, Callable[[Tensor], Tensor]], n: int) -> Callable[[Tensor], Tensor]:
    """One site's edit over a batch of copies of n rows: copy c gets edits[c], the others pass unchanged."""
    def edit(h: Tensor) -> Tensor:
        blocks = h.split(n, dim=0)
        return torch.cat([edits[c](block) if c in edits else block for c, block in enumerate(blocks)], dim=0)
    return edit


def candidates_correct(loaded, items: Sequence, candidates: dict, rows: int = CANDIDATE_ROWS) -> dict:
    """Per candidate (label -> [(site, row-wise edit)]): the exact match of `items` under its edits. Several
    candidates share a forward pass, each on its own copy of the items (edits here act on each row alone, so a copy
    scores as it would by itself, up to float rounding of the larger batch)."""
    labels, n, out = list(candidates), len(items), {}
    group = max(1, rows // max(1, n))
    for start in range(0, len(labels), group):
        chunk = labels[start:start + group]
        by_site: dict[str, dict[int, Callable]] = {}
        for copy_index, label in enumerate(chunk):
            for site, edit in candidates[label]:
                earlier = by_site.setdefault(site, {}).get(copy_index)
                by_site[site][copy_index] = edit if earlier is None else _then(earlier, edit)
        site_edits = {site: _per_copy(edits, n) for site, edits in by_site.items()}
        hits = correct(loaded, list(items) * len(chunk), batch_size=n * len(chunk),
                       context=edited(loaded.model, lambda b, e=site_edits: e))
        for copy_index, label in enumerate(chunk):
            out[label] = hits[copy_index * n:(copy_index + 1) * n]
    return out


def residual_candidates(sites: list[str], directions: list[dict[str, Tensor]]) -> dict[Variant, list]:
    """Every variant (mean / PC1 direction, each layer, then all layers) as site edits."""
    variants: list[Variant] = [(kind, str(layer)) for kind in ("mean", "pc1") for layer in range(len(sites))]
    variants += [("mean", "all"), ("pc1", "all")]
    return {v: ablation_edits(sites, directions, v) for v in variants}


def _where(layers: str) -> str:
    return f"layer {layers}" if layers.isdigit() else ("every layer" if layers == "all" else layers)


def forgotten_indices(pre_ok: np.ndarray, model_ok: np.ndarray, train: list[int]) -> list[int]:
    return [i for i in train if pre_ok[i] and not model_ok[i]]


def direction_items(pre_ok: Bool[np.ndarray, " n"], post_ok: Bool[np.ndarray, " n"],
                    train: list[int]) -> tuple[list[int], list[str]]:
    """The fitting items the directions are estimated on (the forgotten ones, or all when fewer than 2), with a note
    when it falls back."""
    sel = forgotten_indices(pre_ok, post_ok, train)
    if len(sel) >= 2:
        return sel, []
    return train, [f"only {len(sel)} fitting items are forgotten (pre right, post wrong): directions from all "
                   f"{len(train)} fitting items"]


def variant_table(scores: dict[Variant, Bool[np.ndarray, " train"]], best: Variant,
                  best_values: Bool[np.ndarray, " n"], held: list[int]) -> list[dict]:
    """Every variant's fitting-half accuracy; the held-out accuracy of the chosen one only (the others are never
    scored on the held-out half)."""
    return [{"direction": kind, "layers": where, "train_acc": float(hits.mean()),
             "held_out_acc": float(best_values[held].mean()) if (kind, where) == best else None}
            for (kind, where), hits in scores.items()]


def per_layer_table(sites: list[str], rel: list[float]) -> list[dict]:
    return [{"layer": i, "site": s, "relative_norm_r": r} for i, (s, r) in enumerate(zip(sites, rel, strict=True))]


def floor_source(has_floor: bool) -> str:
    return ("the same ablation on the floor model (its own direction)" if has_floor
            else "random directions at the same layers")


def ablation_evidence(variant: Variant, summary: dict) -> str:
    return (f"projecting out the unlearning direction ({variant[0]} at {_where(variant[1])}) brings held-out "
            f"forget accuracy from {summary['held_out_acc_post']:.2f} to "
            f"{summary['held_out_acc_ablated']:.2f} (pre {summary['held_out_acc_pre']:.2f}, random "
            f"{summary['held_out_acc_random_control']:.2f})")


class DirectionAblationConfig(AnalyserConfig):
    n_random: int = 2  # random-direction (or random-subspace) draws: the chance control
    # output-layer-only edits: ranks of the weight-difference subspace tried
    head_ranks: tuple[int, ...] = (1, 2, 4, 8)
    test_size: float = 0.5  # share of the forget facts held out for scoring


@register
class DirectionAblation(Analyser):
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
    Config = DirectionAblationConfig
    needs = frozenset({"activations", "weights"})  # the head weight difference of an output-layer edit

    def measure(self, ctx) -> Result:
        opts: DirectionAblationConfig = ctx.opts
        pair, concept, acts, config = ctx.pair, ctx.concept, ctx.acts, ctx.config
        items = list(concept.forget)
        train, held = split_items(items, config.seed, opts.test_size)
        if (few := too_few(self.name, len(train), len(held), config)) is not None:
            return few
        pre, post, floor, bs = pair.pre, pair.post, pair.floor, config.batch_size
        sites = resid_post_sites(pre.model)
        ceiling = correct(pre, items, batch_size=bs)
        post_plain = correct(post, items, batch_size=bs)
        floor_plain = correct(floor, items, batch_size=bs) if floor is not None else None
        sel, notes = direction_items(ceiling, post_plain, train)
        directions = fit_directions(acts, "post", sites, sel)
        rel = [relative_shift(d["mean"], acts.get("pre", site, "forget", "last"))
               for d, site in zip(directions, sites, strict=True)]
        attack = self._attack(ctx, sites, directions, rel, ceiling, floor_plain, train)
        if isinstance(attack, Result):
            return attack
        candidates, random_candidates, floor_candidates, description = attack
        variant, post_att, post_scores = best_of(post, items, candidates, train, held, bs)
        random_att = np.mean([best_of(post, items, c, train, held, bs)[1] for c in random_candidates], axis=0)
        if floor is not None:
            _, floor_att, _ = best_of(floor, items, floor_candidates(), train, held, bs)
            floor_values, floor_base = floor_att[held], floor_plain[held]
        else:
            floor_values, floor_base = random_att[held], post_plain[held]
        notes.append(description)
        summary = {
            "n_train": len(train), "n_held_out": len(held), "n_direction_items": len(sel),
            "variant": f"{variant[0]}@{variant[1]}",
            **held_out_summary(ceiling[held], post_plain[held], post_att[held], random_att[held],
                                         attacked="ablated"),
            "relative_shift_max": max(rel),
        }
        if floor is not None:
            summary["held_out_acc_floor_ablated"] = float(floor_values.mean())
        return calibrated_result(self, RateMeasurement(
            post=post_att[held], floor=floor_values, ceiling=ceiling[held], post_base=post_plain[held],
            floor_base=floor_base, floor_source=floor_source(floor is not None), summary=summary,
            per_item=item_rows([items[i] for i in held], pre=ceiling[held], post=post_plain[held],
                               ablated=post_att[held], random=random_att[held], floor=floor_values),
            tables={"variants": variant_table(post_scores, variant, post_att, held), "per_layer": per_layer_table(sites, rel)},
            notes=notes, evidence=ablation_evidence(variant, summary)), ctx)

    def _attack(self, ctx, sites: list[str], directions: list[dict[str, Tensor]], rel: list[float],
                ceiling: Bool[np.ndarray, " n"], floor_plain: Bool[np.ndarray, " n"] | None, train: list[int]):
        """The candidates of `_residual_attack` when the residual stream moved, else of `_head_attack`; a Result
        when neither has anything to ablate."""
        opts: DirectionAblationConfig = ctx.opts
        gen = torch.Generator().manual_seed(ctx.config.seed)
        if max(rel) >= MIN_RELATIVE_SHIFT:
            return _residual_attack(ctx.acts, sites, directions, ceiling, floor_plain, train, opts.n_random, gen)
        pre, post, floor = ctx.pair.pre, ctx.pair.post, ctx.pair.floor
        basis = head_edit_basis(pre.model, post.model, max(opts.head_ranks))
        if basis is None:
            return inconclusive(self.name, f"post and pre residual streams do not differ on the forget prompts "
                                           f"(largest |r|/|h| = {max(rel):.1e}) and the output layer's weights are "
                                           "equal: the change is after the last block, outside the output layer, so "
                                           "there is no direction to ablate", summary={"relative_shift_max": max(rel)})
        return _head_attack(pre, floor, basis, list(opts.head_ranks), max(rel), len(train), opts.n_random, gen)

    def figures(self, measured, ctx) -> dict:
        table = measured.tables["variants"]
        return {"Fitting-half accuracy per ablation variant":
                bars_figure([f"{r['direction']}@{r['layers']}" for r in table],
                            {"post, direction ablated": [r["train_acc"] for r in table]},
                            "fitting-half forget accuracy (the best variant is scored on the held-out half)")}


def _residual_attack(acts, sites: list[str], directions, ceiling, floor_plain, train: list[int], n_random: int,
                     gen: torch.Generator):
    """Candidates for a residual-stream change: (post candidates, random-direction candidates per draw, a function
    giving the floor model's own candidates, the note describing them)."""
    d_model = directions[0]["mean"].shape[0]
    candidates = residual_candidates(sites, directions)
    random_candidates = [residual_candidates(sites, [{"mean": torch.randn(d_model, generator=gen),
                                                      "pc1": torch.randn(d_model, generator=gen)}
                                                     for _ in sites]) for _ in range(n_random)]

    def floor_candidates():
        f_sel = forgotten_indices(ceiling, floor_plain, train)
        return residual_candidates(sites, fit_directions(acts, "floor", sites, f_sel if len(f_sel) >= 2 else train))
    description = (f"{len(candidates)} variants (mean / PC1 direction, each layer or all layers) chosen on "
                   f"{len(train)} fitting items; {n_random} random-direction draws")
    return candidates, random_candidates, floor_candidates, description


def _head_attack(pre, floor, basis, head_ranks: list[int], max_rel: float, n_train: int, n_random: int,
                 gen: torch.Generator):
    """Candidates for an output-layer-only change: the weight-difference subspace of each rank (same tuple as
    `_residual_attack`)."""
    candidates = subspace_candidates(basis, head_ranks)
    random_candidates = [subspace_candidates(random_basis(basis.shape[0], basis.shape[1], gen), head_ranks)
                         for _ in range(n_random)]

    def floor_candidates():
        floor_basis = head_edit_basis(pre.model, floor.model, max(head_ranks))
        return subspace_candidates(floor_basis, head_ranks) if floor_basis is not None else {}
    description = (f"the residual stream is unchanged (largest |r|/|h| = {max_rel:.1e}): only the output layer "
                   f"was edited, so the directions are the top right singular vectors of the output-layer "
                   f"weight difference (numerical rank {basis.shape[0]} or more), projected out of the final "
                   f"hidden state; ranks {sorted(set(head_ranks))} chosen on {n_train} fitting items; "
                   f"{n_random} random-subspace draws")
    return candidates, random_candidates, floor_candidates, description
