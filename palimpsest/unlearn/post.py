"""Save unlearned models, and make the organism's post-models (including the `oracle` retrain)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from palimpsest.concepts.spec import ConceptSpec
from palimpsest.models.loading import LoadedModel


def save_model(loaded: LoadedModel, out_dir: str | os.PathLike) -> Path:
    """Write `loaded` (config + model.safetensors + tokenizer + unlearn.json) atomically to `out_dir`."""
    from palimpsest.io import atomic_dir
    from palimpsest.organism.build import write_checkpoint

    out = Path(out_dir)
    model = loaded.model
    if getattr(model.config, "quantization_config", None) is not None:
        model.config.quantization_config = None
    with atomic_dir(out) as tmp:
        write_checkpoint(model, loaded.tokenizer, tmp, None)
        if loaded.meta:
            (tmp / "unlearn.json").write_text(json.dumps(loaded.meta, indent=2, default=str))
        organism = Path(loaded.source) / "organism.json"
        if organism.is_file():  # keep the world description with organism post-models
            (tmp / "organism.json").write_text(organism.read_text())
    return out


def make_post_model(method: str, pre_dir: str | os.PathLike, concept: ConceptSpec, world=None,
                    out_dir: str | os.PathLike | None = None, seed: int = 0, *, config=None,
                    cache_dir: str | os.PathLike | None = None, retain_items: int | None = 256) -> Path:
    """Make the post-model of `method` for an organism `concept` and return its directory.

    `oracle` is the organism retrained without the concept's people (cached; copied to `out_dir` when given).
    Other methods load `pre_dir`, unlearn the concept's forget items, keeping trained-form facts of people
    outside the concept (so the concept's retain and neighbour items measure generalisation), and save.
    """
    import shutil

    from palimpsest.organism.build import build_oracle, load_organism_meta
    from palimpsest.organism.concept import load_world

    meta = load_organism_meta(pre_dir)
    if world is None:
        world = load_world(int(meta.get("seed", 0)))
    if method == "oracle":
        people = list(concept.keywords) or sorted({it.subject for it in concept.forget if it.subject})
        path = build_oracle(world.seed, people, cache_dir if cache_dir is not None else Path(pre_dir).parent)
        if out_dir is None:
            return path
        from palimpsest.io import atomic_dir

        with atomic_dir(out_dir) as tmp:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        return Path(out_dir)
    if out_dir is None:
        raise ValueError(f"make_post_model: give out_dir for method {method!r}")
    from palimpsest.kernels import run_portable

    # unlearning trains: with portable kernels every machine makes the same post-model from the same pre model
    return Path(run_portable(_unlearn_and_save, method, str(pre_dir), concept, world.seed, str(out_dir), seed,
                             config, retain_items))


def _unlearn_and_save(method: str, pre_dir: str, concept: ConceptSpec, world_seed: int, out_dir: str, seed: int,
                      config, retain_items: int | None) -> str:
    from palimpsest.models.loading import load_model
    from palimpsest.organism.concept import load_world, retain_training_items
    from palimpsest.unlearn import unlearn
    from palimpsest.unlearn.controls import CONTROLS

    pre = load_model(pre_dir)
    retain = retain_training_items(load_world(world_seed), concept, max_items=retain_items, seed=seed)
    if method in CONTROLS:
        fn, config_cls = CONTROLS[method]
        post = fn(pre, list(concept.forget), retain, config or config_cls(), seed=seed)
    else:
        post = unlearn(method, pre, list(concept.forget), retain, config=config, seed=seed)
    return str(save_model(post, out_dir))
