"""The one registry of analysers (palimpsest.types.REGISTRY): importing these modules registers them."""

from __future__ import annotations

import importlib
import warnings

from palimpsest.types import REGISTRY, Analyser

ANALYSER_MODULES = (
    "palimpsest.audit.behaviour",
    "palimpsest.probes",
    "palimpsest.sae",
    "palimpsest.attribution",
    "palimpsest.restoration",
    "palimpsest.behavioural",
)

# the order in the report and metrics.json
ANALYSER_ORDER = ("behaviour", "probes", "logit_lens", "cka", "concept_vectors", "sae_features", "blindspots",
                  "attribution", "shift_vectors", "sae_restoration", "relearning", "quantization",
                  "direction_ablation", "depth", "memorization", "mia", "pca_shift")


def load_analysers(modality: str | None = None) -> dict[str, Analyser]:
    """Every registered analyser in report order; with `modality`, only those that declare it."""
    for module in ANALYSER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
            warnings.warn(f"analyser module {module} is not available", stacklevel=2)
    ordered = {name: REGISTRY[name] for name in ANALYSER_ORDER if name in REGISTRY}
    ordered.update({name: a for name, a in REGISTRY.items() if name not in ordered})
    if modality is None:
        return ordered
    return {name: a for name, a in ordered.items() if modality in a.modalities}
