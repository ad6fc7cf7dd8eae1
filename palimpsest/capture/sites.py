"""TransformerLens site names <-> modules of a HF model, so every backend and intervention speaks one naming."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

# per-layer site kinds palimpsest supports on every backend
LAYER_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
               "attn.hook_z", "mlp.hook_post")
GLOBAL_SITES = ("hook_embed", "ln_final.hook_normalized")

_SITE_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class SiteError(ValueError):
    """A site name does not exist on this model; the message lists the valid ones."""


@dataclass(frozen=True)
class SiteTarget:
    """Where a site lives in the HF module tree: a module, and whether it is that module's input or output."""

    site: str
    module_path: str
    io: Literal["input", "output"]
    n_heads: int | None = None  # set for hook_z: the input of the output projection, split into heads


# module names of the common HF decoder families: (layers, attention, attention out-proj, mlp, mlp down-proj,
# post-attention norm, final norm, embedding)
_FAMILIES = {
    "llama": ("model.layers", "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj", "post_attention_layernorm",
              "model.norm", "model.embed_tokens"),
    "gpt2": ("transformer.h", "attn", "attn.c_proj", "mlp", "mlp.c_proj", "ln_2", "transformer.ln_f", "transformer.wte"),
    "gpt_neox": ("gpt_neox.layers", "attention", "attention.dense", "mlp", "mlp.dense_4h_to_h",
                 "post_attention_layernorm", "gpt_neox.final_layer_norm", "gpt_neox.embed_in"),
}


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """`root.get_submodule(path)`, also through the wrappers TransformerBridge puts around HF modules in place."""
    module = root
    for part in path.split("."):
        child = module._modules.get(part)
        while child is None and "_original_component" in module._modules:
            module = module._modules["_original_component"]
            child = module._modules.get(part)
        if child is None:
            return None
        module = child
    return module


_get = get_module


def model_family(model: torch.nn.Module) -> str:
    for family, names in _FAMILIES.items():
        if _get(model, names[0]) is not None:
            return family
    raise SiteError(
        f"{type(model).__name__}: palimpsest does not know this architecture's layer list "
        "(supported: Llama/Mistral/Qwen/SmolLM-style, GPT-2, GPT-NeoX); use the nnsight backend with module paths"
    )


def n_layers(model: torch.nn.Module) -> int:
    return len(get_module(model, _FAMILIES[model_family(model)][0]))


def valid_sites(model: torch.nn.Module) -> list[str]:
    count = n_layers(model)
    return list(GLOBAL_SITES) + [f"blocks.{layer}.{kind}" for layer in range(count) for kind in LAYER_SITES]


def resolve(model: torch.nn.Module, site: str) -> SiteTarget:
    """Map a TransformerLens site name to the HF module that carries it."""
    family = model_family(model)
    layers, attn, attn_out, mlp, mlp_down, post_attn_norm, final_norm, embed = _FAMILIES[family]
    if site == "hook_embed":
        return SiteTarget(site, embed, "output")
    if site == "ln_final.hook_normalized":
        return SiteTarget(site, final_norm, "output")
    match = _SITE_RE.match(site)
    count = n_layers(model)
    if match is None or int(match.group(1)) >= count or match.group(2) not in LAYER_SITES:
        raise SiteError(
            f"site {site!r} does not exist on this {count}-layer model; valid sites are {', '.join(GLOBAL_SITES)} and "
            f"blocks.{{0..{count - 1}}}.{{{', '.join(LAYER_SITES)}}}"
        )
    layer, kind = int(match.group(1)), match.group(2)
    block = f"{layers}.{layer}"
    if kind == "hook_resid_pre":
        return SiteTarget(site, block, "input")
    if kind == "hook_resid_post":
        return SiteTarget(site, block, "output")
    if kind == "hook_resid_mid":
        return SiteTarget(site, f"{block}.{post_attn_norm}", "input")
    if kind == "hook_attn_out":
        return SiteTarget(site, f"{block}.{attn}", "output")
    if kind == "hook_mlp_out":
        return SiteTarget(site, f"{block}.{mlp}", "output")
    if kind == "mlp.hook_post":
        return SiteTarget(site, f"{block}.{mlp_down}", "input")
    heads = int(model.config.num_attention_heads)
    return SiteTarget(site, f"{block}.{attn_out}", "input", n_heads=heads)


def resid_post_sites(model: torch.nn.Module) -> list[str]:
    return [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers(model))]


# execution order inside one block, so that backends which need it (nnsight) read sites in order
_ORDER = {"hook_resid_pre": 0, "attn.hook_z": 1, "hook_attn_out": 2, "hook_resid_mid": 3, "mlp.hook_post": 4,
          "hook_mlp_out": 5, "hook_resid_post": 6}


def execution_key(site: str) -> tuple[int, int]:
    if site == "hook_embed":
        return (-1, 0)
    if site == "ln_final.hook_normalized":
        return (10**9, 0)
    match = _SITE_RE.match(site)
    return (int(match.group(1)), _ORDER[match.group(2)]) if match else (10**9 + 1, 0)


def layer_of(site: str) -> int | None:
    match = _SITE_RE.match(site)
    return int(match.group(1)) if match else None
