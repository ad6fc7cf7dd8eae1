"""The `sae_restoration` analyser: move the pre model's SAE concept ("expert") features of the post model back toward
their pre values and see whether the answers return (after "Suppression or Deletion: A Restoration-Based
Representation-Level Analysis of Machine Unlearning")."""

from __future__ import annotations

from functools import partial
from typing import Callable, ContextManager, Literal, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from palimpsest.capture import EncodedBatch, intervene, n_layers, run_and_capture
from palimpsest.restoration.common import (
    MIN_RELATIVE_SHIFT,
    RateMeasurement,
    calibrated_result,
    correct,
    held_out_summary,
    item_rows,
    relative_shift,
    restoration_rate,
    split_items,
    too_few,
)
from palimpsest.restoration.figures import curves_figure
from palimpsest.restoration.steering import sweep_rows
from palimpsest.sae.analyser import frequency_matched
from palimpsest.sae.features import concept_features
from palimpsest.sae.quality import gate_explained_variance
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 5.0, 10.0)
MODES = ("inject", "add")


def feature_change(sae, h: Float[Tensor, "batch pos d"], features: Sequence[int], alphas: Float[Tensor, " batch"], *,
                   h_pre: Float[Tensor, "batch pos d"] | None = None,
                   z_expert: Float[Tensor, " k"] | None = None) -> Float[Tensor, "batch pos d"]:
    """The stream edit that restores the expert features, decoded through W_dec.

    inject (h_pre given): z_r[e] = z_u[e] + alpha (z_o[e] - z_u[e]) -> change = alpha (z_o - z_u)[e] @ W_dec[e];
    add (z_expert given): change = alpha z_expert @ W_dec[e]. Adding the change (rather than writing back the
    decoded z_r) keeps the SAE's reconstruction error in the stream.

    Devices: the SAE computes on its own device (the streams go there to be encoded); the change is returned on
    the device and in the dtype of `h` (the hooked activation: with a device_map, the device of that site).
    """
    sae_device, sae_dtype = sae.W_dec.device, sae.W_dec.dtype
    idx = torch.as_tensor(list(features), dtype=torch.long, device=sae_device)
    w_dec = sae.W_dec[idx].to(h.device, h.dtype)  # [k, d]
    if h_pre is not None:
        flat = h.reshape(-1, h.shape[-1])
        z_u = sae.encode(flat.to(sae_device, sae_dtype))[:, idx]
        z_o = sae.encode(h_pre.reshape(-1, h.shape[-1]).to(sae_device, sae_dtype))[:, idx]
        delta = (z_o - z_u).to(h.device, h.dtype).reshape(*h.shape[:-1], len(idx))
    else:
        delta = z_expert.to(h.device, h.dtype).expand(*h.shape[:-1], len(idx))
    return alphas.to(h.device, h.dtype)[:, None, None] * (delta @ w_dec)


def restoring_context(target, sae, site: str, features: Sequence[int], mode: str, *, source=None,
                      z_expert: Tensor | None = None):
    """score_answers context for sweep_rows: per row alpha; inject mode reads `source` (the pre model) on the
    same batch first."""
    def context(batch: EncodedBatch, alphas: Tensor) -> ContextManager:
        h_pre = None
        if mode == "inject":  # a sweep repeats each item once per alpha: the source reads each distinct row once
            distinct, where = torch.unique(torch.cat([batch.input_ids, batch.attention_mask], dim=1), dim=0,
                                           return_inverse=True)
            first = torch.zeros(len(distinct), dtype=torch.long, device=where.device).scatter_(
                0, where, torch.arange(len(where), device=where.device))
            rows = EncodedBatch(*(getattr(batch, f)[first] for f in batch.__dataclass_fields__))
            _, cached = run_and_capture(source.model, source.tokenizer, rows, [site], "torch", all_logits=False)
            h_pre = cached[site][where.to(cached[site].device)]

        def edit(h: Tensor) -> Tensor:
            return h + feature_change(sae, h, features, alphas, h_pre=h_pre, z_expert=z_expert)

        return intervene(target.model, {site: edit})
    return context


def alpha_grid(loaded, items, alphas, sae, site, features, modes, pre, z_expert, rows) -> dict[str, np.ndarray]:
    return {mode: sweep_rows(loaded, items, alphas, restoring_context(loaded, sae, site, features, mode, source=pre,
                                                                     z_expert=z_expert), batch_size=rows,
                             zero_is_identity=True)  # alpha scales the change: 0 restores nothing
            for mode in modes}


