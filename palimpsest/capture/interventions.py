"""Interventions at named sites, as context managers whose hooks are removed on exit, even on error."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from palimpsest.capture.sites import get_module, resolve

Edit = Callable[[Tensor], Tensor]  # [batch, pos, ...] -> same shape


def _apply(edit: Edit, value: Tensor, n_heads: int | None) -> Tensor:
    if n_heads:
        shaped = value.reshape(*value.shape[:-1], n_heads, value.shape[-1] // n_heads)
        return edit(shaped).reshape(value.shape)
    return edit(value)


def install_edit(model: torch.nn.Module, site: str, edit: Edit) -> torch.utils.hooks.RemovableHandle:
    """A hook that passes the activation at `site` through `edit` on every forward pass, until its handle is
    removed."""
    target = resolve(model, site)
    module = get_module(model, target.module_path)
    if target.io == "output":
        def hook(_mod, _args, output, heads=target.n_heads):
            if isinstance(output, tuple):
                return (_apply(edit, output[0], heads), *output[1:])
            return _apply(edit, output, heads)
        return module.register_forward_hook(hook)

    def pre_hook(_mod, args, kwargs, heads=target.n_heads):
        if args:
            return (_apply(edit, args[0], heads), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = _apply(edit, kwargs["hidden_states"], heads)
        return args, kwargs
    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


@contextmanager
def intervene(model: torch.nn.Module, edits: Mapping[str, Edit] | list[tuple[str, Edit]]) -> Iterator[None]:
    """Apply `edit(activation) -> activation` at each site during every forward pass inside the block."""
    pairs = list(edits.items()) if isinstance(edits, Mapping) else list(edits)
    handles = []
    try:
        for site, edit in pairs:
            handles.append(install_edit(model, site, edit))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _masked(new: Tensor, old: Tensor, positions: Bool[Tensor, "batch pos"] | None) -> Tensor:
    if positions is None:
        return new
    mask = positions.to(old.device).reshape(*positions.shape, *([1] * (old.ndim - 2)))
    return torch.where(mask, new, old)


def add_vector(vector: Float[Tensor, " d"], scale: float = 1.0,
               positions: Bool[Tensor, "batch pos"] | None = None) -> Edit:
    """h <- h + scale * vector (at the given positions, or everywhere)."""
    def edit(h: Tensor) -> Tensor:
        return _masked(h + scale * vector.to(h.device, h.dtype), h, positions)
    return edit


def ablate_subspace(basis: Float[Tensor, "k d"]) -> Edit:
    """h <- h - (h B^T) B with B's rows an orthonormal basis: the whole subspace is projected out."""
    def edit(h: Tensor) -> Tensor:
        b = basis.to(h.device, h.dtype)
        return h - (h @ b.T) @ b
    return edit


def add_per_row(vectors: Float[Tensor, "batch d"], positions: Bool[Tensor, "batch pos"] | None = None) -> Edit:
    """h[b] <- h[b] + vectors[b]: one vector per batch row (batched sweeps of strengths or directions)."""
    def edit(h: Tensor) -> Tensor:
        shaped = vectors.to(h.device, h.dtype).reshape(h.shape[0], *([1] * (h.ndim - 2)), h.shape[-1])
        return _masked(h + shaped, h, positions)
    return edit


def replace_with(values: Tensor, positions: Bool[Tensor, "batch pos"] | None = None) -> Edit:
    """h <- values (broadcast to h's shape), at the given positions or everywhere."""
    def edit(h: Tensor) -> Tensor:
        return _masked(values.to(h.device, h.dtype).expand_as(h), h, positions)
    return edit


def ablate_direction(direction: Float[Tensor, " d"], positions: Bool[Tensor, "batch pos"] | None = None) -> Edit:
    """h <- h - (h . r) r with r the unit direction: the component along r is projected out."""
    unit = direction / direction.norm().clamp(min=1e-12)

    def edit(h: Tensor) -> Tensor:
        r = unit.to(h.device, h.dtype)
        return _masked(h - (h @ r)[..., None] * r, h, positions)
    return edit
