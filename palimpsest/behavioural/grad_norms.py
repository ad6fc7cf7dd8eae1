"""The gradient-norm membership attack's per-text statistic (open-unlearning `GradNormAttack`): the mean over
parameter tensors of ‖∂L/∂θ‖_p, L the mean NLL of the scored tokens, computed for groups of equally long texts at
once (per-sample gradients) with the per-text loop as the reference and the fallback."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.overrides import TorchFunctionMode

from palimpsest.capture import encode
from palimpsest.capture.backends import forward_kwargs
from palimpsest.capture.tokens import EncodedBatch
from palimpsest.devices import input_device


def gradient_norms(model, tokenizer, prompts: list[str], answers: list[str] | None,
                   p: int | str) -> Float[np.ndarray, " n"]:
    """Per text (batch size 1, as the reference): the mean over parameter tensors of ‖∂L/∂θ‖_p, L the mean NLL of
    the scored tokens (open-unlearning `GradNormAttack`). Eval mode (the reference switches to train mode, which
    differs only where the model has dropout, making its score random); the model's weights and grads stay as found.

    Computed for groups of equally long texts at once (`_gradient_norms_grouped`: per-sample gradients, the numbers
    of the per-text loop); a model that path cannot take gets the per-text loop `_gradient_norms_loop`."""
    encoded = [_encode_one(tokenizer, prompt, None if answers is None else answers[i])
               for i, prompt in enumerate(prompts)]
    try:
        with warnings.catch_warnings():  # functorch's note that an op (CPU flash attention) is vmapped by a loop
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            return _gradient_norms_grouped(model, encoded, p)
    except Exception as error:  # anything the grouped path cannot differentiate: the loop, the reference
        warnings.warn(f"gradient norms per text ({type(error).__name__} in the grouped per-sample path: {error})",
                      RuntimeWarning, stacklevel=2)
        return _gradient_norms_loop(model, tokenizer, prompts, answers, p)


def _gradient_norms_loop(model, tokenizer, prompts: list[str], answers: list[str] | None,
                         p: int | str) -> Float[np.ndarray, " n"]:
    """The reference: one forward and backward pass per text, every parameter's gradient materialised."""
    order = float("inf") if p == "inf" else float(p)
    device = input_device(model)
    # differentiate fresh leaves through torch.func, so the model's own tensors (inference tensors, frozen ones,
    # their .grad) are never touched; an inference tensor must be cloned to take part in autograd
    leaves = {name: (q.clone() if q.is_inference() else q.detach()).requires_grad_(True)
              for name, q in model.named_parameters()}
    norms = []
    for i, prompt in enumerate(prompts):
        batch = encode(tokenizer, [prompt], None if answers is None else [answers[i]]).to(device)
        with torch.enable_grad():
            logits = torch.func.functional_call(model, leaves, args=(), kwargs=forward_kwargs(batch)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)[0, :-1]
            token_lp = logp.gather(-1, batch.input_ids[0, 1:, None]).squeeze(-1)
            scored = (batch.attention_mask[0, 1:] if answers is None else batch.answer_mask()[0, :-1]).bool()
            grads = torch.autograd.grad(-token_lp[scored].mean(), list(leaves.values()), allow_unused=True)
        norms.append(float(torch.stack([g.float().norm(p=order) for g in grads if g is not None]).mean()))
    return np.asarray(norms, dtype=np.float64)


# ---------------------------------------------------------------- gradient norms of a group of texts at once
# Texts of one token length need no padding, so a group runs as one batch under torch.func.vmap (the mask and
# position ids, all-ones and arange for every text of the group, go in unbatched: no data-dependent mask code
# sees a batched tensor). Per-sample gradients of the plain nn.Linear / nn.Embedding weights (all but ~0.05% of an
# LLM's parameters) are never materialised as a whole model: each such module's output gets a zero probe, whose
# per-sample gradient is the module's output gradient, and the norms come from it and the module's input. Every
# other parameter (RMSNorm weights, anything unrecognised) gets its per-sample gradient from vmap(grad) itself.
GROUP_ACTIVATION_BYTES = 2 * 2**30  # a chunk of one group holds about this much activation memory, at least 1 text


