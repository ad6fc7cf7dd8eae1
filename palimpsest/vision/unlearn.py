"""Post-models for class unlearning of the digits organism; each returns a new model (pre is never modified)."""

from __future__ import annotations

import copy

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from palimpsest.vision.capture import capture_modules
from palimpsest.vision.data import N_CLASSES, Digits
from palimpsest.vision.models import get_module
from palimpsest.vision.sae import FeatureClamp, expert_features, train_layer_sae
from palimpsest.vision.train import fine_tune

METHODS = ("oracle", "suppress", "ga", "graddiff", "relabel", "sauce")
# defaults per method; every knob is named so a run can be reproduced from the report
DEFAULTS = {
    "suppress": {"margin": 5.0},
    "ga": {"steps": 40, "lr": 5e-4, "stop_acc": 0.05},
    "graddiff": {"steps": 80, "lr": 1e-3, "ascent_cap": 5.0},
    "relabel": {"steps": 80, "lr": 1e-3},
    "sauce": {"n_experts": 4, "clamp_scale": 0.5, "expansion": 4, "k": 8, "epochs": 40},
}


def _sets(data: Digits, forget_class: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    is_forget = data.train_y == forget_class
    return data.train_x[is_forget], data.train_y[is_forget], data.train_x[~is_forget], data.train_y[~is_forget]


def _batch(x: Tensor, y: Tensor, step: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    idx = torch.randint(0, len(y), (size,), generator=gen)
    return x[idx], y[idx]


def forget_accuracy(model: nn.Module, x: Float[Tensor, "n 1 8 8"], y: Int[Tensor, " n"]) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def suppress(pre: nn.Module, data: Digits, forget_class: int, *, margin: float, head: str, seed: int) -> nn.Module:
    """Only the final linear layer changes: the class's bias drops until it loses on every training image by `margin`."""
    model = copy.deepcopy(pre)
    fx, _, _, _ = _sets(data, forget_class)
    with torch.no_grad():
        logits = model(data.train_x)
        others = torch.cat([logits[:, :forget_class], logits[:, forget_class + 1:]], 1).max(1).values
        lead = float((logits[:, forget_class] - others).max())
        get_module(model, head).bias[forget_class] -= lead + margin
    return model


def gradient_ascent(pre: nn.Module, data: Digits, forget_class: int, *, steps: int, lr: float, stop_acc: float,
                    seed: int) -> nn.Module:
    """Ascend the cross-entropy of the forget class's images; stop once their accuracy is at most `stop_acc`."""
    model = copy.deepcopy(pre)
    fx, fy, _, _ = _sets(data, forget_class)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        model.eval()
        if forget_accuracy(model, fx, fy) <= stop_acc:
            break
        model.train()
        x, y = _batch(fx, fy, step, 32, seed)
        loss = -nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def graddiff(pre: nn.Module, data: Digits, forget_class: int, *, steps: int, lr: float, ascent_cap: float,
             seed: int) -> nn.Module:
    """Ascend the forget loss (capped at `ascent_cap` so it cannot run away) while descending the retain loss."""
    model = copy.deepcopy(pre)
    fx, fy, rx, ry = _sets(data, forget_class)

    def loss(m: nn.Module, step: int) -> Tensor:
        x, y = _batch(fx, fy, step, 32, seed)
        xr, yr = _batch(rx, ry, step, 64, seed + 1)
        return -nn.functional.cross_entropy(m(x), y).clamp(max=ascent_cap) + nn.functional.cross_entropy(m(xr), yr)

    return fine_tune(model, loss, steps=steps, lr=lr)


def relabel(pre: nn.Module, data: Digits, forget_class: int, *, steps: int, lr: float, seed: int) -> nn.Module:
    """Random-label relabelling: the forget class's images get random other labels, retain images keep theirs."""
    model = copy.deepcopy(pre)
    fx, fy, rx, ry = _sets(data, forget_class)
    gen = torch.Generator().manual_seed(seed)
    wrong = torch.randint(0, N_CLASSES - 1, (len(fy),), generator=gen)
    wrong = wrong + (wrong >= forget_class).long()  # any label but the forget class

    def loss(m: nn.Module, step: int) -> Tensor:
        x, y = _batch(torch.cat([fx, rx]), torch.cat([wrong, ry]), step, 64, seed)
        return nn.functional.cross_entropy(m(x), y)

    return fine_tune(model, loss, steps=steps, lr=lr)


def sauce(pre: nn.Module, data: Digits, forget_class: int, *, site: str, n_experts: int, clamp_scale: float,
          expansion: int, k: int, epochs: int, seed: int) -> nn.Module:
    """SAUCE-style: an SAE at `site`; where its class-specific features fire they are
    clamped to -clamp_scale x their value.

    The clamp is a module placed after the site's module (`site` becomes Sequential(original, clamp)), so the
    site's module path still reads the (clamped) output and the weights are untouched.
    """
    model = copy.deepcopy(pre)
    acts = capture_modules(pre, data.train_x, [site], backend="torch")[site]
    layer_sae = train_layer_sae(site, acts, expansion=expansion, k=k, epochs=epochs, seed=seed + 7)
    codes = layer_sae.encode(acts)
    features, _ = expert_features(codes, data.train_y, forget_class, n_experts)
    parent_path, _, child = site.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    original = get_module(model, site)
    wrapped = nn.Sequential(original, FeatureClamp(layer_sae, features, clamp_scale))
    if child.isdigit():
        parent[int(child)] = wrapped
    else:
        setattr(parent, child, wrapped)
    return model.eval()


def make_post_model(method: str, pre: nn.Module, data: Digits, forget_class: int, *, head: str, sauce_site: str,
                    seed: int = 0, oracle: nn.Module | None = None, **overrides) -> nn.Module:
    """The post-model of `method` (see METHODS); `oracle` is the retrained model, passed in by the caller."""
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}: use one of {', '.join(METHODS)}")
    torch.manual_seed(seed)
    opts = {**DEFAULTS.get(method, {}), **overrides}
    if method == "oracle":
        if oracle is None:
            raise ValueError("the oracle post-model is the retrained model: pass oracle=...")
        return oracle
    if method == "suppress":
        return suppress(pre, data, forget_class, head=head, seed=seed, **opts)
    if method == "ga":
        return gradient_ascent(pre, data, forget_class, seed=seed, **opts)
    if method == "graddiff":
        return graddiff(pre, data, forget_class, seed=seed, **opts)
    if method == "relabel":
        return relabel(pre, data, forget_class, seed=seed, **opts)
    return sauce(pre, data, forget_class, site=sauce_site, seed=seed, **opts)
