"""The `quantization` analyser: round the post model's weights to 8 and 4 bits (optimum-quanto) and see whether
forgotten answers come back (unlearning updates are often smaller than one quantization step)."""

from __future__ import annotations

import copy
import functools
from typing import Literal

import numpy as np
import torch

from palimpsest.devices import copy_sharing_weights, is_offloaded, materialise
from palimpsest.models import LoadedModel
from palimpsest.restoration.common import (
    RateMeasurement,
    calibrated_result,
    correct,
    item_rows,
    restoration_rate,
)
from palimpsest.restoration.figures import bars_figure
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

# quantization that keeps less than this share of the pre model's accuracy breaks the model: that width is not used
MIN_KEPT_ACCURACY = 0.5


def quantized(loaded, bits: int) -> LoadedModel:
    """A deep copy of `loaded` with every linear layer's weights quantized to `bits` (8 or 4) by optimum-quanto.

    A model offloaded to disk by accelerate is quantized layer by layer (`_quantized_offloaded`): the copy holds
    the quantized weights in memory, never the whole model in full precision."""
    from optimum.quanto import freeze, qint4, qint8, quantize

    weights = {8: qint8, 4: qint4}.get(int(bits))
    if weights is None:
        raise ValueError(f"quantization to {bits} bits is not supported: use 8 or 4")
    if is_offloaded(loaded.model):
        model = _quantized_offloaded(loaded.model, weights)
    else:
        model = copy.deepcopy(loaded.model)
        quantize(model, weights=weights)
        freeze(model)
        dequantized_linears(model)
    model.eval()
    if _holds_quantized_tensors(model):
        forward = model.forward

        # quanto's 4-bit weights fail under torch.inference_mode (which scoring uses): run this copy under no_grad
        @functools.wraps(forward)  # keeps the signature (logits_to_keep, the cache) visible to the callers
        def no_grad_forward(*args, **kwargs):
            with torch.inference_mode(False), torch.no_grad():
                return forward(*args, **kwargs)

        model.forward = no_grad_forward
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, source=loaded.source, name=f"{loaded.name}@int{bits}")