def _encode_one(tokenizer, prompt: str, answer: str | None) -> tuple[EncodedBatch, Bool[Tensor, " scored"]]:
    batch = encode(tokenizer, [prompt], None if answer is None else [answer])
    scored = (batch.attention_mask[0, 1:] if answer is None else batch.answer_mask()[0, :-1]).bool()
    return batch, scored


def _formula_modules(model, name_of: dict[int, str]) -> tuple[dict[torch.nn.Module, str], set[str]]:
    """The modules whose parameters' per-sample gradients come from their inputs and output gradients (nn.Linear
    and nn.Embedding whose forward is the stock one: a LoRA or quantized subclass is not), and those parameters'
    names. A parameter some other module owns too (Gemma's scaled embedding tied to a stock head) is left to vmap,
    with every module that owns it."""
    kinds = {}
    for module in model.modules():
        if type(module).forward is torch.nn.Linear.forward:
            kinds[module] = "linear"
        elif (type(module).forward is torch.nn.Embedding.forward and module.max_norm is None
              and not module.scale_grad_by_freq):
            kinds[module] = "embedding"
    owners: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        for q in module._parameters.values():
            if q is not None:
                owners.setdefault(id(q), []).append(module)
    shared = True
    while shared:  # drop modules sharing a parameter with a dropped or unrecognised one, until none does
        shared = [m for m in kinds if any(owner not in kinds for q in m._parameters.values() if q is not None
                                          for owner in owners[id(q)])]
        for module in shared:
            del kinds[module]
    formula = {name_of[id(q)] for m in kinds for q in m._parameters.values() if q is not None}
    return kinds, formula


# reading these of a weight (its dtype, device, shape) does not use its values
_METADATA_GETTERS = {torch._C.TensorBase.__dict__[name] for name in (
    "dtype", "device", "shape", "ndim", "layout", "requires_grad", "is_cuda", "is_meta", "is_sparse", "is_leaf",
    "grad_fn") if name in torch._C.TensorBase.__dict__}
_METADATA_METHODS = {getattr(torch._C.TensorBase, name) for name in (
    "size", "dim", "numel", "nelement", "stride", "element_size", "is_floating_point", "is_complex", "get_device",
    "is_contiguous", "data_ptr") if hasattr(torch._C.TensorBase, name)}


class _UsesOutside(TorchFunctionMode):
    """Records every torch function that takes one of `watched` (tensors, by identity) while no recognised module
    is running, reads of its metadata aside: a weight used elsewhere too (a hand-written tied head) would get only
    its modules' share."""

    def __init__(self, watched: set[int]):
        super().__init__()
        self.watched, self.depth, self.stray = watched, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (self.depth == 0 and func not in _METADATA_METHODS and getattr(func, "__self__", None) not in
                _METADATA_GETTERS and any(isinstance(a, Tensor) and id(a) in self.watched
                                          for a in (*args, *kwargs.values()))):
            self.stray.append(getattr(func, "__name__", repr(func)))
        return func(*args, **kwargs)


