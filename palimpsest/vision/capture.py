"""Canonical site names for the digits models, and reading (and editing) them through nnsight or torch hooks.

The language-model code names sites the TransformerLens way (`blocks.{i}.hook_resid_post`; `layer_of(site)` in
palimpsest.capture.sites reads the block index). A digits model's audited layers get the same names: its i-th
intermediate site (`model.sites[i]`, a module path such as `features.4`) is `blocks.{i}.hook_resid_post`.

How the names reach nnsight: nnsight 0.8's `rename=` cannot make them, because a dotted alias must bind on an
ancestor of the module it names and a digits model has no `blocks` container (`NNsight(model, rename={"features.1":
"blocks.0.hook_resid_post"})` raises "names no ancestor"). Instead `CanonicalView` is a shell module whose
`blocks[i].hook_resid_post` *is* the site's module; nnsight gives a module it meets under two paths one envoy (the
second path is an alias), so `view.blocks[0].hook_resid_post.output` in a trace reads `features.1`'s output. The
shell is never saved: the model's own state_dict keys (the organism cache) stay its own. The torch backend resolves
the same names through `site_map(model)`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from palimpsest.capture.sites import layer_of
from palimpsest.vision.models import execution_order, get_module

Backend = Literal["nnsight", "torch"]
Edit = Callable[[Tensor], Tensor]

SITE_KIND = "hook_resid_post"

_WRAPPED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def canonical_sites(model: nn.Module) -> tuple[str, ...]:
    """`blocks.{i}.hook_resid_post` for each of the model's audited layers, in execution order."""
    return tuple(f"blocks.{i}.{SITE_KIND}" for i in range(len(model.sites)))


def site_map(model: nn.Module) -> dict[str, str]:
    """canonical site name -> module path (`blocks.1.hook_resid_post` -> `features.4` on the CNN)."""
    return dict(zip(canonical_sites(model), model.sites, strict=True))


def module_path(model: nn.Module, site: str) -> str:
    """The module path a site name denotes: a canonical name through `site_map`, else the path itself."""
    names = site_map(model)
    if site in names:
        return names[site]
    if layer_of(site) is not None:
        raise ValueError(f"site {site!r} does not exist on this {type(model).__name__}; its sites are "
                         f"{', '.join(names)} (module paths {', '.join(names.values())})")
    get_module(model, site)  # a module path: the error lists the modules that exist
    return site


class _Block(nn.Module):
    """blocks[i] of the view: holds the site's module under the canonical leaf name (never called itself)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.add_module(SITE_KIND, module)


class CanonicalView(nn.Module):
    """`model` plus `blocks[i].hook_resid_post` aliases of its site modules; forward is the model's own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.blocks = nn.ModuleList([_Block(get_module(model, path)) for path in model.sites])

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _nnsight(model: nn.Module):
    from nnsight import NNsight

    wrapped = _WRAPPED.get(model)
    if wrapped is None:
        wrapped = NNsight(CanonicalView(model))
        _WRAPPED[model] = wrapped
    return wrapped


def _envoy(root, site: str, model: nn.Module):
    """The envoy of a site: by its canonical path on the view (the alias), or by module path under `.model`."""
    path = site if layer_of(site) is not None else f"model.{module_path(model, site)}"
    envoy = root
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _check(backend: str) -> None:
    if backend not in ("nnsight", "torch"):
        raise ValueError(f"unknown backend {backend!r}: use 'nnsight' or 'torch'")


def _ordered(model: nn.Module, sites) -> list[str]:
    """`sites` in the order their modules run (nnsight must read them so)."""
    paths = {site: module_path(model, site) for site in sites}
    order = execution_order(model, list(dict.fromkeys(paths.values())))
    return sorted(paths, key=lambda site: order.index(paths[site]))


def capture_modules(model: nn.Module, images: Float[Tensor, "batch 1 8 8"], sites, backend: Backend = "nnsight",
                    batch_size: int = 512) -> dict[str, Tensor]:
    """Each site's output on `images` ([batch, ...] as the module returns it), keyed by the names asked for
    (canonical `blocks.{i}.hook_resid_post` names or module paths)."""
    _check(backend)
    sites = list(dict.fromkeys(sites))
    ordered = _ordered(model, sites)
    device = next(model.parameters()).device
    chunks: dict[str, list[Tensor]] = {s: [] for s in ordered}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        if backend == "nnsight":
            wrapped = _nnsight(model)
            saved = {}
            with torch.inference_mode(), wrapped.trace(x):
                for site in ordered:
                    saved[site] = _envoy(wrapped, site, model).output.save()
            for site in ordered:
                chunks[site].append(_first(saved[site]).detach().cpu())
        else:
            handles = []
            try:
                for site in ordered:
                    def hook(_m, _i, output, site=site):
                        chunks[site].append(_first(output).detach().cpu())
                    handles.append(get_module(model, module_path(model, site)).register_forward_hook(hook))
                with torch.inference_mode():
                    model(x)
            finally:
                for handle in handles:
                    handle.remove()
    return {s: torch.cat(chunks[s]) for s in sites}


