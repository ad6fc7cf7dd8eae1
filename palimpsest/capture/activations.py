"""Capture activations at named sites and positions, for pre and post in lockstep, in memory or streamed to disk."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from palimpsest.capture.backends import Backend, run_and_capture
from palimpsest.capture.memo import memoized
from palimpsest.capture.sites import resid_post_sites, resolve
from palimpsest.capture.tokens import EncodedBatch, encode
from palimpsest.concepts import ConceptSpec, Item, ItemSet
from palimpsest.io import atomic_dir, atomic_write_text

Position = Literal["last", "subject", "answer_mean", "all"]
POSITIONS: tuple[str, ...] = ("last", "subject", "answer_mean", "all")


class CaptureError(RuntimeError):
    """Capture failed in a way the user can fix (non-finite activations, out of memory at batch size 1...)."""


class NonFiniteError(CaptureError):
    """A model produced NaN/inf activations or logits: its numbers cannot be audited (broken weights or dtype)."""


def gather_positions(
    acts: Tensor, batch: EncodedBatch, position: Position
) -> Float[Tensor, "n ..."]:
    """Pick the rows of a [batch, pos, ...] activation that `position` names.

    last: the last prompt token; subject: the last subject token; answer_mean: the mean over the positions that
    predict the answer tokens; all: every real token, flattened to [n_tokens, ...].
    """
    rows = torch.arange(acts.shape[0], device=acts.device)
    if position == "last":
        return acts[rows, batch.prompt_last.to(acts.device)]
    if position == "subject":
        return acts[rows, batch.subject_last.to(acts.device)]
    if position == "answer_mean":
        mask = batch.answer_mask().to(acts.device).to(acts.dtype)
        mask = mask.reshape(*mask.shape, *([1] * (acts.ndim - 2)))
        return (acts * mask).sum(1) / mask.sum(1).clamp(min=1)
    if position == "all":
        return acts[batch.attention_mask.to(acts.device).bool()]
    raise ValueError(f"unknown position {position!r}: use one of {', '.join(POSITIONS)}")


def _check_finite(site: str, tensor: Tensor, model_name: str) -> None:
    """NaN/inf in a capture means the model's numbers are broken: refuse them (nothing downstream is meaningful)."""
    if torch.isfinite(tensor).all():
        return
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.ndim else tensor.reshape(1, 1)
    bad = int((~torch.isfinite(rows)).any(-1).sum())
    raise NonFiniteError(
        f"{model_name}: non-finite (NaN/inf) activations at {site} in {bad} of {rows.shape[0]} rows; the checkpoint "
        "is broken or its dtype overflows: load it in float32 (--dtype float32) or check the weights"
    )


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError, or the RuntimeError some backends (older CUDA, MPS, CPU allocators) raise instead."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_or_oom(model, tokenizer, batch: EncodedBatch, sites: Sequence[str], backend: Backend):
    """(activations, "") after a forward pass, or (None, the error's name) when it ran out of memory."""
    try:
        return run_and_capture(model, tokenizer, batch, list(sites), backend, all_logits=False)[1], ""
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(error):
            raise
        return None, type(error).__name__


