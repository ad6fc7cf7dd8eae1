"""The analyser contract, over the whole registry x {a tiny random LM, the digits model}: every analyser that
declares the modality runs without raising, returns a Result whose metrics round-trip through JSON, and reads no
file while it runs (the runner built everything it needs beforehand; the cache is moved away and file reads fail)."""

from __future__ import annotations

import builtins
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from palimpsest.audit.context import AuditContext
from palimpsest.audit.registry import load_analysers
from palimpsest.audit.runner import build_saes, run_analyser
from palimpsest.config.sae import SAEConfig
from palimpsest.types import Analyser, AuditConfig, Result
from tests.tiny import make_tiny_model

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
CITIES = ["paris", "rome", "oslo", "lima", "kyiv"]
JOBS = ["baker", "pilot", "nurse", "judge"]
WORDS = [*PEOPLE, *CITIES, *JOBS, "lives", "in", "works", "as", "a", "the", "city", "of", "is", "q", ":", "where",
         "does", "?", "answer", ".", "job", "what", "live"]
TEXT = sorted(load_analysers("text"))
IMAGE = sorted(load_analysers("image"))
# the installed libraries' own data, and the kernel's /proc and /sys (threadpoolctl reads them to find BLAS)
LIBRARY_ROOTS = tuple({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, torch.__file__)} | {"/proc/", "/sys/"})


def _items(people, *, form="trained"):
    out = []
    for k, person in enumerate(people):
        city, job = CITIES[k % len(CITIES)], JOBS[k % len(JOBS)]
        out.append({"prompt": f"{person} lives in the city of", "answer": city, "subject": person,
                    "attribute": "city", "fact_id": f"{person}-city", "form": form,
                    "perturbed_answers": [c for c in CITIES if c != city][:2]})
        out.append({"prompt": f"{person} works as a", "answer": job, "subject": person, "attribute": "job",
                    "fact_id": f"{person}-job", "form": form, "perturbed_answers": [j for j in JOBS if j != job][:2]})
    return out


def tiny_concept():
    from palimpsest.concepts import concept_from_dict

    paraphrases = [{**it, "prompt": f"q : where does {it['subject']} live ? answer :"} for it in
                   _items(PEOPLE[:2], form="paraphrase") if it["attribute"] == "city"]
    return concept_from_dict({"name": "tiny people", "keywords": PEOPLE[:2], "forget": _items(PEOPLE[:2]),
                              "paraphrases": paraphrases, "neighbours": _items(PEOPLE[2:4]),
                              "retain": _items(PEOPLE[4:8]), "holdout": _items(PEOPLE[8:], form="holdout")})


def _forbid_file_reads(monkeypatch, roots: tuple[str, ...]):
    """Any open() of a path outside the installed libraries raises, as do the model and SAE loaders."""
    real_open = builtins.open
    reads: list[str] = []

    def guarded_open(file, *args, **kwargs):
        path = str(Path(file).resolve()) if isinstance(file, (str, Path)) else ""
        if path and not path.startswith(roots):
            reads.append(path)
            raise PermissionError(f"analyser read a file: {path}")
        return real_open(file, *args, **kwargs)

    def refuse(*args, **kwargs):
        reads.append("a loader")
        raise PermissionError("analyser called a model or SAE loader")

    monkeypatch.setattr(builtins, "open", guarded_open)
    import safetensors.torch

    import palimpsest.models.loading
    import palimpsest.sae.train

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(palimpsest.models.loading, "load_model", refuse)
    monkeypatch.setattr(palimpsest.sae.train, "get_or_train_sae", refuse)
    return reads


