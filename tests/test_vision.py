"""Class unlearning in the digits classifiers, audited through nnsight with the shared verdict and report."""

from __future__ import annotations

import json
import os

import pytest
import torch

from palimpsest.types import REGISTRY
from palimpsest.vision import (
    FORGET_CLASS,
    VISION_REGISTRY,
    VisionModel,
    VisionPair,
    audit_vision,
    build_organism_models,
    capture_modules,
    load_digits_data,
    load_vision_analysers,
    logits_with_edits,
    make_post_model,
    vision_config,
)
from palimpsest.vision.models import get_module
from palimpsest.vision.train import accuracy

# measured on the default organism (seed 0): CNN 0.978, MLP 0.976 test accuracy
MIN_TEST_ACC = {"cnn": 0.95, "mlp": 0.94}


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


def test_nnsight_capture_equals_forward_hook(cnn, data):
    model = cnn["pre"].model
    x = data.test_x[:40]
    got = capture_modules(model, x, ["classifier.1", "features.1", "features.4"], backend="nnsight")
    for path in got:
        store = {}
        handle = get_module(model, path).register_forward_hook(lambda _m, _i, out, store=store: store.setdefault("out", out))
        try:
            with torch.inference_mode():
                model(x)
        finally:
            handle.remove()
        assert got[path].shape == store["out"].shape
        assert torch.allclose(got[path], store["out"])
    edit = {"features.4": lambda h: h * 0.5}
    assert torch.allclose(logits_with_edits(model, x, edit, "nnsight"), logits_with_edits(model, x, edit, "torch"))
    with pytest.raises(ValueError, match="no module"):
        capture_modules(model, x, ["features.9"])


def test_vision_analysers_stay_out_of_the_language_registry():
    analysers = load_vision_analysers()
    assert {"behaviour", "probes", "cka", "sae_features", "sae_restoration", "shift_vectors",
            "relearning"} <= set(analysers)
    assert all(REGISTRY.get(name) is not a for name, a in VISION_REGISTRY.items())


@pytest.mark.parametrize("method,expected", [("oracle", "deleted"), ("suppress", "suppressed")])
def test_verdicts_on_known_ground_truth(method, expected, cnn, data, tmp_path):
    pre = cnn["pre"].model
    post = cnn["oracle"] if method == "oracle" else VisionModel(
        make_post_model(method, pre, data, FORGET_CLASS, head=pre.head, sauce_site=pre.sites[-1]), method, method)
    pair = VisionPair(cnn["pre"], post, cnn["floor"])
    result = audit_vision(pair, data, vision_config(n_bootstrap=200), shared=_SHARED)
    assert result.verdict == expected, result.reasons
    behaviour = result.behaviour.summary
    assert behaviour["forget_acc_pre"] > 0.9 and behaviour["forget_acc_post"] <= 0.05
    assert not result.collateral
    from palimpsest.report.audit_report import write_audit

    write_audit(result, tmp_path / method)
    metrics = json.loads((tmp_path / method / "metrics.json").read_text())
    assert metrics["verdict"] == expected
    assert {"forget_acc_pre", "forget_acc_post", "retain_acc_pre", "retain_acc_post",
            "forget_acc_floor"} <= set(metrics["behaviour"])
    assert metrics["analyses"]["probes"]["status"] == "ok"


# pre-model work (SAEs, probes, the floor's relearning) shared by both verdict tests, as the demo does
_SHARED: dict = {}
