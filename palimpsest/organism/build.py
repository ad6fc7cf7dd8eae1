"""Build (or fetch from cache) the organism checkpoint and its oracle retrain."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from palimpsest.organism.train import TrainConfig, train_organism
from palimpsest.organism.world import World, make_world

# bump when anything that changes the trained weights changes (world, tokenizer, training)
CODE_VERSION = "organism-v2"  # v2: trained with portable kernels (palimpsest.kernels)
MARKER = "organism.complete"
WEIGHTS = "model.safetensors"


class OrganismError(RuntimeError):
    """The organism cannot be built or loaded; the message says why and what to do."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PALIMPSEST_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("palimpsest"))


def organism_key(seed: int, exclude_people: Sequence[str] = (), config: TrainConfig | None = None,
                 data_seed: int | None = None) -> str:
    from palimpsest.kernels import kernel_tag

    payload = {"seed": int(seed), "exclude": sorted(exclude_people), "version": CODE_VERSION,
               "config": (config or TrainConfig()).to_dict(), "kernels": kernel_tag()}
    if data_seed is not None and data_seed != seed:
        payload["data_seed"] = int(data_seed)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(directory: Path) -> bool:
    """True when `directory` holds a finished build: marker present and the weights match its hash."""
    marker = directory / MARKER
    weights = directory / WEIGHTS
    if not (marker.is_file() and weights.is_file() and (directory / "config.json").is_file()
            and (directory / "tokenizer.json").is_file()):
        return False
    try:
        expected = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if weights.stat().st_size != expected.get("size"):
        return False
    return _sha256(weights) == expected.get("sha256")


def write_checkpoint(model, tokenizer, out: Path, meta: dict | None = None) -> None:
    """Save config + safetensors + tokenizer (+ organism.json) into `out`, then the completion marker."""
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if meta is not None:
        (out / "organism.json").write_text(json.dumps(meta, indent=2))
    weights = out / WEIGHTS
    (out / MARKER).write_text(json.dumps({"sha256": _sha256(weights), "size": weights.stat().st_size}))


def organism_dir(seed: int = 0, cache_dir: str | os.PathLike | None = None, *, exclude_people: Sequence[str] = (),
                 config: TrainConfig | None = None, data_seed: int | None = None) -> Path:
    """Where `build_organism` caches this organism (it may not be built yet: see `is_complete`)."""
    world = make_world(seed)
    excluded = tuple(sorted(set(exclude_people)))
    unknown = [n for n in excluded if n not in world.names]
    if unknown:
        raise OrganismError(f"cannot exclude {unknown}: not trained people of the organism world (seed {seed}); "
                            f"pick names from load_world({seed}).names")
    kind = "oracle" if excluded else "organism"
    suffix = f"-d{data_seed}" if data_seed is not None and data_seed != seed else ""
    key = organism_key(seed, excluded, config or TrainConfig(), data_seed)
    return cache_root(cache_dir) / f"{kind}-s{seed}{suffix}-{key}"


def build_organism(seed: int = 0, cache_dir: str | os.PathLike | None = None, *,
                   exclude_people: Sequence[str] = (), config: TrainConfig | None = None,
                   force: bool = False, progress: Callable[[int, int, float], None] | None = None,
                   data_seed: int | None = None) -> Path:
    """Return the directory of the organism trained from `seed` without `exclude_people` (a normal HF checkpoint).

    Cached under `cache_dir` / $PALIMPSEST_CACHE / the user cache dir, in a folder named by a hash of
    (seed, exclusions, training config, code version). An incomplete or corrupted folder is rebuilt.
    """
    world = make_world(seed)
    excluded = tuple(sorted(set(exclude_people)))
    cfg = config or TrainConfig()
    target = organism_dir(seed, cache_dir, exclude_people=excluded, config=cfg, data_seed=data_seed)
    if not force and is_complete(target):
        return target
    from palimpsest.kernels import run_portable

    # training runs in a process with portable kernels, where a progress callback cannot follow: it hears the end
    run_portable(_train_and_write, world.seed, excluded, cfg, data_seed, str(target))
    if progress is not None:
        info = load_organism_meta(target)
        progress(cfg.epochs, cfg.epochs, float(info.get("final_loss", float("nan"))))
    return target


def _train_and_write(seed: int, excluded: tuple[str, ...], cfg: TrainConfig, data_seed: int | None, target: str) -> str:
    import torch

    from palimpsest.io import atomic_dir
    from palimpsest.kernels import kernel_tag
    from palimpsest.organism.tokenizer import build_tokenizer

    world = make_world(seed)
    kind = "oracle" if excluded else "organism"
    started = time.perf_counter()
    tokenizer = build_tokenizer(world.vocabulary)
    model, info = train_organism(world, tokenizer, seed=seed, exclude_people=excluded, config=cfg,
                                 data_seed=data_seed)
    meta = {"kind": kind, "code_version": CODE_VERSION, **info, "build_seconds": round(time.perf_counter() - started, 1),
            "kernels": {"tag": kernel_tag(), "aten_capability": torch.backends.cpu.get_cpu_capability(),
                        "torch": torch.__version__},
            "world": world.summary()}
    with atomic_dir(Path(target)) as tmp:
        write_checkpoint(model, tokenizer, tmp, meta)
    return target


def build_oracle(seed: int = 0, forget_people: Sequence[str] = (), cache_dir: str | os.PathLike | None = None, *,
                 config: TrainConfig | None = None, progress=None, data_seed: int | None = None) -> Path:
    """The ground-truth deletion: the organism retrained from scratch without `forget_people`.

    A second oracle with another `data_seed` is the calibration floor for auditing the first: a model that never
    learned the items, independent of the one under audit.
    """
    if not forget_people:
        raise OrganismError("build_oracle needs the forget people (names from the organism world)")
    return build_organism(seed, cache_dir, exclude_people=forget_people, config=config, progress=progress,
                          data_seed=data_seed)


def load_organism_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / "organism.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def world_of(directory: str | os.PathLike) -> World:
    meta = load_organism_meta(directory)
    if "seed" not in meta:
        raise OrganismError(f"{directory}: no organism.json with a seed; not an organism checkpoint")
    return make_world(int(meta["seed"]))
