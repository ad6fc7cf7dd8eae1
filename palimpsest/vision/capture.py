"""Read (and edit) module outputs of a vision model by module path, through nnsight or plain torch hooks."""

from __future__ import annotations

import weakref
from typing import Callable, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from palimpsest.vision.models import execution_order, get_module

Backend = Literal["nnsight", "torch"]
Edit = Callable[[Tensor], Tensor]

_WRAPPED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def _nnsight(model: nn.Module):
    from nnsight import NNsight

    wrapped = _WRAPPED.get(model)
    if wrapped is None:
        wrapped = NNsight(model)
        _WRAPPED[model] = wrapped
    return wrapped


def _envoy(root, path: str):
    envoy = root
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _check(backend: str) -> None:
    if backend not in ("nnsight", "torch"):
        raise ValueError(f"unknown backend {backend!r}: use 'nnsight' or 'torch'")


def capture_modules(model: nn.Module, images: Float[Tensor, "batch 1 8 8"], paths, backend: Backend = "nnsight",
                    batch_size: int = 512) -> dict[str, Tensor]:
    """Each module's output on `images` ([batch, ...] as the module returns it), keyed by module path."""
    _check(backend)
    paths = list(dict.fromkeys(paths))
    ordered = execution_order(model, paths)  # nnsight must read modules in the order they run
    device = next(model.parameters()).device
    chunks: dict[str, list[Tensor]] = {p: [] for p in ordered}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        if backend == "nnsight":
            wrapped = _nnsight(model)
            saved = {}
            with torch.inference_mode(), wrapped.trace(x):
                for path in ordered:
                    saved[path] = _envoy(wrapped, path).output.save()
            for path in ordered:
                chunks[path].append(_first(saved[path]).detach().cpu())
        else:
            handles = []
            try:
                for path in ordered:
                    def hook(_m, _i, output, path=path):
                        chunks[path].append(_first(output).detach().cpu())
                    handles.append(get_module(model, path).register_forward_hook(hook))
                with torch.inference_mode():
                    model(x)
            finally:
                for handle in handles:
                    handle.remove()
    return {p: torch.cat(chunks[p]) for p in paths}


def logits_with_edits(model: nn.Module, images: Float[Tensor, "batch 1 8 8"], edits: dict[str, Edit],
                      backend: Backend = "nnsight") -> Float[Tensor, "batch classes"]:
    """Logits when each module's output is replaced by `edit(output)` (edits may depend on the batch rows)."""
    _check(backend)
    device = next(model.parameters()).device
    x = images.to(device)
    if not edits:
        with torch.inference_mode():
            return model(x).cpu()
    ordered = execution_order(model, list(edits))
    if backend == "nnsight":
        wrapped = _nnsight(model)
        with torch.inference_mode(), wrapped.trace(x):
            for path in ordered:
                envoy = _envoy(wrapped, path)
                envoy.output = edits[path](envoy.output)
            logits = wrapped.output.save()
        return logits.detach().cpu()
    handles = []
    try:
        for path in ordered:
            handles.append(get_module(model, path).register_forward_hook(
                lambda _m, _i, output, path=path: edits[path](output)))
        with torch.inference_mode():
            return model(x).cpu()
    finally:
        for handle in handles:
            handle.remove()
