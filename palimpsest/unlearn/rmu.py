"""Representation Misdirection for Unlearning (RMU, Li et al. 2024, the WMDP paper).

At layer `layer` the residual stream of forget text is pushed toward a fixed random direction scaled by
c = steering_scale * (mean norm of the frozen model's activations there); retain activations are held
equal to the frozen model's. Only the MLPs of layers layer-2 .. layer are updated, as in the paper.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from palimpsest.concepts.spec import Item
from palimpsest.models.loading import LoadedModel
from palimpsest.unlearn.common import (
    Batches,
    UnlearnConfig,
    UnlearnError,
    check_inputs,
    copy_model,
    run_loop,
    wrap,
)


@dataclass(frozen=True)
class RMUConfig(UnlearnConfig):
    lr: float = 1e-3
    max_steps: int = 150  # a budget for the stopping rule: 60 left one of eight organism builds at 0.15 > 0.1
    layer: int | None = None  # None: the middle layer (n_layers // 2)
    n_update_layers: int = 3  # the MLPs of layers layer-n+1 .. layer are trained
    steering_scale: float = 4.0
    retain_weight: float = 20.0  # alpha in the paper


def decoder_layers(model) -> torch.nn.ModuleList:
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise UnlearnError(f"rmu: cannot find the decoder layers of {type(model).__name__}")


def _mlp(layer) -> torch.nn.Module:
    for name in ("mlp", "feed_forward", "ffn"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise UnlearnError(f"rmu: layer {type(layer).__name__} has no MLP submodule (mlp/feed_forward/ffn)")


class _Capture:
    def __init__(self, module: torch.nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.value = output[0] if isinstance(output, tuple) else output

    def close(self):
        self.handle.remove()


def _activations(model, capture: _Capture, batch) -> torch.Tensor:
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return capture.value


def _subject_mask(tokenizer, items: list[Item], batch) -> torch.Tensor:
    """Positions to misdirect: from the first subject token on (all real tokens after the first when unknown)."""
    mask = batch["attention_mask"].clone().bool()
    mask[:, 0] = False
    ids = batch["input_ids"]
    for row, item in enumerate(items):
        if not item.subject:
            continue
        row_ids = ids[row].tolist()
        for text in (item.subject, " " + item.subject):
            sub = tokenizer(text, add_special_tokens=False).input_ids
            hit = next((i for i in range(len(row_ids) - len(sub) + 1) if sub and row_ids[i:i + len(sub)] == sub), None)
            if hit is not None:
                mask[row, :hit] = False
                break
    return mask


def rmu(loaded: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], config: RMUConfig, seed: int = 0) -> LoadedModel:
    check_inputs("rmu", forget, retain, needs_retain=True)
    torch.manual_seed(seed)
    model = copy_model(loaded)
    frozen = copy.deepcopy(loaded.model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    layers, frozen_layers = decoder_layers(model), decoder_layers(frozen)
    layer = len(layers) // 2 if config.layer is None else config.layer
    if not 0 <= layer < len(layers):
        raise UnlearnError(f"rmu: layer {layer} out of range; the model has {len(layers)} layers (0..{len(layers) - 1})")
    first = max(0, layer - config.n_update_layers + 1)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for i in range(first, layer + 1) for p in _mlp(layers[i]).parameters()]
    for p in params:
        p.requires_grad_(True)
    f = Batches.of(loaded.tokenizer, forget, seed)
    r = Batches.of(loaded.tokenizer, retain, seed + 1)
    device = next(model.parameters()).device
    cap, frozen_cap = _Capture(layers[layer]), _Capture(frozen_layers[layer])
    try:
        with torch.no_grad():
            batch, idx = f.sample(None, device)
            acts = _activations(frozen, frozen_cap, batch)
            mask = _subject_mask(loaded.tokenizer, [f.items[i] for i in idx], batch)
            scale = float(acts[mask].norm(dim=-1).mean())
        generator = torch.Generator().manual_seed(seed)
        direction = torch.rand(acts.shape[-1], generator=generator)
        control = (direction / direction.norm() * scale * config.steering_scale).to(device)
        mask_cache: dict[tuple[int, ...], torch.Tensor] = {}

        def step_loss(step: int) -> torch.Tensor:
            fb, fidx = f.sample(config.forget_batch, device)
            key = tuple(fidx)
            if key not in mask_cache:
                mask_cache[key] = _subject_mask(loaded.tokenizer, [f.items[i] for i in fidx], fb)
            fm = mask_cache[key]
            h = _activations(model, cap, fb)
            forget_loss = ((h - control) ** 2).mean(-1)[fm].mean() / scale ** 2
            rb, _ = r.sample(config.retain_batch, device)
            rm = rb["attention_mask"].bool()
            h_r = _activations(model, cap, rb)
            with torch.no_grad():
                h_ref = _activations(frozen, frozen_cap, rb)
            retain_loss = ((h_r - h_ref) ** 2).mean(-1)[rm].mean() / scale ** 2
            return forget_loss + config.retain_weight * retain_loss

        info = run_loop(model, loaded.tokenizer, forget, params, config, step_loss, retain=retain)
    finally:
        cap.close()
        frozen_cap.close()
    info.update({"layer": layer, "updated_layers": list(range(first, layer + 1)), "steering_norm": round(scale * config.steering_scale, 4)})
    return wrap(loaded, model, "rmu", config, info, seed)
