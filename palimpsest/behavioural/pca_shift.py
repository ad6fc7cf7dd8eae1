"""Where did the unlearning touch the network? The shift of the forget items' activations along the pre model's top
principal components, per layer, and the relative change of every weight tensor."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits
from torch import Tensor

from palimpsest.capture import encode, resid_post_sites, run_and_capture
from palimpsest.capture.tokens import EncodedBatch
from palimpsest.devices import input_device, read_parameter
from palimpsest.types import Analyser, AnalyserConfig, Result, register

_LAYER_RE = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


class PCAShiftConfig(AnalyserConfig):
    n_components: int = 5  # the pre model's top principal components the shift is measured along, per layer
    weight_change_threshold: float = 1e-6  # a tensor counts as changed when its relative change is above this


def answer_span_mask(batch: EncodedBatch) -> Bool[Tensor, "batch pos"]:
    """The answer span: the positions that predict an answer token (the last prompt token onwards) and the answer
    tokens themselves, so a one-token answer still contributes two positions."""
    pos = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)[None, :]
    start = batch.prompt_last[:, None]
    return batch.attention_mask.bool() & (pos >= start) & (pos <= start + batch.answer_len[:, None])


def span_activations(loaded, items, sites: list[str], backend: str, batch_size: int) -> dict[str, Float[Tensor, "n d"]]:
    """Residual-stream activations at every answer-span position of every item, stacked per site."""
    out: dict[str, list[Tensor]] = {site: [] for site in sites}
    device = input_device(loaded.model)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = encode(loaded.tokenizer, [it.prompt for it in chunk], [it.answer for it in chunk],
                       [it.subject for it in chunk]).to(device)
        _, acts = run_and_capture(loaded.model, loaded.tokenizer, batch, sites, backend, all_logits=False)
        mask = answer_span_mask(batch)
        for site in sites:
            out[site].append(acts[site][mask].float().cpu())
    return {site: torch.cat(chunks) for site, chunks in out.items()}


def fit_pca(pre: Float[np.ndarray, "n d"], n_components: int, seed: int) -> PCA:
    k = max(1, min(n_components, pre.shape[0] - 1, pre.shape[1]))
    # small matrices: BLAS threads only contend with each other (10x slower on a busy 2-core machine)
    with threadpool_limits(1):
        return PCA(n_components=k, svd_solver="full", random_state=seed).fit(pre)


def pc_shift(pca: PCA, pre: Float[np.ndarray, "n d"], other: Float[np.ndarray, "n d"]
             ) -> tuple[float, Float[np.ndarray, " k"]]:
    """Per component of `pca` (fitted on pre), |mean(other) − mean(pre)| in units of pre's std along it. Returns the
    norm over the components and the per-component shifts."""
    with threadpool_limits(1):
        z_pre, z_other = pca.transform(pre), pca.transform(other)
    std = np.sqrt(pca.explained_variance_).clip(min=1e-8)
    per_pc = np.abs(z_other.mean(0) - z_pre.mean(0)) / std
    return float(np.linalg.norm(per_pc)), per_pc


def weight_changes(pre_model: torch.nn.Module, post_model: torch.nn.Module) -> list[dict]:
    """||W_post − W_pre|| / ||W_pre|| (Frobenius) for every parameter tensor; tensors only one side has are listed
    with change None and a note. Weights offloaded by accelerate are loaded one tensor (per model) at a time."""
    pre = dict(pre_model.named_parameters())  # shapes only: offloaded tensors (meta) are read one at a time below
    post = dict(post_model.named_parameters())
    rows = []
    with torch.no_grad():
        for name in dict.fromkeys([*pre, *post]):
            match = _LAYER_RE.search("." + name)
            layer = int(match.group(1)) if match else None
            if name not in pre or name not in post or pre[name].shape != post[name].shape:
                where = "post" if name not in pre else "pre" if name not in post else "both, with different shapes"
                rows.append({"tensor": name, "layer": layer, "rel_change": None, "note": f"only in {where}"})
                continue
            a = read_parameter(pre_model, name).float()
            b = read_parameter(post_model, name).to(a.device).float()
            denom = float(a.norm())
            diff = float((b - a).norm())
            rows.append({"tensor": name, "layer": layer, "rel_change": diff / denom if denom > 0 else diff})
    return rows


def weight_change_summary(rows: list[dict], threshold: float, top: int = 10) -> dict:
    numeric = [r for r in rows if r["rel_change"] is not None]
    changed = sorted((r for r in numeric if r["rel_change"] > threshold), key=lambda r: -r["rel_change"])
    by_layer: dict[str, float] = {}
    for r in numeric:
        key = "other" if r["layer"] is None else str(r["layer"])
        by_layer[key] = max(by_layer.get(key, 0.0), r["rel_change"])
    return {
        "n_tensors": len(rows), "n_changed": len(changed), "threshold": threshold,
        "changed": [r["tensor"] for r in changed],
        "top": [{"tensor": r["tensor"], "rel_change": r["rel_change"]} for r in changed[:top]],
        "max_rel_change": max((r["rel_change"] for r in numeric), default=0.0),
        "max_by_layer": by_layer,
        "mismatched": [r["tensor"] for r in rows if r["rel_change"] is None],
    }


def _shift_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    styles = {("post", "forget"): ("#E45756", "solid"), ("post", "retain"): ("#E45756", "dot"),
              ("floor", "forget"): ("#9D9D9D", "solid"), ("floor", "retain"): ("#9D9D9D", "dot")}
    for (model, item_set), (colour, dash) in styles.items():
        sel = [r for r in rows if r["model"] == model and r["set"] == item_set]
        if sel:
            fig.add_scatter(x=[r["layer"] for r in sel], y=[r["shift"] for r in sel], mode="lines+markers",
                            name=f"{model}, {item_set} items", line=dict(color=colour, dash=dash))
    fig.update_layout(xaxis=dict(title="layer (resid_post)", dtick=1),
                      yaxis=dict(title="shift along pre's top PCs (pre std units)"), height=360,
                      margin=dict(l=50, r=20, t=30, b=40))
    return fig


def _weight_figure(rows: list[dict]) -> go.Figure:
    numeric = [r for r in rows if r["rel_change"] is not None]
    fig = go.Figure(go.Bar(x=[r["tensor"] for r in numeric], y=[max(r["rel_change"], 1e-12) for r in numeric],
                           marker_color="#E45756"))
    fig.update_layout(yaxis=dict(title="||W_post − W_pre|| / ||W_pre||", type="log"), height=420,
                      xaxis=dict(tickangle=-60, tickfont=dict(size=8)), margin=dict(l=60, r=20, t=30, b=160))
    return fig


@register
class PCAShift(Analyser):
    name = "pca_shift"
    kind = "info"
    title = "Where the unlearning acted: PCA shift and weight change"
    description = (
        "Per layer, PCA is fitted on the pre model's residual stream over the forget items' answer span (the "
        "positions predicting the answer and the answer tokens); the post model's activations on the same tokens are "
        "projected on the pre model's top components, and the shift of their mean is measured in units of pre's "
        "standard deviation along each component (norm over components). Retain items show whether the shift is "
        "specific to the forget set; the floor model is shown for scale only (an independently trained model lives "
        "in another basis). The weight-change table gives ||W_post − W_pre|| / ||W_pre|| for every parameter tensor."
    )
    Config = PCAShiftConfig
    modalities = frozenset({"text"})
    needs = frozenset({"weights"})  # its own answer-span captures and the weights; the floor is shown when there is one

    def run(self, ctx) -> Result:
        """Info only, nothing calibrated: no min_items guard and no `finalize`."""
        opts: PCAShiftConfig = ctx.opts
        pair, concept, config = ctx.pair, ctx.concept, ctx.config
        n_components, threshold = opts.n_components, opts.weight_change_threshold
        sites = resid_post_sites(pair.pre.model)
        shift_rows = []
        for item_set in ("forget", "retain"):
            items = list(concept.items(item_set))
            if not items:
                continue
            span = {name: span_activations(loaded, items, sites, config.backend, config.batch_size)
                    for name, loaded in pair.models().items()}
            for layer, site in enumerate(sites):
                pre = span["pre"][site].double().numpy()
                pca = fit_pca(pre, n_components, config.seed)
                for model in ("post", "floor"):
                    if model in span:
                        shift, per_pc = pc_shift(pca, pre, span[model][site].double().numpy())
                        shift_rows.append({"set": item_set, "model": model, "layer": layer, "shift": round(shift, 4),
                                           "per_pc": [round(float(x), 4) for x in per_pc]})
        weights = weight_changes(pair.pre.model, pair.post.model)
        summary = weight_change_summary(weights, threshold)
        # per layer, in layer order (lists, so the summary survives a JSON round trip unchanged)
        forget_post = [r["shift"] for r in shift_rows if r["set"] == "forget" and r["model"] == "post"]
        retain_post = [r["shift"] for r in shift_rows if r["set"] == "retain" and r["model"] == "post"]
        result_summary = {"weight_change": summary, "forget_shift_post": forget_post, "retain_shift_post": retain_post,
                          "n_components": n_components}
        if forget_post:
            result_summary["max_shift_layer"] = int(np.argmax(forget_post))
        changed = summary["changed"]
        where = ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else "") if changed else "no tensor"
        evidence = (f"{summary['n_changed']}/{summary['n_tensors']} weight tensors changed (> {threshold:g}): {where}; "
                    f"largest forget-activation shift {max(forget_post, default=0.0):.2f} pre-std units")
        result = Result(name=self.name, kind="info", summary=result_summary,
                        tables={"per_layer_shift": shift_rows, "weight_change": weights}, evidence=evidence)
        for title, figure in self.figures({"shift_rows": shift_rows, "weights": weights}, ctx).items():
            result.add_figure(title, figure)
        return result

    def figures(self, measured, ctx) -> dict:
        return {"Activation shift along the pre model's top PCs": _shift_figure(measured["shift_rows"]),
                "Relative weight change per tensor": _weight_figure(measured["weights"])}
