"""The image measurement of each shared analyser: `(analyser, ctx) -> Measurement | Result`, one per name.

The language-model analyser classes (probes, cka, sae_features, sae_restoration, shift_vectors, relearning,
behaviour) declare `modalities = {"text", "image"}` and hand an image audit here, e.g.
`if ctx.modality == "image": return vision_measures.probes(self, ctx)`. What they read:

- ctx.acts: palimpsest.vision.capture.ImageActivations (canonical sites `blocks.{i}.hook_resid_post`; item sets
  "forget" = the forget class's test images, "test_other", "train", "train_forget", ...); ctx.pair: a VisionPair.
- ctx.opts: the analyser's own (language-model) Config. Fields read when the Config has them: probes `C`,
  `min_gap`, `sites`; cka `n_bootstrap`, `min_gap`, `sites`; sae_features `min_gap`; sae_restoration `alphas`;
  relearning `steps`, `lr`; any analyser's `min_gap`. Where the Config lacks a field the vision default below is
  used (VISION_DEFAULTS; `vision_config` writes them into `options` for the fields the Configs have).
- Options with no language-model counterpart are module constants: RESTORE_ALPHA (the alpha sae_restoration
  scores at) and CKA_MIN_IMAGES. The SAE knobs (expansion, k, epochs, n_experts, seed) are the shared
  `ctx.config.sae`; the SAEs come from `ctx.saes.get(site)`, built by palimpsest.vision.sae.build_pre_saes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from palimpsest.audit.finalize import Measurement
from palimpsest.capture.sites import layer_of
from palimpsest.probes.similarity import linear_cka
from palimpsest.stats import calibrate_value
from palimpsest.types import Result, inconclusive
from palimpsest.vision.capture import canonical_sites, logits_with_edits

FLOOR_SOURCE = "floor model: an independently seeded oracle retrained without the forget class"

# vision values of options the language-model Configs also have (their LM defaults differ)
VISION_DEFAULTS: dict[str, dict] = {
    "probes": {"C": 1.0},
    "sae_restoration": {"alphas": (0.25, 0.5, 1.0, 2.0)},
    "relearning": {"steps": 8, "lr": 1e-3},
    # the vision CKA had no gap guard before the shared design, and the seed-0 floor gap (0.059) lies within build
    # noise of the text default 0.05: the guard would make the image verdict depend on the CPU's kernels
    "cka": {"min_gap": 0.0},
}
RESTORE_ALPHA = 1.0  # sae_restoration: the residue is read at this alpha (added to the sweep if missing)
CKA_MIN_IMAGES = 5  # CKA needs at least max(min_items, this) forget images


def option(analyser, ctx, field: str, default=None):
    """The analyser's option `field` from ctx.opts when its Config has the field, else the vision default."""
    opts = ctx.opts
    if opts is not None and field in type(opts).model_fields:
        return getattr(opts, field)
    return VISION_DEFAULTS.get(analyser.name, {}).get(field, default)


def _min_gap(analyser, ctx) -> float:
    value = option(analyser, ctx, "min_gap", 0.0)
    return float(value or 0.0)


def sae_sites(ctx) -> tuple[str, ...]:
    """The sites that get an SAE on an image model: every site but the first (the widest, least class-specific)."""
    return tuple(canonical_sites(ctx.pair.pre.model)[1:])


def figures(analyser, measured, ctx) -> dict:
    """The image audit draws no figures (the tables carry the per-layer values)."""
    return {}


def correct(logits: Float[Tensor, "n classes"], target: int) -> Float[np.ndarray, " n"]:
    return (logits.argmax(-1) == target).float().numpy()


def logits_of(model, x: Float[Tensor, "n 1 8 8"]) -> Float[Tensor, "n classes"]:
    with torch.inference_mode():
        return model(x).cpu()


def _present(ctx, names=("pre", "post", "floor")) -> list[str]:
    return [m for m in names if m in ctx.pair.models()]


def _few(analyser, ctx, need: int | None = None) -> Result | None:
    n, need = len(ctx.concept.forget), ctx.config.min_items if need is None else need
    if n < need:
        return inconclusive(analyser.name, f"only {n} forget-class test images", kind=analyser.kind)
    return None


def unchanged_sites(acts, sites, tol: float = 1e-4) -> list[str]:
    """Sites where the post model's activations on the forget images equal the pre model's (relative change < tol)."""
    out = []
    for site in sites:
        pre, post = acts.flat("pre", site, "forget"), acts.flat("post", site, "forget")
        if float((post - pre).norm() / (pre.norm() + 1e-12)) < tol:
            out.append(site)
    return out


