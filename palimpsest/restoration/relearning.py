"""The `relearning` analyser: a few fine-tuning steps on half of the forget facts, recovery measured on the other
half, against the same fine-tuning of a model that never knew them."""

from __future__ import annotations

import copy
from typing import Literal, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from palimpsest.capture import encode, n_layers, resolve
from palimpsest.capture.backends import forward_kwargs
from palimpsest.capture.memo import forget as forget_kept
from palimpsest.capture.sites import get_module
from palimpsest.concepts import Item
from palimpsest.devices import input_device, is_offloaded, materialise, offload_state
from palimpsest.models import LoadedModel
from palimpsest.restoration.common import (
    RateMeasurement,
    calibrated_result,
    correct,
    item_rows,
    restoration_rate,
    split_items,
    too_few,
)
from palimpsest.restoration.figures import curves_figure
from palimpsest.types import Analyser, AnalyserConfig, Result, inconclusive, register

Finetune = Literal["auto", "full", "last_blocks"]
# "auto": full fine-tuning up to this many parameters (the organism, SmolLM2-135M), the last blocks above
FULL_FINETUNE_MAX_PARAMS = 1_000_000_000


def answer_labels(batch) -> Int[Tensor, "batch pos"]:
    """Labels for HF's shifted causal-LM loss: the answer tokens, -100 (ignored) everywhere else."""
    pos = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)[None, :]
    start = batch.answer_start[:, None]
    keep = (pos >= start) & (pos < start + batch.answer_len[:, None])
    return torch.where(keep, batch.input_ids, torch.full_like(batch.input_ids, -100))


def n_params(model: torch.nn.Module) -> int:
    """Parameters of `model`, each shared (tied) tensor once."""
    return sum(p.numel() for p in model.parameters())


def finetune_scope(model: torch.nn.Module, finetune: Finetune, full_finetune_max_params: int) -> str:
    """"full" or "last_blocks": what `finetune` ("auto" decides by size) fine-tunes on this model."""
    if finetune == "auto":
        return "full" if n_params(model) <= full_finetune_max_params else "last_blocks"
    if finetune not in ("full", "last_blocks"):
        raise ValueError(f"unknown finetune scope {finetune!r}: use auto, full or last_blocks")
    return finetune


def last_block_paths(model: torch.nn.Module, n_blocks: int) -> list[str]:
    """Module paths of the last `n_blocks` decoder blocks (all of them when the model has fewer) and of the final
    norm: what `last_blocks` fine-tunes."""
    count = n_layers(model)
    paths = [resolve(model, f"blocks.{layer}.hook_resid_post").module_path
             for layer in range(max(0, count - max(1, n_blocks)), count)]
    return [*paths, resolve(model, "ln_final.hook_normalized").module_path]


