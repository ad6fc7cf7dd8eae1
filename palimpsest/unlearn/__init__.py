"""Unlearning methods that make post-models: ga, graddiff, npo, rmu, and the `suppress` control.

`unlearn(method, model, forget, retain)` returns a NEW LoadedModel (the input is never modified).
`oracle` is not a weight edit: `make_post_model("oracle", ...)` retrains the organism without the forget people.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from palimpsest.concepts.spec import Item
from palimpsest.models.loading import LoadedModel
from palimpsest.unlearn.common import UnlearnConfig, UnlearnError
from palimpsest.unlearn.gradient import GAConfig, GradDiffConfig, ga, graddiff
from palimpsest.unlearn.npo import NPOConfig, npo
from palimpsest.unlearn.post import make_post_model, save_model
from palimpsest.unlearn.rmu import RMUConfig, rmu
from palimpsest.unlearn.suppress import SuppressConfig, suppress


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., LoadedModel]
    config_cls: type[UnlearnConfig]
    description: str


METHODS: dict[str, Method] = {
    "ga": Method("ga", ga, GAConfig, "gradient ascent on the forget answers"),
    "graddiff": Method("graddiff", graddiff, GradDiffConfig, "gradient ascent on forget + descent on retain"),
    "npo": Method("npo", npo, NPOConfig, "negative preference optimisation (reference = pre model) + retain NLL"),
    "rmu": Method("rmu", rmu, RMUConfig, "representation misdirection at a middle layer (MLPs only)"),
    "suppress": Method("suppress", suppress, SuppressConfig, "control: only the output layer is trained"),
}
# post-model kinds for the organism: the weight edits above plus the retrain-from-scratch oracle
POST_METHODS: tuple[str, ...] = ("oracle", *METHODS)


def unlearn(method: str, model: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], *,
            config: UnlearnConfig | None = None, seed: int = 0) -> LoadedModel:
    """Unlearn `forget` from a deep copy of `model`, keeping `retain`; returns the new LoadedModel."""
    if method not in METHODS:
        hint = " (oracle is a retrain: use make_post_model('oracle', ...))" if method == "oracle" else ""
        raise UnlearnError(f"unknown unlearning method {method!r}{hint}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    cfg = config if config is not None else spec.config_cls()
    if not isinstance(cfg, spec.config_cls):
        raise UnlearnError(f"{method}: config must be a {spec.config_cls.__name__}, got {type(cfg).__name__}")
    return spec.fn(model, list(forget), list(retain), cfg, seed=seed)


__all__ = ["GAConfig", "GradDiffConfig", "METHODS", "Method", "NPOConfig", "POST_METHODS", "RMUConfig",
           "SuppressConfig", "UnlearnConfig", "UnlearnError", "make_post_model", "save_model", "unlearn"]
