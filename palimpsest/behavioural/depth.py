"""Unlearning depth by activation patching: the published Unlearning Depth Score (UDS) and palimpsest's variant.

For each layer l, the hidden states of a source model are patched into the pre (full) model at
`blocks.{l}.hook_resid_post`, one layer at a time, and the drop of the answer's mean log-probability is measured
per example: Δ_l = mean over answer tokens of log p_pre − mean over answer tokens of log p_patched.
S1 = the floor (retain/oracle) model patched in: how much each layer must change for true deletion.
S2 = the post (unlearned) model patched in: how much each layer did change.
The published span (`span="answer"`) patches the positions that predict the answer tokens under teacher forcing
(the last prompt token … the second-to-last answer token).

UDS (the published score, per example i, then the mean over examples with a counted layer):
    UDS_i = Σ_{l: Δ^S1_il > τ} Δ^S1_il · clip(Δ^S2_il / Δ^S1_il, 0, 1) / Σ_{same l} Δ^S1_il
depth_capped (palimpsest's variant, not UDS): the same aggregation once, over item-averaged Δ capped per item at
the floor, with threshold `min_delta`. residue = 1 − the score `score` selects.
The source state of the last layer is its hook_resid_post too (the reference code reads HF `hidden_states[-1]`
there, which is after the final norm).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from pydantic import Field
from torch import Tensor

from palimpsest.capture import encode, intervene, replace_with, resid_post_sites, run_and_capture
from palimpsest.capture.memo import memoized, model_stamp
from palimpsest.capture.prefix import (
    SplitBatch,
    cache_argument,
    prefix_key_values,
    run_logits,
    split_at_answer,
)
from palimpsest.capture.scoring import answer_logits, answer_token_logprobs
from palimpsest.capture.tokens import EncodedBatch
from palimpsest.devices import input_device
from palimpsest.stats import bootstrap_ci
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

PatchSpan = Literal["answer", "prompt", "subject", "all"]
DepthScore = Literal["uds", "capped"]


class DepthConfig(AnalyserConfig):
    # the positions patched: those predicting the answer tokens (published UDS), the whole prompt, the last subject
    # token, or every real position (prompt + answer)
    span: PatchSpan = "answer"
    tau: float = Field(0.05, ge=0.0)  # UDS: a layer counts for an example if the floor's patch drops its answer > tau
    # the residue is 1 − this score: palimpsest's depth_capped (default: it separates deleted from suppressed in
    # the validation run, see docs/metrics.md) or the published UDS (always reported as `uds`)
    score: DepthScore = "capped"
    min_delta: float = 0.05  # depth_capped: a layer counts when the item-averaged (capped) floor drop exceeds this
    # depth_capped: floor = cap each item's drop at log p_pre − log(floor's mean answer probability); none: no cap
    cap: Literal["floor", "none"] = "floor"
    # without a floor model, S1 comes from never-known holdout facts (holdout_patching_drops; span=answer only)
    holdout_floor: bool = True
    min_holdout_items: int = Field(4, ge=1)


def patch_mask(batch: EncodedBatch, span: PatchSpan = "answer") -> Bool[Tensor, "batch pos"]:
    """The positions patched: those predicting the answer tokens (published UDS: prompt_last … last answer − 1),
    the whole prompt, only the last subject token, or every real position (prompt + answer)."""
    pos = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)[None, :]
    real = batch.attention_mask.bool()
    if span == "answer":
        if bool((batch.answer_start < 0).any()):
            raise ValueError("span='answer' patches the positions predicting the answer: encode the answers too")
        return real & batch.answer_mask().bool()
    if span == "prompt":
        return real & (pos <= batch.prompt_last[:, None])
    if span == "subject":
        return real & (pos == batch.subject_last[:, None])
    if span == "all":
        return real
    raise ValueError(f"unknown patch span {span!r}: use answer, prompt, subject or all")


def _mean_answer_logprob(logits: Float[Tensor, "batch pos vocab"], batch: EncodedBatch,
                         offset: int = 0) -> Float[Tensor, " batch"]:
    lps, _, _ = answer_token_logprobs(logits, batch, offset)
    return torch.stack([lp.mean() for lp in lps])


def _answer_logprob(model, batch: EncodedBatch) -> Float[Tensor, " batch"]:
    """The mean answer-token log-prob per row of one forward pass (the unembedding on the answer window only)."""
    logits, offset = answer_logits(model, batch)
    return _mean_answer_logprob(logits, batch, offset)


def patching_drops(
    target, source, items, *, span: PatchSpan = "answer", backend: str = "torch", batch_size: int = 32
) -> tuple[Float[np.ndarray, " n"], Float[np.ndarray, "n layers"]]:
    """(log p_target, log p_target with source patched at layer l) per item: mean answer-token log-probs.

    `target` and `source` are LoadedModels on the same tokenizer; the source's states are captured on the very same
    teacher-forced token batch (prompt + answer), so positions line up.
    """
    sites = resid_post_sites(target.model)
    base, patched = [], []
    device = input_device(target.model)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = encode(target.tokenizer, [it.prompt for it in chunk], [it.answer for it in chunk],
                       [it.subject for it in chunk]).to(device)
        _, states = run_and_capture(source.model, source.tokenizer, batch, sites, backend, all_logits=False)
        mask = patch_mask(batch, span)
        with torch.inference_mode():
            base.append(_answer_logprob(target.model, batch))
        patched.append(_patched_per_layer(target.model, batch, [(site, states[site], mask) for site in sites]))
    return torch.cat(base).double().numpy(), torch.cat(patched).double().numpy()


PATCH_TOKENS = 1024  # tokens per forward pass of the layer sweep: several layers' patched copies of a batch at once


def _tile(batch: EncodedBatch, copies: int) -> EncodedBatch:
    return EncodedBatch(*(getattr(batch, f).repeat(copies, *([1] * (getattr(batch, f).ndim - 1)))
                          for f in batch.__dataclass_fields__))


def _patched_per_layer(model, batch: EncodedBatch, patches: list[tuple[str, Tensor, Tensor]],
                       tokens: int | None = None) -> Float[Tensor, "batch layers"]:
    """Per row and patch (site, values [batch, pos, d], positions [batch, pos]): the mean answer log-prob with that
    one patch applied. The batch is repeated once per patch of a group and each patch edits only its own copy, so
    one forward pass scores several layers (the same numbers as one pass per layer, at a larger batch). Patches at
    answer-predicting positions only (span "answer") leave each prompt before its last token unchanged: it is run
    once into the key/value cache and the copies run the rest (palimpsest.capture.prefix)."""
    n = len(batch)
    answer = batch.answer_mask().bool() if bool((batch.answer_start >= 1).all()) else None
    split = None
    if answer is not None and cache_argument(model) is not None and not any(
            bool((positions.bool() & ~answer.to(positions.device)).any()) for _, _, positions in patches):
        split = split_at_answer(batch)
    if split is not None:
        key_values = prefix_key_values(model, split.prefix)
        patches = [(site, split.to_run(values), split.to_run(positions, fill=False))
                   for site, values, positions in patches]
        width = split.run.input_ids.numel()
    else:
        width = batch.input_ids.numel()
    group = max(1, (tokens or PATCH_TOKENS) // max(1, width))
    out = []
    for start in range(0, len(patches), group):
        chunk = patches[start:start + group]
        edits = {}
        for copy_index, (site, values, positions) in enumerate(chunk):
            own = torch.zeros(len(chunk) * n, *positions.shape[1:], dtype=torch.bool, device=positions.device)
            own[copy_index * n:(copy_index + 1) * n] = positions.bool()
            edits[site] = replace_with(values.repeat(len(chunk), *([1] * (values.ndim - 1))), own)
        with torch.inference_mode(), intervene(model, edits):
            if split is None:
                logprob = _answer_logprob(model, _tile(batch, len(chunk)))
            else:
                tiled = SplitBatch(prefix=split.prefix, rows=split.rows.repeat(len(chunk)),
                                   run=_tile(split.run, len(chunk)), score=_tile(split.score, len(chunk)),
                                   start=split.start.repeat(len(chunk)))
                logprob = _mean_answer_logprob(run_logits(model, tiled, key_values), tiled.score)
        out.append(logprob.reshape(len(chunk), n).T)
    return torch.cat(out, dim=1)


def counterfactual_items(items, holdout) -> list:
    """Per forget item: a never-known holdout item's prompt (same attribute where one exists, in turn) carrying the
    forget item's answer, e.g. "The capital of Tuvalu is" + " Paris"."""
    from palimpsest.concepts import Item

    by_attribute: dict = {}
    for h in holdout:
        by_attribute.setdefault(h.attribute, []).append(h)
    used: dict = {}
    out = []
    for it in items:
        pool = by_attribute.get(it.attribute) or list(holdout)
        turn = used.get(id(pool), 0)
        used[id(pool)] = turn + 1
        source = pool[turn % len(pool)]
        out.append(Item(prompt=source.prompt, answer=it.answer, subject=source.subject, attribute=it.attribute))
    return out