# ---------------------------------------------------------------- behaviour


def behaviour(analyser, ctx) -> Result:
    """Accuracy on the forget class's and on the other classes' held-out images, per model."""
    acts, pair = ctx.acts, ctx.pair
    if (few := _few(analyser, ctx)) is not None:
        return few
    x, y = acts.images("test"), acts.labels("test")
    forget = acts.forget_mask("test")
    summary, preds = {}, {}
    for model_name, loaded in pair.models().items():
        pred = logits_of(loaded.model, x).argmax(-1)
        preds[model_name] = pred
        summary[f"forget_acc_{model_name}"] = float((pred[forget] == y[forget]).float().mean())
        summary[f"retain_acc_{model_name}"] = float((pred[~forget] == y[~forget]).float().mean())
    summary["n_forget_images"] = int(forget.sum())
    summary["n_retain_images"] = int((~forget).sum())
    index = acts.data.test_index
    per_item = [{"image": int(index[i]), "label": int(y[i]), **{f"pred_{m}": int(p[i]) for m, p in preds.items()}}
                for i in forget.nonzero().flatten()]
    s = summary
    evidence = (f"forget-class accuracy {s['forget_acc_pre']:.2f} -> {s['forget_acc_post']:.2f}; other classes "
                f"{s['retain_acc_pre']:.2f} -> {s['retain_acc_post']:.2f}")
    return Result(name=analyser.name, kind="behaviour", summary=summary, per_item=per_item, evidence=evidence,
                  tables={"accuracy": [{"model": m, "forget class": s[f"forget_acc_{m}"],
                                        "other classes": s[f"retain_acc_{m}"]} for m in preds]})


# ---------------------------------------------------------------- probes


def _balanced_weights(is_pos: np.ndarray) -> np.ndarray:
    """Per-image weights whose weighted mean of correctness is the balanced accuracy (so it can be bootstrapped)."""
    n, n_pos = len(is_pos), int(is_pos.sum())
    return np.where(is_pos, n / (2 * n_pos), n / (2 * (n - n_pos)))


def probes(analyser, ctx) -> Measurement | Result:
    """Per site, a logistic-regression probe (forget class vs rest) trained on the pre model's features of the
    training images, applied unchanged to each model's features of the held-out images; score = balanced accuracy
    averaged over sites; floor = the floor model's score (else chance 0.5)."""
    acts, pair = ctx.acts, ctx.pair
    if (few := _few(analyser, ctx)) is not None:
        return few
    c = float(option(analyser, ctx, "C", 1.0))
    sites = list(option(analyser, ctx, "sites", None) or acts.sites)
    y_train = (acts.labels("train") == pair.forget_class).numpy()
    y_test = (acts.labels("test") == pair.forget_class).numpy()
    weights = _balanced_weights(y_test)
    models = _present(ctx)
    per_model = {m: [] for m in models}
    rows = []
    for site in sites:
        probe = acts.memo(("probe", id(pair.pre.model), site, c), lambda site=site: make_pipeline(
            StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced")).fit(
                acts.flat("pre", site, "train").numpy(), y_train))
        row = {"layer": layer_of(site), "site": site}
        for m in models:
            pred = probe.predict(acts.flat(m, site, "test").numpy())
            per_image = (pred == y_test) * weights
            per_model[m].append(per_image)
            row[f"balanced_acc_{m}"] = float(per_image.mean())
        rows.append(row)
    values = {m: np.mean(per_model[m], axis=0) for m in models}
    if "floor" in values:
        floor, source = values["floor"], FLOOR_SOURCE
    else:
        floor, source = 0.5, "chance (balanced accuracy 0.5)"
    summary = {f"balanced_acc_{m}": float(v.mean()) for m, v in values.items()}
    summary["sites"] = sites
    return Measurement(post=values["post"], floor=floor, ceiling=values["pre"], floor_source=source,
                       evidence=("pre-trained probes' balanced accuracy on post features: post {post:.3f} between "
                                 "floor {floor:.3f} and pre {ceiling:.3f} -> residue {residue:.2f}"),
                       min_gap=_min_gap(analyser, ctx), summary=summary, tables={"per_layer": rows})


# ---------------------------------------------------------------- cka


