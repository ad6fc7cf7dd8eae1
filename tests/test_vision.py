"""Class unlearning in the digits classifiers, audited by the shared analysers (modality "image") through nnsight."""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch

from palimpsest.capture.sites import layer_of
from palimpsest.vision import (
    FORGET_CLASS,
    VisionModel,
    VisionPair,
    audit_vision,
    build_organism_models,
    canonical_sites,
    capture_modules,
    digits_concept,
    item_rows,
    load_digits_data,
    logits_with_edits,
    make_post_model,
    site_map,
    vision_config,
    vision_context,
)
from palimpsest.vision import measures as vision_measures
from palimpsest.vision.models import get_module
from palimpsest.vision.train import accuracy

# measured on the default organism (seed 0): CNN 0.978, MLP 0.976 test accuracy
MIN_TEST_ACC = {"cnn": 0.95, "mlp": 0.94}
IMAGE_ANALYSERS = ("behaviour", "probes", "cka", "sae_features", "sae_restoration", "shift_vectors", "relearning")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return os.environ.get("PALIMPSEST_CACHE") or str(tmp_path_factory.mktemp("vision-cache"))


@pytest.fixture(scope="module")
def data():
    return load_digits_data()


@pytest.fixture(scope="module")
def cnn(cache_dir):
    torch.set_num_threads(1)
    return build_organism_models("cnn", 0, cache_dir=cache_dir)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_organism_reaches_stated_accuracy_and_oracles_never_predict_the_class(arch, cache_dir, data):
    models = build_organism_models(arch, 0, cache_dir=cache_dir)
    assert accuracy(models["pre"].model, data.test_x, data.test_y) >= MIN_TEST_ACC[arch]
    forget = data.test_y == FORGET_CLASS
    for name in ("oracle", "floor"):
        assert accuracy(models[name].model, data.test_x[forget], data.test_y[forget]) == 0.0
        assert accuracy(models[name].model, data.test_x[~forget], data.test_y[~forget]) >= MIN_TEST_ACC[arch]
    # the cache hands back the same weights
    again = build_organism_models(arch, 0, cache_dir=cache_dir)
    for a, b in zip(models["pre"].model.state_dict().values(), again["pre"].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_canonical_site_names_read_the_same_modules_as_their_paths(cnn, data):
    model = cnn["pre"].model
    assert site_map(model) == {"blocks.0.hook_resid_post": "features.1", "blocks.1.hook_resid_post": "features.4",
                               "blocks.2.hook_resid_post": "classifier.1"}
    assert [layer_of(s) for s in canonical_sites(model)] == [0, 1, 2]  # the LM code's layer reading works on them
    x = data.test_x[:40]
    by_path = capture_modules(model, x, ["classifier.1", "features.1", "features.4"], backend="nnsight")
    for backend in ("nnsight", "torch"):
        by_name = capture_modules(model, x, canonical_sites(model), backend=backend)
        for site, path in site_map(model).items():
            store = {}
            handle = get_module(model, path).register_forward_hook(
                lambda _m, _i, out, store=store: store.setdefault("out", out))
            try:
                with torch.inference_mode():
                    model(x)
            finally:
                handle.remove()
            assert by_name[site].shape == store["out"].shape
            assert torch.allclose(by_name[site], store["out"]) and torch.allclose(by_path[path], store["out"])
    for site in ("blocks.1.hook_resid_post", "features.4"):  # an edit by name or by path, nnsight or torch
        edit = {site: lambda h: h * 0.5}
        assert torch.allclose(logits_with_edits(model, x, edit, "nnsight"), logits_with_edits(model, x, edit, "torch"))
    with pytest.raises(ValueError, match="no module"):
        capture_modules(model, x, ["features.9"])
    with pytest.raises(ValueError, match="does not exist"):
        capture_modules(model, x, ["blocks.7.hook_resid_post"])
    # the canonical names are a view: the model's own state_dict keys (the organism cache) are unchanged
    assert not any(k.startswith("blocks") for k in model.state_dict())


def test_the_concept_items_are_the_forget_class_test_images(cnn, data):
    concept = digits_concept(data, FORGET_CLASS)
    is_forget = data.test_y == FORGET_CLASS
    assert len(concept.forget) == int(is_forget.sum())
    assert torch.equal(item_rows(data, concept.forget), is_forget.nonzero().flatten())
    assert {int(data.test_y[r]) for r in item_rows(data, concept.retain)} == set(range(10)) - {FORGET_CLASS}
    pair = VisionPair(cnn["pre"], cnn["oracle"], cnn["floor"])
    ctx = vision_context(pair, data, vision_config())
    assert ctx.modality == "image" and ctx.acts.sites == canonical_sites(pair.pre.model)
    site = ctx.acts.sites[1]
    assert torch.equal(ctx.acts.get("post", site, "forget"), ctx.acts.get("post", site, "test")[is_forget])
    assert torch.equal(ctx.acts.labels("retain"), data.test_y[item_rows(data, concept.retain)])
    assert [t.shape[1] for t in ctx.acts.layers("pre", "forget")] == [1024, 512, 64]


def test_no_vision_only_analyser_stack_remains():
    for gone in ("palimpsest.vision.registry", "palimpsest.vision.context", "palimpsest.vision.analysers.probes",
                 "palimpsest.vision.analysers.common"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(gone)
    assert set(vision_measures.MEASURES) == set(IMAGE_ANALYSERS)


def test_vision_config_carries_the_vision_defaults():
    config = vision_config(seed=3)
    assert (config.backend, config.n_bootstrap) == ("nnsight", 500)
    assert (config.sae.expansion, config.sae.k, config.sae.epochs, config.sae.n_experts, config.sae.seed) == \
        (2, 8, 15, 8, 3)
    assert config.min_residue_analyses == len(IMAGE_ANALYSERS) - 1  # every image residue analyser must conclude
    assert config.opts("probes").C == 1.0 and config.opts("relearning").steps == 8
    assert tuple(config.opts("sae_restoration").alphas) == (0.25, 0.5, 1.0, 2.0)
    assert vision_config(options={"relearning": {"steps": 2}}).opts("relearning").steps == 2


@pytest.mark.parametrize("method,expected", [("oracle", "deleted"), ("suppress", "suppressed")])
def test_verdicts_on_known_ground_truth(method, expected, cnn, data, tmp_path):
    pre = cnn["pre"].model
    post = cnn["oracle"] if method == "oracle" else VisionModel(
        make_post_model(method, pre, data, FORGET_CLASS, head=pre.head, sauce_site=pre.sites[-1]), method, method)
    pair = VisionPair(cnn["pre"], post, cnn["floor"])
    result = audit_vision(pair, data, vision_config(n_bootstrap=200), shared=_SHARED)
    assert result.verdict == expected, result.reasons
    assert set(result.analyses) == set(IMAGE_ANALYSERS) - {"behaviour"}
    assert all(r.status != "error" for r in result.analyses.values()), {n: r.evidence for n, r in
                                                                        result.analyses.items()}
    behaviour = result.behaviour.summary
    assert behaviour["forget_acc_pre"] > 0.9 and behaviour["forget_acc_post"] <= 0.05
    assert not result.collateral
    analyses = result.analyses
    # measured here (seed-0 CNN, 200 draws; the same values as the vision-only analysers gave before the shared
    # design): oracle probes 0.0, cka 0.169 [0.048, 0.282], sae_features 0.176 [0.159, 0.193], restoration 0.0;
    # suppress probes / cka / sae_features 1.0, relearning 0.519 [0.472, 0.564]. Bounds are the verdict's own.
    config = vision_config()
    if method == "oracle":
        assert all(r.ci[0] <= config.deleted_max_residue for r in analyses.values() if r.status == "ok")
        assert analyses["probes"].residue < 0.1
    else:
        assert all(analyses[n].residue > 0.9 for n in ("probes", "cka", "sae_features"))
        # suppress changes only the head: every site is unchanged, so restoring there cannot act
        assert analyses["shift_vectors"].status == analyses["sae_restoration"].status == "inconclusive"
    assert analyses["sae_restoration"].summary.get("best_site", "blocks.1.hook_resid_post").startswith("blocks.")
    from palimpsest.report.audit_report import write_audit

    write_audit(result, tmp_path / method)
    metrics = json.loads((tmp_path / method / "metrics.json").read_text())
    assert metrics["verdict"] == expected
    assert {"forget_acc_pre", "forget_acc_post", "retain_acc_pre", "retain_acc_post",
            "forget_acc_floor"} <= set(metrics["behaviour"])
    assert metrics["analyses"]["probes"]["status"] == "ok"


# pre-model work (SAEs, probes, the floor's relearning) shared by both verdict tests, as the demo does
_SHARED: dict = {}
