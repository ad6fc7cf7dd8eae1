"""Train SAEs with sae-lens on palimpsest activations; save/load in sae-lens's format, cached by
(model hash, site, corpus hash, training config); resumable from sae-lens checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence
from unittest import mock

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

from palimpsest.devices import is_offloaded, read_parameter
from palimpsest.io import atomic_dir, atomic_write_text
from palimpsest.sae.config import ARCHITECTURES, SAEConfig
from palimpsest.sae.data import tensor_batches, training_activations

_MEMO: dict[str, tuple[object, dict]] = {}  # cache key -> (SAE, quality): one load per process
WEIGHTS = "sae_weights.safetensors"


class SAEError(ValueError):
    """SAE training or loading failed in a way the user can fix; the message says how."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $PALIMPSEST_CACHE, else the user cache folder; SAEs live under `<root>/sae/`."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("PALIMPSEST_CACHE"):
        return Path(os.environ["PALIMPSEST_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("palimpsest"))


def model_hash(model: torch.nn.Module) -> str:
    """A digest of every parameter and buffer (names, shapes, dtypes, bytes): same weights, same hash (weights
    accelerate offloaded to disk are read through it one tensor at a time, so an offloaded model hashes as in memory)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.device.type == "meta":
            tensor = read_parameter(model, name)
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def corpus_hash(corpus: Sequence[str]) -> str:
    return hashlib.blake2b("\x00".join(corpus).encode(), digest_size=8).hexdigest()


def cache_key(model: torch.nn.Module, site: str, corpus: Sequence[str], config: SAEConfig,
              held_out: Sequence[str] = ()) -> str:
    from palimpsest.kernels import kernel_tag

    text = f"{model_hash(model)}|{site}|{corpus_hash(corpus)}|{config.training_key()}|{kernel_tag()}"
    if held_out:  # the quality measured on them is part of what is cached
        text += f"|held:{corpus_hash(held_out)}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def build_training_sae(d_in: int, config: SAEConfig):
    """A fresh sae-lens TrainingSAE of the configured architecture (TopK by default)."""
    from sae_lens.registry import get_sae_training_class

    if config.architecture not in ARCHITECTURES:
        raise SAEError(f"unknown SAE architecture {config.architecture!r}: use one of {', '.join(ARCHITECTURES)}")
    sae_cls, cfg_cls = get_sae_training_class(config.architecture)
    fields = {"d_in": d_in, "d_sae": config.resolved_d_sae(d_in), "dtype": "float32", "device": "cpu",
              "normalize_activations": config.normalize_activations, **config.arch_kwargs}
    if "k" in cfg_cls.__dataclass_fields__:
        fields["k"] = config.k
    unknown = sorted(set(fields) - set(cfg_cls.__dataclass_fields__))
    if unknown:
        raise SAEError(f"{config.architecture} SAEs have no field(s) {unknown}; remove them from arch_kwargs")
    torch.manual_seed(config.seed)
    return sae_cls.from_dict(cfg_cls(**fields).to_dict())


def _checkpoints(checkpoint_dir: Path | None) -> list[Path]:
    """sae-lens checkpoint folders, newest first."""
    if checkpoint_dir is None or not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: -int(p.name))


def _latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    done = [p for p in _checkpoints(checkpoint_dir)
            if (p / "trainer_state.pt").is_file() and (p / "sae_weights.safetensors").is_file()]
    return done[0] if done else None


def train_sae(batches: Iterator[Float[Tensor, "batch d"]], d_in: int, config: SAEConfig, *, device: str = "cpu",
              checkpoint_dir: str | Path | None = None, n_checkpoints: int = 0, progress: bool = False):
    """Fit a sae-lens SAE on `batches` (any endless iterator of [batch_size, d_in] rows) with `SAETrainer`.

    With `checkpoint_dir`, sae-lens checkpoints are written `n_checkpoints` times and a later call resumes from the
    newest one (the data iterator simply continues; batches are shuffled, so no position needs restoring).
    Returns (TrainingSAE, trainer): the trainer holds the firing statistics.
    """
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    trainer_cfg = SAETrainerConfig(
        total_training_samples=config.total_tokens, train_batch_size_samples=config.batch_size, lr=config.lr,
        lr_end=config.lr_end, lr_scheduler_name=config.lr_scheduler, lr_warm_up_steps=config.lr_warm_up_steps,
        device=device, n_checkpoints=n_checkpoints if checkpoint_dir else 0,
        checkpoint_path=str(checkpoint_dir) if checkpoint_dir else None,
        logger=LoggingConfig(log_to_wandb=False), dead_feature_window=max(50, config.total_tokens // config.batch_size // 4),
        feature_sampling_window=10**9,  # one sparsity window over the whole run: L0 and dead counts cover all of it
        n_batches_for_norm_estimate=20)
    sae = build_training_sae(d_in, config)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches)
    for checkpoint in _checkpoints(checkpoint_dir):
        try:  # a crash while sae-lens wrote a checkpoint leaves a truncated one: never resume from it
            sae.load_state_dict(load_file(str(checkpoint / "sae_weights.safetensors")))
            trainer.load_trainer_state(checkpoint)
        except Exception as error:  # noqa: BLE001 — safetensors, torch.load and json each raise their own
            warnings.warn(f"{checkpoint}: damaged SAE checkpoint ({type(error).__name__}); removed it, resuming "
                          "from an older one (or from the start)", RuntimeWarning, stacklevel=2)
            shutil.rmtree(checkpoint, ignore_errors=True)
            sae = build_training_sae(d_in, config)  # nothing half-loaded carries over
            trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches)
            continue
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]
        break
    import sae_lens.training.sae_trainer as trainer_module

    quiet = nullcontext() if progress else mock.patch.object(trainer_module, "tqdm",
                                                              partial(trainer_module.tqdm, disable=True))
    with quiet:
        trainer.fit()
    return trainer.sae, trainer


def load_sae(path: str | Path, device: str = "cpu"):
    """An inference SAE saved in sae-lens's format (cfg.json + sae_weights.safetensors)."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file() or not (path / WEIGHTS).is_file():
        raise SAEError(f"{path}: not a saved SAE (needs cfg.json and {WEIGHTS}); train one with "
                       "`palimpsest sae train`")
    try:
        return SAE.load_from_disk(str(path), device=device)
    except Exception as error:  # noqa: BLE001 — a truncated file raises safetensors', json's or torch's own type
        raise SAEError(f"{path}: cannot load the SAE ({type(error).__name__}: {' '.join(str(error).split())[:120]}); "
                       "its files are damaged or truncated: train it again") from None



def _fingerprint(file: Path) -> dict:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": file.stat().st_size, "sha256": digest.hexdigest()}


def cache_problem(folder: str | Path) -> str | None:
    """None when `folder` holds a complete saved SAE whose weights match the fingerprint recorded at save time;
    otherwise what is wrong (a crash, a full disk or a copy can truncate a file after the atomic save)."""
    folder = Path(folder)
    for name in ("cfg.json", WEIGHTS, "quality.json", "palimpsest.json"):
        if not (folder / name).is_file():
            return f"no {name}"
    try:
        json.loads((folder / "quality.json").read_text())
        meta = json.loads((folder / "palimpsest.json").read_text())
    except (OSError, ValueError) as error:
        return f"unreadable quality.json or palimpsest.json ({type(error).__name__})"
    recorded = meta.get("weights") if isinstance(meta, dict) else None
    if recorded:  # SAEs saved before fingerprints were recorded are checked by loading them
        size = (folder / WEIGHTS).stat().st_size
        if size != recorded.get("bytes"):
            return f"{WEIGHTS} has {size} bytes, {recorded.get('bytes')} were saved"
        if _fingerprint(folder / WEIGHTS)["sha256"] != recorded.get("sha256"):
            return f"{WEIGHTS} does not match the hash recorded when it was saved"
    return None


def save_sae(training_sae, path: str | Path, meta: dict, quality_fn=None) -> tuple[object, dict]:
    """Write the inference SAE (sae-lens format), quality.json and palimpsest.json, all or nothing.

    `quality_fn(inference_sae) -> dict` measures the saved SAE exactly as it will be loaded.
    """
    with atomic_dir(path) as tmp:
        training_sae.save_inference_model(str(tmp))
        sae = load_sae(tmp)
        quality = quality_fn(sae) if quality_fn else {}
        atomic_write_text(Path(tmp) / "quality.json", json.dumps(quality, indent=1, default=float))
        meta = {**meta, "weights": _fingerprint(Path(tmp) / WEIGHTS)}  # lets a later load detect a damaged file
        atomic_write_text(Path(tmp) / "palimpsest.json", json.dumps(meta, indent=1, default=str))
    return sae, quality


def get_or_train_sae(model, site: str, corpus: Sequence[str], config: SAEConfig | None = None,
                     cache_dir: str | Path | None = None, *, progress: bool = False, batch_size: int = 32,
                     held_out: Sequence[str] = ()):
    """The SAE of `model` (a LoadedModel) at `site` trained on `corpus`, and its quality dict (with
    `explained_variance_held_out` on the `held_out` texts, never trained on, when given).

    Trained once with sae-lens and cached under `<cache>/sae/<key>/` in sae-lens's format, keyed by the model's
    weight hash, the site, the corpus and the training fields of `config`; later calls load it.
    """
    import time

    from palimpsest.sae.quality import reconstruction_stats, sae_quality

    config = config or SAEConfig()
    key = cache_key(model.model, site, corpus, config, held_out)
    if key in _MEMO:
        return _MEMO[key]
    folder = cache_root(cache_dir) / "sae" / key
    cached = _load_cached(folder, str(model.device))
    if cached is not None:
        _MEMO[key] = cached
        return cached
    # nothing usable is cached: train (again), with portable kernels when the model can be reloaded from its folder
    if _train_portably(model, site, corpus, config, cache_dir, batch_size, key, held_out):
        cached = _load_cached(folder, str(model.device))
        if cached is not None:
            _MEMO[key] = cached
            return cached
    started = time.perf_counter()
    filters = dict(skip_first=config.skip_first_positions, max_norm_ratio=config.max_norm_ratio, batch_size=batch_size)
    acts, token_info = training_activations(model.model, model.tokenizer, site, corpus, **filters)
    capture_s = time.perf_counter() - started
    device = str(model.device)
    training_sae, trainer = train_sae(tensor_batches(acts.to(device), config.batch_size, seed=config.seed),
                                      acts.shape[-1], config, device=device, progress=progress)
    train_s = time.perf_counter() - started - capture_s
    meta = {"site": site, "model": model.source, "model_hash": model_hash(model.model),
            "corpus_hash": corpus_hash(corpus), "n_texts": len(corpus), "n_tokens": int(acts.shape[0]),
            "config": config.model_dump(mode="json")}

    def quality(sae) -> dict:
        out = {**sae_quality(sae, acts, model, site, corpus, trainer=trainer), **token_info,
               "capture_seconds": round(capture_s, 1), "train_seconds": round(train_s, 1)}
        if held_out:
            held, _ = training_activations(model.model, model.tokenizer, site, held_out, **filters)
            stats = reconstruction_stats(sae, held)
            out.update(explained_variance_held_out=stats["explained_variance"], l0_held_out=stats["l0"],
                       n_held_out_tokens=stats["n_eval_tokens"], n_held_out_texts=len(held_out))
        return out

    save_sae(training_sae, folder, meta, quality)
    sae = load_sae(folder, device=str(model.device))
    quality = json.loads((folder / "quality.json").read_text())
    _MEMO[key] = (sae, quality)
    return sae, quality


def _train_portably(model, site: str, corpus: Sequence[str], config: SAEConfig, cache_dir, batch_size: int,
                    key: str, held_out: Sequence[str] = ()) -> bool:
    """Train in a process with portable kernels (palimpsest.kernels) when `model` is its saved folder's weights."""
    from palimpsest.kernels import in_portable_process, portable_enabled, run_portable

    source = Path(str(model.source))
    # not for an offloaded model: the portable process would load all of its weights into memory
    if (not portable_enabled() or in_portable_process() or str(model.device) != "cpu" or is_offloaded(model.model)
            or not (source / "model.safetensors").is_file()):
        return False
    return run_portable(_train_from_folder, str(source), site, list(corpus), config,
                        str(cache_root(cache_dir)), batch_size, key, list(held_out))


def _train_from_folder(source: str, site: str, corpus: list[str], config: SAEConfig, cache_dir: str,
                       batch_size: int, key: str, held_out: list[str] = ()) -> bool:
    from palimpsest.models import load_model

    model = load_model(source)
    if cache_key(model.model, site, corpus, config, held_out) != key:  # the caller's weights are not the saved ones
        return False
    get_or_train_sae(model, site, corpus, config, cache_dir, batch_size=batch_size, held_out=held_out)
    return True


def _load_cached(folder: Path, device: str) -> tuple[object, dict] | None:
    """(SAE, quality) from a sound cache folder; None when there is none, with a warning when one was damaged."""
    if not folder.exists():
        return None
    problem = cache_problem(folder)
    if problem is None:
        try:
            return load_sae(folder, device=device), json.loads((folder / "quality.json").read_text())
        except SAEError as error:
            problem = str(error)
    warnings.warn(f"{folder}: damaged SAE cache ({problem}); training it again", RuntimeWarning, stacklevel=3)
    return None
