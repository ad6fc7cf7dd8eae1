"""Where a model's inputs go (its parameters' device, or accelerate's execution device under a device_map), and how
weights that accelerate offloaded to disk (on the meta device, loaded per forward pass by its hooks) are read or
copied into memory through accelerate itself."""

from __future__ import annotations

import copy

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


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: its accelerate hook's execution device (a module offloaded to disk has its
    weights on the meta device and loads them there per forward pass), else that of its first parameter or buffer
    not on the meta device, else the CPU."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def read_tensor(module: torch.nn.Module, name: str = "weight") -> torch.Tensor:
    """The module's own parameter or buffer `name`, detached: read where it is, or, offloaded by accelerate (on the
    meta device, loaded per forward pass by its hook), loaded on the module's execution device through accelerate's
    `align_module_device`. The tensor stays valid after the module is offloaded again; nothing is written back."""
    from accelerate.utils import align_module_device

    tensor = getattr(module, name, None)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{type(module).__name__} has no tensor {name!r}")
    if tensor.device.type != "meta":
        return tensor.detach()
    with align_module_device(module):
        tensor = getattr(module, name).detach()
    if tensor.device.type == "meta":
        raise ValueError(f"{type(module).__name__}.{name} is on the meta device and no accelerate hook loads it "
                         "(a model built without weights, or offloaded by something other than accelerate)")
    return tensor


def read_parameter(model: torch.nn.Module, name: str) -> torch.Tensor:
    """`read_tensor` for a parameter (or buffer) named as `model.state_dict()` names it ("model.layers.0.mlp.up_proj.weight")."""
    path, _, leaf = name.rpartition(".")
    return read_tensor(model.get_submodule(path) if path else model, leaf)


def offload_state(model: torch.nn.Module) -> dict[int, object]:
    """A deepcopy memo that keeps what accelerate's hooks hold for `model` (the maps it loads offloaded weights from,
    the tied-parameter map) shared with a copy instead of copied: those are the weights themselves (on disk, or in
    CPU memory for a model offloaded from a GPU)."""
    memo: dict[int, object] = {}
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        for one in getattr(hook, "hooks", (hook,)):
            for attr in ("weights_map", "tied_params_map"):
                value = getattr(one, attr, None)
                if value is not None:
                    memo[id(value)] = value
    return memo


def copy_sharing_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` with its own modules (and accelerate hooks) but the very same parameters, and the same
    offloaded weights behind its hooks (no memory for either)."""
    memo: dict[int, object] = {id(p): p for p in model.parameters()}
    memo.update(offload_state(model))
    return copy.deepcopy(model, memo)


def materialise(module: torch.nn.Module, source: torch.nn.Module) -> list[str]:
    """Give `module` (a copy of `source`, see `copy_sharing_weights`) its own in-memory copy of each of `source`'s
    own tensors that accelerate offloaded (on the meta device), on `source`'s execution device, and swap its
    offloading hook for one that only moves the inputs there: the copy then computes from, and may train, these
    tensors while the rest of the model stays offloaded. Returns the names of the tensors materialised (none when
    nothing of the module is offloaded; tensors not on meta are left as they are)."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_module
    from accelerate.utils import set_module_tensor_to_device

    own = (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))
    names = [name for name, tensor in own if tensor.device.type == "meta"]
    if not names:
        return []
    device = module_device(source)
    values = {name: read_tensor(source, name).to(device).clone() for name in names}  # its own memory, writable
    old = getattr(module, "_hf_hook", None)
    remove_hook_from_module(module)
    for name, value in values.items():
        set_module_tensor_to_device(module, name, device, value=value)
    if old is not None:  # the offloading hook also moved the inputs to the execution device: keep that
        add_hook_to_module(module, AlignDevicesHook(execution_device=device,
                                                    io_same_device=bool(getattr(old, "io_same_device", False)),
                                                    skip_keys=getattr(old, "skip_keys", None)))
    return names
