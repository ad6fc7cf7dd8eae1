"""What the runner hands every analyser: the models, the concept, captured activations, built SAEs, its options."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from palimpsest.types import AnalyserConfig, AuditConfig


class SAENotBuilt(KeyError):
    """An analyser asked for an SAE at a site it did not declare in `sae_sites`."""


@dataclass
class SAEStore:
    """The SAEs the runner built before any analyser ran: site -> (sae, quality), trained or loaded once per audit.

    Vision SAEs carry their expert features (the site's entry is the vision builder's tuple)."""

    built: dict[str, Any] = field(default_factory=dict)
    corpus: tuple[str, ...] = ()

    def get(self, site: str) -> Any:
        if site not in self.built:
            raise SAENotBuilt(f"no SAE was built at {site!r} (built: {sorted(self.built) or 'none'}); the analyser "
                              "must list the site in sae_sites()")
        entry = self.built[site]
        if isinstance(entry, Exception):
            raise RuntimeError(f"the SAE at {site} could not be built: {entry}") from entry
        return entry


@dataclass
class AuditContext:
    """pair: a ModelPair (text) or VisionPair (image); acts: the captures (Activations / palimpsest.vision.capture.ImageActivations);
    opts: the running analyser's typed options (set by `for_analyser`)."""

    pair: Any
    concept: Any
    acts: Any
    config: AuditConfig
    modality: str = "text"
    saes: SAEStore = field(default_factory=SAEStore)
    opts: AnalyserConfig | None = None
    # per pre model work several audits share (vision: probes and SAEs fitted on the pre model)
    shared: dict = field(default_factory=dict)

    def for_analyser(self, analyser) -> "AuditContext":
        return replace(self, opts=self.config.opts(analyser.name))

    @property
    def floor(self):
        return self.pair.floor

    def models(self) -> dict:
        return self.pair.models()