def select(grids: dict[str, np.ndarray], train: list[int]) -> tuple[str, int]:
    """The (mode, alpha index) with the best accuracy on the fitting items (first on ties)."""
    return max(((m, a) for m, g in grids.items() for a in range(g.shape[0])),
               key=lambda ma: grids[ma[0]][ma[1], train].mean())


def best_restored(grids: dict[str, np.ndarray], train: list[int]) -> Bool[np.ndarray, " items"]:
    """Per-item correctness at the `select`ed (mode, alpha)."""
    mode, a_idx = select(grids, train)
    return grids[mode][a_idx]


def restored_at_best(loaded, items, train: list[int], *, alphas, sae, site, features, modes, pre, z_expert,
                     rows) -> Bool[np.ndarray, " items"]:
    """`best_restored(alpha_grid(loaded, items, ...), train)` at a fraction of the forward passes: the grid is
    scored on the fitting items only (all that the selection reads), the other items at the chosen setting alone."""
    fitting = [items[i] for i in train]
    grids = alpha_grid(loaded, fitting, alphas, sae, site, features, modes, pre, z_expert, rows)
    mode, a_idx = select(grids, list(range(len(fitting))))
    out = np.zeros(len(items), dtype=bool)
    out[train] = grids[mode][a_idx]
    others = sorted(set(range(len(items))) - set(train))
    if others:
        context = restoring_context(loaded, sae, site, features, mode, source=pre, z_expert=z_expert)
        out[others] = sweep_rows(loaded, [items[i] for i in others], [alphas[a_idx]], context, batch_size=rows)[0]
    return out


def site_shift(acts, site: str, h_pre: Float[Tensor, "n d"]) -> float:
    """|mean (post - pre) stream at `site`| / |h_pre| on the forget prompts."""
    return relative_shift((acts.get("post", site, "forget", "last") - h_pre).mean(0), h_pre)


