"""Where each TransformerLens site lives in a HF causal LM, for any family TransformerLens's bridge has an adapter for:
the adapter's component_mapping (HF module names) and its blocks' hook aliases (hook_resid_mid -> ln2.hook_in, which
is Gemma's pre_feedforward_layernorm; Gemma's hook_attn_out -> ln1_post.hook_out; OLMo2's hook_resid_mid ->
mlp.hook_in; no hook_resid_mid on a parallel block), resolved to HF module inputs and outputs."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Literal

import torch

IO = Literal["input", "output"]

# per-layer site kinds, named as TransformerLens names its hooks on a block
LAYER_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
               "attn.hook_z", "mlp.hook_post")
NNSIGHT_ROUTE = ("read it with the nnsight backend and HF module paths instead (nnsight.NNsight(model), then "
                 "model.<module path>.input / .output inside a trace)")


class SiteError(ValueError):
    """A site name does not exist on this model; the message lists the valid ones."""


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """`root.get_submodule(path)`, also through the wrappers TransformerBridge puts around HF modules in place;
    `path` "" is `root` itself."""
    module = root
    for part in path.split(".") if path else ():
        child = module._modules.get(part)
        while child is None and "_original_component" in module._modules:
            module = module._modules["_original_component"]
            child = module._modules.get(part)
        if child is None:
            return None
        module = child
    return module


@dataclass(frozen=True)
class Family:
    """One model's site layout: HF module paths (block-relative for the per-layer kinds, "" the block itself)."""

    architecture: str  # the TransformerLens adapter's key, e.g. "Gemma2ForCausalLM"
    blocks: str  # the layer list
    n_heads: int
    embed: str  # its output is hook_embed
    final_norm: str  # its output is ln_final.hook_normalized, what the unembedding reads
    kinds: dict[str, tuple[str, IO]]  # per-layer kind -> (block-relative path, io)
    missing: dict[str, str] = field(default_factory=dict)  # per-layer kind this family lacks -> why (one line)
    softcap: float | None = None  # final-logit soft-capping: logits = cap * tanh(logits / cap)


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, Family]" = weakref.WeakKeyDictionary()


def family_of(model: torch.nn.Module) -> Family:
    """The site layout of `model`, from TransformerLens's adapter for its architecture (built once per model)."""
    found = _CACHE.get(model)
    if found is None:
        found = _build(model)
        _CACHE[model] = found
    return found


def _unknown(model: torch.nn.Module, why: str) -> SiteError:
    return SiteError(f"{type(model).__name__}: palimpsest cannot map TransformerLens sites onto this model ({why}); "
                     f"{NNSIGHT_ROUTE}")


# TL's adapters, built from the config alone (no bridge boot), not a second table: torch/nnsight read what TL names
def _adapter(model: torch.nn.Module):
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise _unknown(model, "not a HF PreTrainedModel with a config")
    from transformer_lens.factories.architecture_adapter_factory import (
        SUPPORTED_ARCHITECTURES,
        ArchitectureAdapterFactory,
    )
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf

    names = [cls.__name__ for cls in type(model).__mro__] + list(getattr(config, "architectures", None) or [])
    architecture = next((name for name in names if name in SUPPORTED_ARCHITECTURES), None)
    if architecture is None:
        raise _unknown(model, "TransformerLens has no adapter for this architecture")
    try:
        bridge_config = build_bridge_config_from_hf(config, architecture, getattr(config, "_name_or_path", "") or
                                                    "local-model", torch.float32)
        return architecture, ArchitectureAdapterFactory.select_architecture_adapter(bridge_config)
    except Exception as error:  # an adapter's own config checks raise all sorts
        raise _unknown(model, f"TransformerLens's {architecture} adapter refused its config: "
                              f"{type(error).__name__}: {' '.join(str(error).split())[:160]}") from None


def _walk(component, path: str, hook: str) -> tuple[str, IO]:
    """(HF module path, io) of TransformerLens hook `hook` on bridge `component` sitting at HF `path`."""
    if hook in ("hook_in", "hook_out"):
        return path, "input" if hook == "hook_in" else "output"
    alias = component.hook_aliases.get(hook)
    if alias is not None:
        for target in [alias] if isinstance(alias, str) else alias:
            try:
                return _walk(component, path, target)
            except LookupError:
                continue
        raise LookupError(f"{hook} -> {alias}")
    head, _, rest = hook.partition(".")
    sub = component.submodules.get(head) if rest else None
    if sub is None or not sub.name:
        raise LookupError(hook)
    return _walk(sub, f"{path}.{sub.name}" if path else sub.name, rest)


def _build(model: torch.nn.Module) -> Family:
    from transformer_lens.model_bridge.generalized_components.block import BlockBridge, ParallelBlockBridge

    architecture, adapter = _adapter(model)
    mapping = adapter.component_mapping
    block = mapping.get("blocks")
    if type(block) not in (BlockBridge, ParallelBlockBridge) or get_module(model, block.name) is None:
        kind = type(block).__name__ if block is not None else "no layer list"
        raise _unknown(model, f"TransformerLens maps its layers as {kind}, not attention + MLP transformer blocks")
    first = f"{block.name}.0"
    kinds: dict[str, tuple[str, IO]] = {}
    missing: dict[str, str] = {}
    for kind in LAYER_SITES:
        try:
            rel, io = _walk(block, "", kind)
        except LookupError:
            rel, io = None, "input"
        if rel is not None and get_module(model, f"{first}.{rel}" if rel else first) is not None:
            kinds[kind] = (rel, io)
        elif kind == "hook_resid_mid" and isinstance(block, ParallelBlockBridge):
            missing[kind] = (f"{architecture} runs attention and MLP in parallel (use_parallel_residual / "
                             "parallel_attn): both read resid_pre, so there is no hook_resid_mid; use hook_resid_pre, "
                             "hook_attn_out and hook_mlp_out (resid_post = resid_pre + attn_out + mlp_out)")
        else:
            missing[kind] = (f"{architecture} has no {kind} on a module palimpsest can hook (TransformerLens: "
                             f"{block.hook_aliases.get(kind, kind)!r}); {NNSIGHT_ROUTE}")
    if "hook_resid_pre" not in kinds or "hook_resid_post" not in kinds:
        raise _unknown(model, "its blocks' input and output are not the residual stream")
    # TransformerBridge's own hook_embed alias: a post-embedding norm when there is one (Bloom), else the embedding
    embed = next((mapping[n] for n in ("embed_ln", "embed") if n in mapping), None)
    for name, component in (("hook_embed", embed), ("ln_final.hook_normalized", mapping.get("ln_final"))):
        if component is None or get_module(model, component.name) is None:
            raise _unknown(model, f"no module for {name}")
    cap = float(getattr(adapter.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    return Family(architecture=architecture, blocks=block.name, n_heads=int(adapter.cfg.n_heads),
                  embed=embed.name, final_norm=mapping["ln_final"].name, kinds=kinds,
                  missing=missing, softcap=cap if cap > 0 else None)


def logit_softcap(model: torch.nn.Module) -> float | None:
    """The model's final-logit soft-cap (Gemma2's final_logit_softcapping), or None when it has none."""
    return family_of(model).softcap
