"""The `concept_vectors` analyser and `list_concept_vectors` (after ConceptVectors, Hong et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from palimpsest.audit.finalize import Measurement
from palimpsest.probes.vectors import (
    JACCARD_TOP_N,
    VocabStats,
    all_value_vectors,
    answer_log_odds,
    compare_vectors,
    concept_token_ids,
    random_picks,
    top_token_ids,
    unembed_projection,
    vocab_projection,
)
from palimpsest.stats import calibrate_value
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register


@dataclass(frozen=True)
class ConceptVector:
    layer: int
    index: int
    score: float  # mean vocabulary z-score of the concept's tokens in the vector's projection


def find_concept_vectors(model: torch.nn.Module, token_ids: list[int], top_k: int) -> list[ConceptVector]:
    """The value vectors (over all layers) whose vocabulary projection promotes the concept tokens most."""
    found = []
    stats = VocabStats.of(model)
    for layer, vectors in enumerate(all_value_vectors(model)):
        scores = stats.concept_scores(vectors, token_ids)
        best = scores.topk(min(top_k, len(scores)))
        found += [ConceptVector(layer, int(i), float(s)) for s, i in zip(best.values, best.indices, strict=True)]
    return sorted(found, key=lambda v: -v.score)[:top_k]


def _picks(vectors: list[ConceptVector]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for v in vectors:
        out.setdefault(v.layer, []).append(v.index)
    return out


def causal_drop(loaded, items, picks, *, mode: str, noise_scale: float, seed: int, n_random: int,
                clean: np.ndarray | None = None) -> tuple[float, float]:
    """(drop in the mean answer log-odds when `picks` are ablated, the same for random units of the same layers)."""
    clean = answer_log_odds(loaded, items) if clean is None else clean
    top = float((clean - answer_log_odds(loaded, items, picks=picks, mode=mode, noise_scale=noise_scale,
                                        seed=seed)).mean())
    d_mlp = all_value_vectors(loaded.model)[0].shape[0]
    rng = np.random.default_rng(seed)
    rand = [float((clean - answer_log_odds(loaded, items, picks=random_picks(picks, d_mlp, rng), mode=mode,
                                          noise_scale=noise_scale, seed=seed + r + 1)).mean())
            for r in range(n_random)]
    return top, float(np.mean(rand))


def list_concept_vectors(model, concept, top_k: int = 10, *, n_tokens: int = 10, ablation: str = "zero",
                         noise_scale: float = 1.0, n_random: int = 3, seed: int = 0) -> list[dict]:
    """The concept's top value vectors in one model (a LoadedModel), each with its top tokens and causal effect.

    causal_effect = drop of the forget answers' mean first-token log-odds when this one vector is ablated, minus the
    mean drop for random vectors of the same layer (positive: the vector carries the concept's answers).
    """
    token_ids = concept_token_ids(model.tokenizer, concept)
    if not token_ids:
        raise ValueError(f"concept {concept.name!r}: none of its answers or keywords is a token of this model")
    vectors = find_concept_vectors(model.model, token_ids, top_k)
    items = list(concept.forget)
    clean = answer_log_odds(model, items)
    d_mlp = all_value_vectors(model.model)[0].shape[0]
    rng = np.random.default_rng(seed)
    baseline: dict[int, float] = {}
    out = []
    for v in vectors:
        if v.layer not in baseline:
            drops = [float((clean - answer_log_odds(model, items, picks={v.layer: [int(u)]}, mode=ablation,
                                                   noise_scale=noise_scale, seed=seed)).mean())
                     for u in rng.choice(d_mlp, size=n_random, replace=False)]
            baseline[v.layer] = float(np.mean(drops))
        drop = float((clean - answer_log_odds(model, items, picks={v.layer: [v.index]}, mode=ablation,
                                             noise_scale=noise_scale, seed=seed)).mean())
        projection = vocab_projection(model.model, all_value_vectors(model.model)[v.layer][v.index][None])[0]
        tokens = [model.tokenizer.decode([t]).strip() for t in top_token_ids(projection, n_tokens)]
        out.append({"layer": v.layer, "index": v.index, "score": v.score, "top_tokens": tokens,
                    "log_odds_drop": drop, "random_drop": baseline[v.layer], "causal_effect": drop - baseline[v.layer]})
    return out


class ConceptVectorsConfig(AnalyserConfig):
    top_k: int = 10  # how many value vectors (over all layers) are the concept vectors
    ablation: Literal["zero", "noise"] = "zero"  # how a vector is ablated for the causal check
    noise_scale: float = 1.0  # ablation="noise": scale of the noise that replaces a vector
    n_random: int = 3  # random same-layer vector sets ablated for the causal baseline
    min_causal_effect: float = 0.05  # ablating the vectors must lower the pre model's log-odds by this beyond random
    # jaccard_top_lens (palimpsest's variant) over this many top tokens (None: a tenth of the vocabulary, 10 to 200);
    # jaccard_top200 (as published) always takes 200
    top_tokens: int | None = None
    require_causal: bool = True  # scale the similarity residue by the share of the causal effect left on post


@register
class ConceptVectors(Analyser):
    name = "concept_vectors"
    kind = "residue"
    title = "Concept vectors (parametric traces)"
    description = (
        "The MLP value vectors (rows of each layer's output projection) are read through the final norm module "
        "and the unembedding; those "
        "whose projection most promotes the concept's answers and keywords are the concept vectors, confirmed "
        "causally on the pre model (ablating them lowers the forget answers' log-odds more than ablating "
        "random vectors of the same layers). Each is compared between pre and post as in ConceptVectors: cosine "
        "similarity, distance, Jaccard overlap of the top 200 tokens of v·Eᵀ (each model's own unembedding, no "
        "norm: jaccard_top200, as published) and, beside it, of the top tokens read through the final norm "
        "(jaccard_top_lens), share of concept tokens kept, and the causal effect of ablating it in the post model. "
        "Residue = the vectors' cosine similarity pre vs post, "
        "calibrated between the floor (the same vectors in the floor model, or random vectors of the post model) "
        "and 1, times the share of their causal effect on the forget answers that survives in the post model."
    )
    Config = ConceptVectorsConfig
    modalities = frozenset({"text"})
    needs = frozenset({"weights"})  # the weights and forward passes with ablations; reads no captures (the floor is optional)

    def run(self, ctx) -> Result:
        """Overridden: the calibrated similarity is scaled by the causal retention (summary causal_retention)."""
        result = super().run(ctx)
        if result.status == "ok":
            retention = result.summary["causal_retention"]
            result.residue = result.residue * retention
            result.ci = (result.ci[0] * retention, result.ci[1] * retention) if result.ci else None
        return result

    def measure(self, ctx) -> Measurement | Result:
        opts: ConceptVectorsConfig = ctx.opts
        pre, post, floor = ctx.pair.pre, ctx.pair.post, ctx.pair.floor
        token_ids = concept_token_ids(pre.tokenizer, ctx.concept)
        if not token_ids:
            return inconclusive(self.name, "none of the concept's answers or keywords is a token of this model")
        vocab = int(pre.model.get_output_embeddings().weight.shape[0])
        n_top = opts.top_tokens if opts.top_tokens is not None else min(200, max(10, vocab // 10))
        vectors = find_concept_vectors(pre.model, token_ids, opts.top_k)
        picks = _picks(vectors)
        items = list(ctx.concept.forget)
        kw = dict(mode=opts.ablation, noise_scale=opts.noise_scale, seed=ctx.config.seed, n_random=opts.n_random)
        drop_pre, rand_pre = causal_drop(pre, items, picks, **kw)
        drop_post, rand_post = causal_drop(post, items, picks, **kw)
        effect_pre, effect_post = drop_pre - rand_pre, drop_post - rand_post
        models = {"post": post} | ({"floor": floor} if floor is not None else {})
        rows, cos = _compare(ctx, vectors, models, token_ids, n_top)
        floor_key = "floor" if floor is not None else "chance"
        floor_source = ("the same vectors in the floor model" if floor is not None
                        else "|cosine| of each vector with random vectors of the post model's same layer")
        summary = _summary(rows, cos, vectors, picks, opts.ablation, n_top, floor is not None,
                           drops=(drop_pre, rand_pre, drop_post, rand_post))
        summary["jaccard_top200_n"] = n_published = min(JACCARD_TOP_N, vocab)
        # the fields an inconclusive result carries: the means calibrate would report
        post_m, floor_m = float(np.asarray(cos["post"], dtype=np.float64).mean()), \
            float(np.asarray(cos[floor_key], dtype=np.float64).mean())
        common = dict(floor=floor_m, ceiling=1.0, post=post_m, floor_source=floor_source, summary=summary,
                      per_item=rows, tables={"vectors": rows})
        notes = [f"top {len(vectors)} value vectors by concept score; ablation by {opts.ablation}",
                 _jaccard_note(n_published, n_top, vocab)]
        if effect_pre < opts.min_causal_effect:
            result = inconclusive(self.name, f"the top concept vectors are not causal on the pre model: ablating them "
                                             f"lowers the forget answers' log-odds by {drop_pre:.3f} vs "
                                             f"{rand_pre:.3f} for random vectors (effect < {opts.min_causal_effect}). "
                                             "No honest floor exists then: the concept is not stored in single MLP "
                                             "value vectors of this model (more forget items or keywords naming the "
                                             "answers may find causal ones)",
                                  **common)
            result.notes.extend(notes)
            return result
        similarity = calibrate_value(post_m, floor_m, 1.0)
        if similarity is None:
            return inconclusive(self.name, "the floor vectors are as similar to the pre vectors as the ceiling",
                                **common)
        if effect_post < opts.min_causal_effect:
            notes.append(f"the vectors no longer matter causally on the post model (effect {effect_post:.3f} vs "
                         f"{effect_pre:.3f} on pre)")
        # still there (similarity) and still causal: the residue is the similarity scaled by the causal retention
        retention = float(np.clip(effect_post / effect_pre, 0.0, 1.0)) if opts.require_causal else 1.0
        summary.update({"similarity_residue": similarity, "causal_retention": retention})
        return Measurement(
            post=cos["post"], floor=cos[floor_key], ceiling=[1.0] * len(vectors), floor_source=floor_source,
            paired=True, evidence=("the concept's top value vectors have cosine {post:.2f} with their pre versions "
                                   f"(floor {{floor:.2f}}); ablating them costs the post model {effect_post:.2f} "
                                   f"of answer log-odds (pre {effect_pre:.2f})"),
            summary=summary, per_item=rows, tables={"vectors": rows}, notes=notes, extra={"models": list(models)})

    def figures(self, measured: Measurement, ctx) -> dict:
        import plotly.graph_objects as go

        rows = measured.per_item
        fig = go.Figure()
        labels = [f"L{r['layer']}#{r['index']}" for r in rows]
        for name in measured.extra["models"]:
            fig.add_trace(go.Bar(x=labels, y=[r[f"cosine_{name}"] for r in rows], name=f"cos(pre, {name})"))
        fig.update_layout(title="Concept vectors: cosine similarity with the pre model",
                          yaxis_title="cosine", barmode="group")
        return {"Concept vector similarity": fig}


def _jaccard_note(n_published: int, n_top: int, vocab: int) -> str:
    """What the two Jaccard overlaps are over, and how low the published one can go on this vocabulary."""
    whole = " (the whole vocabulary: it has fewer than 200 tokens)" if n_published < JACCARD_TOP_N else ""
    lowest = max(0, 2 * n_published - vocab) / min(vocab, 2 * n_published)
    bound = f"; with {n_published} of {vocab} tokens it cannot fall below {lowest:.2f}" if lowest > 0 else ""
    return (f"jaccard_top200 as published (ConceptVectors): the top {n_published} tokens{whole} of v·Eᵀ, each "
            f"model's own unembedding, no final norm{bound}; jaccard_top_lens (palimpsest): the top {n_top} tokens "
            f"of norm(v)·Eᵀ through each model's final norm module (vocabulary {vocab})")


def _compare(ctx, vectors: list[ConceptVector], models: dict, token_ids: list[int], n_top: int
             ) -> tuple[list[dict], dict[str, list[float]]]:
    """Per concept vector: its comparison with the same vector in every other model, and the cosines (with a chance
    level: the pre vector against random vectors of the post model's same layer)."""
    pre = ctx.pair.pre
    everyone = {"pre": pre, **models}
    vec = {name: all_value_vectors(m.model) for name, m in everyone.items()}
    rows, cos = [], {"post": [], "floor": [], "chance": []}
    if not vectors:
        return rows, cos
    picked = {name: torch.stack([vec[name][v.layer][v.index] for v in vectors]) for name in everyone}
    # read through the final norm module (palimpsest's lens), and as published: v · Eᵀ, own E, no norm
    lens = {name: vocab_projection(m.model, picked[name]) for name, m in everyone.items()}
    raw = {name: unembed_projection(m.model, picked[name]) for name, m in everyone.items()}
    rng = np.random.default_rng(ctx.config.seed)
    for i, v in enumerate(vectors):
        v_pre = picked["pre"][i]
        row = {"layer": v.layer, "index": v.index, "score": v.score,
               "top_tokens_pre": [pre.tokenizer.decode([t]).strip() for t in top_token_ids(lens["pre"][i], 8)]}
        for name in models:
            stats = compare_vectors(v_pre, picked[name][i], lens["pre"][i], lens[name][i], token_ids, n_top,
                                    pre_unembed=raw["pre"][i], post_unembed=raw[name][i])
            row.update({f"{k}_{name}": value for k, value in stats.items()})
            cos[name].append(stats["cosine"])
        others = rng.choice(vec["post"][v.layer].shape[0], size=8, replace=False)
        cos["chance"].append(float(torch.nn.functional.cosine_similarity(
            v_pre[None], vec["post"][v.layer][torch.as_tensor(others)]).abs().mean()))
        rows.append(row)
    return rows, cos


def _summary(rows: list[dict], cos: dict, vectors: list[ConceptVector], picks: dict, mode: str, n_top: int,
             has_floor: bool, *, drops: tuple[float, float, float, float]) -> dict:
    """The means over the concept vectors. jaccard_top200_*: ConceptVectors' Jaccard of the top 200 tokens of v·Eᵀ
    (own E, no norm); jaccard_top_lens_*: palimpsest's, top `n_top` tokens through the final norm module."""
    drop_pre, rand_pre, drop_post, rand_post = drops
    effect_pre, effect_post = drop_pre - rand_pre, drop_post - rand_post
    summary = {
        "n_vectors": len(vectors), "layers": sorted(picks), "ablation": mode, "top_tokens_n": n_top,
        "cosine_post": float(np.mean(cos["post"])), "causal_effect_pre": effect_pre,
        "causal_effect_post": effect_post, "log_odds_drop_pre": drop_pre, "random_drop_pre": rand_pre,
        "log_odds_drop_post": drop_post, "random_drop_post": rand_post,
        "causal_ratio_post": effect_post / effect_pre if effect_pre > 0 else None,
        **{f"{k}_post": float(np.mean([r[f"{k}_post"] for r in rows])) for k in
           ("distance", "relative_distance", "jaccard_top200", "jaccard_top_lens")},
    }
    kept = [r["concept_tokens_kept_post"] for r in rows if r["concept_tokens_kept_post"] is not None]
    summary["concept_tokens_kept_post"] = float(np.mean(kept)) if kept else None
    if has_floor:
        summary["cosine_floor"] = float(np.mean(cos["floor"]))
        for k in ("jaccard_top200", "jaccard_top_lens"):
            summary[f"{k}_floor"] = float(np.mean([r[f"{k}_floor"] for r in rows]))
    return summary