def floor_restoration(floor, restored_best: Callable[..., np.ndarray], items: list, train: list[int],
                      held: list[int], random_hits: Float[np.ndarray, " held"], post_ok: Bool[np.ndarray, " held"],
                      batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out floor values, the floor's unattacked correctness): the same restoration of the floor model
    (`restored_best(floor, items, train)`: selected on the fitting items), or without one the random-feature
    control on the post model."""
    if floor is None:
        return random_hits, post_ok
    values = restored_best(floor, items, train)[held]
    return values, correct(floor, [items[i] for i in held], batch_size=batch_size)


def restoration_curves(grids: dict[str, np.ndarray], retain_curve: dict[str, np.ndarray],
                       held: list[int]) -> dict[str, np.ndarray]:
    curves = {f"post, {m}": g[:, held].mean(-1) for m, g in grids.items()}
    curves.update({f"post retain, {m}": v for m, v in retain_curve.items()})
    return curves


def floor_source(has_floor: bool, n_random_draws: int) -> str:
    if has_floor:
        return "the same restoration of the floor model"
    return f"random SAE features of matched firing frequency ({n_random_draws} draws)"


def unshifted_site_reason(site: str, shift: float) -> str:
    """Why restoring at `site` tests nothing ("" when the post model's stream there did move)."""
    if shift < MIN_RELATIVE_SHIFT:
        return (f"the post model's stream at {site} equals the pre model's (|shift|/|h| = {shift:.1e}): the "
                "change is downstream of the SAE site, so restoring features there tests nothing")
    return ""


def restoration_evidence(summary: dict, n_features: int) -> str:
    return (f"restoring {n_features} SAE expert features ({summary['mode']}, alpha {summary['alpha']:g}) brings "
            f"held-out forget accuracy from {summary['held_out_acc_post']:.2f} to "
            f"{summary['held_out_acc_restored']:.2f} (pre {summary['held_out_acc_pre']:.2f}, random features "
            f"{summary['held_out_acc_random_control']:.2f})")


class SAERestorationConfig(AnalyserConfig):
    alphas: tuple[float, ...] = DEFAULT_ALPHAS  # restoration strengths swept (0, no edit, is always added)
    modes: tuple[Literal["inject", "add"], ...] = MODES  # inject: toward the pre model's codes; add: + alpha z_expert
    batch_rows: int = 128  # (item, alpha) rows per restored forward pass
    n_random_draws: int = 2  # without a floor model: draws of frequency-matched random features
    min_explained_variance: float = 0.6  # an SAE explaining less of the variance at the site is not used
    # the site (None: the middle layer); the SAE there is the audit's one (AuditConfig.sae), shared with sae_features
    site: str | None = None
    test_size: float = 0.5  # share of the forget facts held out for scoring


@register
class SAERestoration(Analyser):
    name = "sae_restoration"
    kind = "residue"
    title = "SAE-feature restoration"
    description = (
        "A sparse autoencoder trained on the pre model at one site (the middle residual stream by default; the same "
        "SAE as sae_features) gives the concept's expert features. At inference on the post model they are moved "
        "toward their pre-model values: inject mode z_r[e] = z_u[e] + alpha (z_o[e] - z_u[e]) (z_o from the pre "
        "model on the same input), add mode h += W_dec (alpha z_expert) with z_expert the features' mean activation "
        "on the pre model's forget prompts (needs no pre model at inference). alpha is swept; the mode and alpha are "
        "chosen on one half of the forget facts and the other half is scored, with retain accuracy at every alpha. "
        "Residue = held-out accuracy of the restored post model, between the floor (the same restoration of the floor "
        "model, or random SAE features of matched firing frequency) and the pre model. High: suppression."
    )
    Config = SAERestorationConfig
    modalities = frozenset({"text", "image"})
    needs = frozenset({"activations", "sae"})

    def site(self, ctx) -> str:
        return ctx.opts.site or f"blocks.{n_layers(ctx.pair.pre.model) // 2}.hook_resid_post"

    def sae_sites(self, ctx) -> tuple[str, ...]:
        return (self.site(ctx),)

    def measure(self, ctx) -> Result:
        opts: SAERestorationConfig = ctx.opts
        pair, concept, acts, config, site = ctx.pair, ctx.concept, ctx.acts, ctx.config, self.site(ctx)
        # alpha 0 (no edit) is always a candidate, for the post and the floor model alike: an attack that only
        # breaks a model must not lower its floor below what the model answers unattacked
        alphas = (0.0, *(float(a) for a in opts.alphas if float(a) != 0.0))
        modes, rows = tuple(opts.modes), opts.batch_rows
        pre, post, floor = pair.pre, pair.post, pair.floor
        items = list(concept.forget)
        train, held = split_items(items, config.seed, opts.test_size)
        if (refusal := self._unmeasurable_concept(concept, len(train), len(held), config)) is not None:
            return refusal
        sae, quality = ctx.saes.get(site)
        summary: dict = {"site": site, "alphas": list(alphas), "modes": list(modes),
                         "sae_explained_variance": quality.get("explained_variance")}
        if (weak := self._weak_sae(quality, site, opts.min_explained_variance, summary)) is not None:
            return weak
        feats = concept_features(sae, pre, site, concept, config.sae)
        summary["expert_features"] = list(feats.indices)
        if not len(feats):
            return inconclusive(self.name, "the SAE has no concept (expert) features for the forget prompts",
                                summary=summary)
        z_expert = torch.tensor(feats.mean_forget, dtype=torch.float32)
        h_pre = acts.get("pre", site, "forget", "last")
        summary["relative_shift_at_site"] = shift = site_shift(acts, site, h_pre)
        ceiling = correct(pre, items, batch_size=config.batch_size)
        post_plain = correct(post, items, batch_size=config.batch_size)
        restored_grids = partial(alpha_grid, alphas=alphas, sae=sae, site=site, features=feats.indices, modes=modes,
                                 pre=pre, z_expert=z_expert, rows=rows)
        grids = restored_grids(post, items)
        mode, a_idx = select(grids, train)
        post_att = grids[mode][a_idx]
        random_att = random_restoration(post, items, alphas, sae, site, feats.indices, modes, pre, h_pre, train, rows,
                                        opts.n_random_draws, config.seed)
        restored_best = partial(restored_at_best, alphas=alphas, sae=sae, site=site, features=feats.indices,
                                modes=modes, pre=pre, z_expert=z_expert, rows=rows)
        floor_values, floor_base = floor_restoration(floor, restored_best, items, train, held, random_att[held],
                                                     post_plain[held], config.batch_size)
        retain_curve = ({m: g.mean(-1) for m, g in restored_grids(post, list(concept.retain)).items()}
                        if concept.retain else {})
        table = alpha_table(alphas, modes, grids, retain_curve, ceiling[held], post_plain[held], held)
        summary.update({"n_train": len(train), "n_held_out": len(held), "mode": mode, "alpha": alphas[a_idx],
                        "n_expert_features": len(feats),
                        **held_out_summary(ceiling[held], post_plain[held], post_att[held], random_att[held],
                                         attacked="restored"),
                        "retain_acc_at_alpha": float(retain_curve[mode][a_idx]) if mode in retain_curve else None})
        curves = restoration_curves(grids, retain_curve, held)
        return calibrated_result(self, RateMeasurement(
            post=post_att[held], floor=floor_values, ceiling=ceiling[held], post_base=post_plain[held],
            floor_base=floor_base, floor_source=floor_source(floor is not None, opts.n_random_draws), summary=summary,
            per_item=item_rows([items[i] for i in held], pre=ceiling[held], post=post_plain[held],
                               restored=post_att[held], random=random_att[held], floor=floor_values),
            tables={"alpha_sweep": table},
            notes=[f"{len(feats)} expert features at {site}; mode and alpha chosen on {len(train)} fitting items, "
                   f"scored on {len(held)} held-out items (split by fact); {opts.n_random_draws} frequency-matched "
                   "random draws"],
            evidence=restoration_evidence(summary, len(feats)), blocked=unshifted_site_reason(site, shift),
            extra={"alphas": alphas, "curves": curves}), ctx)

    def _unmeasurable_concept(self, concept, n_train: int, n_held: int, config) -> Result | None:
        if (few := too_few(self.name, n_train, n_held, config)) is not None:
            return few
        if not concept.retain and not concept.neighbours:
            return inconclusive(self.name, "the concept has no retain or neighbour items: its SAE features cannot be "
                                           "told apart from features that fire on everything")
        return None

    def _weak_sae(self, quality: dict, site: str, min_explained_variance: float, summary: dict) -> Result | None:
        if gate_explained_variance(quality) < min_explained_variance:
            return inconclusive(self.name, f"the SAE explains only {gate_explained_variance(quality):.2f} of the variance "
                                           f"at {site} (< min_explained_variance={min_explained_variance}). To make it "
                                           "conclusive: train the SAE on more text (sae.self_corpus_texts, "
                                           "sae.total_tokens) or with more active features (sae.k)",
                                summary=summary)
        return None

    def figures(self, measured, ctx) -> dict:
        return {"Restoration vs alpha": curves_figure(list(measured.extra["alphas"]), measured.extra["curves"],
                                                      float(measured.ceiling.mean()), "alpha", "accuracy")}


def random_restoration(post, items, alphas, sae, site: str, features: Sequence[int], modes, pre,
                       h_pre: Tensor, train: list[int], rows: int, n_draws: int, seed: int) -> np.ndarray:
    """The chance control: random SAE features of matched firing frequency (on the pre model's forget prompts),
    each draw restored toward its own mean activation with the same sweep; per-item hit share over draws."""
    with torch.no_grad():
        codes = sae.encode(h_pre.to(sae.W_dec.device, sae.W_dec.dtype))
    freq = (codes > 0).float().mean(0).cpu()
    hits = []
    for draw in frequency_matched(freq, list(features), n_draws, seed):
        z_rand = codes[:, draw].mean(0).cpu().clamp(min=0)
        hits.append(restored_at_best(post, items, train, alphas=alphas, sae=sae, site=site, features=draw,
                                     modes=modes, pre=pre, z_expert=z_rand, rows=rows))
    return np.mean(hits, axis=0)


def alpha_table(alphas, modes, grids: dict, retain_curve: dict, pre_ok: np.ndarray, post_ok: np.ndarray,
                held: list[int]) -> list[dict]:
    """Per alpha: held-out accuracy and restoration rate of each mode, and retain accuracy where measured."""
    table = []
    for a_i, alpha in enumerate(alphas):
        row = {"alpha": alpha}
        for m in modes:
            row[f"held_out_acc_{m}"] = float(grids[m][a_i, held].mean())
            row[f"restoration_rate_{m}"] = restoration_rate(pre_ok, post_ok, grids[m][a_i, held])
            if m in retain_curve:
                row[f"retain_acc_{m}"] = float(retain_curve[m][a_i])
        table.append(row)
    return table
