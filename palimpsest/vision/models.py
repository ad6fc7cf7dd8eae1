"""The two digits classifiers: a small CNN and a small MLP, both `features` -> `classifier` so sites read alike."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from palimpsest.vision.data import N_CLASSES


class DigitsCNN(nn.Module):
    """conv(16) -> conv(32) -> maxpool -> linear(64) -> linear(10); ~40k parameters."""

    # intermediate sites read by the audit (module paths), in execution order
    sites = ("features.1", "features.4", "classifier.1")
    head = "classifier.2"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, N_CLASSES))

    def forward(self, x: Float[Tensor, "batch 1 8 8"]) -> Float[Tensor, "batch 10"]:
        return self.classifier(self.features(x).flatten(1))


class DigitsMLP(nn.Module):
    """64 -> 128 -> 64 -> 10 with ReLUs; ~17k parameters."""

    sites = ("features.2", "classifier.1")
    head = "classifier.2"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, N_CLASSES))

    def forward(self, x: Float[Tensor, "batch 1 8 8"]) -> Float[Tensor, "batch 10"]:
        return self.classifier(self.features(x))


ARCHITECTURES: dict[str, type[nn.Module]] = {"cnn": DigitsCNN, "mlp": DigitsMLP}


def make_model(arch: str) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown digits architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]()


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path (`features.4`); the error lists the paths that exist."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"no module {path!r} in {type(model).__name__}; modules: {', '.join(names)}") from None


def execution_order(model: nn.Module, paths) -> list[str]:
    """`paths` sorted by the order their modules first run in a forward pass (nnsight must read them so)."""
    order: list[str] = []
    handles = []
    wanted = {path: get_module(model, path) for path in paths}
    try:
        for path, module in wanted.items():
            handles.append(module.register_forward_hook(lambda *_a, path=path: order.append(path)
                                                        if path not in order else None))
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, 1, 8, 8, device=device))
    finally:
        for handle in handles:
            handle.remove()
    missing = [p for p in paths if p not in order]
    if missing:
        raise ValueError(f"modules {missing} never ran in a forward pass; they cannot be read")
    return order