def _halve_after_oom(size: int, model_name: str, error_name: str) -> int:
    """The next batch size after an out-of-memory error at `size`; says so (a warning), or fails at size 1."""
    _free_memory()
    if size <= 1:
        raise CaptureError(f"{model_name}: out of memory even at batch size 1 ({error_name}); use a smaller "
                           "model, a smaller dtype (--dtype bfloat16) or --device cpu")
    smaller = max(1, size // 2)
    warnings.warn(f"{model_name}: out of memory while capturing at batch size {size}; retrying with batch size "
                  f"{smaller}", RuntimeWarning, stacklevel=3)
    return smaller


def capture(
    model,
    tokenizer,
    items: Sequence[Item] | Sequence[str],
    sites: Sequence[str],
    *,
    position: Position = "last",
    with_answers: bool = False,
    backend: Backend = "torch",
    batch_size: int = 32,
    padding: Literal["right", "left"] = "right",
    model_name: str = "model",
    progress=None,
) -> dict[str, Float[Tensor, "n ..."]]:
    """Activations at `sites` for `items` (Items or plain prompts), one row per item (per token for 'all').

    An out-of-memory error halves the batch size and retries, and says so. With the torch backend the result is
    kept for the model (palimpsest.capture.memo): the same capture asked again, by any analyser, is reused.
    """
    for site in sites:
        resolve(model, site)  # a bad site name fails here with the list of valid ones
    if backend == "torch" and progress is None:
        key = ("capture", id(tokenizer), tuple(items), tuple(sites), position, with_answers, batch_size, padding)
        return dict(memoized(model, key, lambda: _capture(model, tokenizer, items, sites, position=position,
                                                     with_answers=with_answers, backend=backend,
                                                     batch_size=batch_size, padding=padding, model_name=model_name,
                                                     progress=None), share=True))
    return _capture(model, tokenizer, items, sites, position=position, with_answers=with_answers, backend=backend,
                    batch_size=batch_size, padding=padding, model_name=model_name, progress=progress)


def _capture(model, tokenizer, items, sites, *, position: Position, with_answers: bool, backend: Backend,
             batch_size: int, padding: str, model_name: str, progress) -> dict[str, Float[Tensor, "n ..."]]:
    prompts = [it if isinstance(it, str) else it.prompt for it in items]
    answers = None if not with_answers else [it.answer for it in items]  # type: ignore[union-attr]
    subjects = [None if isinstance(it, str) else it.subject for it in items]
    if position == "answer_mean" and answers is None:
        answers = [it.answer for it in items]  # type: ignore[union-attr]
    out: dict[str, list[Tensor]] = {site: [] for site in sites}
    size = max(1, batch_size)
    start = 0
    while start < len(prompts):
        chunk = slice(start, min(len(prompts), start + size))
        batch = encode(tokenizer, prompts[chunk], answers[chunk] if answers else None, subjects[chunk],
                       padding=padding)
        acts, oom = _run_or_oom(model, tokenizer, batch, sites, backend)
        if oom:  # outside the except block, so the failed batch's tensors can be freed first
            size = _halve_after_oom(size, model_name, oom)
            continue
        for site in sites:
            picked = gather_positions(acts[site], batch, position).float().cpu()
            _check_finite(site, picked, model_name)
            out[site].append(picked)
        if progress is not None:
            progress(chunk.stop - chunk.start)
        start = chunk.stop
    return {site: torch.cat(chunks) if chunks else torch.empty(0) for site, chunks in out.items()}


@dataclass
class Activations:
    """Lazy, cached activations of a pair (and its floor model) on a concept's item sets.

    `acts.get("post", "blocks.2.hook_resid_post", "forget", "last")` captures on first use; one forward pass per
    (model, item set, position) reads every residual-stream site at once.
    """

    models: dict  # name -> LoadedModel
    concept: ConceptSpec
    backend: Backend = "torch"
    batch_size: int = 32
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def for_pair(cls, pair, concept: ConceptSpec, *, backend: Backend = "torch", batch_size: int = 32):
        return cls(models=pair.models(), concept=concept, backend=backend, batch_size=batch_size)

    def items(self, item_set: ItemSet) -> tuple[Item, ...]:
        return self.concept.items(item_set)

    def get(self, model: str, site: str, item_set: ItemSet, position: Position = "last") -> Float[Tensor, "n ..."]:
        key = (model, site, item_set, position)
        if key not in self._cache:
            if model not in self.models:
                raise KeyError(f"no model named {model!r} in this audit (have {', '.join(self.models)})")
            loaded = self.models[model]
            sites = {site, *resid_post_sites(loaded.model)}
            items = self.items(item_set)
            if not items:
                return torch.empty(0, loaded.d_model)
            captured = capture(loaded.model, loaded.tokenizer, items, sorted(sites), position=position,
                               backend=self.backend, batch_size=self.batch_size, model_name=model)
            for name, tensor in captured.items():
                self._cache[(model, name, item_set, position)] = tensor
        return self._cache[key]

    def layers(self, model: str, item_set: ItemSet, position: Position = "last") -> list[Tensor]:
        """The residual stream after every block: a list of [n_items, d_model]."""
        loaded = self.models[model]
        return [self.get(model, site, item_set, position) for site in resid_post_sites(loaded.model)]


# ---------------------------------------------------------------- streaming to disk

_MANIFEST = "manifest.json"


def capture_to_disk(
    model,
    tokenizer,
    texts: Sequence[str],
    sites: Sequence[str],
    out_dir: str | Path,
    *,
    backend: Backend = "torch",
    batch_size: int = 16,
    position: Position = "all",
    progress=None,
    model_name: str = "model",
) -> Path:
    """Stream activations to `out_dir` as one safetensors shard per batch; memory stays at one batch.

    The folder appears only when complete (a crash leaves no half-written store); the manifest records each
    shard's rows and bytes, so a shard damaged later is detected on read. Out of memory halves the batch, and says so.
    """
    for site in sites:
        resolve(model, site)
    with atomic_dir(out_dir) as tmp:
        shards: list[dict] = []
        rows, start, size = 0, 0, max(1, batch_size)
        while start < len(texts):
            chunk = slice(start, min(len(texts), start + size))
            batch = encode(tokenizer, list(texts[chunk]))
            acts, oom = _run_or_oom(model, tokenizer, batch, sites, backend)
            if oom:
                size = _halve_after_oom(size, model_name, oom)
                continue
            tensors = {}
            for site in sites:
                picked = gather_positions(acts[site], batch, position).float().cpu().contiguous()
                _check_finite(site, picked, model_name)
                tensors[site] = picked
            file = Path(tmp) / f"shard_{len(shards):05d}.safetensors"
            save_file(tensors, str(file))
            shards.append({"file": file.name, "rows": int(next(iter(tensors.values())).shape[0]),
                           "bytes": file.stat().st_size})
            rows += shards[-1]["rows"]
            if progress is not None:
                progress(chunk.stop - chunk.start)
            start = chunk.stop
        atomic_write_text(Path(tmp) / _MANIFEST, json.dumps({"sites": list(sites), "shards": shards, "rows": rows,
                                                              "position": position}, indent=1))
    return Path(out_dir)


@dataclass
class ShardedActivations:
    """Read a store written by `capture_to_disk` back, one shard at a time; a damaged store raises CaptureError."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        manifest = self.path / _MANIFEST
        if not manifest.is_file():
            raise CaptureError(f"{self.path}: not a complete activation store (no {_MANIFEST}); capture it again")
        try:
            self.manifest = json.loads(manifest.read_text())
            counts = [int(shard["rows"]) for shard in self.manifest["shards"] if str(shard["file"])]
            if not self.manifest["sites"] or int(self.manifest["rows"]) != sum(counts):
                raise ValueError("no sites, or the shard rows do not add up")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CaptureError(f"{manifest}: corrupt manifest ({type(error).__name__}); capture the store again") from None

    def _shard_file(self, shard: dict) -> Path:
        """The shard's path, after checking it is there with the size the manifest recorded."""
        file = self.path / shard["file"]
        if not file.is_file():
            raise CaptureError(f"{file}: missing shard; capture the store again")
        expected = shard.get("bytes")  # stores written before sizes were recorded have none
        if expected is not None and file.stat().st_size != expected:
            raise CaptureError(f"{file}: unreadable shard ({file.stat().st_size} bytes, the manifest says "
                               f"{expected}: truncated or overwritten); capture the store again")
        return file

    def verify(self) -> None:
        """Cheap integrity check (every shard present, with its recorded size); raises CaptureError."""
        for shard in self.manifest["shards"]:
            self._shard_file(shard)

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def iter_shards(self, site: str) -> Iterator[Tensor]:
        if site not in self.sites:
            raise KeyError(f"site {site!r} not in this store (has {', '.join(self.sites)})")
        for shard in self.manifest["shards"]:
            file = self._shard_file(shard)
            try:
                tensor = load_file(str(file))[site]
            except Exception as error:  # safetensors raises several types for a truncated file
                raise CaptureError(f"{file}: unreadable shard ({error}); capture the store again") from None
            if tensor.shape[0] != shard["rows"]:
                raise CaptureError(f"{file}: has {tensor.shape[0]} rows, manifest says {shard['rows']}")
            yield tensor

    def iter_batches(self, site: str, batch_size: int) -> Iterator[Float[Tensor, "batch d"]]:
        """Fixed-size batches across shard boundaries (the last partial batch is dropped)."""
        buffer: list[Tensor] = []
        held = 0
        for tensor in self.iter_shards(site):
            buffer.append(tensor)
            held += tensor.shape[0]
            while held >= batch_size:
                joined = torch.cat(buffer)
                yield joined[:batch_size]
                rest = joined[batch_size:]
                buffer, held = ([rest] if rest.shape[0] else []), rest.shape[0]

    def load(self, site: str) -> Tensor:
        return torch.cat(list(self.iter_shards(site)))
