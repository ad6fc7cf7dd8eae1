"""The `shift_vectors` analyser: the mean post-pre activation shift per layer, and steering with it both ways
(after "Analyzing Fine-tuning Representation Shift", xl-vlms)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from palimpsest.capture import resid_post_sites
from palimpsest.restoration.common import (
    MIN_RELATIVE_SHIFT,
    RateMeasurement,
    calibrated_result,
    correct,
    held_out_summary,
    item_rows,
    random_like,
    relative_shift,
    restoration_rate,
    split_items,
    too_few,
)
from palimpsest.restoration.figures import curves_figure, per_layer_figure
from palimpsest.restoration.steering import sweep
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

DEFAULT_STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def mean_shift(after: Float[Tensor, "n d"], before: Float[Tensor, "n d"],
               idx: Sequence[int] | None = None) -> Float[Tensor, " d"]:
    """mean over items of (after - before); over the items `idx` when given."""
    diff = after.float() - before.float()
    if idx is not None:
        diff = diff[torch.as_tensor(list(idx), dtype=torch.long)]
    return diff.mean(0)


def shift_table(acts, model: str, sites: list[str], item_sets: Sequence[str]) -> list[dict]:
    """Per layer: |shift| / |h_pre| for each item set, and the cosine of each set's shift with the forget shift."""
    rows = []
    for layer, site in enumerate(sites):
        row: dict = {"layer": layer, "site": site}
        shifts = {}
        for item_set in item_sets:
            pre = acts.get("pre", site, item_set, "last")
            if pre.shape[0] == 0:
                continue
            shifts[item_set] = mean_shift(acts.get(model, site, item_set, "last"), pre)
            row[f"relative_shift_{item_set}"] = relative_shift(shifts[item_set], pre)
        for item_set, shift in shifts.items():
            if item_set != "forget" and "forget" in shifts:
                cos = torch.nn.functional.cosine_similarity(shifts["forget"], shift, dim=0)
                row[f"cosine_forget_{item_set}"] = float(cos)
        rows.append(row)
    return rows


def steer_grid(loaded, items, idx: Sequence[int], sites: list[str], vectors: list[Tensor],
               strengths: Sequence[float], batch_size: int) -> Bool[np.ndarray, "layers strengths k"]:
    """Correctness of the items `idx` steered at every (layer, strength): the [layers, strengths, k] grid."""
    chosen = [items[i] for i in idx]
    return np.stack([sweep(loaded, chosen, site, vec, strengths, batch_size=batch_size)
                     for site, vec in zip(sites, vectors, strict=True)])