def logits_with_edits(model: nn.Module, images: Float[Tensor, "batch 1 8 8"], edits: dict[str, Edit],
                      backend: Backend = "nnsight") -> Float[Tensor, "batch classes"]:
    """Logits when each site's output is replaced by `edit(output)` (edits may depend on the batch rows)."""
    _check(backend)
    device = next(model.parameters()).device
    x = images.to(device)
    if not edits:
        with torch.inference_mode():
            return model(x).cpu()
    ordered = _ordered(model, list(edits))
    if backend == "nnsight":
        wrapped = _nnsight(model)
        with torch.inference_mode(), wrapped.trace(x):
            for site in ordered:
                envoy = _envoy(wrapped, site, model)
                envoy.output = edits[site](envoy.output)
            logits = wrapped.output.save()
        return logits.detach().cpu()
    handles = []
    try:
        for site in ordered:
            handles.append(get_module(model, module_path(model, site)).register_forward_hook(
                lambda _m, _i, output, site=site: edits[site](output)))
        with torch.inference_mode():
            return model(x).cpu()
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------- the image captures an audit reads

# the image sets an analyser can ask for: the concept's own item sets (forget = every held-out image of the forget
# class, retain = the concept's few held-out images of each other class), whole splits, and their two halves
IMAGE_SETS = ("forget", "retain", "test", "train", "test_other", "train_forget", "train_other")


@dataclass
class ImageActivations:
    """Activations of pre/post/floor on sets of digits images, captured once (nnsight by default) and cached.

    Read the way the language-model `Activations` are: `get(model, site, item_set)` with canonical site names
    (`blocks.{i}.hook_resid_post`) and item sets ("forget", "retain", ...; see IMAGE_SETS). `images(set)` and
    `labels(set)` are the adapter from item sets to the images and their labels.

    `shared` outlives one audit: the demo passes the same dict to every audit of one organism, so pre-model work
    (activations of pre and floor, SAEs, probes, the floor's relearning curve) is done once per pre model.
    """

    pair: Any  # VisionPair
    data: Any  # Digits
    concept: Any = None  # ConceptSpec from digits_concept (its forget/retain items name test images)
    backend: Backend = "nnsight"
    shared: dict[Any, Any] = field(default_factory=dict)
    local: dict[Any, Any] = field(default_factory=dict)

    @property
    def sites(self) -> tuple[str, ...]:
        return canonical_sites(self.pair.pre.model)

    @property
    def forget_class(self) -> int:
        return self.pair.forget_class

    # -- the item/label adapter
    def _split_mask(self, item_set: str) -> tuple[str, Tensor | None]:
        """(split, rows of it: a boolean mask or row indices; None = every row)"""
        if item_set in ("train", "test"):
            return item_set, None
        if item_set == "forget":
            return "test", self.forget_mask("test")
        if item_set == "test_other":
            return "test", ~self.forget_mask("test")
        if item_set == "train_forget":
            return "train", self.forget_mask("train")
        if item_set == "train_other":
            return "train", ~self.forget_mask("train")
        if item_set == "retain":
            from palimpsest.vision.concept import item_rows

            return "test", item_rows(self.data, self.concept.retain)
        raise ValueError(f"unknown image set {item_set!r}: use one of {', '.join(IMAGE_SETS)}")

    def forget_mask(self, split: str) -> Bool[Tensor, " n"]:
        return self.data.split(split)[1] == self.pair.forget_class

    def images(self, item_set: str) -> Float[Tensor, "n 1 8 8"]:
        split, rows = self._split_mask(item_set)
        x = self.data.split(split)[0]
        return x if rows is None else x[rows]

    def labels(self, item_set: str) -> Int[Tensor, " n"]:
        split, rows = self._split_mask(item_set)
        y = self.data.split(split)[1]
        return y if rows is None else y[rows]

    def items(self, item_set: str) -> tuple:
        return self.concept.items(item_set) if self.concept is not None else ()

    # -- captures
    def memo(self, key: tuple, fn: Callable[[], Any], *, shared: bool = True) -> Any:
        store = self.shared if shared else self.local
        if key not in store:
            store[key] = fn()
        return store[key]

    def split_acts(self, model: str, split: str) -> dict[str, Tensor]:
        """{site: [n, ...]} for `model` in ("pre", "post", "floor") on every image of `split` ("train", "test")."""
        loaded = self.pair.models().get(model)
        if loaded is None:
            raise KeyError(f"no model named {model!r} in this audit (have {', '.join(self.pair.models())})")
        key = ("acts", id(loaded.model), split, self.backend)
        # pre and floor are the same for every post-model of one organism; post is not
        store = self.shared if model in ("pre", "floor") else self.local
        if key not in store:
            store[key] = capture_modules(loaded.model, self.data.split(split)[0], self.sites, backend=self.backend)
        return store[key]

    def get(self, model: str, site: str, item_set: str, position: str | None = None) -> Tensor:
        """The site's output ([n, ...] as the module returns it) on the images of `item_set`. `position` exists for
        the language-model call shape and must be None or "last" (an image has no token positions)."""
        if position not in (None, "last"):
            raise ValueError(f"position {position!r} does not apply to images")
        split, rows = self._split_mask(item_set)
        acts = self.split_acts(model, split)[site]
        return acts if rows is None else acts[rows]

    def flat(self, model: str, site: str, item_set: str) -> Float[Tensor, "n d"]:
        acts = self.get(model, site, item_set)
        return acts.reshape(len(acts), -1)

    def layers(self, model: str, item_set: str, position: str | None = None) -> list[Tensor]:
        """Every site's flattened output on `item_set`, in site order (as `Activations.layers`)."""
        return [self.flat(model, site, item_set) for site in self.sites]