def holdout_patching_drops(
    target, items, holdout, *, backend: str = "torch", batch_size: int = 32
) -> tuple[Float[np.ndarray, " n"], Float[np.ndarray, "n layers"]]:
    """(log p_target, log p_target with its own states from a never-known fact patched in at layer l) per item.

    The source of item i is the target model itself on a holdout prompt (a fact it never knew) followed by item
    i's answer; the positions predicting the answer tokens are patched one for one (span "answer"). It stands in
    for S1 when there is no floor model: the state of a model that does not know this fact, at each layer.
    Items whose answer tokenises to a different length after the holdout prompt get NaN rows.
    """
    sites = resid_post_sites(target.model)
    sources = counterfactual_items(items, holdout)
    base, patched = [], []
    device = input_device(target.model)
    for start in range(0, len(items), batch_size):
        chunk, src_chunk = items[start:start + batch_size], sources[start:start + batch_size]
        batch = encode(target.tokenizer, [it.prompt for it in chunk], [it.answer for it in chunk],
                       [it.subject for it in chunk]).to(device)
        src = encode(target.tokenizer, [it.prompt for it in src_chunk], [it.answer for it in src_chunk],
                     [it.subject for it in src_chunk]).to(device)
        _, states = run_and_capture(target.model, target.tokenizer, src, sites, backend, all_logits=False)
        mask, src_mask = patch_mask(batch, "answer"), patch_mask(src, "answer")
        aligned = mask.sum(1) == src_mask.sum(1)
        mask = mask & aligned[:, None]
        with torch.inference_mode():
            base.append(_answer_logprob(target.model, batch))
        patches = []
        for site in sites:
            moved = torch.zeros(*mask.shape, states[site].shape[-1], dtype=states[site].dtype, device=device)
            moved[mask] = states[site][src_mask & aligned[:, None]].to(device)  # row-major: one for one
            patches.append((site, moved, mask))
        per_layer = _patched_per_layer(target.model, batch, patches)
        patched.append(torch.where(aligned[:, None].to(per_layer.device), per_layer, torch.nan))
    return torch.cat(base).double().numpy(), torch.cat(patched).double().numpy()


