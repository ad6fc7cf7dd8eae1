"""`palimpsest demo --model digits`: build the digits organism, make every post-model, audit each, compare."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from palimpsest.audit.registry import load_analysers
from palimpsest.audit.runner import AuditResult
from palimpsest.report.audit_report import write_audit
from palimpsest.vision.audit import audit_vision, vision_config
from palimpsest.vision.data import FORGET_CLASS, load_digits_data
from palimpsest.vision.organism import VisionModel, VisionPair, build_organism_models
from palimpsest.vision.train import accuracy
from palimpsest.vision.unlearn import METHODS, make_post_model

EXPECTED = {"oracle": "deleted", "suppress": "suppressed"}


def make_pairs(arch: str = "cnn", seed: int = 0, methods=METHODS, cache_dir=None) -> tuple[dict[str, VisionPair], dict]:
    """One VisionPair per method (pre, post, floor = an independently seeded oracle) and the build timings."""
    timings = {}
    start = time.perf_counter()
    organism = build_organism_models(arch, seed, cache_dir=cache_dir)
    timings["organism"] = round(time.perf_counter() - start, 3)
    data = load_digits_data()
    pre = organism["pre"].model
    pairs = {}
    for method in methods:
        start = time.perf_counter()
        if method == "oracle":
            post = organism["oracle"]
        else:
            model = make_post_model(method, pre, data, FORGET_CLASS, head=pre.head, sauce_site=pre.sites[-1],
                                    seed=seed)
            post = VisionModel(model, method, f"{organism['pre'].source} + unlearn:{method}")
        timings[f"unlearn:{method}"] = round(time.perf_counter() - start, 3)
        pairs[method] = VisionPair(organism["pre"], post, organism["floor"], arch=arch)
    return pairs, timings


def run_digits_demo(out_dir: Path, *, seed: int = 0, progress: Callable[[str], None] | None = None,
                    arch: str = "cnn", methods=METHODS, cache_dir=None, config=None) -> dict[str, AuditResult]:
    """Audit every post-model of the digits organism; writes DIR/<method>/{report.html,metrics.json}, DIR/index.html.

    `config`: the audit config (default: vision_config(seed=seed))."""
    from palimpsest.demo_driver import run_methods

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    say = progress or (lambda _msg: None)
    say(f"building the digits {arch} organism and {len(methods)} post-models")
    pairs, build_timings = make_pairs(arch, seed, methods, cache_dir)
    data = load_digits_data()
    pre_acc = accuracy(next(iter(pairs.values())).pre.model, data.test_x, data.test_y)
    config = config or vision_config(seed=seed)
    shared: dict = {}

    def audit_one(method: str) -> AuditResult:
        say(f"auditing {method}")
        start = time.perf_counter()
        result = audit_vision(pairs[method], data, config, shared=shared)
        result.timings["audit_total"] = round(time.perf_counter() - start, 3)
        result.timings["unlearn"] = build_timings[f"unlearn:{method}"]
        result.timings["organism"] = build_timings["organism"]
        return result

    notes = [f"Organism: digits {arch} (scikit-learn load_digits, {len(data.train_y)} train / {len(data.test_y)} test "
             f"images), pre-model test accuracy {pre_acc:.3f}; forget class {FORGET_CLASS}. The floor for calibration "
             "is an oracle retrained without the class with an independent seed.",
             f"Build timings (s): {build_timings}"]
    return run_methods(out_dir, tuple(pairs), audit_one, title=f"palimpsest demo: digits {arch}, forget class "
                       f"{FORGET_CLASS}", expected=EXPECTED, notes=notes,
                       write=lambda result, target: write_audit(result, target, analysers=load_analysers("image")),
                       progress=lambda message, done=0: say(message))
