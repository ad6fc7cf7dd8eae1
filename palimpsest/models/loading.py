"""Load a causal LM (hub id, local HF directory or .gguf file) with its tokenizer, offline when possible."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch

from palimpsest.devices import input_device, is_offloaded

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# accelerate's placement strategies (a string device_map names one of these or a single device)
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE_RE = re.compile(r"^(cpu|mps|disk|cuda|cuda:\d+|xpu|xpu:\d+|npu|npu:\d+|\d+)$")
DeviceMap = Union[str, dict, None]


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
        """Where this model's inputs go (with a device_map: the input embedding's execution device)."""
        return input_device(self.model)

    @property
    def offloaded(self) -> bool:
        """True when some weights live off the model (accelerate disk offload: they are on the meta device and
        loaded for each forward pass), so code that reads or trains weights directly cannot use them."""
        return is_offloaded(self.model)

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)


def check_device_map(device_map: DeviceMap) -> DeviceMap:
    """`device_map` as from_pretrained takes it, or a one-line ModelLoadError.

    A string is an accelerate strategy (auto, balanced, balanced_low_0, sequential), a single device (cpu,
    cuda, cuda:1, mps), or a JSON object {module name: device} (e.g. '{"": "cpu"}' or '{"model.layers.9": "disk",
    ...}'); a dict maps module names to devices (cpu, disk, cuda:N, mps, or a GPU index).
    """
    if device_map is None:
        return None
    if isinstance(device_map, str) and device_map.strip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except ValueError as error:
            raise ModelLoadError(f"device_map {device_map!r}: not valid JSON ({_brief(error, 80)}); give a strategy "
                                 f"({', '.join(DEVICE_MAP_STRATEGIES)}), a device or a JSON object") from None
    if isinstance(device_map, str):
        text = device_map.strip()
        if text in DEVICE_MAP_STRATEGIES:
            return text
        if not _DEVICE_RE.match(text) or text == "disk":
            raise ModelLoadError(f"device_map {device_map!r} is not a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}), "
                                 "a device (cpu, cuda, cuda:N, mps) or a JSON object {module: device}")
        _check_device(text, f"device_map {device_map!r}")
        return int(text) if text.isdigit() else text
    if not isinstance(device_map, dict) or not device_map:
        raise ModelLoadError(f"device_map must be a string or a non-empty mapping of module names to devices, "
                             f"got {type(device_map).__name__}")
    out = {}
    for module, device in device_map.items():
        text = str(device).strip()
        if not isinstance(module, str) or not isinstance(device, (str, int)) or not _DEVICE_RE.match(text):
            raise ModelLoadError(f"device_map entry {module!r}: {device!r} is not a device (cpu, disk, cuda:N, mps "
                                 "or a GPU index)")
        _check_device(text, f"device_map entry {module!r}")
        out[module] = int(text) if text.isdigit() else text
    return out


def _check_device(text: str, what: str) -> None:
    if (text.startswith("cuda") or text.isdigit()) and not torch.cuda.is_available():
        raise ModelLoadError(f"{what}: no CUDA GPU is visible (torch.cuda.is_available() is False); use cpu, or "
                             "'auto' with max_memory to offload to disk")
    if text.startswith("cuda:") or text.isdigit():
        index = int(text.split(":")[-1])
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"{what}: GPU {index} does not exist ({torch.cuda.device_count()} visible)")
    if text == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"{what}: the MPS backend is not available on this machine")


def _offload_folder(device_map: DeviceMap, offload_folder: str | os.PathLike | None) -> tuple[str | None, bool]:
    """(the folder accelerate may offload weights to, whether palimpsest made it and must remove it)."""
    if device_map is None:
        return None, False
    if offload_folder is not None:
        folder = Path(offload_folder).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ModelLoadError(f"{folder}: cannot create the offload folder ({error.strerror or _brief(error, 80)})"
                                 ) from None
        return str(folder), False
    # a fresh folder per model: two models offloaded to one folder would overwrite each other's weight files
    return tempfile.mkdtemp(prefix="palimpsest-offload-"), True


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


def _load_gguf(path: Path, dtype: torch.dtype, placement: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("loading a .gguf file needs the 'gguf' package: pip install gguf") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                     trust_remote_code=False, **placement)
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
    device_map: DeviceMap = None,
    name: str | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load `source` (HF hub id, local directory, or .gguf file) as an eval-mode causal LM.

    `trust_remote_code` is never enabled: architectures must be known to transformers.

    `device_map` (accelerate; see `check_device_map`) places the modules itself and `device` is then ignored;
    `max_memory` ({device: bytes or "2GiB"}, devices as in the map, "cpu" for RAM) caps what each device holds, the
    rest is offloaded to disk, into `offload_folder` (default: a fresh temporary folder per model, removed with
    the model). Weights of a safetensors checkpoint are read in place from its files; others (GGUF, a dtype change
    of pickled weights) are written to the folder first.
    """
    torch_dtype = _dtype(dtype)
    device_map = check_device_map(device_map)
    if max_memory is not None and (device_map is None or not isinstance(max_memory, dict)):
        raise ModelLoadError("max_memory needs a device_map (e.g. 'auto') and must map devices to sizes, e.g. "
                             "{'cpu': '2GiB'}")
    folder, owned = _offload_folder(device_map, offload_folder)
    placement = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory,
                                               "offload_folder": folder}
    try:
        loaded = _load(source, device, torch_dtype, allow_pickle, placement, name)
    except BaseException:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if device_map is not None:
        placed = getattr(loaded.model, "hf_device_map", None)  # transformers sets none for a single device
        loaded.meta["device_map"] = dict(placed or (device_map if isinstance(device_map, dict) else {"": device_map}))
        loaded.meta["offload_folder"] = folder
        if owned:  # removed when the model is garbage collected, or at exit
            weakref.finalize(loaded.model, shutil.rmtree, folder, ignore_errors=True)
    return loaded


def _load(source: str | os.PathLike, device: str, torch_dtype: torch.dtype, allow_pickle: bool, placement: dict,
          name: str | None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = str(source)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"{path}: GGUF file not found")
        model, tokenizer = _load_gguf(path, torch_dtype, placement)
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
                **placement,
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
                **placement,
            )
        except Exception as error:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (HF_HUB_OFFLINE=1 is set: download it first or give a local directory)" if offline else ""
            raise ModelLoadError(f"{text}: cannot load from the hub{hint} ({_brief(error, 160)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not placement:
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