def last_block_parameters(model: torch.nn.Module, n_blocks: int) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the modules `last_block_paths` names, each tensor once."""
    out: dict[int, tuple[str, torch.nn.Parameter]] = {}
    for path in last_block_paths(model, n_blocks):
        for name, param in get_module(model, path).named_parameters():
            out.setdefault(id(param), (f"{path}.{name}", param))
    return list(out.values())


HALF = (torch.float16, torch.bfloat16)


def _cast_inputs(dtype: torch.dtype):
    """A forward pre-hook (with kwargs) casting every floating tensor argument (tuples too) to `dtype`."""
    def cast(value):
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, tuple):
            return tuple(cast(v) for v in value)
        return value

    def hook(_module, args, kwargs):
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}
    return hook


def _float32_modules(model: torch.nn.Module, paths: Sequence[str]) -> None:
    """Upcast the modules at `paths` of a half-precision copy to float32, with hooks casting what flows into them to
    float32 and what flows into the (half-precision) output layer back to its dtype."""
    for path in paths:
        module = get_module(model, path)
        module.float()
        module.register_forward_pre_hook(_cast_inputs(torch.float32), with_kwargs=True)
    head = model.get_output_embeddings()
    head.register_forward_pre_hook(_cast_inputs(next(head.parameters()).dtype), with_kwargs=True)


def relearn(loaded, items: Sequence[Item], *, steps: int, lr: float, batch_size: int, seed: int,
            eval_items: Sequence[Item] = (), eval_every: int = 0, freeze_output: bool = False,
            finetune: Finetune = "auto", full_finetune_max_params: int = FULL_FINETUNE_MAX_PARAMS,
            trainable_blocks: int = 4) -> tuple[LoadedModel, list[tuple[int, float]]]:
    """Fine-tune a copy of `loaded` on `items` (loss on the answer tokens) for `steps` AdamW steps;
    with `freeze_output` the output layer (and embeddings tied to it) stays fixed.

    `finetune`: "full" trains every weight of a deep copy; "last_blocks" trains only the last `trainable_blocks`
    decoder blocks and the final norm, in a copy that shares every other tensor with `loaded` (memory: the model
    once, plus the trained blocks, their gradients and AdamW state, instead of two models plus gradients and state
    for all of it); "auto" is "full" up to `full_finetune_max_params` parameters, "last_blocks" above. The trained
    tensors of a float16/bfloat16 model are fine-tuned (and kept) in float32.

    A model offloaded to disk by accelerate (device_map) fine-tunes its last blocks ("auto" picks "last_blocks"
    whatever the size; "full" is refused): the copy holds their weights in memory, loaded through accelerate and
    trained there, while every other block stays offloaded and is loaded per forward pass as in the original.

    The original model is untouched. Returns the copy (eval mode; `meta["relearn"]`: the scope, the trained tensors
    and the loss of every step) and the accuracy on `eval_items` after every `eval_every` steps (step 0 included)
    when asked.
    """
    scope = finetune_scope(loaded.model, finetune, full_finetune_max_params)
    if is_offloaded(loaded.model):
        if finetune == "full":
            raise ValueError(f"{loaded.name}: some weights are offloaded to disk (device_map): full fine-tuning needs "
                             "every weight in memory; use finetune='last_blocks' (or 'auto'), or load the model "
                             "without disk offload")
        scope = "last_blocks"
    # a half-precision model's trained tensors are fine-tuned in float32: bfloat16 holds ~3 significant digits, so
    # AdamW steps of lr 3e-5 on weights of size ~0.05 would round away and nothing would be relearned
    half = any(p.dtype in HALF for p in loaded.model.parameters())
    trained: list[str] | None = None  # None: every weight (the names are listed only for a subset)
    if scope == "full":
        model = copy.deepcopy(loaded.model)
        if half:
            model.float()
        frozen = {id(p) for p in model.get_output_embeddings().parameters()} if freeze_output else set()
        params = [p for p in model.parameters() if p.is_floating_point() and id(p) not in frozen]
        for p in model.parameters():
            p.requires_grad_(id(p) not in frozen)
    else:
        # the last blocks, not LoRA: no new modules in the forward pass, so every site, hook and analyser reads the
        # copy as it reads the model; the blocks nearest the output are where a few steps move the answers most
        chosen = [(name, p) for name, p in last_block_parameters(loaded.model, trainable_blocks)
                  if p.is_floating_point()]
        skip = {id(p) for _, p in chosen}
        shared = [p for p in loaded.model.parameters() if id(p) not in skip and p.device.type != "meta"]
        # deepcopy with the frozen tensors in its memo: the copy's modules hold the very same tensors (no memory);
        # the memo then maps each trained tensor to its copy. Offloaded tensors (meta, no memory) are the copy's
        # own, frozen; the weights accelerate loads them from stay shared (offload_state)
        memo = {id(p): p for p in shared}
        memo.update(offload_state(loaded.model))
        model = copy.deepcopy(loaded.model, memo)
        for path in last_block_paths(model, trainable_blocks):  # offloaded trained tensors: loaded into the copy
            source = get_module(loaded.model, path)
            for name, module in get_module(model, path).named_modules():
                materialise(module, source.get_submodule(name))
        for p in model.parameters():
            if p.device.type == "meta":
                p.requires_grad_(False)  # what its hooks load per forward pass is then frozen too
        params = [model.get_parameter(name) for name, _ in chosen]
        trained = [name for name, _ in chosen]
        if half:
            _float32_modules(model, last_block_paths(model, trainable_blocks))
    tuned = LoadedModel(model=model, tokenizer=loaded.tokenizer, source=loaded.source, name=f"{loaded.name}+relearn")
    device = input_device(model)
    gen = torch.Generator().manual_seed(seed)
    # shared tensors are the original's: their requires_grad is switched off while training and restored after
    was_trainable = [(p, p.requires_grad) for p in shared] if scope != "full" else []
    for p, _ in was_trainable:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    # the fused kernel: one pass over each tensor instead of several (4x faster per step on the CPU; the same update
    # up to float rounding); devices without it take the default
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)
    curve: list[tuple[int, float]] = []
    losses: list[float] = []

    def record(step: int) -> None:
        if eval_items and eval_every and step % eval_every == 0:
            model.eval()
            curve.append((step, float(correct(tuned, eval_items, batch_size=batch_size).mean())))

    try:
        record(0)
        with torch.inference_mode(False), torch.enable_grad():
            for step in range(1, steps + 1):
                model.train()
                order = torch.randperm(len(items), generator=gen)[:batch_size].tolist()
                chosen_items = [items[i] for i in order]
                batch = encode(loaded.tokenizer, [it.prompt for it in chosen_items],
                               [it.answer for it in chosen_items], [it.subject for it in chosen_items]).to(device)
                loss = model(**forward_kwargs(batch), labels=answer_labels(batch)).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                forget_kept(model)  # the fused step writes the weights without moving their version counters
                losses.append(float(loss.detach()))
                record(step)
    finally:
        for p, flag in was_trainable:
            p.requires_grad_(flag)
    model.eval()
    for p in params:
        p.grad = None
    if scope == "full":
        for p in model.parameters():
            p.grad = None
    del optimizer
    model_dtype = next((p.dtype for p in loaded.model.parameters() if p.is_floating_point()), torch.float32)
    dtypes = {"model_dtype": str(model_dtype).removeprefix("torch."),
              "train_dtype": str(params[0].dtype if params else model_dtype).removeprefix("torch.")}
    tuned.meta["relearn"] = {"finetune": scope, "n_params": n_params(model), **dtypes,
                             "n_trained_params": sum(p.numel() for p in params), "trained": trained,
                             "losses": losses}
    return tuned, curve


class RelearningConfig(AnalyserConfig):
    steps: int = 10  # AdamW fine-tuning steps
    lr: float = 1e-3  # fine-tuning learning rate
    batch_size: int = 32  # items per fine-tuning step
    eval_every: int = 2  # the relearning curve is measured every this many steps
    freeze_output: bool = False  # keep the output layer (and embeddings tied to it) fixed while fine-tuning
    # what the attack fine-tunes on: half of the forget facts ("forget"), or text that is related but holds none of
    # them ("related": the concept's neighbour facts, people who share a city or employer), scored on every forget fact
    data: Literal["forget", "related"] = "forget"
    test_size: float = 0.5  # share of the forget (and holdout) facts held out for scoring
    # what is fine-tuned: every weight of a copy ("full"), or the last `trainable_blocks` decoder blocks and the
    # final norm of a copy sharing every other tensor ("last_blocks": memory for the model once plus those blocks'
    # gradients and AdamW state); "auto": full up to `full_finetune_max_params` parameters, last_blocks above
    finetune: Literal["auto", "full", "last_blocks"] = "auto"
    full_finetune_max_params: int = FULL_FINETUNE_MAX_PARAMS
    trainable_blocks: int = 4  # last_blocks: how many decoder blocks (counted from the output) are fine-tuned


@register
class Relearning(Analyser):
    name = "relearning"
    kind = "residue"
    title = "Relearning attack"
    description = (
        "A copy of the post model is fine-tuned for a few steps on one half of the forget facts (the answer tokens "
        "only), and its accuracy is measured on the other half, which it never saw again (option data='related': "
        "fine-tuned on the concept's neighbour facts, none of them a forget fact, and measured on every forget fact). A model that still holds "
        "the knowledge underneath recovers the held-out facts; one that never learned them can only guess. Residue = "
        "held-out accuracy of the relearned post model, between the floor (the same fine-tuning of the floor model "
        "on the same items, or, without one, of the post model on the concept's never-trained holdout items) and "
        "the pre model's accuracy on the held-out half."
    )
    Config = RelearningConfig
    modalities = frozenset({"text", "image"})
    needs = frozenset({"gradients"})

    def offload_blocker(self, ctx) -> str | None:  # "auto" and "last_blocks" fine-tune the last blocks in memory
        return ("finetune='full' fine-tunes every weight, so it needs them all in memory (finetune='last_blocks' "
                "runs offloaded)") if ctx.opts.finetune == "full" else None

    def measure(self, ctx) -> Result:
        opts: RelearningConfig = ctx.opts
        pair, concept, config, data = ctx.pair, ctx.concept, ctx.config, opts.data
        split = self._split(opts, concept, config)
        if isinstance(split, Result):
            return split
        fit, evaluate, train, held = split
        pre, post, floor, bs = pair.pre, pair.post, pair.floor, config.batch_size
        ceiling = correct(pre, evaluate, batch_size=bs)
        post_plain = correct(post, evaluate, batch_size=bs)
        kw = dict(steps=opts.steps, lr=opts.lr, batch_size=opts.batch_size, seed=config.seed,
                  eval_every=opts.eval_every, freeze_output=opts.freeze_output, finetune=opts.finetune,
                  full_finetune_max_params=opts.full_finetune_max_params, trainable_blocks=opts.trainable_blocks)
        tuned, post_curve = relearn(post, fit, eval_items=evaluate, **kw)
        scope = tuned.meta["relearn"]
        post_att = correct(tuned, evaluate, batch_size=bs)
        fit_acc = float(correct(tuned, fit, batch_size=bs).mean())
        curves = {"post, relearned": [a for _, a in post_curve]}
        if floor is not None:
            f_tuned, floor_curve = relearn(floor, fit, eval_items=evaluate, **kw)
            floor_values, paired = correct(f_tuned, evaluate, batch_size=bs), True
            floor_base, floor_known = correct(floor, evaluate, batch_size=bs), ceiling
            curves["floor, same fine-tuning"] = [a for _, a in floor_curve]
            floor_source = "the floor model fine-tuned the same way on the same items"
            del f_tuned
        else:
            holdout_floor = self._holdout_floor(ctx, tuned, kw)
            if isinstance(holdout_floor, Result):
                return holdout_floor
            floor_values, floor_base, floor_known, h_curve, floor_source = holdout_floor
            paired = False
            if h_curve:
                curves["post on never-trained holdout facts"] = [a for _, a in h_curve]
        del tuned
        summary = {
            "data": data, "steps": opts.steps, "lr": opts.lr, "n_train": len(train), "n_held_out": len(held),
            "held_out_acc_pre": float(ceiling.mean()), "held_out_acc_post": float(post_plain.mean()),
            "held_out_acc_relearned": float(post_att.mean()), "held_out_acc_floor_relearned": float(floor_values.mean()),
            "fit_acc_relearned": fit_acc,
            "restoration_rate": restoration_rate(ceiling, post_plain, post_att),
            "finetune": scope["finetune"], "n_trained_params": scope["n_trained_params"],
        }
        return calibrated_result(self, RateMeasurement(
            post=post_att, floor=floor_values, ceiling=ceiling, post_base=post_plain, floor_base=floor_base,
            floor_known=floor_known, floor_source=floor_source, summary=summary,
            per_item=item_rows(evaluate, pre=ceiling, post=post_plain, relearned=post_att,
                               **({"floor": floor_values} if paired else {})),
            notes=_notes(opts, len(train), len(held), fit_acc, scope), evidence=_evidence(opts, summary),
            extra={"steps": [s for s, _ in post_curve], "curves": curves}), ctx)

    def _split(self, opts: RelearningConfig, concept,
               config) -> Result | tuple[list[Item], list[Item], list[int], list[int]]:
        """(items fine-tuned on, items scored, their indices as train / held-out), or why there are too few."""
        items = list(concept.forget)
        if opts.data == "forget":
            train, held = split_items(items, config.seed, opts.test_size)
            if (few := too_few(self.name, len(train), len(held), config)) is not None:
                return few
            return [items[i] for i in train], [items[i] for i in held], train, held
        fit, evaluate = list(concept.neighbours), items
        if len(fit) < 2 or len(evaluate) < max(2, config.min_items):
            return inconclusive(self.name, f"relearning on related text needs >= 2 neighbour items and >= "
                                           f"{max(2, config.min_items)} forget items ({len(fit)}, {len(evaluate)})")
        return fit, evaluate, list(range(len(fit))), list(range(len(evaluate)))

    def _holdout_floor(self, ctx, tuned: LoadedModel, kw: dict):
        """Without a floor model: (values, unattacked correctness, floor_known, relearning curve, source) of the post
        model relearned on the concept's never-trained holdout facts; a Result when there are too few."""
        opts: RelearningConfig = ctx.opts
        post, data, bs, seed = ctx.pair.post, opts.data, ctx.config.batch_size, ctx.config.seed
        holdout = list(ctx.concept.holdout)
        if data == "related":  # the post model after the same fine-tuning, on facts it never knew
            h_train, h_held = [], list(range(len(holdout)))
        else:
            h_train, h_held = split_items(holdout, seed, opts.test_size)
        if (data == "forget" and len(h_train) < 2) or len(h_held) < 2:
            return inconclusive(self.name, "no floor model and too few holdout items (never-trained facts) to "
                                           "measure what relearning recovers for facts that were never known")
        h_items = [holdout[i] for i in h_held]
        if data == "related":
            h_tuned, h_curve = tuned, []  # its curve would need another fine-tuning run
        else:
            h_tuned, h_curve = relearn(post, [holdout[i] for i in h_train], eval_items=h_items, **kw)
        floor_values = correct(h_tuned, h_items, batch_size=bs)
        floor_base = correct(post, h_items, batch_size=bs)
        floor_known = np.ones(len(h_items), dtype=bool)  # never-trained facts: any answer got right is relearned
        floor_source = ("the post model after the same fine-tuning, on never-trained holdout facts" if data == "related"
                        else "the post model fine-tuned the same way on never-trained holdout facts")
        return floor_values, floor_base, floor_known, h_curve, floor_source

    def figures(self, measured, ctx) -> dict:
        return {"Relearning curve": curves_figure(measured.extra["steps"], measured.extra["curves"],
                                                  float(np.mean(measured.ceiling)), "fine-tuning step",
                                                  "held-out accuracy")}


