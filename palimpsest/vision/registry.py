"""The vision analysers' own registry (kept apart from the language-model registry in palimpsest.types)."""

from __future__ import annotations

from palimpsest.types import Analyser

VISION_REGISTRY: dict[str, Analyser] = {}

# report and metrics.json order
VISION_ORDER = ("behaviour", "probes", "cka", "sae_features", "sae_restoration", "shift_vectors", "relearning")


def register_vision(cls: type) -> type:
    instance = cls()
    if instance.name in VISION_REGISTRY and type(VISION_REGISTRY[instance.name]) is not cls:
        raise ValueError(f"vision analyser name {instance.name!r} registered twice")
    VISION_REGISTRY[instance.name] = instance
    return cls


def load_vision_analysers() -> dict[str, Analyser]:
    import palimpsest.vision.analysers  # noqa: F401  (registers them)

    ordered = {name: VISION_REGISTRY[name] for name in VISION_ORDER if name in VISION_REGISTRY}
    ordered.update({n: a for n, a in VISION_REGISTRY.items() if n not in ordered})
    return ordered
