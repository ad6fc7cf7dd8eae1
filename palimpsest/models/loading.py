"""Load a causal LM (hub id, local HF directory or .gguf file) with its tokenizer, offline when possible."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelLoadError(ValueError):
    """A model source cannot be loaded; the message names the source and the fix."""


@dataclass
class LoadedModel:
    """A HF causal LM, its tokenizer, and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    source: str
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = Path(self.source).name or self.source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of {', '.join(sorted(table))}")
    return table[dtype]


def _brief(error: BaseException, limit: int = 200) -> str:
    """`Type: message` on one line (transformers' messages span lines), cut to `limit` characters."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def _check_config(path: Path) -> None:
    """config.json must parse, and must not need code shipped with the checkpoint (trust_remote_code stays off)."""
    import json

    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError as error:
        raise ModelLoadError(f"{path / 'config.json'}: not valid JSON ({_brief(error, 80)}); the file is truncated "
                             "or damaged: re-download or re-save the model") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'}: not a model config (a JSON object); re-download the model")
    model_type = config.get("model_type")
    if config.get("auto_map") and model_type not in CONFIG_MAPPING:
        entry = next(iter(config["auto_map"].values())) if isinstance(config["auto_map"], dict) else config["auto_map"]
        raise ModelLoadError(
            f"{path}: model type {model_type!r} needs custom code shipped with the checkpoint ({entry}); palimpsest "
            "never runs checkpoint code (trust_remote_code stays off): use an architecture transformers knows"
        )


def _check_local_dir(path: Path, allow_pickle: bool) -> None:
    try:
        _check_local_files(path, allow_pickle)
    except OSError as error:  # permissions, a dead mount, a broken link...
        raise ModelLoadError(f"{path}: cannot read the model directory ({error.strerror or _brief(error, 80)}); "
                             "check that it exists and that you may read it") from None


def _check_local_files(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json here; give a HF model directory, a .gguf file or a hub id")
    _check_config(path)
    files = [p.name for p in path.iterdir()]
    has_safetensors = any(name.endswith(".safetensors") for name in files)
    pickled = [name for name in files if name.endswith(PICKLE_SUFFIXES) and name not in ("training_args.bin",)]
    if not has_safetensors and pickled and not allow_pickle:
        raise ModelLoadError(
            f"{path}: only pickle weights ({pickled[0]}) found; pickle can run code on load. "
            "Convert to safetensors, or pass --allow-pickle if you trust the file"
        )
    if not has_safetensors and not pickled:
        raise ModelLoadError(f"{path}: no weights (*.safetensors) next to config.json")


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("loading a .gguf file needs the 'gguf' package: pip install gguf") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                     trust_remote_code=False)
    except Exception as error:  # transformers raises many types here; the user needs one line
        raise ModelLoadError(f"{path}: cannot load this GGUF file ({_brief(error)}); the file may be truncated: "
                             "download it again") from None
    # weights are dequantized; clearing this lets the model be saved and fine-tuned like any other
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    return model, tokenizer


def load_model(
    source: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    device_map: str | None = None,
    name: str | None = None,
) -> LoadedModel:
    """Load `source` (HF hub id, local directory, or .gguf file) as an eval-mode causal LM.

    `trust_remote_code` is never enabled: architectures must be known to transformers.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _dtype(dtype)
    text = str(source)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"{path}: GGUF file not found")
        model, tokenizer = _load_gguf(path, torch_dtype)
    elif _exists(path) or text.startswith((".", "/", "~")) or os.sep in text and not _looks_like_hub_id(text):
        if not path.exists():
            raise ModelLoadError(f"{path}: model path does not exist; check the path (or give a hub id like org/name)")
        if not path.is_dir():
            raise ModelLoadError(f"{path}: not a model directory or .gguf file")
        _check_local_dir(path, allow_pickle)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, trust_remote_code=False, use_safetensors=not allow_pickle or None,
                device_map=device_map,
            )
        except Exception as error:  # one line for the user instead of a deep traceback
            raise ModelLoadError(f"{path}: cannot load model ({_brief(error)}); a file may be truncated or damaged: "
                                 "re-download or re-save the model") from None
    else:
        if not _looks_like_hub_id(text):
            raise ModelLoadError(f"{text!r}: not an existing path and not a hub id like 'org/name'")
        try:
            tokenizer = AutoTokenizer.from_pretrained(text, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                text, dtype=torch_dtype, trust_remote_code=False, use_safetensors=None if allow_pickle else True,
                device_map=device_map,
            )
        except Exception as error:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (HF_HUB_OFFLINE=1 is set: download it first or give a local directory)" if offline else ""
            raise ModelLoadError(f"{text}: cannot load from the hub{hint} ({_brief(error, 160)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model = model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(source), name=name or "")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as error:  # e.g. a parent folder we may not enter
        raise ModelLoadError(f"{path}: cannot read this path ({error.strerror or _brief(error, 80)}); check that "
                             "you may read it") from None


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not text.startswith((".", "/", "~"))