def _notes(opts: RelearningConfig, n_train: int, n_held: int, fit_acc: float, scope: dict) -> list[str]:
    what = (f"{n_train} forget items; evaluated on {n_held} items of other facts (split by fact)"
            if opts.data == "forget" else
            f"{n_train} related items (neighbour facts, none of them a forget fact); evaluated on all {n_held} forget "
            "items")
    notes = [f"{opts.steps} AdamW steps (lr {opts.lr:g}, batches of {opts.batch_size}) on {what}"]
    if scope["train_dtype"] != scope["model_dtype"]:
        notes.append(f"the {scope['model_dtype']} model's fine-tuned tensors were trained in {scope['train_dtype']} "
                     "(half precision would round the small AdamW steps away)")
    if scope["finetune"] == "last_blocks":
        notes.append(f"only the last {opts.trainable_blocks} decoder blocks and the final norm were fine-tuned "
                     f"({scope['n_trained_params']:,} of {scope['n_params']:,} parameters; the model has more than "
                     f"full_finetune_max_params={opts.full_finetune_max_params:,}), the same for every model compared")
    if fit_acc < 0.5:
        notes.append(f"the fine-tuning reached only {fit_acc:.0%} on its own items: raise 'steps' or 'lr'")
    return notes


def _evidence(opts: RelearningConfig, summary: dict) -> str:
    return (f"{opts.steps} fine-tuning steps on "
            f"{'other forget facts' if opts.data == 'forget' else 'related facts'} bring held-out forget accuracy "
            f"from {summary['held_out_acc_post']:.2f} to {summary['held_out_acc_relearned']:.2f} (pre "
            f"{summary['held_out_acc_pre']:.2f}; floor after the same fine-tuning "
            f"{summary['held_out_acc_floor_relearned']:.2f})")
