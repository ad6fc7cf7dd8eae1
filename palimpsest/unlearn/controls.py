"""Post-models whose truth is known by construction, for measuring the verdict (`palimpsest validate`).

suppressed by construction (the knowledge is still inside, bit for bit, up to where the edit starts):
  tail_graddiff  GradDiff on the last block and the final norm only: every earlier tensor is bit-identical to pre
  logit_bias     a bias against the forget answers' tokens added to the logits by a hook: no weight changes
not forgotten by construction:
  weak_ga        gradient ascent far too weak to forget (a few steps at a tiny learning rate)
(`suppress`, the head-only edit, and `sauce`, the SAE clamp, live with the other methods.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from palimpsest.concepts.spec import Item
from palimpsest.models.loading import LoadedModel
from palimpsest.organism.evaluate import accuracy, answer_text
from palimpsest.unlearn.common import UnlearnConfig, UnlearnError, check_inputs, wrap
from palimpsest.unlearn.gradient import GAConfig, GradDiffConfig, ga, graddiff
from palimpsest.unlearn.rmu import decoder_layers


@dataclass(frozen=True)
class TailGradDiffConfig(GradDiffConfig):
    """GradDiff restricted to the last decoder block and the final norm."""

    lr: float = 1e-3
    max_steps: int = 150
    retain_batch: int = 128
    retain_weight: float = 5.0
    stop_forget_acc: float | None = 0.15


@dataclass(frozen=True)
class WeakGAConfig(GAConfig):
    """Gradient ascent with a budget far too small to forget: the not-forgotten control."""

    lr: float = 1e-5
    max_steps: int = 3
    stop_forget_acc: float | None = None


@dataclass(frozen=True)
class LogitBiasConfig(UnlearnConfig):
    """The bias is the smallest of `strengths` whose forget accuracy is at most stop_forget_acc (else the largest)."""

    strengths: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    stop_forget_acc: float | None = 0.15


def final_norm(model) -> torch.nn.Module:
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    for name in ("norm", "ln_f", "final_layer_norm"):
        module = getattr(base, name, None)
        if module is not None:
            return module
    raise UnlearnError(f"tail_graddiff: no final norm found in {type(model).__name__}")


def tail_modules(model) -> list[torch.nn.Module]:
    return [decoder_layers(model)[-1], final_norm(model)]


def tail_graddiff(loaded: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], config: TailGradDiffConfig,
                  seed: int = 0) -> LoadedModel:
    post = graddiff(loaded, forget, retain, config, seed, trainable=tail_modules, method="tail_graddiff")
    post.meta["unlearn"]["trained_modules"] = ["last block", "final norm"]
    return post


def weak_ga(loaded: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], config: WeakGAConfig,
            seed: int = 0) -> LoadedModel:
    post = ga(loaded, forget, retain, config, seed=seed)
    post.meta["unlearn"]["method"] = "weak_ga"
    return LoadedModel(model=post.model, tokenizer=post.tokenizer, source=post.source, name=f"{loaded.name}-weak_ga",
                       meta=post.meta)


def _answer_token_ids(tokenizer, items: Sequence[Item]) -> list[int]:
    ids = {tokenizer(answer_text(it.answer), add_special_tokens=False).input_ids[0] for it in items}
    return sorted(int(i) for i in ids)


def logit_bias(loaded: LoadedModel, forget: Sequence[Item], retain: Sequence[Item], config: LogitBiasConfig,
               seed: int = 0) -> LoadedModel:
    """A deep copy of the model whose output layer's logits for the forget answers' first tokens are lowered by a
    hook (kept in meta["logit_bias"]["handle"]); every weight stays equal to the pre model's."""
    check_inputs("logit_bias", forget, retain, needs_retain=False)
    model = copy.deepcopy(loaded.model).eval()
    head = model.get_output_embeddings()
    if head is None:
        raise UnlearnError(f"logit_bias: {type(model).__name__} has no output layer")
    tokens = torch.tensor(_answer_token_ids(loaded.tokenizer, forget), dtype=torch.long)
    state = {"strength": 0.0}

    def hook(_module, _args, output):
        bias = torch.zeros(output.shape[-1], dtype=output.dtype, device=output.device)
        bias[tokens.to(output.device)] = state["strength"]
        return output - bias

    handle = head.register_forward_hook(hook)
    tried = []
    for strength in config.strengths:  # the weakest bias that forgets
        state["strength"] = float(strength)
        acc = accuracy(model, loaded.tokenizer, forget)
        tried.append({"strength": strength, "forget_acc": round(acc, 4)})
        if config.stop_forget_acc is not None and acc <= config.stop_forget_acc:
            break
    monitor = list(retain)[: config.monitor_items]
    stop = {"reason": "target" if tried[-1]["forget_acc"] <= (config.stop_forget_acc or 0) else "strongest",
            "strength": state["strength"], "forget_acc": tried[-1]["forget_acc"], "tried": tried,
            "forget_target": config.stop_forget_acc,
            "retain_acc": round(accuracy(model, loaded.tokenizer, monitor), 4) if monitor else None}
    post = wrap(loaded, model, "logit_bias", config, {"stop": stop, "tokens": tokens.tolist()}, seed)
    post.meta["logit_bias"] = {"handle": handle, "strength": state["strength"], "tokens": tokens.tolist()}
    return post


CONTROLS = {
    "tail_graddiff": (tail_graddiff, TailGradDiffConfig),
    "weak_ga": (weak_ga, WeakGAConfig),
    "logit_bias": (logit_bias, LogitBiasConfig),
}