def _row_space(x: Float[Tensor, "n d"]) -> Float[Tensor, "n r"]:
    """x in an orthonormal basis of its row space (x V, r <= n columns): the same Gram matrix x x^T of any subset of
    rows, so linear CKA of resampled rows is unchanged, at n x n instead of d x d cost."""
    x = x.double()
    if x.shape[1] <= x.shape[0]:
        return x
    _u, _s, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh.T


def cka(analyser, ctx) -> Result:
    """Linear CKA per site between pre's and post's (or floor's) features of the same held-out images; residue =
    the forget class's CKA averaged over sites, between CKA(pre, floor) and 1; the bootstrap resamples images.
    Returns a Result: the statistic is a set-level similarity, not a mean of per-image values finalize could
    bootstrap."""
    acts, pair, config = ctx.acts, ctx.pair, ctx.config
    if (few := _few(analyser, ctx, max(config.min_items, CKA_MIN_IMAGES))) is not None:
        return few
    if pair.floor is None:
        return inconclusive(analyser.name, "no floor model: CKA between different networks has no chance level",
                            kind=analyser.kind)
    n_boot = option(analyser, ctx, "n_bootstrap", None)
    n_boot = int(n_boot) if n_boot is not None else min(config.n_bootstrap, 200)
    min_gap = _min_gap(analyser, ctx)
    sites = list(option(analyser, ctx, "sites", None) or acts.sites)
    models = ("pre", "post", "floor")
    rows = []
    for site in sites:
        for group, item_set in (("forget class", "forget"), ("other classes", "test_other")):
            pre = acts.flat("pre", site, item_set)
            rows.append({"layer": layer_of(site), "site": site, "images": group,
                         **{f"cka_pre_{m}": linear_cka(pre, acts.flat(m, site, item_set)) for m in ("post", "floor")}})
    reduced = {m: {s: _row_space(acts.flat(m, s, "forget")) for s in sites} for m in models}
    n_forget = len(ctx.concept.forget)

    def mean_cka(model: str, idx: Tensor | None = None) -> float:
        return float(np.mean([linear_cka(reduced["pre"][s] if idx is None else reduced["pre"][s][idx],
                                         reduced[model][s] if idx is None else reduced[model][s][idx])
                              for s in sites]))

    post, floor = mean_cka("post"), mean_cka("floor")
    residue = calibrate_value(post, floor, 1.0)
    summary = {"cka_forget_post": post, "cka_forget_floor": floor,
               "cka_other_post": float(np.mean([r["cka_pre_post"] for r in rows if r["images"] != "forget class"]))}
    common = dict(floor=floor, ceiling=1.0, post=post, floor_source=FLOOR_SOURCE, summary=summary,
                  tables={"per_layer": rows})
    if residue is None or 1.0 - floor < min_gap:
        return inconclusive(analyser.name, f"the floor model's CKA with pre ({floor:.3f}) is within min_gap={min_gap} "
                                           "of 1: CKA cannot separate never learned from learned", kind=analyser.kind,
                            **common)
    gen = torch.Generator().manual_seed(config.seed)
    samples = []
    for _ in range(n_boot):
        idx = torch.randint(0, n_forget, (n_forget,), generator=gen)
        value = calibrate_value(mean_cka("post", idx), mean_cka("floor", idx), 1.0)
        samples.append(residue if value is None else value)
    alpha = (1 - config.ci_level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    evidence = (f"forget-class CKA(pre, post) {post:.3f} vs CKA(pre, floor) {floor:.3f} (1 = identical) "
                f"-> residue {residue:.2f}")
    return Result(name=analyser.name, kind=analyser.kind, residue=residue, ci=(float(lo), float(hi)),
                  evidence=evidence, **common)


# ---------------------------------------------------------------- SAE expert features


def _random_like(pool: list[int], experts: Tensor, gen: torch.Generator) -> Tensor:
    pool_t = torch.tensor(pool)
    return pool_t[torch.randperm(len(pool_t), generator=gen)[:len(experts)]] if len(pool_t) else experts


def sae_features(analyser, ctx) -> Measurement | Result:
    """Per SAE site, the forget class's expert features' activation on each held-out forget image relative to the
    pre model's mean, averaged over experts and sites; random alive features of the same number are a control."""
    acts = ctx.acts
    if (few := _few(analyser, ctx)) is not None:
        return few
    models = _present(ctx)
    per_model = {m: [] for m in models}
    control = {m: [] for m in models}
    rows = []
    gen = torch.Generator().manual_seed(ctx.config.seed)
    for site in sae_sites(ctx):
        layer_sae, experts, _score = ctx.saes.get(site)
        if len(experts) == 0:
            continue
        codes = {m: layer_sae.encode(acts.get(m, site, "forget")) for m in models}
        alive = (layer_sae.encode(acts.get("pre", site, "train")) > 0).any(0)
        expert_set = set(experts.tolist())
        randoms = _random_like([i for i in alive.nonzero().flatten().tolist() if i not in expert_set], experts, gen)
        ref = codes["pre"][:, experts].mean(0).clamp_min(1e-6)
        ref_r = codes["pre"][:, randoms].mean(0).clamp_min(1e-6)
        row = {"layer": layer_of(site), "site": site, "n_experts": len(experts), "expert_ids": experts.tolist()}
        for m in models:
            per_model[m].append((codes[m][:, experts] / ref).mean(1).numpy())
            control[m].append((codes[m][:, randoms] / ref_r).mean(1).numpy())
            row[f"relative_activation_{m}"] = float(per_model[m][-1].mean())
            row[f"random_features_{m}"] = float(control[m][-1].mean())
        rows.append(row)
    if not rows:
        return inconclusive(analyser.name, "no SAE feature is specific to the forget class at any layer",
                            kind=analyser.kind)
    values = {m: np.mean(per_model[m], axis=0) for m in models}
    summary = {f"expert_activation_{m}": float(v.mean()) for m, v in values.items()}
    summary.update({f"random_feature_activation_{m}": float(np.mean(control[m])) for m in models})
    if "floor" in values:
        floor, source = values["floor"], FLOOR_SOURCE
    else:
        floor, source = float(np.mean(control["post"])), "random SAE features of the same number (post model)"
    return Measurement(post=values["post"], floor=floor, ceiling=values["pre"], floor_source=source,
                       evidence=("forget-class expert SAE features' activation: post {post:.3f} between floor "
                                 "{floor:.3f} and pre {ceiling:.3f} -> residue {residue:.2f}"),
                       min_gap=_min_gap(analyser, ctx), summary=summary, tables={"per_layer": rows})


# ---------------------------------------------------------------- SAE-feature restoration


def _restored_correct(model, x, site, layer_sae, features, z_u, z_o, alpha, backend, target) -> np.ndarray:
    """Forget-class correctness after z_r[e] = z_u[e] + alpha (z_o[e] - z_u[e]) at `features`, decoded and written
    back (the SAE's error term kept)."""
    delta = alpha * (z_o[:, features] - z_u[:, features])
    return correct(logits_with_edits(model, x, {site: lambda h: layer_sae.move_features(h, features, delta)},
                                     backend=backend), target)


def _site_restoration(ctx, site: str, layer_sae, experts: Int[Tensor, " k"], models: list[str], alphas: tuple[float, ...],
                      gen: torch.Generator, rows: list[dict]) -> dict:
    """At `site`: per (model, alpha) the forget-class correctness with the expert features restored, and per
    (model, "random") with as many random alive features restored at RESTORE_ALPHA; appends the sweep rows."""
    acts, pair, alpha = ctx.acts, ctx.pair, RESTORE_ALPHA
    x, target = acts.images("forget"), pair.forget_class
    z_o = layer_sae.encode(acts.get("pre", site, "forget"))
    expert_set = set(experts.tolist())
    randoms = _random_like([i for i in (z_o > 0).any(0).nonzero().flatten().tolist() if i not in expert_set],
                           experts, gen)
    per_alpha = {}
    for m in models:
        model = pair.models()[m].model
        z_u = layer_sae.encode(acts.get(m, site, "forget"))
        for a in alphas:
            values = _restored_correct(model, x, site, layer_sae, experts, z_u, z_o, a, acts.backend, target)
            per_alpha[(m, a)] = values
            rows.append({"layer": layer_of(site), "site": site, "model": m, "alpha": a, "features": "experts",
                         "forget_acc": float(values.mean())})
        rand = _restored_correct(model, x, site, layer_sae, randoms, z_u, z_o, alpha, acts.backend, target)
        per_alpha[(m, "random")] = rand
        rows.append({"layer": layer_of(site), "site": site, "model": m, "alpha": alpha, "features": "random",
                     "forget_acc": float(rand.mean())})
    return per_alpha


def sae_restoration(analyser, ctx) -> Measurement | Result:
    """At each SAE site, move the post model's expert-feature codes of the forget images toward the pre model's,
    write them back (nnsight) and read the forget-class accuracy; alpha is swept, random features are the control;
    residue = restored accuracy at RESTORE_ALPHA on the best site, between the floor's (same procedure) and pre's."""
    acts, pair = ctx.acts, ctx.pair
    if (few := _few(analyser, ctx)) is not None:
        return few
    alpha = RESTORE_ALPHA
    alphas = tuple(option(analyser, ctx, "alphas", (0.25, 0.5, 1.0, 2.0)))
    if alpha not in alphas:
        alphas = (*alphas, alpha)
    sites = sae_sites(ctx)
    same = unchanged_sites(acts, sites)
    if len(same) == len(sites):
        return inconclusive(analyser.name, "the post model's activations at every SAE layer equal the pre model's: the "
                            "change is downstream, so restoring features there cannot act (see probes, CKA)",
                            kind=analyser.kind)
    models = _present(ctx, ("post", "floor"))
    gen = torch.Generator().manual_seed(ctx.config.seed)
    rows, best = [], None
    for site in sites:
        layer_sae, experts, _score = ctx.saes.get(site)
        if len(experts) == 0:
            continue
        per_alpha = _site_restoration(ctx, site, layer_sae, experts, models, alphas, gen, rows)
        score = float(per_alpha[("post", alpha)].mean())
        if best is None or score > best[0]:
            best = (score, site, per_alpha)
    if best is None:
        return inconclusive(analyser.name, "no SAE feature is specific to the forget class at any layer",
                            kind=analyser.kind)
    _, site, per_alpha = best
    pre_correct = correct(logits_of(pair.pre.model, acts.images("forget")), pair.forget_class)
    summary = {"best_site": site, "alpha": alpha, "alphas": list(alphas),
               "restored_acc_post": float(per_alpha[("post", alpha)].mean()),
               "random_feature_restored_acc_post": float(per_alpha[("post", "random")].mean()),
               "unchanged_sites": same}
    if "floor" in models:
        floor, source = per_alpha[("floor", alpha)], FLOOR_SOURCE + " (restored the same way)"
        summary["restored_acc_floor"] = float(floor.mean())
    else:
        floor, source = per_alpha[("post", "random")], "random SAE features restored on the post model"
    return Measurement(post=per_alpha[("post", alpha)], floor=floor, ceiling=pre_correct, floor_source=source,
                       evidence=(f"forget accuracy after restoring expert features at {site}: post {{post:.3f}} "
                                 "between floor {floor:.3f} and pre {ceiling:.3f} -> residue {residue:.2f}"),
                       min_gap=_min_gap(analyser, ctx), summary=summary, tables={"sweep": rows})


# ---------------------------------------------------------------- shift vectors


def shift_vectors(analyser, ctx) -> Measurement | Result:
    """Per site, subtract shift = mean(post) - mean(pre) over the forget class's training images from the post
    model's activations of the held-out forget images (nnsight) and read the forget-class accuracy; a random
    direction of equal norm is the control; residue = the best site's restored accuracy, between the floor's (its
    own shift subtracted) and pre's."""
    acts, pair = ctx.acts, ctx.pair
    if (few := _few(analyser, ctx)) is not None:
        return few
    sites = list(acts.sites)
    same = unchanged_sites(acts, sites)
    if len(same) == len(sites):
        return inconclusive(analyser.name, "the post model's activations at every layer equal the pre model's: the "
                            "change is downstream of every site, so a shift there cannot act (see probes, CKA)",
                            kind=analyser.kind)
    x, target = acts.images("forget"), pair.forget_class
    models = _present(ctx, ("post", "floor"))
    gen = torch.Generator().manual_seed(ctx.config.seed)
    rows, results = [], {}
    for site in sites:
        pre_mean = acts.get("pre", site, "train_forget").mean(0)
        for m in models:
            shift = acts.get(m, site, "train_forget").mean(0) - pre_mean
            rand = torch.randn(shift.shape, generator=gen)
            rand = rand * shift.norm() / rand.norm()
            model = pair.models()[m].model
            for kind, vec in (("shift", shift), ("random", rand)):
                values = correct(logits_with_edits(model, x, {site: lambda h, vec=vec: h - vec}, backend=acts.backend),
                                 target)
                results[(site, m, kind)] = values
                rows.append({"layer": layer_of(site), "site": site, "model": m, "vector": kind,
                             "norm": float(shift.norm()), "forget_acc": float(values.mean())})
    best = max(sites, key=lambda s: results[(s, "post", "shift")].mean())
    pre_correct = correct(logits_of(pair.pre.model, x), target)
    summary = {"best_site": best, "restored_acc_post": float(results[(best, "post", "shift")].mean()),
               "random_direction_acc_post": float(results[(best, "post", "random")].mean()), "unchanged_sites": same}
    if "floor" in models:
        floor, source = results[(best, "floor", "shift")], FLOOR_SOURCE + " (its own shift subtracted)"
        summary["restored_acc_floor"] = float(floor.mean())
    else:
        floor, source = results[(best, "post", "random")], "random direction of equal norm on the post model"
    return Measurement(post=results[(best, "post", "shift")], floor=floor, ceiling=pre_correct, floor_source=source,
                       evidence=(f"forget accuracy after subtracting the shift at {best}: post {{post:.3f}} between "
                                 "floor {floor:.3f} and pre {ceiling:.3f} -> residue {residue:.2f}"),
                       min_gap=_min_gap(analyser, ctx), summary=summary, tables={"per_layer": rows})


# ---------------------------------------------------------------- relearning


def relearn_curve(model: nn.Module, fx, fy, rx, ry, tx, target: int, *, steps: int, lr: float,
                  seed: int) -> np.ndarray:
    """[steps, n_test] forget-class correctness after each Adam step on forget + retain images (model copied)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = []
    for _ in range(steps):
        ri = torch.randint(0, len(ry), (len(fy),), generator=gen)
        x, y = torch.cat([fx, rx[ri]]), torch.cat([fy, ry[ri]])
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        curve.append(correct(logits_of(model, tx), target))
    return np.stack(curve)


def relearning(analyser, ctx) -> Measurement | Result:
    """A copy of each model fine-tuned for `steps` Adam steps on half the forget class's training images (mixed with
    as many other-class images); score per held-out forget image = its accuracy averaged over the steps; residue =
    post's score between the floor model's (same attack) and pre's."""
    acts, pair, config = ctx.acts, ctx.pair, ctx.config
    if (few := _few(analyser, ctx)) is not None:
        return few
    steps = int(option(analyser, ctx, "steps", 8))
    lr = float(option(analyser, ctx, "lr", 1e-3))
    data, target = acts.data, pair.forget_class
    mask_tr = acts.forget_mask("train")
    gen = torch.Generator().manual_seed(config.seed)
    forget_idx = mask_tr.nonzero().flatten()
    half = forget_idx[torch.randperm(len(forget_idx), generator=gen)[: len(forget_idx) // 2]]
    fx, fy = data.train_x[half], data.train_y[half]
    rx, ry = acts.images("train_other"), acts.labels("train_other")
    tx = acts.images("forget")

    def curve(model_name: str) -> np.ndarray:
        return relearn_curve(pair.models()[model_name].model, fx, fy, rx, ry, tx, target, steps=steps, lr=lr,
                             seed=config.seed)

    curves = {}
    for m in _present(ctx):
        key = ("relearn", id(pair.models()[m].model), steps, lr, config.seed)
        curves[m] = curve(m) if m == "post" else acts.memo(key, lambda m=m: curve(m))
    rows = [{"step": i + 1, **{f"forget_acc_{m}": float(c[i].mean()) for m, c in curves.items()}}
            for i in range(steps)]
    summary = {f"relearned_acc_{m}_final": float(c[-1].mean()) for m, c in curves.items()}
    summary.update({"steps": steps, "lr": lr, "n_finetune_images": len(half)})
    if "floor" not in curves:
        return inconclusive(analyser.name, "no floor model: relearning speed has no reference", kind=analyser.kind,
                            summary=summary, tables={"curve": rows})
    return Measurement(post=curves["post"].mean(0), floor=curves["floor"].mean(0), ceiling=curves["pre"].mean(0),
                       floor_source=FLOOR_SOURCE + " (same attack)",
                       evidence=(f"forget accuracy during {steps} relearning steps: post {{post:.3f}} between floor "
                                 "{floor:.3f} and pre {ceiling:.3f} -> residue {residue:.2f}"),
                       min_gap=_min_gap(analyser, ctx), summary=summary, tables={"curve": rows})


MEASURES = {"behaviour": behaviour, "probes": probes, "cka": cka, "sae_features": sae_features,
            "sae_restoration": sae_restoration, "shift_vectors": shift_vectors, "relearning": relearning}


def measure(analyser, ctx) -> Measurement | Result:
    """The image measurement of `analyser` (by its name): what an analyser's measure/run returns on images."""
    if analyser.name not in MEASURES:
        raise ValueError(f"analyser {analyser.name!r} has no image measurement; image analysers: {', '.join(MEASURES)}")
    return MEASURES[analyser.name](analyser, ctx)
