"""The `sae_features` analyser: do the pre model's SAUCE concept features still fire on the forget prompts?"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch

from palimpsest.audit.finalize import Measurement
from palimpsest.capture import n_layers
from palimpsest.sae.data import concept_corpus
from palimpsest.sae.features import concept_features, concept_score, encode_prompts
from palimpsest.sae.quality import gate_explained_variance
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register


def default_site(model) -> str:
    """The middle of the network: blocks.{n_layers // 2}.hook_resid_post."""
    return f"blocks.{n_layers(model) // 2}.hook_resid_post"


def sauce_meta(pair) -> dict | None:
    """The SAUCE clamp's record on the post model (None when the post model is not SAUCE-clamped)."""
    return pair.post.meta.get("sauce") if isinstance(pair.post.meta, dict) else None


def frequency_matched(freq: torch.Tensor, features: list[int], n_draws: int, seed: int, pool: int = 5
                      ) -> list[list[int]]:
    """`n_draws` sets of random non-concept features, each feature drawn among the `pool` whose firing
    frequency is closest to a concept feature's."""
    rng = np.random.default_rng(seed)
    others = np.array([i for i in range(len(freq)) if i not in set(features)])
    draws = []
    for _ in range(n_draws):
        chosen = []
        for f in features:
            gap = np.abs(freq[others].numpy() - float(freq[f]))
            nearest = others[np.argsort(gap, kind="stable")[:pool]]
            chosen.append(int(rng.choice(nearest)))
        draws.append(chosen)
    return draws


class SAEFeaturesConfig(AnalyserConfig):
    # the site read (None: the SAUCE clamp's site when the post model is SAUCE-clamped, else the middle layer);
    # the SAE there is the audit's one (AuditConfig.sae), shared with every analyser reading that site
    site: str | None = None
    min_explained_variance: float = 0.6  # an SAE explaining less of the variance at the site is not read
    min_gap: float = 0.05  # the pre model's concept score must beat the floor's by this
    n_random_draws: int = 20  # without a floor model: draws of frequency-matched random features


@register
class SAEConceptFeatures(Analyser):
    name = "sae_features"
    kind = "residue"
    title = "SAE concept features (SAUCE residue)"
    description = (
        "A sparse autoencoder (sae-lens, TopK by default) is trained on the pre model's activations at one site "
        "(the middle residual stream by default) over a corpus of the concept's texts. Its concept features are those "
        "that fire selectively on the forget prompts versus neighbour and retain prompts (selectivity = z-score, "
        "threshold min_selectivity). The same SAE then encodes each model's activations: per forget prompt, how much "
        "more the concept features fire than on the model's own retain/neighbour prompts. Ceiling = pre; floor = the "
        "floor model (never learned the concept) when there is one, else random SAE features of equal firing "
        "frequency on the pre model. Residue near 1: the concept is still represented at this site (suppression). "
        "The stream is read as it arrives at the site, before any hook there: a SAUCE-clamped post model (a hook that "
        "edits the site's output) therefore shows high residue, as it should: its knowledge is intact in the weights."
    )
    Config = SAEFeaturesConfig
    modalities = frozenset({"text", "image"})
    needs = frozenset({"activations", "sae"})

    def site(self, ctx) -> str:
        sauce = sauce_meta(ctx.pair)
        return ctx.opts.site or (sauce["site"] if sauce else default_site(ctx.pair.pre.model))

    def sae_sites(self, ctx) -> tuple[str, ...]:
        return (self.site(ctx),)

    def measure(self, ctx) -> Measurement | Result:
        opts: SAEFeaturesConfig = ctx.opts
        pair, concept, sae_cfg, site = ctx.pair, ctx.concept, ctx.config.sae, self.site(ctx)
        if not concept.retain and not concept.neighbours:
            return inconclusive(self.name, "the concept has no retain or neighbour items: concept features cannot be "
                                           "told apart from features that fire on everything")
        sae, quality = ctx.saes.get(site)
        summary = {"site": site, "sae_architecture": sae_cfg.architecture, "d_sae": int(sae.W_dec.shape[0]),
                   "sae_quality": quality, "n_corpus_texts": len(concept_corpus(concept, sae_cfg.corpus))}
        if gate_explained_variance(quality) < opts.min_explained_variance:
            return inconclusive(self.name, f"the SAE explains only {gate_explained_variance(quality):.2f} of the "
                                           f"variance at {site} (< min_explained_variance="
                                           f"{opts.min_explained_variance}); its features are not a faithful reading. To make "
                                           "it conclusive: train the SAE on more text (sae.self_corpus_texts, "
                                           "sae.total_tokens) or with more active features (sae.k)",
                                summary=summary)
        feats = concept_features(sae, pair.pre, site, concept, sae_cfg)
        summary.update({"n_concept_features": len(feats), "concept_features": feats.indices,
                        "min_selectivity": sae_cfg.min_selectivity})
        if not len(feats):
            return inconclusive(self.name, f"no SAE feature fires selectively on the forget prompts (selectivity >= "
                                           f"min_selectivity={sae_cfg.min_selectivity}); the SAE has no concept "
                                           "features to track", summary=summary)
        baseline_sets = [s for s in ("retain", "neighbours") if concept.items(s)]
        forget_prompts = [it.prompt for it in concept.forget]
        baseline_prompts = [it.prompt for s in baseline_sets for it in concept.items(s)]
        models = pair.models()
        encoded = {m: (encode_prompts(sae, lm, site, forget_prompts)[0],
                       encode_prompts(sae, lm, site, baseline_prompts)[0]) for m, lm in models.items()}
        scores = {m: concept_score(f, b, feats.indices) for m, (f, b) in encoded.items()}
        if pair.floor is not None:
            floor_scores, floor_source = scores["floor"], "floor model (never learned the concept)"
        else:
            freq = (torch.cat(encoded["pre"]) > 0).float().mean(0)
            draws = frequency_matched(freq, feats.indices, opts.n_random_draws, ctx.config.seed)
            floor_scores = np.mean([concept_score(*encoded["pre"], d) for d in draws], axis=0)
            floor_source = (f"random SAE features of equal firing frequency ({opts.n_random_draws} draws) on the pre "
                            "model")
        idx = feats.indices
        mean_act = {m: encoded[m][0][:, idx].mean(0) for m in models}
        survival = float(mean_act["post"].sum() / mean_act["pre"].sum().clamp(min=1e-9))
        per_feature = [{"feature": i, **{f"mean_forget_{m}": float(mean_act[m][j]) for m in models},
                        "selectivity": feats.selectivity[j],
                        "top_tokens": ", ".join(t["token"] for t in feats.top_tokens[j])} for j, i in enumerate(idx)]
        per_item = [{"prompt": it.prompt, "answer": it.answer, "subject": it.subject,
                     **{f"score_{m}": float(scores[m][k]) for m in models}, "score_floor_used": float(floor_scores[k])}
                    for k, it in enumerate(concept.forget)]
        summary.update({"activation_survival": survival, **{f"score_{m}": float(np.mean(scores[m])) for m in models},
                        "baseline_sets": baseline_sets})
        return Measurement(
            post=scores["post"], floor=floor_scores, ceiling=scores["pre"], floor_source=floor_source,
            min_gap=opts.min_gap, summary=summary, per_item=per_item, notes=_notes(site, survival, sauce_meta(pair)),
            tables={"concept_features": per_feature, "feature_selection": feats.table()},
            degenerate=("the concept features fire no more on the pre model than the floor (gap {gap:.3f} < "
                        f"min_gap={opts.min_gap})"),
            evidence=(f"{len(idx)} SAE concept features at {site} fire on the forget prompts at {{post:.2f}} above "
                      "baseline in the post model (pre {ceiling:.2f}, floor {floor:.2f})"),
            extra={"models": list(models)})

    def figures(self, measured, ctx) -> dict:
        return {"Concept-feature activation on forget prompts":
                _feature_figure(measured.tables["concept_features"], measured.extra["models"])}


def _notes(site: str, survival: float, sauce: dict | None) -> list[str]:
    notes = [f"concept features read at {site}, on every prompt token (max over tokens per prompt)",
             f"activation_survival = the concept features' summed mean activation on forget prompts, post / pre "
             f"= {survival:.2f}"]
    if sauce:
        sites = sauce.get("sites", [sauce["site"]])
        notes.append(f"the post model is SAUCE-clamped at {', '.join(sites)}: this analysis reads the stream "
                     f"arriving at {site} (the input of the clamping hook), which the clamp never changes; the "
                     "clamp acts only on what flows on from the site, so the knowledge is suppressed by "
                     "construction (probes at other sites and restoration show it)")
    return notes


def _feature_figure(rows: list[dict], models: list[str]):
    fig = go.Figure()
    for m in models:
        fig.add_bar(name=m, x=[f"f{r['feature']}" for r in rows], y=[r[f"mean_forget_{m}"] for r in rows],
                    hovertext=[r["top_tokens"] for r in rows])
    fig.update_layout(barmode="group", title="Mean activation of each concept feature on the forget prompts",
                      xaxis_title="SAE feature", yaxis_title="mean activation (max over prompt tokens)")
    return fig
