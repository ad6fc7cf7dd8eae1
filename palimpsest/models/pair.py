"""A (pre, post) pair of models that can be compared token by token and layer by layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from palimpsest.models.loading import LoadedModel, ModelLoadError, load_model


class PairMismatchError(ModelLoadError):
    """The two models cannot be compared; the message says exactly what differs."""


@dataclass
class ModelPair:
    """pre = before unlearning (the ceiling), post = after; floor = a model that never learned the concept
    (the organism's oracle retrain), when one exists; it calibrates residue scores."""

    pre: LoadedModel
    post: LoadedModel
    floor: LoadedModel | None = None

    def __post_init__(self) -> None:
        check_compatible(self.pre, self.post)
        if self.floor is not None:
            check_compatible(self.pre, self.floor, names=("pre", "floor"))

    def models(self) -> dict[str, LoadedModel]:
        out = {"pre": self.pre, "post": self.post}
        if self.floor is not None:
            out["floor"] = self.floor
        return out


_CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size")


def check_compatible(a: LoadedModel, b: LoadedModel, names: tuple[str, str] = ("pre", "post")) -> None:
    """Raise PairMismatchError naming the first difference and the fix (the message ends with what is expected)."""
    try:
        _compare(a, b, names)
    except PairMismatchError as error:
        role = "a model of the same family that never learned the concept" if names[1] == "floor" else \
            f"{names[0]} after unlearning"
        raise PairMismatchError(f"{error}; {names[1]} must be {role} (same architecture, config and tokenizer)") \
            from None


def _compare(a: LoadedModel, b: LoadedModel, names: tuple[str, str]) -> None:
    ca, cb = a.model.config, b.model.config
    if type(a.model).__name__ != type(b.model).__name__:
        raise PairMismatchError(
            f"architectures differ: {names[0]} is {type(a.model).__name__}, {names[1]} is {type(b.model).__name__}")
    for key in _CONFIG_FIELDS:
        va, vb = getattr(ca, key, None), getattr(cb, key, None)
        if va != vb:
            raise PairMismatchError(f"config '{key}' differs: {names[0]}={va}, {names[1]}={vb}")
    ta, tb = a.tokenizer, b.tokenizer
    va, vb = ta.get_vocab(), tb.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:3]
        only_b = sorted(set(vb) - set(va))[:3]
        moved = sorted(k for k in set(va) & set(vb) if va[k] != vb[k])[:3]
        detail = (f"{len(va)} vs {len(vb)} tokens; only in {names[0]}: {only_a}, only in {names[1]}: {only_b}"
                  + (f", different ids: {moved}" if moved else ""))
        raise PairMismatchError(f"tokenizers differ ({detail})")
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        sa, sb = getattr(ta, attr, None), getattr(tb, attr, None)
        if sa != sb:
            raise PairMismatchError(f"tokenizers differ in {attr}: {names[0]}={sa!r}, {names[1]}={sb!r}")


def load_pair(pre_source: str, post_source: str, *, floor_source: str | None = None, **load_kwargs) -> ModelPair:
    """Load pre, post (and floor) with the same `load_model` options; with an `offload_folder`, each model offloads
    into its own subfolder of it (pre/, post/, floor/: one folder would mix their weight files)."""
    def load(source: str, role: str):
        kwargs = dict(load_kwargs)
        if kwargs.get("offload_folder") is not None:
            kwargs["offload_folder"] = Path(kwargs["offload_folder"]) / role
        return load_model(source, name=role, **kwargs)

    pre = load(pre_source, "pre")
    post = load(post_source, "post")
    floor = load(floor_source, "floor") if floor_source else None
    return ModelPair(pre=pre, post=post, floor=floor)
