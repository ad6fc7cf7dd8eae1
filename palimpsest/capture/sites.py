"""TransformerLens site names <-> modules of a HF model, so every backend and intervention speaks one naming."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from palimpsest.capture.families import LAYER_SITES, SiteError, family_of, get_module

__all__ = ["GLOBAL_SITES", "LAYER_SITES", "SiteError", "SiteTarget", "execution_key", "get_module", "layer_of",
           "n_layers", "resid_post_sites", "resolve", "valid_sites"]

GLOBAL_SITES = ("hook_embed", "ln_final.hook_normalized")

_SITE_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class SiteTarget:
    """Where a site lives in the HF module tree: a module, and whether it is that module's input or output."""

    site: str
    module_path: str
    io: Literal["input", "output"]
    n_heads: int | None = None  # set for hook_z: the input of the output projection, split into heads
    # set for hook_resid_mid: the mid stream is a local of this block's forward (module_path's input only reads
    # it), so an edit there must also be carried to the block's output; see interventions.install_edit
    carry_to: str | None = None


def n_layers(model: torch.nn.Module) -> int:
    return len(get_module(model, family_of(model).blocks))


def _kinds(model: torch.nn.Module) -> list[str]:
    return [kind for kind in LAYER_SITES if kind in family_of(model).kinds]


def valid_sites(model: torch.nn.Module) -> list[str]:
    """Every site this model has (a parallel-residual block has no hook_resid_mid)."""
    kinds, count = _kinds(model), n_layers(model)
    return list(GLOBAL_SITES) + [f"blocks.{layer}.{kind}" for layer in range(count) for kind in kinds]


def resolve(model: torch.nn.Module, site: str) -> SiteTarget:
    """Map a TransformerLens site name to the HF module that carries it.

    hook_embed is TransformerLens's: the token embedding as the model scales it (Gemma's sqrt(d_model) is inside its
    embedding module, so it is what enters block 0), without GPT-2's position embedding. hook_attn_out and
    hook_mlp_out are what is added to the stream (after Gemma's and OLMo2's post-norms).
    """
    family = family_of(model)
    if site == "hook_embed":
        return SiteTarget(site, family.embed, "output")
    if site == "ln_final.hook_normalized":
        return SiteTarget(site, family.final_norm, "output")
    match = _SITE_RE.match(site)
    count = n_layers(model)
    kind = match.group(2) if match else None
    if match and int(match.group(1)) < count and kind in family.missing:
        raise SiteError(f"site {site!r}: {family.missing[kind]}")
    if match is None or int(match.group(1)) >= count or kind not in family.kinds:
        raise SiteError(
            f"site {site!r} does not exist on this {count}-layer model; valid sites are {', '.join(GLOBAL_SITES)} and "
            f"blocks.{{0..{count - 1}}}.{{{', '.join(_kinds(model))}}}"
        )
    block = f"{family.blocks}.{match.group(1)}"
    rel, io = family.kinds[kind]
    path = f"{block}.{rel}" if rel else block
    if kind == "attn.hook_z":
        return SiteTarget(site, path, io, n_heads=family.n_heads)
    if kind == "hook_resid_mid" and io == "input":
        return SiteTarget(site, path, io, carry_to=block)
    return SiteTarget(site, path, io)


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
