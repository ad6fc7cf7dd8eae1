"""`palimpsest demo`: build the organism, unlearn it with every method, audit each, write the comparison page."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

ORGANISM_METHODS = ("oracle", "suppress", "ga", "graddiff", "npo", "rmu", "sauce")
# truth by construction of the organism's controls (sauce: hooks clamp SAE concept features at inference, weights
# untouched); the comparison page applies the verdict's first gate to it (palimpsest.validate.cases.gated_truth)
EXPECTED = {"oracle": "deleted", "suppress": "suppressed", "sauce": "suppressed"}


def expected_verdicts(results: dict) -> dict[str, str]:
    """The verdict each control must get: its construction when its behaviour is forgotten, else not_forgotten
    (a weak control: the unlearning did not reach the forgotten bound, so nothing is left to call suppressed)."""
    from palimpsest.validate.cases import gated_truth

    out = {}
    for method, construction in EXPECTED.items():
        if method in results:
            truth, weak = gated_truth(construction, results[method].behaviour_forgotten)
            out[method] = truth + (" (weak control)" if weak else "")
    return out
FLOOR_DATA_SEED = 1  # the calibration floor: an oracle retrained with another batch order

Progress = Callable[..., None]  # (message, units of work finished)


@dataclass
class OrganismSetup:
    pre_dir: Path
    oracle_dir: Path
    floor_dir: Path
    concept: object
    world: object
    cache: Path


def _build(kind: str, seed: int, forget: tuple[str, ...], cache: str) -> str:
    """One organism build, in its own process (training is pinned to one thread, so builds run side by side)."""
    from palimpsest.io import file_lock
    from palimpsest.organism import build_oracle, build_organism

    with file_lock(Path(cache) / f".lock-{kind}-{seed}"):
        if kind == "pre":
            return str(build_organism(seed, cache))
        if kind == "oracle":
            return str(build_oracle(seed, forget, cache))
        return str(build_oracle(seed, forget, cache, data_seed=FLOOR_DATA_SEED))


def organism_setup(seed: int = 0, cache_dir: str | Path | None = None, *, forget_people=None,
                   progress: Progress | None = None, parallel: bool = True) -> OrganismSetup:
    """The pre organism, its oracle and an independent floor oracle (built in parallel when missing)."""
    from palimpsest.organism import (
        ORGANISM_FORGET_DEFAULT,
        cache_root,
        is_complete,
        load_world,
        organism_concept,
    )
    from palimpsest.organism.build import organism_dir

    cache = cache_root(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    world = load_world(seed)
    forget = tuple(forget_people or ORGANISM_FORGET_DEFAULT)
    concept = organism_concept(world, list(forget))
    kinds = ("pre", "oracle", "floor")
    targets = {"pre": organism_dir(seed, cache), "oracle": organism_dir(seed, cache, exclude_people=forget),
               "floor": organism_dir(seed, cache, exclude_people=forget, data_seed=FLOOR_DATA_SEED)}
    missing = [kind for kind in kinds if not is_complete(targets[kind])]
    if missing and progress:
        progress(f"building {', '.join(missing)} (cached after the first run)")
    if parallel and len(missing) > 1:  # processes only when there is training to do: starting them costs seconds
        from palimpsest.kernels import submit_all

        # the workers start with portable kernels, so their builds train in place
        pool, futures = submit_all(_build, [(kind, seed, forget, str(cache)) for kind in missing], len(missing))
        with pool:
            built = dict(zip(missing, (f.result() for f in futures)))
    else:
        built = {kind: _build(kind, seed, forget, str(cache)) for kind in missing}
    paths = {kind: Path(built.get(kind, targets[kind])) for kind in kinds}
    return OrganismSetup(paths["pre"], paths["oracle"], paths["floor"], concept, world, cache)


def _post_key(method: str, setup: OrganismSetup, seed: int) -> str:
    """The post-model's cache key: the pre model, the method and its default config, the seed, the concept."""
    from palimpsest.kernels import kernel_tag
    from palimpsest.unlearn import METHODS
    from palimpsest.unlearn.controls import CONTROLS

    config_cls = METHODS[method].config_cls if method in METHODS else CONTROLS[method][1]
    payload = {"version": "posts-v2", "pre": setup.pre_dir.name, "method": method, "seed": seed,
               "config": config_cls().to_dict(),
               "concept": setup.concept.stable_dump(), "kernels": kernel_tag()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def organism_post_dir(method: str, setup: OrganismSetup, seed: int = 0) -> Path:
    """The cached post-model directory of a weight-editing method (oracle: the oracle retrain)."""
    from palimpsest.io import file_lock
    from palimpsest.organism import is_complete
    from palimpsest.unlearn import make_post_model

    if method == "oracle":
        return setup.oracle_dir
    target = setup.cache / f"post-{method}-{_post_key(method, setup, seed)}"
    with file_lock(setup.cache / f".lock-post-{method}"):
        if not is_complete(target):
            make_post_model(method, setup.pre_dir, setup.concept, setup.world, target, seed)
    return target


def sauce_post(pre, concept, world=None):
    """SAUCE: the pre model with its SAE concept features clamped by hooks (weights untouched), at the early sites of
    SAEConfig().sauce_sites where the people's names are read (a middle-layer clamp barely changes the answers).
    Its clamp and feature count are chosen on the forget items and the world's retain-training facts."""
    from palimpsest.organism.concept import retain_training_items
    from palimpsest.sae import SAEConfig, sauce_unlearn

    retain = retain_training_items(world, concept, max_items=256) if world is not None else None
    return sauce_unlearn(pre, concept, SAEConfig(), retain_items=retain)


def organism_pair(method: str, setup: OrganismSetup, seed: int = 0, *, pre=None, floor=None):
    """The (pre, post, floor) ModelPair of one method; pass `pre`/`floor` to reuse loaded reference models."""
    from palimpsest.models import ModelPair, load_model

    pre = pre or load_model(setup.pre_dir, name="pre")
    floor = floor or load_model(setup.floor_dir, name="floor")
    if method == "sauce":
        post = sauce_post(pre, setup.concept, setup.world)
    else:
        post = load_model(organism_post_dir(method, setup, seed), name="post")
    return ModelPair(pre=pre, post=post, floor=floor)


_WORKER_REFERENCE: dict = {}  # per process: the pre and floor models, loaded once and audited against every method


def _audit_method(method: str, seed: int, cache: str, config_json: str, out_dir: str,
                  figure_formats: tuple[str, ...], threads: int | None) -> str:
    """Make one post-model, audit it and write its report (in a worker process); returns the AuditResult JSON."""
    import torch

    from palimpsest.audit import audit
    from palimpsest.models import load_model
    from palimpsest.report import write_audit
    from palimpsest.types import AuditConfig

    if threads:
        torch.set_num_threads(threads)
    if threads is not None:  # a worker process: its pre and floor stay loaded, so their results are kept too
        from palimpsest.capture import memo

        memo.hold_for_process()
    setup = organism_setup(seed, cache, parallel=False)
    key = (str(setup.pre_dir), str(setup.floor_dir))
    if key not in _WORKER_REFERENCE:
        _WORKER_REFERENCE.clear()
        _WORKER_REFERENCE[key] = (load_model(setup.pre_dir, name="pre"), load_model(setup.floor_dir, name="floor"))
    pre, floor = _WORKER_REFERENCE[key]
    pair = organism_pair(method, setup, seed, pre=pre, floor=floor)
    result = audit(pair, setup.concept, AuditConfig.model_validate_json(config_json))
    write_audit(result, Path(out_dir) / method, figure_formats=tuple(figure_formats))
    return result.model_dump_json()


def demo_workers(n_methods: int) -> int:
    """Audits run side by side, one torch thread each: the organism's matrices are too small for threads to pay."""
    return max(1, min(n_methods, os.cpu_count() or 1))


def run_organism_demo(out_dir: str | Path, *, methods=ORGANISM_METHODS, seed: int = 0, cache_dir=None,
                      progress: Progress | None = None, config=None, figure_formats=(),
                      workers: int | None = None) -> dict:
    """Build (or reuse) the organism, audit each method's post-model, write DIR/<method>/ and DIR/index.html.

    `workers` processes audit methods side by side (default: one per core); each keeps its pre and floor models
    loaded, so the work that depends only on them is done once per process, not once per method.
    """
    from palimpsest.audit.runner import AuditResult
    from palimpsest.demo_driver import run_methods
    from palimpsest.types import AuditConfig

    out_dir = Path(out_dir)
    config = config or AuditConfig(seed=seed)
    step = progress or (lambda message, done=0: None)
    started = time.perf_counter()
    setup = organism_setup(seed, cache_dir, progress=lambda message: step(message, 0))
    workers = workers or demo_workers(len(methods))
    args = (seed, str(setup.cache), config.model_dump_json(), str(out_dir), tuple(figure_formats))

    def audit_one(method: str):  # in this process; _audit_method writes the report
        step(f"{method}: making the post-model and auditing", 0)
        return AuditResult.model_validate_json(_audit_method(method, *args, None))

    def in_processes(chosen):
        step(f"auditing {len(chosen)} post-models in {workers} processes", 0)
        from palimpsest.kernels import submit_all

        pool, submitted = submit_all(_audit_method, [(method, *args, 1) for method in chosen], workers)
        futures = dict(zip(submitted, chosen))
        with pool:
            for future in as_completed(futures):
                yield futures[future], AuditResult.model_validate_json(future.result())

    return run_methods(
        out_dir, tuple(methods), audit_one, title="palimpsest demo: the model organism", expected=expected_verdicts,
        notes=lambda results: [f"pre model: {setup.pre_dir.name}; floor: an oracle retrained with data seed "
                               f"{FLOOR_DATA_SEED} ({setup.floor_dir.name}); total "
                               f"{time.perf_counter() - started:.0f} s"],
        pool=None if workers == 1 else in_processes, progress=step)


def register(app: typer.Typer) -> None:
    from palimpsest.cli import BadInput, _one_line, _progress, _say, audit_config, guarded, out

    @app.command()
    @guarded
    def demo(model: Annotated[str, typer.Option(help="organism | smollm2 | digits")] = "organism",
             out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("out/demo"),
             methods: Annotated[Optional[str], typer.Option(help="comma-separated post-model methods")] = None,
             seed: Annotated[Optional[int], typer.Option(help="[default: 0, or the --config file's]")] = None,
             figures: Annotated[str, typer.Option(help="also export figures: png,svg,html")] = "",
             config_file: Annotated[Optional[Path], typer.Option(
                 "--config", help="AuditConfig as YAML/JSON (palimpsest config show); flags override it")] = None,
             device: Annotated[Optional[str], typer.Option(help="smollm2: cpu | cuda | mps [default: cpu]")] = None,
             dtype: Annotated[Optional[str], typer.Option(help="smollm2: float32 | bfloat16 | float16")] = None):
        """Unlearn the embedded model with every method, audit each, and write DIR/index.html."""
        from palimpsest.report.figures import FigureExportError, check_static_export, parse_formats

        try:
            formats = parse_formats(figures)
        except ValueError as error:
            raise BadInput(f"--figures: {error}") from None
        if model not in ("organism", "smollm2", "digits"):
            raise BadInput(f"--model {model!r}: use organism, smollm2 or digits")
        try:  # before any model is built: an export that cannot happen fails now, not after the demo
            check_static_export(formats)
        except FigureExportError as error:
            _say(f"[red]error:[/] {_one_line(error)}")
            raise typer.Exit(1) from None
        # the file's config with the flags given on top (a bad file is refused before anything is built); without
        # a file each demo uses its own default config
        config = audit_config(config_file, seed=seed, device=device if model == "smollm2" else None) \
            if config_file is not None else None
        seed = config.seed if config is not None else (seed or 0)
        device = config.device if config is not None else (device or "cpu")
        with _progress() as bar:
            task = bar.add_task("demo", total=None)

            def step(message: str, done: float = 0) -> None:
                bar.update(task, description=message, advance=done)
                bar.console.log(message)

            if model == "organism":
                chosen = tuple(m.strip() for m in methods.split(",")) if methods else ORGANISM_METHODS
                unknown = sorted(set(chosen) - set(ORGANISM_METHODS))
                if unknown:
                    raise BadInput(f"unknown methods {unknown}; choose from {', '.join(ORGANISM_METHODS)}")
                bar.update(task, total=len(chosen))
                results = run_organism_demo(out_dir, methods=chosen, seed=seed, progress=step, figure_formats=formats,
                                            config=config)
            elif model == "digits":
                from palimpsest.vision.audit import vision_config
                from palimpsest.vision.demo import run_digits_demo

                # the vision defaults, with the fields the file sets on top
                vision = vision_config(**{**{k: getattr(config, k) for k in config.model_fields_set}, "seed": seed}) \
                    if config is not None else None
                results = run_digits_demo(out_dir, seed=seed, progress=step, config=vision)
            else:
                from palimpsest.real_demo import SMOLLM2_METHODS, run_smollm2_demo
                from palimpsest.unlearn import METHODS

                chosen = tuple(m.strip() for m in methods.split(",")) if methods else SMOLLM2_METHODS
                unknown = sorted(set(chosen) - set(METHODS))
                if unknown:
                    raise BadInput(f"unknown methods {unknown}; choose from {', '.join(METHODS)} "
                                   "(oracle and sauce need the organism)")

                results = run_smollm2_demo(out_dir, methods=chosen, seed=seed, device=device, dtype=dtype,
                                           config=config, progress=step, figure_formats=formats,
                                           total_hint=lambda total: bar.update(task, total=total))
        for method, result in results.items():
            out.print(f"{method:>10}: {result.verdict}" + (" (collateral)" if result.collateral else ""))
        out.print(f"comparison page: {out_dir / 'index.html'}")
        if formats and model != "digits":
            from palimpsest.report.comparison import comparison_figure
            from palimpsest.report.figures import write_figures

            write_figures({"Comparison across methods": comparison_figure(results)}, out_dir / "figures", formats)