def uds_per_example(d1_items: Float[np.ndarray, "n layers"], d2_items: Float[np.ndarray, "n layers"],
                    tau: float) -> Float[np.ndarray, " n"]:
    """UDS_i of each example (NaN where no layer has Δ^S1_il > τ: the example is excluded)."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0 (got {tau}): a counted layer needs Δ^S1 > 0")
    d1, d2 = np.asarray(d1_items, dtype=np.float64), np.asarray(d2_items, dtype=np.float64)
    keep = d1 > tau
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(keep, np.clip(d2 / np.where(keep, d1, 1.0), 0.0, 1.0), 0.0)
        denom = np.where(keep, d1, 0.0).sum(1)
        return np.where(denom > 0, (np.where(keep, d1, 0.0) * ratio).sum(1) / denom, np.nan)


def uds(d1_items: Float[np.ndarray, "n layers"], d2_items: Float[np.ndarray, "n layers"],
        tau: float) -> tuple[float | None, int]:
    """(UDS, number of examples used): the mean over examples of UDS_i = Σ_{l: Δ^S1_il > τ} Δ^S1_il ·
    clip(Δ^S2_il / Δ^S1_il, 0, 1) / Σ_{same l} Δ^S1_il; examples with no such layer are excluded (None if all are).

    Definition: the Unlearning Depth Score (UDS_i, per example, averaged), as in the reference implementation
    gnueaj/unlearning-depth-score, compute_uds.py `_run_s1_s2_side_by_side_logprob_batch` (avg_uds).
    """
    per = uds_per_example(d1_items, d2_items, tau)
    used = per[np.isfinite(per)]
    return (float(used.mean()) if len(used) else None), int(len(used))


def bootstrap_uds(
    d1: Float[np.ndarray, "n layers"], d2: Float[np.ndarray, "n layers"], tau: float, *,
    n_bootstrap: int, ci_level: float, seed: int,
) -> tuple[float, float] | None:
    """Percentile interval of UDS, resampling examples (Δ^S1 and Δ^S2 of an example stay together)."""
    return bootstrap_ci(lambda a, b: uds(a, b, tau)[0], d1, d2, n_bootstrap=n_bootstrap, ci_level=ci_level,
                        seed=seed)


def depth_capped_score(d1: Float[np.ndarray, " layers"], d2: Float[np.ndarray, " layers"],
                       min_delta: float) -> float | None:
    """palimpsest's variant, not UDS: one Δ^S1-weighted clip(Δ^S2/Δ^S1, 0, 1) over item-averaged drops."""
    keep = d1 > min_delta
    if not keep.any():
        return None
    ratio = np.clip(d2[keep] / d1[keep], 0.0, 1.0)
    return float((d1[keep] * ratio).sum() / d1[keep].sum())


