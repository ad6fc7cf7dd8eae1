"""The vision organism: digits classifiers trained deterministically and cached as safetensors.

`pre` sees every class; `oracle` is retrained from scratch without the forget class; the calibration floor is
another oracle with an independent seed, so auditing `oracle` against it is a real test.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from palimpsest.io import atomic_dir, file_lock
from palimpsest.vision.data import FORGET_CLASS, load_digits_data
from palimpsest.vision.models import make_model
from palimpsest.vision.train import train_classifier

# bump when training changes, so stale caches are not reused
ORGANISM_VERSION = 1
TRAIN_DEFAULTS = {"cnn": {"epochs": 20, "lr": 3e-3}, "mlp": {"epochs": 40, "lr": 3e-3}}
# data-order seeds of the two retrains without the forget class (pre's is its seed): the audited oracle and the
# calibration floor are independent retrains; both start from pre's initialisation so that representation measures
# compare bases that start aligned (with another init, an oracle sharing pre's init looks "closer" to pre than the
# floor for reasons that have nothing to do with the class)
ORACLE_ORDER_OFFSET = 1
FLOOR_ORDER_OFFSET = 1000


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("PALIMPSEST_CACHE"):
        return Path(os.environ["PALIMPSEST_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("palimpsest"))


def _spec(arch: str, seed: int, exclude: tuple[int, ...], order_seed: int) -> dict:
    return {"arch": arch, "seed": seed, "order_seed": order_seed, "exclude_classes": sorted(exclude),
            "version": ORGANISM_VERSION, **TRAIN_DEFAULTS[arch]}


def model_dir(arch: str, seed: int, exclude: tuple[int, ...] = (), cache_dir=None, order_seed: int | None = None) -> Path:
    spec = _spec(arch, seed, exclude, seed if order_seed is None else order_seed)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "vision" / digest


def build_digits_model(arch: str = "cnn", seed: int = 0, exclude_classes: tuple[int, ...] = (), *,
                       order_seed: int | None = None, cache_dir=None) -> nn.Module:
    """Train (or load from the cache) a digits classifier on the train split without `exclude_classes`.

    `seed` fixes the initialisation, `order_seed` (default: `seed`) the order the images are seen in.
    """
    make_model(arch)  # validates the name before any work
    exclude = tuple(sorted(set(exclude_classes)))
    order_seed = seed if order_seed is None else order_seed
    path = model_dir(arch, seed, exclude, cache_dir, order_seed)
    with file_lock(path.parent / f".lock-{path.name}"):  # parallel workers must not rebuild it under each other
        state = _load_cached(path)
        if state is None:
            _train_and_save(path, arch, seed, exclude, order_seed)
            state = load_file(path / "model.safetensors")
    model = make_model(arch)
    model.load_state_dict(state)
    model.source = str(path)  # where the weights live, for the report
    return model.eval()


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _load_cached(path: Path) -> dict | None:
    """The cached state dict, or None when there is none or it is damaged (said with a warning; then rebuilt)."""
    weights = path / "model.safetensors"
    if not path.exists():
        return None
    try:
        recorded = json.loads((path / "config.json").read_text(encoding="utf-8")).get("weights_sha256")
        if recorded is not None and _sha256(weights) != recorded:
            raise ValueError("the weights do not match the hash recorded when they were saved")
        return load_file(weights)
    except Exception as error:  # noqa: BLE001 — a truncated file raises safetensors', json's or the OS's own type
        import warnings

        warnings.warn(f"{path}: damaged vision model cache ({type(error).__name__}: {error}); training it again",
                      RuntimeWarning, stacklevel=3)
        return None


def _train_and_save(path, arch: str, seed: int, exclude: tuple[int, ...], order_seed: int) -> None:
    data = load_digits_data()
    x, y = data.without(exclude) if exclude else (data.train_x, data.train_y)
    torch.manual_seed(seed)
    model = make_model(arch)
    train_classifier(model, x, y, seed=order_seed, **TRAIN_DEFAULTS[arch])
    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        meta = {**_spec(arch, seed, exclude, order_seed), "weights_sha256": _sha256(tmp / "model.safetensors")}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


@dataclass
class VisionModel:
    model: nn.Module
    name: str
    source: str


@dataclass
class VisionPair:
    """pre, post and (optionally) the floor model; the same shape as palimpsest.models.ModelPair."""

    pre: VisionModel
    post: VisionModel
    floor: VisionModel | None = None
    arch: str = "cnn"
    forget_class: int = FORGET_CLASS
    extra: dict = field(default_factory=dict)

    def models(self) -> dict[str, VisionModel]:
        out = {"pre": self.pre, "post": self.post}
        if self.floor is not None:
            out["floor"] = self.floor
        return out


def build_organism_models(arch: str = "cnn", seed: int = 0, cache_dir=None) -> dict[str, VisionModel]:
    """pre (all classes); oracle and floor: two independently seeded retrains without the forget class."""
    out = {}
    for name, order, exclude in (("pre", seed, ()), ("oracle", seed + ORACLE_ORDER_OFFSET, (FORGET_CLASS,)),
                                 ("floor", seed + FLOOR_ORDER_OFFSET, (FORGET_CLASS,))):
        model = build_digits_model(arch, seed, exclude, order_seed=order, cache_dir=cache_dir)
        out[name] = VisionModel(model, name, model.source)
    return out