def _reached_leaves(loss: Tensor, leaves: dict[str, Tensor]) -> set[str]:
    """Names of the leaves the loss's autograd graph reaches: those autograd.grad(allow_unused=True) does not
    answer None for (the loop averages over exactly these)."""
    names = {id(t): n for n, t in leaves.items()}
    seen, stack, found = set(), [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it accumulates into
        if variable is not None and id(variable) in names:
            found.add(names[id(variable)])
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _mean_nll(logits: Float[Tensor, "1 pos vocab"], input_ids: Int[Tensor, "1 pos"],
              weight: Float[Tensor, " scored"]) -> Float[Tensor, ""]:
    """The loop's -mean(log p of the scored tokens), as a weighted sum (weight 1/n on the n scored tokens, 0
    elsewhere): no boolean indexing, whose data-dependent shape vmap cannot batch."""
    logp = torch.log_softmax(logits.float(), dim=-1)[0, :-1]
    return -(logp.gather(-1, input_ids[0, 1:, None]).squeeze(-1) * weight).sum()


def _trace_group(model, base: dict[str, Tensor], kinds: dict, formula: set[str], batch: EncodedBatch,
                 weight: Float[Tensor, " scored"]) -> tuple[list[tuple[torch.nn.Module, torch.Size, torch.dtype, torch.device]],
                                          set[str]]:
    """One text of a group, through plain autograd: the recognised modules' calls in order (their outputs' shape,
    dtype, device: the probes), the parameters the loss reaches; raises if a recognised parameter is used outside
    its modules."""
    leaves = {n: t.detach().requires_grad_(True) for n, t in base.items()}  # views: the model's flags untouched
    guard = _UsesOutside({id(leaves[n]) for n in formula})
    calls = []

    def enter(module, args):
        guard.depth += 1

    def leave(module, args, output):
        guard.depth -= 1
        calls.append((module, output.shape, output.dtype, output.device))

    handles = [h for m in kinds for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.enable_grad(), guard:
            logits = torch.func.functional_call(model, leaves, args=(), kwargs=forward_kwargs(batch)).logits
            loss = _mean_nll(logits, batch.input_ids, weight)
    finally:
        for handle in handles:
            handle.remove()
    if guard.stray:
        raise RuntimeError(f"a Linear/Embedding weight is also used outside its module ({guard.stray[0]})")
    return calls, _reached_leaves(loss, leaves)


def _per_sample_gradients(model, base: dict[str, Tensor], kinds: dict, formula: set[str], calls: list,
                          batch: EncodedBatch, input_ids: Int[Tensor, "b 1 pos"], weights: Float[Tensor, "b scored"]
                          ) -> tuple[dict[str, Tensor], list[tuple[torch.nn.Module, Tensor, Tensor]]]:
    """vmap(grad) over the texts of a chunk: per-sample gradients [b, ...] of the parameters outside `formula`, and
    per recognised module call its per-sample input and output gradient."""
    consts = {n: t for n, t in base.items() if n in formula}
    small = {n: t for n, t in base.items() if n not in formula}
    n_texts = input_ids.shape[0]
    # zero-stride probes: no memory of their own; the gradient with respect to one is its module's output gradient
    probes = [torch.zeros((), dtype=dtype, device=device).expand(n_texts, *shape)
              for _, shape, dtype, device in calls]
    shared = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids}

    def loss(small_params, zs, ids, weight):
        inputs, next_probe = [], iter(zs)

        def probe(module, args, output):
            inputs.append(args[0])
            return output + next(next_probe)

        handles = [m.register_forward_hook(probe) for m in kinds]
        try:
            logits = torch.func.functional_call(model, {**consts, **small_params}, args=(),
                                                kwargs={"input_ids": ids, **shared}).logits
        finally:
            for handle in handles:
                handle.remove()
        return _mean_nll(logits, ids, weight), inputs

    per_text = torch.func.grad(loss, argnums=(0, 1), has_aux=True)
    (small_grads, output_grads), inputs = torch.func.vmap(per_text, in_dims=(None, 0, 0, 0))(
        small, probes, input_ids, weights)
    return small_grads, [(m, x, dy) for (m, *_), x, dy in zip(calls, inputs, output_grads)]


def _tensor_norm(grad: Tensor, order: float) -> Float[Tensor, ""]:
    """The loop's `g.float().norm(p=order)`; the inf-norm as max(max, -min), exactly the same number (a max has no
    rounding) in a tenth of the time of torch's CPU inf-norm kernel (hand-written for that)."""
    if order == float("inf") and grad.numel():
        low, high = torch.aminmax(grad.float())
        return torch.maximum(high, -low)
    return grad.float().norm(p=order)


def _gram_norms(parts: list[tuple]) -> Float[Tensor, " b"]:
    """Per sample ‖Σ_c A_cᵀ B_c‖_F without the sum: Σ_tt' (A Aᵀ)_tt' (B Bᵀ)_tt' over the parts' tokens stacked (a
    Linear: A the output gradients, B the inputs; an Embedding: A one-hot rows, B the output gradients); the
    token x token Gram matrices in float32 (against float64 ones: within 1e-6 on SmolLM2), their product summed in
    float64 (hand-written: ~T² work instead of rows x cols per token)."""
    total = 0.0
    for kind_i, a_i, b_i in parts:
        for kind_j, a_j, b_j in parts:
            if kind_i == "dense" and kind_j == "dense":
                gram_a = a_i.float() @ a_j.float().transpose(1, 2)
            elif kind_i == "rows" and kind_j == "rows":  # one-hot · one-hot: same row, both kept
                (ids_i, keep_i), (ids_j, keep_j) = a_i, a_j
                gram_a = ((ids_i[:, :, None] == ids_j[:, None, :]) & keep_i[:, :, None] & keep_j[:, None, :]).float()
            else:  # dense · one-hot: the dense side's entries at the one-hot side's rows
                (dense, (ids, keep), flip) = (a_i, a_j, False) if kind_i == "dense" else (a_j, a_i, True)
                gram_a = dense.float().gather(2, ids[:, None, :].expand(-1, dense.shape[1], -1)) * keep[:, None, :]
                gram_a = gram_a.transpose(1, 2) if flip else gram_a
            gram_b = b_i.float() @ b_j.float().transpose(1, 2)
            total = total + (gram_a.double() * gram_b.double()).sum((1, 2))
    return total.clamp(min=0).sqrt()


def _materialised_norms(parts: list[tuple], shape: torch.Size, order: float,
                        buffers: dict[tuple, Tensor]) -> Float[Tensor, " b"]:
    """Per sample ‖Σ_c A_cᵀ B_c‖_p with the sample's gradient materialised in the parameter's shape and normed by
    the loop's own call (`Tensor.norm`, for its numbers: torch's CPU norm accumulates a large tensor in float32,
    p = 1 of a 49152 x 576 gradient ~1e-2 off the float64 value, and differently for 1 and 2 threads). Written into
    one reused buffer per shape: a fresh 100 MB tensor per sample costs more in page faults than its product."""
    n_rows, n_cols = shape[0], parts[0][2].shape[-1]  # the parameter as rows x cols (a bias: cols 1)
    dense = [(a, b) for kind, a, b in parts if kind == "dense"]
    rows = [(a[0], a[1], b) for kind, a, b in parts if kind == "rows"]  # (token ids, kept, output gradients)
    if dense:  # a weight used by several calls: their tokens stacked
        a_all = (torch.cat([a for a, _ in dense], 1) if len(dense) > 1 else dense[0][0]).float().transpose(1, 2)
        b_all = (torch.cat([b for _, b in dense], 1) if len(dense) > 1 else dense[0][1]).float()
    out = []
    for sample in range(parts[0][2].shape[0]):
        if dense:
            key = (n_rows, n_cols, a_all.device)
            if key not in buffers:
                buffers[key] = torch.empty(n_rows, n_cols, device=a_all.device)
            grad = torch.mm(a_all[sample], b_all[sample], out=buffers[key])
            for ids, keep, values in rows:  # embedding backward: each kept token's output gradient into its row
                grad.index_add_(0, ids[sample][keep[sample]], values[sample][keep[sample]].float())
            out.append(_tensor_norm(grad.reshape(shape), order))
        else:  # an embedding alone: only the rows its tokens touch are not zero (T x cols entries, no float32 drift)
            ids = torch.cat([ids[sample][keep[sample]] for ids, keep, _ in rows])
            values = torch.cat([values[sample][keep[sample]].float() for _, keep, values in rows])
            touched, where = torch.unique(ids, return_inverse=True)
            grad = torch.zeros(len(touched), n_cols, device=values.device).index_add_(0, where, values)
            out.append(_tensor_norm(grad, order))
    return torch.stack(out).double()


def _chunk_texts(calls: list, small_numel: int) -> int:
    """Texts per chunk: an estimate of one text's activations (8 x every recognised call's output, which bounds
    its input, its saved tensors and its output gradient, plus the small parameters' per-sample gradients) under
    GROUP_ACTIVATION_BYTES."""
    per_text = 8 * sum(int(np.prod(shape)) * dtype.itemsize for _, shape, dtype, _ in calls) + 4 * small_numel
    return max(1, GROUP_ACTIVATION_BYTES // max(per_text, 1))


def _gradient_norms_grouped(model, encoded: list[tuple[EncodedBatch, Tensor]], p: int | str
                            ) -> Float[np.ndarray, " n"]:
    """The loop's numbers, per group of equally long texts: per-sample gradients in chunks (see above)."""
    order = float("inf") if p == "inf" else float(p)
    device = input_device(model)
    named = dict(model.named_parameters())  # a tied weight once, as the loop differentiates it
    base = {n: (q.clone() if q.is_inference() else q.detach()) for n, q in named.items()}
    name_of = {id(q): n for n, q in named.items()}
    kinds, formula = _formula_modules(model, name_of)
    small_numel = sum(base[n].numel() for n in named if n not in formula)
    groups: dict[int, list[int]] = {}
    for i, (batch, _) in enumerate(encoded):
        groups.setdefault(batch.input_ids.shape[1], []).append(i)
    norms = np.empty(len(encoded), dtype=np.float64)
    buffers: dict[tuple, Tensor] = {}  # p = 1 or inf: one per-sample gradient per parameter shape, reused
    for members in groups.values():
        first = encoded[members[0]][0].to(device)
        weights_of = {i: (encoded[i][1].float() / encoded[i][1].sum()).to(device) for i in members}
        calls, reached = _trace_group(model, base, kinds, formula, first, weights_of[members[0]])
        step = _chunk_texts(calls, small_numel)
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            input_ids = torch.stack([encoded[i][0].input_ids for i in chunk]).to(device)
            weights = torch.stack([weights_of[i] for i in chunk])
            small_grads, io = _per_sample_gradients(model, base, kinds, formula, calls, first, input_ids, weights)
            per_param = {n: torch.stack([_tensor_norm(g, order) for g in grads]).double()
                         for n, grads in small_grads.items()}
            parts: dict[str, list[tuple]] = {}
            for module, x, dy in io:
                dy = dy.reshape(len(chunk), -1, dy.shape[-1])
                if kinds[module] == "linear":
                    x = x.reshape(len(chunk), -1, x.shape[-1])
                    parts.setdefault(name_of[id(module.weight)], []).append(("dense", dy, x))
                    if module.bias is not None:  # a bias: a weight whose input is 1
                        ones = torch.ones_like(dy[..., :1])
                        parts.setdefault(name_of[id(module.bias)], []).append(("dense", dy, ones))
                else:  # the padding_idx row gets no gradient (nn.Embedding's backward)
                    ids = x.reshape(len(chunk), -1)
                    keep = ids != (-1 if module.padding_idx is None else module.padding_idx)
                    parts.setdefault(name_of[id(module.weight)], []).append(("rows", (ids, keep), dy))
            for n, param_parts in parts.items():
                per_param[n] = (_gram_norms(param_parts) if order == 2.0
                                else _materialised_norms(param_parts, named[n].shape, order, buffers))
            used = [n for n in named if n in reached]
            norms[chunk] = torch.stack([per_param[n].cpu() for n in used], 1).mean(1).numpy()
    return norms
