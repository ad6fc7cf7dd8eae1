"""Interventions at named sites, as context managers whose hooks are removed on exit, even on error."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from palimpsest.capture.sites import get_module, resolve

Edit = Callable[[Tensor], Tensor]  # [batch, pos, ...] -> same shape


def _apply(edit: Edit, value: Tensor, n_heads: int | None) -> Tensor:
    if n_heads:
        shaped = value.reshape(*value.shape[:-1], n_heads, value.shape[-1] // n_heads)
        return edit(shaped).reshape(value.shape)
    return edit(value)


class Handles:
    """Several hook handles removed together (an edit at hook_resid_mid needs two hooks)."""

    def __init__(self, *handles: RemovableHandle):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _with_output(output, edit: Callable[[Tensor], Tensor]):
    return (edit(output[0]), *output[1:]) if isinstance(output, tuple) else edit(output)


def install_edit(model: torch.nn.Module, site: str, edit: Edit) -> RemovableHandle | Handles:
    """A hook that passes the activation at `site` through `edit` on every forward pass, until its handle is
    removed.

    At hook_resid_mid the edit reaches the MLP branch (the input of the module that reads the mid stream: Llama's
    post_attention_layernorm, Gemma's pre_feedforward_layernorm, OLMo2's mlp) and, since HF blocks keep the mid
    stream in a local for the residual add, the edit's change edit(h) - h is also added to the block's output:
    resid_post = edit(resid_mid) + mlp_out, as when TransformerLens edits hook_resid_mid.
    """
    target = resolve(model, site)
    module = get_module(model, target.module_path)
    if target.io == "output":
        def hook(_mod, _args, output, heads=target.n_heads):
            return _with_output(output, lambda value: _apply(edit, value, heads))
        return module.register_forward_hook(hook)

    change: list[Tensor] = []  # edit(h) - h of the current forward pass, for the carry hook

    def edited(value: Tensor) -> Tensor:
        new = _apply(edit, value, target.n_heads)
        if target.carry_to is not None:
            change[:] = [new - value]
        return new

    def pre_hook(_mod, args, kwargs):
        if args:
            return (edited(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = edited(kwargs["hidden_states"])
        return args, kwargs
    handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    if target.carry_to is None:
        return handle

    def carry(_mod, _args, output):
        if not change:
            return None
        delta = change.pop()
        return _with_output(output, lambda value: value + delta)
    # prepended: the carry is part of the block's own computation, so hooks reading resid_post see it
    return Handles(handle, get_module(model, target.carry_to).register_forward_hook(carry, prepend=True))


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
