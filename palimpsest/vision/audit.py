"""Audit a vision (pre, post[, floor]) pair with the shared analysers (modality "image"); same AuditResult and
verdict as the language-model audit."""

from __future__ import annotations

from typing import Callable

from palimpsest.audit.context import AuditContext
from palimpsest.audit.runner import AuditResult, run_and_decide, selected_analysers
from palimpsest.config.sae import SAEConfig
from palimpsest.types import AuditConfig
from palimpsest.vision.capture import ImageActivations
from palimpsest.vision.concept import digits_concept
from palimpsest.vision.data import Digits
from palimpsest.vision.measures import VISION_DEFAULTS
from palimpsest.vision.organism import VisionPair

ProgressFn = Callable[[str, int, int], None]

# the vision SAEs: small (the widest site is 1024 wide), trained for epochs over the 1257 training images
VISION_SAE = {"expansion": 2, "k": 8, "epochs": 15, "n_experts": 8}


def image_residue_analysers() -> list[str]:
    """The residue analysers that run on images."""
    from palimpsest.audit.registry import load_analysers

    return [name for name, a in load_analysers("image").items() if a.kind == "residue"]


def vision_config(**overrides) -> AuditConfig:
    """The vision audit's config: nnsight, 500 bootstrap draws, small SAEs, the vision option values.

    `palimpsest validate` fitted the verdict on the language-model organism, whose audit has 13-14 residue analyses;
    the image audit has fewer and no population of its own yet, so `deleted` here needs every image residue analysis
    to conclude (metrics.json then says the thresholds are not the validated ones)."""
    seed = overrides.get("seed", 0)
    options = {name: dict(values) for name, values in VISION_DEFAULTS.items()}
    for name, values in dict(overrides.pop("options", {}) or {}).items():
        if hasattr(values, "model_dump"):
            values = values.model_dump(exclude_unset=True)
        options[name] = {**options.get(name, {}), **dict(values)}
    defaults = {"backend": "nnsight", "n_bootstrap": 500, "min_residue_analyses": len(image_residue_analysers()),
                "sae": SAEConfig(**VISION_SAE, seed=seed)}
    return AuditConfig(**{**defaults, "options": options, **overrides})


def vision_context(pair: VisionPair, data: Digits, config: AuditConfig | None = None, *,
                   shared: dict | None = None) -> AuditContext:
    """The AuditContext of an image audit: the digits concept (forget items = the forget class's test images),
    ImageActivations over the pair, and `shared` (pre-model work several audits of one organism reuse)."""
    config = config or vision_config()
    if config.backend not in ("nnsight", "torch"):
        raise ValueError(f"backend {config.backend!r} does not apply to vision models: use 'nnsight' or 'torch'")
    shared = shared if shared is not None else {}
    concept = digits_concept(data, pair.forget_class)
    acts = ImageActivations(pair, data, concept, backend=config.backend, shared=shared)
    return AuditContext(pair=pair, concept=concept, acts=acts, config=config, modality="image", shared=shared)


def audit_vision(pair: VisionPair, data: Digits, config: AuditConfig | None = None, *, shared: dict | None = None,
                 progress: ProgressFn | None = None) -> AuditResult:
    """Run every analyser of the image modality on `pair` and decide the verdict (palimpsest.audit.verdict.decide)."""
    config = config or vision_config()
    ctx = vision_context(pair, data, config, shared=shared)
    return run_and_decide(selected_analysers(config, "image"), ctx, progress=progress)
