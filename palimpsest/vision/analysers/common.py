"""Small helpers the vision analysers share: floors, per-image correctness, calibration into a Result."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from palimpsest.stats import calibrate
from palimpsest.types import AuditConfig, Result

FLOOR_SOURCE = "floor model: an independently seeded oracle retrained without the forget class"


def correct(logits: Float[Tensor, "n classes"], target: int) -> Float[np.ndarray, " n"]:
    return (logits.argmax(-1) == target).float().numpy()


def logits_of(model, x: Float[Tensor, "n 1 8 8"]) -> Float[Tensor, "n classes"]:
    with torch.inference_mode():
        return model(x).cpu()


def calibrated_result(name: str, post, floor, ceiling, config: AuditConfig, *, floor_source: str, summary: dict,
                      evidence_what: str, **fields) -> Result:
    """Result with residue = (post - floor) / (ceiling - floor) on paired per-image values; inconclusive if degenerate."""
    cal = calibrate(post, floor, ceiling, n_bootstrap=config.n_bootstrap, ci_level=config.ci_level, seed=config.seed,
                    paired=np.size(post) == np.size(floor) == np.size(ceiling))
    common = dict(floor=cal.floor, ceiling=cal.ceiling, post=cal.post, floor_source=floor_source, summary=summary)
    if cal.residue is None:
        reason = (f"{evidence_what}: the pre model ({cal.ceiling:.3f}) is not above the floor ({cal.floor:.3f}), "
                  "so this measure cannot separate learned from never learned")
        return Result(name=name, status="inconclusive", notes=[reason], evidence=reason, **common, **fields)
    evidence = (f"{evidence_what}: post {cal.post:.3f} between floor {cal.floor:.3f} and pre {cal.ceiling:.3f} "
                f"-> residue {cal.residue:.2f}")
    return Result(name=name, residue=cal.residue, ci=cal.ci, evidence=evidence, **common, **fields)


def unchanged_sites(acts, sites, split: str = "test", tol: float = 1e-4) -> list[str]:
    """Sites where the post model's activations on the forget images equal the pre model's (relative change < tol)."""
    mask = acts.forget_mask(split)
    out = []
    for site in sites:
        pre, post = acts.flat("pre", split, site)[mask], acts.flat("post", split, site)[mask]
        if float((post - pre).norm() / (pre.norm() + 1e-12)) < tol:
            out.append(site)
    return out


def labels(acts, split: str) -> Int[Tensor, " n"]:
    return acts.data.split(split)[1]


def sae_sites(acts) -> tuple[str, ...]:
    """The intermediate layers that get an SAE: every site but the first (the widest, least class-specific)."""
    return tuple(acts.sites[1:])


def pre_saes(acts, config: AuditConfig) -> dict[str, tuple]:
    """{site: (LayerSAE, expert features)} trained on the pre model's training-image activations, once per pre model."""
    from palimpsest.vision.sae import expert_features, train_layer_sae

    opts = {k: config.option("sae", k, d) for k, d in (("expansion", 2), ("k", 8), ("epochs", 15), ("n_experts", 8))}
    out = {}
    for site in sae_sites(acts):
        def build(site=site):
            train = acts.get("pre", "train")[site]
            layer_sae = train_layer_sae(site, train, expansion=opts["expansion"], k=opts["k"], epochs=opts["epochs"],
                                        seed=config.seed)
            experts, score = expert_features(layer_sae.encode(train), labels(acts, "train"), acts.pair.forget_class,
                                             opts["n_experts"])
            return layer_sae, experts, score
        out[site] = acts.memo(("sae", id(acts.pair.pre.model), site, tuple(sorted(opts.items())), config.seed), build)
    return out