def bootstrap_depth_capped(
    d1: Float[np.ndarray, "n layers"], d2: Float[np.ndarray, "n layers"], min_delta: float, *,
    n_bootstrap: int, ci_level: float, seed: int,
) -> tuple[float, float] | None:
    """Percentile interval of depth_capped, resampling items (Δ^S1 and Δ^S2 of an item stay together)."""
    return bootstrap_ci(lambda a, b: depth_capped_score(a.mean(0), b.mean(0), min_delta), d1, d2,
                        n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed)


def cap_drops(d1_items: Float[np.ndarray, "n layers"], d2_items: Float[np.ndarray, "n layers"],
              base: Float[np.ndarray, " n"], level: float) -> tuple[np.ndarray, np.ndarray]:
    """Both drops capped per item at log p_pre − `level` (a patch removes at most the answer)."""
    cap = np.clip(base - level, 0.0, None)[:, None]
    return np.minimum(d1_items, cap), np.minimum(d2_items, cap)


def per_layer_rows(d1_items: Float[np.ndarray, "n layers"], d2_items: Float[np.ndarray, "n layers"], tau: float,
                   d1_capped: Float[np.ndarray, " layers"], d2_capped: Float[np.ndarray, " layers"],
                   min_delta: float) -> list[dict]:
    """Per layer: the mean drops UDS reads, how many examples count the layer (Δ^S1_il > τ), and depth_capped's."""
    d1, d2 = d1_items.mean(0), d2_items.mean(0)
    counted = (d1_items > tau).sum(0)
    return [{"layer": i, "delta_s1": round(float(d1[i]), 4), "delta_s2": round(float(d2[i]), 4),
             "uds_examples_counted": int(counted[i]),
             "delta_s1_capped": round(float(d1_capped[i]), 4), "delta_s2_capped": round(float(d2_capped[i]), 4),
             "ratio_capped": (round(float(np.clip(d2_capped[i] / d1_capped[i], 0, 1)), 4)
                              if d1_capped[i] > min_delta else None),
             "counted_capped": bool(d1_capped[i] > min_delta)} for i in range(len(d2))]


