"""Where a model's inputs go: its parameters' device, or accelerate's execution device under a device_map."""

from __future__ import annotations

import torch


def offloaded_models(pair) -> list[str]:
    """The roles (pre, post, floor) of a pair's models with weights on the meta device (offloaded to disk)."""
    return [name for name, loaded in pair.models().items()
            if any(p.device.type == "meta" for p in loaded.model.parameters())]


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
