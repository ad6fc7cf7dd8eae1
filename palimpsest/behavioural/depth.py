"""Unlearning depth by activation patching, after the Unlearning Depth Score (UDS).

For each layer l, the hidden states of a source model are patched into the pre model at `blocks.{l}.hook_resid_post`
on the forget items' prompt positions, and the drop of the answer's mean log-probability is measured:
Δ_l = mean over answer tokens of (log p_pre − log p_patched), averaged over items.
S1 = the floor (oracle) model patched in: how much each layer must change for true deletion.
S2 = the post model patched in: how much each layer did change.
depth = Σ_{l: Δ^S1_l > min_delta} Δ^S1_l · clip(Δ^S2_l / Δ^S1_l, 0, 1) / Σ_{same l} Δ^S1_l, and residue = 1 − depth.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from palimpsest.capture import encode, intervene, replace_with, resid_post_sites, run_and_capture
from palimpsest.capture.backends import forward_kwargs
from palimpsest.capture.scoring import answer_token_logprobs
from palimpsest.capture.tokens import EncodedBatch
from palimpsest.stats import bootstrap_ci
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

PatchSpan = Literal["prompt", "subject", "all"]


class DepthConfig(AnalyserConfig):
    span: PatchSpan = "prompt"  # the positions patched: the whole prompt (UDS), the last subject token, or all
    min_delta: float = 0.05  # a layer counts when patching the floor in drops the answer log-prob by more than this
    # floor: cap each item's drop at log p_pre − log(floor's mean answer probability); none: no cap
    cap: Literal["floor", "none"] = "floor"


def patch_mask(batch: EncodedBatch, span: PatchSpan = "prompt") -> Bool[Tensor, "batch pos"]:
    """The positions patched: the whole prompt (UDS default), only the last subject token, or prompt + answer."""
    pos = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)[None, :]
    real = batch.attention_mask.bool()
    if span == "prompt":
        return real & (pos <= batch.prompt_last[:, None])
    if span == "subject":
        return real & (pos == batch.subject_last[:, None])
    if span == "all":
        return real
    raise ValueError(f"unknown patch span {span!r}: use prompt, subject or all")


def _mean_answer_logprob(logits: Float[Tensor, "batch pos vocab"], batch: EncodedBatch) -> Float[Tensor, " batch"]:
    lps, _, _ = answer_token_logprobs(logits, batch)
    return torch.stack([lp.mean() for lp in lps])


def patching_drops(
    target, source, items, *, span: PatchSpan = "prompt", backend: str = "torch", batch_size: int = 32
) -> tuple[Float[np.ndarray, " n"], Float[np.ndarray, "n layers"]]:
    """(log p_target, log p_target with source patched at layer l) per item: mean answer-token log-probs.

    `target` and `source` are LoadedModels on the same tokenizer; the source's states are captured on the very same
    token batch, so positions line up.
    """
    sites = resid_post_sites(target.model)
    base, patched = [], []
    device = next(target.model.parameters()).device
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = encode(target.tokenizer, [it.prompt for it in chunk], [it.answer for it in chunk],
                       [it.subject for it in chunk]).to(device)
        _, states = run_and_capture(source.model, source.tokenizer, batch, sites, backend)
        mask = patch_mask(batch, span)
        with torch.inference_mode():
            base.append(_mean_answer_logprob(target.model(**forward_kwargs(batch)).logits, batch))
            per_layer = []
            for site in sites:
                with intervene(target.model, {site: replace_with(states[site], mask)}):
                    logits = target.model(**forward_kwargs(batch)).logits
                per_layer.append(_mean_answer_logprob(logits, batch))
        patched.append(torch.stack(per_layer, dim=1))
    return torch.cat(base).double().numpy(), torch.cat(patched).double().numpy()


def depth_score(d1: Float[np.ndarray, " layers"], d2: Float[np.ndarray, " layers"], min_delta: float) -> float | None:
    """UDS: Δ^S1-weighted mean over the layers deletion needs (Δ^S1 > min_delta) of clip(Δ^S2/Δ^S1, 0, 1)."""
    keep = d1 > min_delta
    if not keep.any():
        return None
    ratio = np.clip(d2[keep] / d1[keep], 0.0, 1.0)
    return float((d1[keep] * ratio).sum() / d1[keep].sum())


def bootstrap_depth(
    d1: Float[np.ndarray, "n layers"], d2: Float[np.ndarray, "n layers"], min_delta: float, *,
    n_bootstrap: int, ci_level: float, seed: int,
) -> tuple[float, float] | None:
    """Percentile interval of the depth score, resampling items (Δ^S1 and Δ^S2 of an item stay together)."""
    return bootstrap_ci(lambda a, b: depth_score(a.mean(0), b.mean(0), min_delta), d1, d2,
                        n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed)


def cap_drops(d1_items: Float[np.ndarray, "n layers"], d2_items: Float[np.ndarray, "n layers"],
              base: Float[np.ndarray, " n"], level: float) -> tuple[np.ndarray, np.ndarray]:
    """Both drops capped per item at log p_pre − `level` (a patch removes at most the answer)."""
    cap = np.clip(base - level, 0.0, None)[:, None]
    return np.minimum(d1_items, cap), np.minimum(d2_items, cap)


def per_layer_rows(d1: Float[np.ndarray, " layers"], d2: Float[np.ndarray, " layers"],
                   min_delta: float) -> list[dict]:
    return [{"layer": i, "delta_s1": round(float(d1[i]), 4), "delta_s2": round(float(d2[i]), 4),
             "ratio": round(float(np.clip(d2[i] / d1[i], 0, 1)), 4) if d1[i] > min_delta else None,
             "counted": bool(d1[i] > min_delta)} for i in range(len(d2))]


def per_item_rows(items, d1_items: Float[np.ndarray, "n layers"], d2_items: Float[np.ndarray, "n layers"]) -> list[dict]:
    return [{"index": i, "prompt": it.prompt, "answer": it.answer,
             "delta_s1": [round(float(x), 4) for x in d1_items[i]],
             "delta_s2": [round(float(x), 4) for x in d2_items[i]]} for i, it in enumerate(items)]


def _figure(d1: np.ndarray | None, d2: np.ndarray, min_delta: float) -> go.Figure:
    layers = list(range(len(d2)))
    fig = go.Figure()
    if d1 is not None:
        fig.add_scatter(x=layers, y=d1.tolist(), mode="lines+markers", name="Δ S1: floor (oracle) patched in",
                        line=dict(color="#9D9D9D"))
    fig.add_scatter(x=layers, y=d2.tolist(), mode="lines+markers", name="Δ S2: post patched in",
                    line=dict(color="#E45756"))
    fig.add_hline(y=min_delta, line_dash="dot", line_color="#888", annotation_text="min_delta")
    fig.update_layout(xaxis=dict(title="layer (resid_post patched)", dtick=1),
                      yaxis=dict(title="drop in answer log-prob (pre − patched)"), height=360,
                      margin=dict(l=50, r=20, t=30, b=40))
    return fig


@register
class UnlearningDepth(Analyser):
    name = "depth"
    kind = "residue"
    title = "Unlearning depth (activation patching)"
    description = (
        "Per layer, the post model's (S2) and the floor/oracle model's (S1) residual stream is patched into the pre "
        "model over the forget prompts' positions, and the drop of the answer's mean log-probability is measured. "
        "The depth score (after the Unlearning Depth Score) is the share of the per-layer drops that true deletion "
        "needs (S1) that the post model reproduces (S2), over layers where S1 drops the answer by more than "
        "min_delta. Residue = 1 − depth: 1 when the post model left every layer deletion needs unchanged (e.g. only "
        "the output head moved), 0 when it changed them as much as the oracle. Without a floor model the score "
        "cannot be computed; S2's per-layer drops are still shown."
    )
    Config = DepthConfig
    modalities = frozenset({"text"})
    needs = frozenset()  # forward passes with patches; reads no captures (the floor is optional: S2 alone)

    def measure(self, ctx) -> Result:
        opts: DepthConfig = ctx.opts
        pair, config = ctx.pair, ctx.config
        items = list(ctx.concept.forget)
        span, min_delta, cap_mode = opts.span, opts.min_delta, opts.cap
        # a patch can remove at most the knowledge: each item's Δ is capped at log p_pre − L, L = log of the floor
        # model's mean answer probability over the forget items (the level of a model that does not know them).
        # Larger drops are basis mismatch between independently trained models (the organism's oracle is retrained
        # from scratch) or a confidently wrong floor, not deletion.
        kwargs = dict(span=span, backend=config.backend, batch_size=config.batch_size)
        base, post_patched = patching_drops(pair.pre, pair.post, items, **kwargs)
        d2_items = base[:, None] - post_patched
        notes = [f"patched span: {span} positions of the forget prompts at every blocks.{{l}}.hook_resid_post; "
                 "Δ = mean over answer tokens of log p_pre − log p_patched"]
        if pair.floor is None:
            return self._s2_only(d2_items, len(items), span, min_delta, notes, ctx)

        _, floor_patched = patching_drops(pair.pre, pair.floor, items, **kwargs)
        d1_items = base[:, None] - floor_patched
        if cap_mode == "floor":
            level = float(np.log(np.mean(np.exp(_own_logprob(pair.floor, items, config.batch_size)))))
            d1_items, d2_items = cap_drops(d1_items, d2_items, base, level)
            notes.append(f"cap=floor: each item's Δ is capped at log p_pre − {level:.2f}, the log of the floor model's "
                         "mean answer probability: a patch counts as removing the answer once it brings it down to the "
                         "level of a model that never learned it; larger drops are basis mismatch between "
                         "independently trained models, not more deletion")
        d1, d2 = d1_items.mean(0), d2_items.mean(0)
        depth = depth_score(d1, d2, min_delta)
        summary = {"depth": depth, "delta_s1": d1.tolist(), "delta_s2": d2.tolist(), "n_items": len(items),
                   "span": span, "min_delta": min_delta, "cap": cap_mode,
                   "logprob_pre": float(base.mean())}
        common = dict(summary=summary, tables={"per_layer": per_layer_rows(d1, d2, min_delta)},
                      per_item=per_item_rows(items, d1_items, d2_items),
                      floor_source="floor model (oracle) patched in as S1")
        if depth is None:
            result = inconclusive(
                self.name, f"patching the floor model into pre drops the answer by at most min_delta={min_delta} at "
                "every layer: the pre model does not hold the answers beyond the floor, so depth is undefined",
                **common)
        else:
            result = self._depth_result(depth, d1_items, d2_items, min_delta, config, common)
        result.notes.extend(notes)
        return self._with_figures(result, d1, d2, min_delta, ctx)

    def _s2_only(self, d2_items: Float[np.ndarray, "n layers"], n_items: int, span: str, min_delta: float,
                 notes: list[str], ctx) -> Result:
        """Without a floor model: inconclusive, with the post model's per-layer drops (S2)."""
        d2 = d2_items.mean(0)
        result = inconclusive(
            self.name, "the depth score needs a floor (oracle/retain) model as S1; only the post model's per-layer "
            "drops (S2) are reported", kind="residue",
            summary={"depth": None, "delta_s2": d2.tolist(), "n_items": n_items, "span": span},
            tables={"per_layer": [{"layer": i, "delta_s2": round(float(d2[i]), 4)} for i in range(len(d2))]})
        result.notes.extend(notes)
        return self._with_figures(result, None, d2, min_delta, ctx)

    def _depth_result(self, depth: float, d1_items: Float[np.ndarray, "n layers"],
                      d2_items: Float[np.ndarray, "n layers"], min_delta: float, config, common: dict) -> Result:
        # not `finalize`: the residue is a nonlinear score of per-layer means, bootstrapped over items as a whole
        ci = bootstrap_depth(d1_items, d2_items, min_delta, n_bootstrap=config.n_bootstrap,
                             ci_level=config.ci_level, seed=config.seed)
        residue = 1.0 - depth
        return Result(
            name=self.name, kind="residue", residue=residue,
            ci=(1.0 - ci[1], 1.0 - ci[0]) if ci else None, floor=0.0, ceiling=1.0, post=residue, **common,
            evidence=(f"depth {depth:.2f}: the post model changed {depth:.0%} of the per-layer change true "
                      f"deletion needs (residue {residue:.2f})"))

    def _with_figures(self, result: Result, d1, d2, min_delta: float, ctx) -> Result:
        for title, figure in self.figures({"d1": d1, "d2": d2, "min_delta": min_delta}, ctx).items():
            result.add_figure(title, figure)
        return result

    def figures(self, measured, ctx) -> dict:
        return {"Answer log-prob drop per patched layer": _figure(measured["d1"], measured["d2"],
                                                                  measured["min_delta"])}


def _own_logprob(loaded, items, batch_size: int) -> Float[np.ndarray, " n"]:
    from palimpsest.capture import score_answers

    return score_answers(loaded.model, loaded.tokenizer, items, batch_size=batch_size).mean_logprob.astype(np.float64)