def per_item_rows(items, d1_items: Float[np.ndarray, "n layers"], d2_items: Float[np.ndarray, "n layers"],
                  tau: float, cap: Float[np.ndarray, " n"] | None = None) -> list[dict]:
    """Per example: its uncapped drops per layer, UDS_i (None when excluded), its counted layers, its cap."""
    per = uds_per_example(d1_items, d2_items, tau)
    rows = []
    for i, it in enumerate(items):
        row = {"index": i, "prompt": it.prompt, "answer": it.answer,
               "delta_s1": [round(float(x), 4) for x in d1_items[i]],
               "delta_s2": [round(float(x), 4) for x in d2_items[i]],
               "uds": round(float(per[i]), 4) if np.isfinite(per[i]) else None,
               "uds_layers": int((d1_items[i] > tau).sum())}
        if cap is not None:
            row["drop_cap"] = round(float(cap[i]), 4)
        rows.append(row)
    return rows


def _figure(d1: np.ndarray | None, d2: np.ndarray, threshold: float, label: str) -> go.Figure:
    layers = list(range(len(d2)))
    fig = go.Figure()
    if d1 is not None:
        fig.add_scatter(x=layers, y=d1.tolist(), mode="lines+markers", name="Δ S1: floor (retain) patched in",
                        line=dict(color="#9D9D9D"))
    fig.add_scatter(x=layers, y=d2.tolist(), mode="lines+markers", name="Δ S2: post patched in",
                    line=dict(color="#E45756"))
    fig.add_hline(y=threshold, line_dash="dot", line_color="#888", annotation_text=label)
    fig.update_layout(xaxis=dict(title="layer (resid_post patched)", dtick=1),
                      yaxis=dict(title="mean drop in answer log-prob (pre − patched)"), height=360,
                      margin=dict(l=50, r=20, t=30, b=40))
    return fig