def dequantized_linears(model: torch.nn.Module) -> int:
    """Replace every frozen weight-only quanto QLinear by a plain nn.Linear holding its dequantized weight.

    quanto's weight-only linear dequantizes its weight on every call and multiplies in the activations' dtype
    (qbytes_mm: scale * int8 weights, then matmul; 4-bit: dequantize, then matmul), so a float linear holding
    that dequantized weight computes the same numbers (tests/test_restoration.py checks the logits) without
    dequantizing the whole model on every forward pass. Returns how many were replaced."""
    from optimum.quanto import QTensor
    from optimum.quanto.nn import QLinear

    replaced = 0
    for name, module in list(model.named_modules()):
        if not (isinstance(module, QLinear) and isinstance(module.weight, QTensor)
                and module.activation_qtype is None and not hasattr(module, "_hf_hook")):
            continue
        plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                device="meta")
        plain.weight = torch.nn.Parameter(module.weight.dequantize().detach(), requires_grad=False)
        if module.bias is not None:
            plain.bias = torch.nn.Parameter(module.bias.detach(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
        replaced += 1
    return replaced


def _holds_quantized_tensors(model: torch.nn.Module) -> bool:
    from optimum.quanto import QTensor

    return any(isinstance(p, QTensor) for p in model.parameters())


def _quantized_offloaded(model: torch.nn.Module, weights) -> torch.nn.Module:
    """A copy of an accelerate-offloaded `model`, quantized one module at a time: each module's offloaded weights
    are loaded into the copy (accelerate's align_module_device, `palimpsest.devices.materialise`) and its linear
    layers quantized and frozen at once, so at most one module is held in full precision beside the quantized
    ones. Weights already in memory are shared until quanto replaces them by their quantized copies; what quanto
    does not quantize (embeddings, norms) is copied into memory in full precision. The quantized copy sits on each
    module's execution device and loads nothing from disk."""
    from optimum.quanto import freeze, quantize

    copied = copy_sharing_weights(model)
    for name, module in list(copied.named_modules()):
        materialise(module, model.get_submodule(name))
        if name and not any(True for _ in module.children()):  # a leaf (Linear, ...): quanto swaps it when it can
            quantize(copied, weights=weights, include=glob_escape(name))
            freeze(copied.get_submodule(name))
    if is_offloaded(copied):
        left = next(n for n, p in copied.named_parameters() if p.device.type == "meta")
        raise ValueError(f"quantizing the offloaded model left {left} on the meta device")
    return copied


def glob_escape(name: str) -> str:
    """`name` as an fnmatch pattern matching only itself (quanto's include patterns are shell-style)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class QuantizationConfig(AnalyserConfig):
    bits: tuple[Literal[8, 4], ...] = (8, 4)  # weight widths tried (optimum-quanto qint8 / qint4)


@register
class Quantization(Analyser):
    name = "quantization"
    kind = "residue"
    title = "Quantization attack"
    description = (
        "The post model's linear weights are quantized to 8 and 4 bits (optimum-quanto, weight-only) and the forget "
        "items are scored again: unlearning updates smaller than one quantization step are rounded away and the "
        "answers return. The pre model is quantized the same way to check the model survives quantization (a width "
        f"keeping less than {MIN_KEPT_ACCURACY:.0%} of pre accuracy is not used). Residue = forget accuracy of the "
        "quantized post model (best usable width), between the floor (the quantized floor model on the same items, "
        "or, without one, the quantized post model on never-trained holdout items) and the pre model's accuracy."
    )
    Config = QuantizationConfig
    needs = frozenset({"weights"})  # quantizes a copy of each model (an offloaded one layer by layer)

    def measure(self, ctx) -> Result:
        bits_list = [int(b) for b in ctx.opts.bits]
        pair, concept, bs = ctx.pair, ctx.concept, ctx.config.batch_size
        items = list(concept.forget)
        pre, post, floor = pair.pre, pair.post, pair.floor
        holdout = list(concept.holdout)
        if floor is None and len(holdout) < 2:
            return inconclusive(self.name, "no floor model and too few never-trained holdout items for a floor")
        ceiling = correct(pre, items, batch_size=bs)
        post_plain = correct(post, items, batch_size=bs)
        per_bits, rows, notes = {}, [], []
        for bits in bits_list:
            post_q, floor_q, row = _quantized_scores(pair, items, holdout, bits, ceiling, post_plain, bs)
            per_bits[bits] = (post_q, floor_q, row["usable"])
            rows.append(row)
            if not row["usable"]:
                notes.append(f"{bits}-bit quantization keeps only {row['pre_accuracy_kept']:.0%} of the pre model's "
                             "forget accuracy: that width breaks the model and is not used")
        usable_bits = [b for b in bits_list if per_bits[b][2]]
        summary = {"bits": bits_list, "forget_acc_pre": float(ceiling.mean()), "forget_acc_post": float(post_plain.mean())}
        if not usable_bits:
            return inconclusive(self.name, "every quantization width breaks the pre model as well",
                                summary=summary, tables={"per_bits": rows})
        # the width whose quantized post model is furthest above its floor
        best = max(usable_bits, key=lambda b: float(per_bits[b][0].mean()) - float(per_bits[b][1].mean()))
        post_q, floor_q, _ = per_bits[best]
        summary.update({"chosen_bits": best, "forget_acc_post_quantized": float(post_q.mean()),
                        "forget_acc_floor_quantized": float(floor_q.mean()),
                        "restoration_rate": restoration_rate(ceiling, post_plain, post_q)})
        paired = floor is not None
        if paired:
            floor_base, floor_known = correct(floor, items, batch_size=bs), ceiling
        else:
            floor_base = correct(post, holdout, batch_size=bs)
            floor_known = np.ones(len(holdout), dtype=bool)
        floor_source = ("the floor model quantized the same way" if paired
                        else "the quantized post model on never-trained holdout items")
        if len(usable_bits) > 1:
            notes.append(f"of {len(usable_bits)} usable widths the one with the largest gap over the floor is reported")
        return calibrated_result(self, RateMeasurement(
            post=post_q, floor=floor_q, ceiling=ceiling, post_base=post_plain, floor_base=floor_base,
            floor_known=floor_known, floor_source=floor_source, summary=summary,
            per_item=item_rows(items, pre=ceiling, post=post_plain, quantized=post_q,
                               **({"floor": floor_q} if paired else {})),
            tables={"per_bits": rows}, notes=notes,
            evidence=(f"{best}-bit weight quantization changes forget accuracy of the post model from "
                      f"{summary['forget_acc_post']:.2f} to {summary['forget_acc_post_quantized']:.2f} (pre "
                      f"{summary['forget_acc_pre']:.2f}, quantized floor {summary['forget_acc_floor_quantized']:.2f})")),
            ctx)

    def figures(self, measured, ctx) -> dict:
        rows = measured.tables["per_bits"]
        return {"Forget accuracy after quantization":
                bars_figure([f"int{r['bits']}" for r in rows],
                            {"post": [r["forget_acc_post_quantized"] for r in rows],
                             "pre": [r["forget_acc_pre_quantized"] for r in rows],
                             "floor": [r["floor_quantized"] for r in rows]}, "forget accuracy")}


def _quantized_scores(pair, items, holdout, bits: int, ceiling: np.ndarray, post_plain: np.ndarray,
                      bs: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The quantized post model's and floor's per-item correctness at one width, and its per_bits row (the pre
    model quantized the same way says whether the width is usable)."""
    post_model = quantized(pair.post, bits)
    post_q = correct(post_model, items, batch_size=bs)
    pre_q = correct(quantized(pair.pre, bits), items, batch_size=bs)
    if pair.floor is not None:
        floor_q = correct(quantized(pair.floor, bits), items, batch_size=bs)
    else:
        floor_q = correct(post_model, holdout, batch_size=bs)  # never-trained facts: what rounding "recovers"
    del post_model
    kept = float(pre_q.mean()) / max(float(ceiling.mean()), 1e-9)
    row = {"bits": bits, "forget_acc_post_quantized": float(post_q.mean()),
           "forget_acc_pre_quantized": float(pre_q.mean()), "floor_quantized": float(floor_q.mean()),
           "pre_accuracy_kept": kept, "usable": kept >= MIN_KEPT_ACCURACY,
           "restoration_rate": restoration_rate(ceiling, post_plain, post_q)}
    return post_q, floor_q, row
