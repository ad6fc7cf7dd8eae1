"""What vision analysers receive: the digits data, the forget class, and lazily captured activations per model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from jaxtyping import Bool
from torch import Tensor

from palimpsest.vision.capture import Backend, capture_modules
from palimpsest.vision.data import Digits
from palimpsest.vision.organism import VisionPair


@dataclass
class VisionActs:
    """Activations of pre/post/floor on the train or test split, captured once (nnsight by default) and cached.

    `shared` outlives one audit: the demo passes the same dict to every audit so pre-model work (activations,
    SAEs, probes, the floor's relearning curve) is done once per pre model.
    """

    pair: VisionPair
    data: Digits
    backend: Backend = "nnsight"
    shared: dict[Any, Any] = field(default_factory=dict)
    local: dict[Any, Any] = field(default_factory=dict)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.pair.pre.model.sites)

    def forget_mask(self, split: str) -> Bool[Tensor, " n"]:
        return self.data.split(split)[1] == self.pair.forget_class

    def _store(self, model: str) -> dict:
        # pre and floor are the same for every post-model of one organism; post is not
        return self.shared if model in ("pre", "floor") else self.local

    def memo(self, key: tuple, fn: Callable[[], Any], *, shared: bool = True) -> Any:
        store = self.shared if shared else self.local
        if key not in store:
            store[key] = fn()
        return store[key]

    def get(self, model: str, split: str) -> dict[str, Tensor]:
        """{site: [n, ...]} for `model` in ("pre", "post", "floor") on `split` in ("train", "test")."""
        loaded = self.pair.models().get(model)
        if loaded is None:
            raise ValueError(f"no {model!r} model in this pair")
        key = ("acts", id(loaded.model), split, self.backend)
        store = self._store(model)
        if key not in store:
            store[key] = capture_modules(loaded.model, self.data.split(split)[0], self.sites, backend=self.backend)
        return store[key]

    def flat(self, model: str, split: str, site: str) -> Tensor:
        acts = self.get(model, split)[site]
        return acts.reshape(len(acts), -1)