def steer_and_select(loaded, items, sites: list[str], vectors: list[Tensor], strengths: Sequence[float],
                     train: list[int], held: list[int], batch_size: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Sweep every (layer, strength) on the fitting items only, pick the best, then steer the held-out items at
    that layer (every strength: the curve) — the held-out half is never scored at settings that were not chosen.

    Returns (layer, strength index, per-item correctness at the chosen setting (train and held entries), the
    [layers, strengths, train] grid).
    """
    grid = steer_grid(loaded, items, train, sites, vectors, strengths, batch_size)
    layer, s_index = np.unravel_index(int(np.argmax(grid.mean(-1))), grid.shape[:2])
    values = np.zeros(len(items), dtype=bool)
    values[train] = grid[layer, s_index]
    values[held] = _held_curve(loaded, items, held, sites[layer], vectors[layer], strengths, batch_size)[s_index]
    return int(layer), int(s_index), values, grid


def _held_curve(loaded, items, held: list[int], site: str, vector: Tensor, strengths: Sequence[float],
                batch_size: int) -> Bool[np.ndarray, "strengths held"]:
    return sweep(loaded, [items[i] for i in held], site, vector, strengths, batch_size=batch_size)


def forget_shifts(acts, model: str, sites: list[str], pre_acts: list[Float[Tensor, "n d"]],
                  train: list[int]) -> list[Float[Tensor, " d"]]:
    """Per layer, `model`'s mean shift from the pre model on the fitting forget items."""
    return [mean_shift(acts.get(model, site, "forget", "last"), h_pre, train)
            for site, h_pre in zip(sites, pre_acts, strict=True)]


def reproduction_rate(pre, items, site: str, shift: Float[Tensor, " d"], strength: float,
                      pre_ok: Bool[np.ndarray, " held"], held: list[int], batch_size: int) -> float | None:
    """Share of the held-out items the pre model gets right that adding the shift (at `strength`, 1 for 0) makes it
    get wrong."""
    reproduced = sweep(pre, items, site, shift, [strength or 1.0], batch_size=batch_size)[0]
    return float((~reproduced[held][pre_ok]).mean()) if pre_ok.any() else None


def add_fitting_accuracy(table: list[dict], post_grid: Bool[np.ndarray, "layers strengths train"],
                         random_grid: Float[np.ndarray, "layers strengths train"]) -> None:
    """Add each layer's best fitting-half accuracy (over strengths) of the steered and the random attack to
    `table` (the held-out half is scored only at the chosen setting)."""
    for l_index, row in enumerate(table):
        row["train_acc_steered"] = float(post_grid[l_index].mean(-1).max())
        row["train_acc_random"] = float(random_grid[l_index].mean(-1).max())


def floor_source(has_floor: bool) -> str:
    if has_floor:
        return "the same steering of the floor model (its own shift vector)"
    return "a random direction of equal norm (best layer and strength)"


def fit_note(n_train: int, n_held: int, n_layers: int, n_strengths: int, n_random: int) -> str:
    return (f"shift vectors from {n_train} forget items, evaluated on {n_held} held-out items (split by "
            f"fact); best of {n_layers} layers x {n_strengths} strengths chosen on the fitting half; "
            f"{n_random} random-direction draws")


def steering_evidence(summary: dict) -> str:
    return (f"subtracting the layer-{summary['layer']} shift vector (x{summary['strength']:g}) brings held-out forget "
            f"accuracy from {summary['held_out_acc_post']:.2f} to {summary['held_out_acc_steered']:.2f} "
            f"(pre {summary['held_out_acc_pre']:.2f}, random direction "
            f"{summary['held_out_acc_random_control']:.2f})")


def steering_curves(curves_held: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Held-out accuracy against strength at the chosen layer, per attack."""
    return {name: values.mean(-1) for name, values in curves_held.items()}


class ShiftVectorsConfig(AnalyserConfig):
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS  # steering strengths s swept (0, no edit, is always added)
    n_random: int = 2  # random-direction draws of equal norm (the chance control)
    batch_rows: int = 128  # (item, strength) rows per steered forward pass
    test_size: float = 0.5  # share of the forget facts held out for scoring


@register
class ShiftVectors(Analyser):
    name = "shift_vectors"
    kind = "residue"
    title = "Shift vectors (representation shift steering)"
    description = (
        "Per layer, the shift vector is the mean over forget prompts of (post activation - pre activation) at the "
        "last prompt token; the same for neighbours and retain items shows how concentrated the unlearning is. "
        "Shift vectors are estimated on one half of the forget facts; steering the post model by -s x shift (at "
        "the answer-predicting position, s swept over several strengths, the best layer and strength chosen on the "
        "fitting half) tests whether the answers come back on the held-out half, and adding the shift to the pre "
        "model tests whether one vector reproduces the unlearning. Residue = held-out accuracy of the steered post "
        "model, between the floor (the same attack on the floor model, or a random direction of equal norm) and "
        "the pre model's accuracy on the same items. A change made after the last block (in the output layer) "
        "leaves no shift in the residual stream: then this test is inconclusive."
    )
    Config = ShiftVectorsConfig
    modalities = frozenset({"text", "image"})
    needs = frozenset({"activations"})

    def measure(self, ctx) -> Result:
        opts: ShiftVectorsConfig = ctx.opts
        pair, concept, acts, config = ctx.pair, ctx.concept, ctx.acts, ctx.config
        # strength 0 (no edit) is always a candidate, so an attack that only breaks the floor model cannot push the
        # floor below what that model answers unattacked
        strengths = (0.0, *(float(s) for s in opts.strengths if float(s) != 0.0))
        rows_per_batch, items = opts.batch_rows, list(concept.forget)
        train, held = split_items(items, config.seed, opts.test_size)
        if (few := too_few(self.name, len(train), len(held), config)) is not None:
            return few
        pre, post, floor = pair.pre, pair.post, pair.floor
        sites = resid_post_sites(pre.model)
        sets = [s for s in ("forget", "neighbours", "retain") if concept.items(s)]
        table = shift_table(acts, "post", sites, sets)
        pre_acts = [acts.get("pre", site, "forget", "last") for site in sites]
        shifts = forget_shifts(acts, "post", sites, pre_acts, train)
        rel = [relative_shift(s, h) for s, h in zip(shifts, pre_acts, strict=True)]
        for row, value in zip(table, rel, strict=True):
            row["relative_shift_forget_train"] = value
        if max(rel) < MIN_RELATIVE_SHIFT:
            return self._unshifted(rel, table)
        ceiling = correct(pre, items, batch_size=config.batch_size)
        post_plain = correct(post, items, batch_size=config.batch_size)
        neg = [-s for s in shifts]
        layer, s_idx, post_att, post_grid = steer_and_select(post, items, sites, neg, strengths, train, held,
                                                             rows_per_batch)
        random_att, random_grid, random_curve = random_steering(post, items, sites, neg, strengths, train, held,
                                                                rows_per_batch, opts.n_random, config.seed, layer)
        curves = {"post - s x shift": _held_curve(post, items, held, sites[layer], neg[layer], strengths,
                                                  rows_per_batch),
                  "post - random (same norm)": random_curve}
        # the other way: add the shift to the pre model at the chosen setting; does one vector reproduce the unlearning?
        reproduction = reproduction_rate(pre, items, sites[layer], shifts[layer], strengths[s_idx], ceiling[held], held,
                                         rows_per_batch)
        floor_values, floor_base = random_att[held], post_plain[held]
        if floor is not None:
            floor_values, floor_base, curves["floor - s x its shift"] = self._floor_steering(
                ctx, items, sites, pre_acts, strengths, train, held, layer)
        add_fitting_accuracy(table, post_grid, random_grid)
        summary = {
            "n_train": len(train), "n_held_out": len(held), "layer": layer, "site": sites[layer],
            "strength": strengths[s_idx], "strengths": list(strengths),
            **held_out_summary(ceiling[held], post_plain[held], post_att[held], random_att[held], attacked="steered"),
            "restoration_rate_random": restoration_rate(ceiling[held], post_plain[held], random_att[held] >= 0.5),
            "reproduction_rate": reproduction, "relative_shift_max": max(rel),
            "cosine_forget_retain": table[layer].get("cosine_forget_retain"),
        }
        if floor is not None:
            summary["held_out_acc_floor_steered"] = float(floor_values.mean())
        return calibrated_result(self, RateMeasurement(
            post=post_att[held], floor=floor_values, ceiling=ceiling[held], post_base=post_plain[held],
            floor_base=floor_base, floor_source=floor_source(floor is not None), summary=summary,
            per_item=item_rows([items[i] for i in held], pre=ceiling[held], post=post_plain[held],
                               steered=post_att[held], random=random_att[held], floor=floor_values),
            tables={"per_layer": table},
            notes=[fit_note(len(train), len(held), len(sites), len(strengths), opts.n_random)],
            evidence=steering_evidence(summary),
            extra={"sets": sets, "layer": layer, "strengths": strengths,
                   "curves": steering_curves(curves)}), ctx)

    def _floor_steering(self, ctx, items: list, sites: list[str], pre_acts: list[Float[Tensor, "n d"]],
                        strengths: Sequence[float], train: list[int], held: list[int], curve_layer: int):
        """(held-out values, unattacked held-out correctness, held-out [strengths, held] curve at `curve_layer`) of
        the floor model steered by its own shift vectors."""
        floor = ctx.pair.floor
        floor_shifts = [-s for s in forget_shifts(ctx.acts, "floor", sites, pre_acts, train)]
        f_layer, _, floor_att, _ = steer_and_select(floor, items, sites, floor_shifts, strengths, train, held,
                                                    ctx.opts.batch_rows)
        curve = _held_curve(floor, items, held, sites[curve_layer], floor_shifts[curve_layer], strengths,
                            ctx.opts.batch_rows)
        floor_base = correct(floor, [items[i] for i in held], batch_size=ctx.config.batch_size)
        return floor_att[held], floor_base, curve

    def _unshifted(self, rel: list[float], table: list[dict]) -> Result:
        return inconclusive(self.name, f"the post model's residual stream does not differ from the pre model's at "
                                       f"any layer on the forget prompts (largest |shift|/|h| = {max(rel):.1e}): the "
                                       "change is after the last block (e.g. in the output layer), which residual "
                                       "steering cannot test", tables={"per_layer": table},
                            summary={"relative_shift_max": max(rel)})

    def figures(self, measured, ctx) -> dict:
        x = measured.extra
        return {"Shift size per layer": per_layer_figure(measured.tables["per_layer"],
                                                         [f"relative_shift_{s}" for s in x["sets"]],
                                                         "|mean shift| / |h|"),
                f"Steering at layer {x['layer']}": curves_figure(list(x["strengths"]), x["curves"],
                                                                 measured.ceiling.mean(), "strength s",
                                                                 "held-out forget accuracy")}


def random_steering(loaded, items, sites: list[str], vectors: list[Tensor], strengths: Sequence[float],
                    train: list[int], held: list[int], batch_size: int, n_random: int, seed: int, curve_layer: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n_random` random directions with the norms of `vectors`: (per-item hit share at the best setting of the
    draws' mean fitting grid, that [layers, strengths, train] mean grid, the held-out [strengths, held] hit share
    at `curve_layer`)."""
    gen = torch.Generator().manual_seed(seed)
    draws = [[random_like(v, gen) for v in vectors] for _ in range(n_random)]
    grid = np.mean([steer_grid(loaded, items, train, sites, rand, strengths, batch_size) for rand in draws], axis=0)
    layer, s_index = np.unravel_index(int(np.argmax(grid.mean(-1))), grid.shape[:2])
    curve = np.mean([_held_curve(loaded, items, held, sites[curve_layer], rand[curve_layer], strengths, batch_size)
                     for rand in draws], axis=0)
    held_best = curve[s_index] if layer == curve_layer else np.mean(
        [_held_curve(loaded, items, held, sites[layer], rand[layer], [strengths[s_index]], batch_size)[0]
         for rand in draws], axis=0)
    values = np.zeros(len(items))
    values[train], values[held] = grid[layer, s_index], held_best
    return values, grid, curve
