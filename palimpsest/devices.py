"""Where a model's inputs go: its parameters' device, or accelerate's execution device under a device_map."""

from __future__ import annotations

import torch


def is_offloaded(model: torch.nn.Module) -> bool:
    """Whether some parameter is on the meta device (offloaded by accelerate, or never materialised)."""
    return any(p.device.type == "meta" for p in model.parameters())


def offloaded_models(pair) -> list[str]:
    """The roles (pre, post, floor) of a pair's models with weights offloaded to disk (see `is_offloaded`)."""
    return [name for name, loaded in pair.models().items() if is_offloaded(loaded.model)]


def input_device(model: torch.nn.Module) -> torch.device:
    """The device a forward pass's inputs must be on.

    Without a device_map: the device of the parameters. With one (accelerate): the execution device of the input
    embedding's hook; a module offloaded to disk has its parameters on the meta device, where inputs cannot go.
    """
    try:
        embed = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a language model (the digits classifiers), or no embedding
        embed = None
    for module in (embed, model):
        hook = getattr(module, "_hf_hook", None) if module is not None else None
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")