@register
class UnlearningDepth(Analyser):
    name = "depth"
    kind = "residue"
    title = "Unlearning depth (activation patching)"
    description = (
        "Per layer, the post model's (S2) and the floor/retain model's (S1) residual stream is patched into the pre "
        "model, by default at the positions that predict the answer tokens, and the drop of the answer's mean "
        "log-probability is measured per example. The Unlearning Depth Score (UDS) of an example is the share of "
        "the per-layer drops that true deletion needs (S1) that the post model reproduces (S2), over the layers "
        "where S1 drops that example's answer by more than tau; UDS is its mean over examples. depth_capped is "
        "palimpsest's variant: the same share over item-averaged drops capped at the floor. Residue = 1 − the "
        "chosen score (option `score`): 1 when the post model left every layer deletion needs unchanged (e.g. only "
        "the output head moved), 0 when it changed them as much as the retain model. Without a floor model, S1 is "
        "the pre model's own states on a never-known holdout prompt followed by the forget answer (a fact it never "
        "knew); without holdout facts either, the score cannot be computed and S2's per-layer drops are shown."
    )
    Config = DepthConfig
    modalities = frozenset({"text"})
    needs = frozenset()  # forward passes with patches; reads no captures (the floor is optional: S2 alone)

    def measure(self, ctx) -> Result:
        opts: DepthConfig = ctx.opts
        pair, config = ctx.pair, ctx.config
        items = list(ctx.concept.forget)
        kwargs = dict(span=opts.span, backend=config.backend, batch_size=config.batch_size)
        base, post_patched = patching_drops(pair.pre, pair.post, items, **kwargs)
        d2_items = base[:, None] - post_patched
        notes = [f"patched span: {opts.span} positions at every blocks.{{l}}.hook_resid_post, one layer at a time; "
                 "Δ = mean over answer tokens of log p_pre − mean over answer tokens of log p_patched"]
        holdout = list(ctx.concept.holdout)
        if pair.floor is None and not (opts.holdout_floor and opts.span == "answer"
                                       and len(holdout) >= opts.min_holdout_items):
            return self._s2_only(d2_items, len(items), opts, notes, ctx, len(holdout))
        # S1 reads pre and the floor (or pre alone): kept for the pre model (capture.memo), so every audit of this
        # pre against another post model reuses it
        if pair.floor is not None:
            floor_stamp = model_stamp(pair.floor.model)
            key = ("depth.floor_patched", tuple(items), opts.span, config.backend, config.batch_size,
                   id(pair.floor.model), floor_stamp)
            compute = lambda: patching_drops(pair.pre, pair.floor, items, **kwargs)[1]  # noqa: E731
            floor_patched = memoized(pair.pre.model, key, compute) if floor_stamp is not None else compute()
            floor_source = "floor model (retain/oracle) patched in as S1"
        else:
            floor_patched = memoized(
                pair.pre.model, ("depth.holdout_patched", tuple(items), tuple(holdout), config.backend,
                                 config.batch_size),
                lambda: holdout_patching_drops(pair.pre, items, holdout, backend=config.backend,
                                               batch_size=config.batch_size)[1])
            floor_source = (f"never-known holdout facts ({len(holdout)} items): the pre model's own states on a "
                            "holdout prompt + the forget answer patched in as S1")
            kept = np.isfinite(floor_patched).all(1)
            notes.append(f"no floor model: S1 = the pre model's states on \"holdout prompt + forget answer\" (a fact "
                         f"it never knew), patched at the positions predicting the answer; {int(kept.sum())} of "
                         f"{len(items)} items align token for token and are scored")
            items, base, d2_items, floor_patched = ([it for it, k in zip(items, kept) if k], base[kept],
                                                    d2_items[kept], floor_patched[kept])
        d1_items = base[:, None] - floor_patched
        uds_score, n_used = uds(d1_items, d2_items, opts.tau)
        n_excluded = len(items) - n_used
        notes.append(f"uds: per-example UDS_i over the layers where the floor's patch drops that example's answer by "
                     f"more than tau={opts.tau}, averaged over the {n_used} examples with such a layer; "
                     f"{n_excluded} of {len(items)} examples have none and are excluded")

        # depth_capped: a patch can remove at most the knowledge: each item's Δ is capped at log p_pre − L, L = log
        # of the floor model's mean answer probability over the forget items (the level of a model that does not
        # know them). Larger drops are basis mismatch between independently trained models or a confidently wrong
        # floor, not deletion.
        c1, c2, cap = d1_items, d2_items, None
        if opts.cap == "floor":
            # the level of not knowing: the floor model on the forget answers, else the pre model on the answers of
            # holdout facts it never knew
            level = float(np.log(np.mean(np.exp(
                _own_logprob(pair.floor, items, config.batch_size) if pair.floor is not None
                else _own_logprob(pair.pre, holdout, config.batch_size)))))
            c1, c2 = cap_drops(d1_items, d2_items, base, level)
            cap = np.clip(base - level, 0.0, None)
            notes.append(f"depth_capped (palimpsest's variant, not UDS): each item's Δ is capped at log p_pre − "
                         f"{level:.2f}, the log of the mean answer probability of a model that does not know the "
                         "answers (the floor model's, else the pre model's on never-known holdout facts), then one ratio of "
                         f"item-averaged drops over layers with mean Δ^S1 > min_delta={opts.min_delta}")
        d1_capped, d2_capped = c1.mean(0), c2.mean(0)
        capped_score = depth_capped_score(d1_capped, d2_capped, opts.min_delta)
        chosen = uds_score if opts.score == "uds" else capped_score

        summary = {"depth": chosen, "score": opts.score, "uds": uds_score, "uds_n_used": n_used,
                   "uds_n_excluded": n_excluded, "depth_capped": capped_score,
                   "delta_s1": d1_items.mean(0).tolist(), "delta_s2": d2_items.mean(0).tolist(),
                   "delta_s1_capped": d1_capped.tolist(), "delta_s2_capped": d2_capped.tolist(),
                   "n_items": len(items), "span": opts.span, "tau": opts.tau, "min_delta": opts.min_delta,
                   "cap": opts.cap, "logprob_pre": float(base.mean()),
                   "s1_source": "floor_model" if pair.floor is not None else "holdout"}
        common = dict(summary=summary,
                      tables={"per_layer": per_layer_rows(d1_items, d2_items, opts.tau, d1_capped, d2_capped,
                                                          opts.min_delta)},
                      per_item=per_item_rows(items, d1_items, d2_items, opts.tau, cap),
                      floor_source=floor_source)
        if chosen is None:
            why = (f"no example has a layer where patching the floor model in drops its answer by more than "
                   f"tau={opts.tau}" if opts.score == "uds" else
                   f"patching the floor model into pre drops the mean answer log-prob by at most "
                   f"min_delta={opts.min_delta} at every layer")
            result = inconclusive(self.name, f"{why}: the pre model does not hold the answers beyond the floor, so "
                                  f"the depth score ({opts.score}) is undefined", **common)
        else:
            result = self._depth_result(chosen, d1_items, d2_items, c1, c2, opts, config, common)
        result.notes.extend(notes)
        shown = (d1_items.mean(0), d2_items.mean(0), opts.tau, "tau (per example)") if opts.score == "uds" else \
            (d1_capped, d2_capped, opts.min_delta, "min_delta")
        return self._with_figures(result, *shown, ctx)

    def _s2_only(self, d2_items: Float[np.ndarray, "n layers"], n_items: int, opts: DepthConfig,
                 notes: list[str], ctx, n_holdout: int) -> Result:
        """Without a floor model or holdout facts: inconclusive, with the post model's per-layer drops (S2)."""
        d2 = d2_items.mean(0)
        why = (f"the concept has {n_holdout} holdout items (< min_holdout_items={opts.min_holdout_items})"
               if opts.holdout_floor and opts.span == "answer" else
               "holdout_floor is off" if not opts.holdout_floor else f"span={opts.span} (the holdout S1 patches span=answer)")
        result = inconclusive(
            self.name, f"the depth score needs an S1: a floor (retain/oracle) model, or never-known holdout facts "
            f"({why}); only the post model's per-layer drops (S2) are reported. To make it conclusive: pass "
            f"--floor MODEL, or add >= {opts.min_holdout_items} holdout items (facts the pre model never knew)",
            kind="residue",
            summary={"depth": None, "uds": None, "depth_capped": None, "score": opts.score, "delta_s2": d2.tolist(),
                     "n_items": n_items, "span": opts.span},
            tables={"per_layer": [{"layer": i, "delta_s2": round(float(d2[i]), 4)} for i in range(len(d2))]})
        result.notes.extend(notes)
        return self._with_figures(result, None, d2, opts.tau, "tau (per example)", ctx)

    def _depth_result(self, depth: float, d1_items: Float[np.ndarray, "n layers"],
                      d2_items: Float[np.ndarray, "n layers"], c1: Float[np.ndarray, "n layers"],
                      c2: Float[np.ndarray, "n layers"], opts: DepthConfig, config, common: dict) -> Result:
        # not `finalize`: the residue is a nonlinear score of per-layer drops, bootstrapped over items as a whole
        boot = dict(n_bootstrap=config.n_bootstrap, ci_level=config.ci_level, seed=config.seed)
        ci = (bootstrap_uds(d1_items, d2_items, opts.tau, **boot) if opts.score == "uds"
              else bootstrap_depth_capped(c1, c2, opts.min_delta, **boot))
        residue = 1.0 - depth
        name = "UDS" if opts.score == "uds" else "depth_capped"
        return Result(
            name=self.name, kind="residue", residue=residue,
            ci=(1.0 - ci[1], 1.0 - ci[0]) if ci else None, floor=0.0, ceiling=1.0, post=residue, **common,
            evidence=(f"{name} {depth:.2f}: the post model changed {depth:.0%} of the per-layer change true "
                      f"deletion needs (residue {residue:.2f})"))

    def _with_figures(self, result: Result, d1, d2, threshold: float, label: str, ctx) -> Result:
        for title, figure in self.figures({"d1": d1, "d2": d2, "threshold": threshold, "label": label}, ctx).items():
            result.add_figure(title, figure)
        return result

    def figures(self, measured, ctx) -> dict:
        return {"Answer log-prob drop per patched layer": _figure(measured["d1"], measured["d2"],
                                                                  measured["threshold"], measured["label"])}


def _own_logprob(loaded, items, batch_size: int) -> Float[np.ndarray, " n"]:
    from palimpsest.capture import score_answers

    return score_answers(loaded.model, loaded.tokenizer, items, batch_size=batch_size).mean_logprob.astype(np.float64)
