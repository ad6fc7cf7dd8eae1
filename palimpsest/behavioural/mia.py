"""Membership inference on forget (members) vs holdout (never-trained) items: the attacks open-unlearning
implements (LOSS, zlib, Min-K%, Min-K%++, gradient norm, reference model), each scored as its reference does, an AUC
per attack, and PrivLeak against the floor (retain/oracle) model as MUSE defines it."""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from pydantic import Field
from sklearn.metrics import roc_auc_score

from palimpsest.behavioural.grad_norms import _gradient_norms_loop, gradient_norms  # noqa: F401  (the tests' reference)
from palimpsest.capture import encode
from palimpsest.capture.backends import forward_kwargs
from palimpsest.capture.memo import memoized
from palimpsest.capture.tokens import continuation
from palimpsest.devices import input_device, offloaded_models
from palimpsest.stats import bootstrap_ci_independent, calibrate_value
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register, skipped

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "grad_norm", "reference")
Attack = Literal["loss", "zlib", "min_k", "min_k_plus_plus", "grad_norm", "reference"]
# why an offloaded model gets no gradient-norm score
GRAD_NORM_OFFLOADED = ("gradient-norm attack differentiates every parameter through torch.func.functional_call, "
                       "which cannot differentiate parameters on the meta device")
VARIANCE_FLOOR = 1e-6  # open-unlearning's Min-K%++ clamps the next-token log-prob variance here


class MIAConfig(AnalyserConfig):
    attack: Attack = "loss"  # the attack whose calibrated AUC is the residue (every attack's AUC is reported)
    k: float = Field(0.4, gt=0.0, le=1.0)  # Min-K% and Min-K%++: share of lowest tokens (open-unlearning: 0.4)
    p: Literal[1, 2, "inf"] = 2  # gradient-norm attack: the order of each parameter tensor's gradient norm
    # tokens scored: prompt + answer (MUSE's privleak sets are raw text) or the answer only (TOFU's QA MIA sets)
    text: Literal["full", "answer"] = "full"
    min_gap: float = 0.1  # the pre model's AUC must beat the floor model's by more than this


def full_text(item) -> str:
    return item.prompt + continuation(item.answer, item.prompt)


def scored_texts(items, text: str) -> tuple[list[str], list[str] | None]:
    """(prompts, answers) to encode: the full text as one prompt, or the prompt with its answer scored."""
    if text == "full":
        return [full_text(it) for it in items], None
    return [it.prompt for it in items], [it.answer for it in items]