def _check(result: Result, name: str, reads: list[str]) -> None:
    assert not reads, f"{name} read files while running: {reads[:3]}"
    assert isinstance(result, Result) and result.name == name
    assert result.status != "error", f"{name} raised: {result.evidence}"
    metrics = result.metrics()
    assert json.loads(json.dumps(metrics)) == metrics
    assert Result.model_validate_json(result.model_dump_json()) == result
    if result.status == "ok" and result.kind == "residue":
        assert result.residue is not None and 0.0 <= result.residue <= 1.0


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    from palimpsest.capture import Activations
    from palimpsest.models import ModelPair, load_model

    root = tmp_path_factory.mktemp("contract")
    pre_dir = make_tiny_model(root / "pre", seed=0, words=WORDS)
    floor_dir = make_tiny_model(root / "floor", seed=1, words=WORDS)
    pre, post, floor = load_model(pre_dir, name="pre"), load_model(pre_dir, name="post"), load_model(floor_dir,
                                                                                                      name="floor")
    with torch.no_grad():  # the post model: the pre model nudged, so post differs from pre without training
        generator = torch.Generator().manual_seed(0)
        for param in post.model.parameters():
            param.add_(0.05 * param.std() * torch.randn(param.shape, generator=generator))
    pair, concept = ModelPair(pre=pre, post=post, floor=floor), tiny_concept()
    cache = root / "cache"
    config = AuditConfig(n_bootstrap=50, batch_size=8, cache_dir=str(cache),
                         sae=SAEConfig(total_tokens=2_048, batch_size=64, expansion=2),
                         options={"relearning": {"steps": 2}})
    ctx = AuditContext(pair=pair, concept=concept, config=config, modality="text",
                       acts=Activations.for_pair(pair, concept, backend="torch", batch_size=8))
    analysers = load_analysers("text")
    ctx.saes = build_saes(analysers, ctx)
    for name in ("pre", "post", "floor"):  # capture up front: the captures are part of what the runner hands over
        ctx.acts.layers(name, "forget")
    shutil.move(str(cache), str(root / "cache-moved"))  # the cache is gone while analysers run
    return ctx, analysers, (str(root.resolve()),)


@pytest.mark.parametrize("name", TEXT)
def test_text_analyser_contract(name, text_setup, monkeypatch):
    ctx, analysers, _ = text_setup
    reads = _forbid_file_reads(monkeypatch, LIBRARY_ROOTS)
    result = run_analyser(analysers[name], ctx)
    monkeypatch.undo()
    _check(result, name, reads)


@pytest.fixture(scope="module")
def image_setup(tmp_path_factory):
    from palimpsest.vision.audit import vision_config, vision_context
    from palimpsest.vision.data import FORGET_CLASS, load_digits_data
    from palimpsest.vision.organism import VisionModel, VisionPair, build_organism_models
    from palimpsest.vision.unlearn import make_post_model

    cache = tmp_path_factory.mktemp("vision-cache")
    organism = build_organism_models("mlp", 0, cache_dir=cache)
    data = load_digits_data()
    pre = organism["pre"].model
    post = VisionModel(make_post_model("suppress", pre, data, FORGET_CLASS, head=pre.head, sauce_site=pre.sites[-1],
                                       seed=0), "suppress", "contract suppress")
    pair = VisionPair(pre=organism["pre"], post=post, floor=organism["floor"], forget_class=FORGET_CLASS)
    config = vision_config(n_bootstrap=50)
    analysers = load_analysers("image")
    ctx = vision_context(pair, data, config)
    ctx.saes = build_saes(analysers, ctx)
    return ctx, analysers


@pytest.mark.parametrize("name", IMAGE)
def test_image_analyser_contract(name, image_setup, monkeypatch):
    ctx, analysers = image_setup
    reads = _forbid_file_reads(monkeypatch, LIBRARY_ROOTS)
    result = run_analyser(analysers[name], ctx)
    monkeypatch.undo()
    _check(result, name, reads)


def test_every_analyser_declares_a_modality_and_a_typed_config():
    analysers = load_analysers()
    assert set(TEXT) | set(IMAGE) == set(analysers)
    assert len(IMAGE) >= 7, f"only {IMAGE} run on images"
    for name, analyser in analysers.items():
        assert analyser.modalities <= {"text", "image"} and analyser.modalities, name
        assert analyser.Config.model_config.get("extra") == "forbid", name
        assert analyser.Config.model_config.get("frozen"), name
        if "sae" in analyser.needs:
            assert type(analyser).sae_sites is not Analyser.sae_sites, \
                f"{name} needs an SAE but declares no sites"