def token_statistics(model, tokenizer, prompts: list[str], answers: list[str] | None,
                     batch_size: int) -> list[dict[str, np.ndarray]]:
    """Per text, per scored token: log p(x_t | x_<t), and the mean and std of log p under the model's own
    next-token distribution (what Min-K%++ normalises by; variance clamped at 1e-6 as open-unlearning does).
    Scored tokens: every token after the first (`answers` None) or the answer tokens."""
    device = input_device(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch = encode(tokenizer, chunk, None if answers is None else answers[start:start + batch_size]).to(device)
        with torch.inference_mode():
            logp = torch.log_softmax(model(**forward_kwargs(batch)).logits.float(), dim=-1)[:, :-1]
        targets = batch.input_ids[:, 1:]
        token_lp = logp.gather(-1, targets[..., None]).squeeze(-1)
        probs = logp.exp()
        mu = (probs * logp).sum(-1)
        sigma = ((probs * logp.square()).sum(-1) - mu.square()).clamp(min=VARIANCE_FLOOR).sqrt()
        scored = (batch.attention_mask[:, 1:] if answers is None else batch.answer_mask()[:, :-1]).bool()
        for row in range(len(chunk)):
            keep = scored[row]
            out.append({"logp": token_lp[row, keep].double().cpu().numpy(), "mu": mu[row, keep].double().cpu().numpy(),
                        "sigma": sigma[row, keep].double().cpu().numpy()})
    return out

def kept_count(n_tokens: int, k: float) -> int:
    """Tokens Min-K% averages: max(1, floor(k·n)), as open-unlearning's `MinKProbAttack` (`int(len · k)`)."""
    return max(1, int(n_tokens * k))


def _lowest_mean(values: np.ndarray, k: float) -> float:
    if len(values) == 0:  # the reference scores a text without scored tokens 0
        return 0.0
    return float(np.sort(values)[:kept_count(len(values), k)].mean())


def attack_scores(stats: list[dict[str, np.ndarray]], texts: list[str], k: float, *,
                  grad_norms: np.ndarray | None = None,
                  reference_loss: np.ndarray | None = None) -> dict[str, Float[np.ndarray, " n"]]:
    """Membership scores, higher = more likely a training member (the negation of open-unlearning's scores, which
    are higher for non-members: the AUC with members as positives is the same number as its `mia_auc`)."""
    loss = np.array([-s["logp"].mean() if len(s["logp"]) else 0.0 for s in stats])
    zlib_bytes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    scores = {
        "loss": -loss,
        "zlib": -loss / zlib_bytes,
        "min_k": np.array([_lowest_mean(s["logp"], k) for s in stats]),
        "min_k_plus_plus": np.array([_lowest_mean((s["logp"] - s["mu"]) / s["sigma"], k) for s in stats]),
    }
    if grad_norms is not None:
        scores["grad_norm"] = -grad_norms
    if reference_loss is not None:  # reference attack: target loss − reference loss, negated
        scores["reference"] = reference_loss - loss
    return scores


def mean_loss(stats: list[dict[str, np.ndarray]]) -> Float[np.ndarray, " n"]:
    return np.array([-s["logp"].mean() if len(s["logp"]) else 0.0 for s in stats])


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """PrivLeak as MUSE defines it (Shi et al. 2024, "MUSE", Sec. 3: (AUC_unlearn - AUC_retrain) / AUC_retrain, in %),
    where MUSE's AUC is 1 - the usual members-vs-non-members AUC (retrained ~0.5, still memorising ~0): strongly
    negative = under-unlearned (members still stand out), positive = over-unlearned, 0 = like the retrained model."""
    muse_unlearned, muse_retrain = 1.0 - auc_unlearned, 1.0 - auc_retrain
    return float((muse_unlearned - muse_retrain) / (muse_retrain + 1e-10) * 100.0)  # open-unlearning's epsilon


def auc_gain_over_floor(auc_unlearned: float, auc_retrain: float) -> float:
    """palimpsest's own variant (not PrivLeak): the usual AUC's relative excess over the floor model's, a fraction."""
    return float((auc_unlearned - auc_retrain) / auc_retrain)


def pairwise_wins(members: Float[np.ndarray, " m"], nonmembers: Float[np.ndarray, " h"]) -> Float[np.ndarray, "m h"]:
    """1 where the member scores higher, 0.5 on ties: the mean over any rows/columns is that sample's AUC."""
    diff = members[:, None] - nonmembers[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def bootstrap_residue(wins: dict[str, np.ndarray], *, n_bootstrap: int, ci_level: float, seed: int,
                      min_gap: float) -> tuple[float, float] | None:
    """Percentile CI of (AUC_post − AUC_floor) / (AUC_pre − AUC_floor), resampling members and non-members
    (the same resample for the three models); the pairwise-wins matrix makes each resampled AUC one indexed mean."""
    m, h = wins["pre"].shape

    def residue(rows: np.ndarray, cols: np.ndarray) -> float | None:
        auc = {name: float(w[np.ix_(rows, cols)].mean()) for name, w in wins.items()}
        return calibrate_value(auc["post"], auc["floor"], auc["pre"], min_gap)

    return bootstrap_ci_independent(residue, (m, h), n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed)


def _figure(aucs: dict[str, dict[str, float]]) -> go.Figure:
    fig = go.Figure()
    colours = {"pre": "#4C78A8", "post": "#E45756", "floor": "#9D9D9D"}
    for model, by_attack in aucs.items():
        fig.add_bar(name=model, x=list(by_attack), y=list(by_attack.values()), marker_color=colours.get(model))
    fig.add_hline(y=0.5, line_dash="dot", line_color="#888", annotation_text="chance")
    fig.update_layout(barmode="group", yaxis=dict(title="AUC (forget = members, holdout = non-members)",
                                                  range=[0, 1.05]), height=360, margin=dict(l=50, r=20, t=30, b=40))
    return fig


@register
class MembershipInference(Analyser):
    name = "mia"
    kind = "residue"
    title = "Membership inference (forget vs never-trained items)"
    description = (
        "Can an attacker still tell the forget items (members) from never-trained items of the same kind (the "
        "concept's holdout set)? The attacks of open-unlearning score the full text (prompt + answer; option `text`): "
        "LOSS, zlib (loss over zlib entropy), Min-K% (mean of the lowest k = 40% token log-probs), Min-K%++ (the same "
        "on log-probs standardised by the model's own next-token distribution), gradient norm (mean p-norm of the "
        "loss gradient over parameter tensors) and, with a floor model, reference (loss minus the floor model's "
        "loss); each gives an AUC (0.5 = indistinguishable). With a floor "
        "(oracle) model the residue is the calibrated AUC of the chosen attack, (AUC_post − AUC_floor) / (AUC_pre − "
        "AUC_floor), and PrivLeak per attack as MUSE defines it (in %, on MUSE's AUC = 1 − this AUC: strongly negative = "
        "members still stand out, under-unlearned; 0 = like the floor model); without one the AUCs are info only "
        "(holdout items need not be distributed like the forget items on a real model)."
    )
    Config = MIAConfig
    modalities = frozenset({"text"})
    needs = frozenset({"gradients"})  # the gradient-norm attack; the floor is optional (without it: info only)

    def offload_blocker(self, ctx) -> str | None:
        if ctx.opts.attack == "grad_norm":
            return f"the {GRAD_NORM_OFFLOADED}, and attack='grad_norm' is the residue"
        return None  # the other attacks run; grad_norm is left out and a note says why

    def measure(self, ctx) -> Result:
        opts: MIAConfig = ctx.opts
        pair, concept, config = ctx.pair, ctx.concept, ctx.config
        members, nonmembers = list(concept.forget), list(concept.holdout)
        if not nonmembers:
            return skipped(self.name, "the concept has no holdout (never-trained) items to serve as non-members")
        k, attack, min_gap = opts.k, opts.attack, opts.min_gap
        items = members + nonmembers
        prompts, answers = scored_texts(items, opts.text)
        texts = [full_text(it) if opts.text == "full" else it.answer for it in items]
        labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        models = pair.models()
        offloaded = offloaded_models(pair)  # then no gradient norms, for any model (every AUC over the same attacks)
        if offloaded and (blocker := self.offload_blocker(ctx)):
            return skipped(self.name, f"{', '.join(offloaded)}: weights offloaded to disk (device_map); {blocker}")
        def text_key(kind: str, loaded) -> tuple:  # kept per model (capture.memo): every audit of this pre reuses it
            return (kind, id(loaded.tokenizer), tuple(prompts), None if answers is None else tuple(answers))

        stats = {name: memoized(loaded.model, (*text_key("mia.token_statistics", loaded), config.batch_size),
                                lambda loaded=loaded: token_statistics(loaded.model, loaded.tokenizer, prompts, answers,
                                                                       config.batch_size))
                 for name, loaded in models.items()}
        reference_loss = mean_loss(stats["floor"]) if "floor" in stats else None
        aucs: dict[str, dict[str, float]] = {}
        scores_by_model = {}
        for model_name, loaded in models.items():
            grads = memoized(loaded.model, (*text_key("mia.gradient_norms", loaded), opts.p),
                             lambda loaded=loaded: gradient_norms(loaded.model, loaded.tokenizer, prompts, answers,
                                                                  opts.p)) if not offloaded else None
            scores_by_model[model_name] = scores = attack_scores(stats[model_name], texts, k, grad_norms=grads,
                                                                 reference_loss=reference_loss)
            aucs[model_name] = {a: float(roc_auc_score(labels, s)) for a, s in scores.items()}
        attacks = [a for a in ATTACKS if a in aucs["pre"]]
        summary: dict = {f"auc_{m}": dict(v) for m, v in aucs.items()}
        summary.update({"attack": attack, "k": k, "p": opts.p, "text": opts.text, "n_members": len(members),
                        "n_nonmembers": len(nonmembers)})
        tables = {"auc": [{"attack": a, **{m: round(aucs[m][a], 4) for m in aucs}} for a in attacks]}
        per_item = [{"set": "forget" if i < len(members) else "holdout", "text": t,
                     **{f"{a}_{m}": round(float(scores_by_model[m][a][i]), 4) for m in aucs for a in attacks}}
                    for i, t in enumerate(texts)]
        common = dict(summary=summary, tables=tables, per_item=per_item)
        if pair.floor is None:
            shown = attack if attack in aucs["pre"] else "loss"  # the reference attack needs the floor model
            result = Result(name=self.name, kind="info", **common,
                            evidence=f"{shown} AUC {aucs['pre'][shown]:.2f} (pre) -> {aucs['post'][shown]:.2f} "
                                     "(post); no floor model, so not calibrated")
            result.notes.append("no floor model: AUCs are reported, not calibrated (0.5 is chance only when the "
                                "holdout items are distributed like the forget items)")
        else:
            summary["privleak"] = {a: privleak(aucs["post"][a], aucs["floor"][a]) for a in attacks}
            summary["privleak_pre"] = {a: privleak(aucs["pre"][a], aucs["floor"][a]) for a in attacks}
            summary["auc_gain_over_floor"] = {a: auc_gain_over_floor(aucs["post"][a], aucs["floor"][a])
                                              for a in attacks}
            post, floor, ceiling = aucs["post"][attack], aucs["floor"][attack], aucs["pre"][attack]
            residue = calibrate_value(post, floor, ceiling, min_gap)
            fields = dict(floor=floor, ceiling=ceiling, post=post, floor_source="floor model (oracle) AUC", **common)
            if min(len(members), len(nonmembers)) < config.min_items:
                result = inconclusive(self.name, f"too few items ({len(members)} members, {len(nonmembers)} "
                                      f"non-members; min_items={config.min_items})", **fields)
            elif residue is None:
                result = inconclusive(self.name, f"{attack} AUC of the pre model ({ceiling:.2f}) is not above the "
                                      f"floor model's ({floor:.2f}) by min_gap={min_gap}: the attack cannot "
                                      "separate members from non-members", **fields)
            else:  # not `finalize`: the AUCs are scalars; the CI resamples members and non-members
                wins = {m: pairwise_wins(scores_by_model[m][attack][:len(members)],
                                         scores_by_model[m][attack][len(members):]) for m in ("pre", "post", "floor")}
                ci = bootstrap_residue(wins, n_bootstrap=config.n_bootstrap, ci_level=config.ci_level,
                                       seed=config.seed, min_gap=min_gap)
                result = Result(name=self.name, kind="residue", residue=residue, ci=ci, **fields,
                                evidence=(f"{attack} membership AUC {ceiling:.2f} (pre) -> {post:.2f} (post), floor "
                                          f"{floor:.2f}; PrivLeak {summary['privleak'][attack]:+.1f}%"))
        if offloaded:
            result.notes.append(f"grad_norm not computed: {', '.join(offloaded)} offloaded to disk (device_map), and "
                                f"the {GRAD_NORM_OFFLOADED}")
        for title, figure in self.figures(aucs, ctx).items():
            result.add_figure(title, figure)
        return result

    def figures(self, measured, ctx) -> dict:
        return {"Membership-inference AUC per attack": _figure(measured)}
