"""Unlearning methods on the organism: each lowers forget accuracy, keeps retain, and never edits its input."""

from __future__ import annotations

import hashlib

import pytest
import torch

from palimpsest.organism import ORGANISM_FORGET_DEFAULT, load_world, organism_concept
from palimpsest.organism.concept import retain_training_items
from palimpsest.organism.evaluate import accuracy
from palimpsest.unlearn import METHODS, UnlearnError, save_model, unlearn


@pytest.fixture(scope="session")
def pre(organism_dir):
    from palimpsest.models.loading import load_model

    return load_model(organism_dir)


@pytest.fixture(scope="session")
def setup():
    world = load_world(0)
    concept = organism_concept(world, ORGANISM_FORGET_DEFAULT)
    return world, concept, retain_training_items(world, concept, max_items=256)


def _state_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def posts(organism_setup):
    """Each method's cached post-model of the seed-0 organism, built with portable kernels (palimpsest.kernels), so
    the numbers below are the same on every kernel path; meta["unlearn"] is its unlearn.json."""
    import json

    from palimpsest.demo import organism_post_dir
    from palimpsest.models.loading import load_model

    out = {}
    for method in METHODS:
        folder = organism_post_dir(method, organism_setup)
        loaded = load_model(folder)
        loaded.meta.update(json.loads((folder / "unlearn.json").read_text()))
        out[method] = loaded
    return out


def test_unlearn_never_edits_its_input(pre, setup):
    _, concept, retain = setup
    before = _state_hash(pre.model)
    post = unlearn("suppress", pre, concept.forget, retain, seed=0)
    assert _state_hash(pre.model) == before, "an unlearning method modified its input model"
    assert post.model is not pre.model and _state_hash(post.model) != before


# generalisation to the concept's retain people (never trained on by the method), measured on the seed-0 organism
# (portable kernels, so every kernel path here): ga 0.48, graddiff 0.84, npo 0.80, rmu 0.64, suppress 0.92; on the
# other organism default kernels build without portability (matrix leg 4, before the exact-fraction fix): ga 0.48,
# graddiff 0.72, npo 0.76, rmu 0.88, suppress 0.88.
# On one build only "not destroyed" is asserted (0.3: smallest margin ga, 0.18); that the methods keep at least half
# of it is a property of most builds, asserted over four worlds in tests/test_population.py.
MIN_RETAIN_ONE_BUILD = 0.3


@pytest.mark.parametrize("method", list(METHODS))
def test_method_stops_by_its_rule_forgets_and_retains(method, pre, setup, posts, record_property):
    _, concept, retain_train = setup
    post = posts[method]
    stop = post.meta["unlearn"]["stop"]
    cfg = METHODS[method].config_cls()
    assert post.model is not pre.model
    assert accuracy(pre.model, pre.tokenizer, concept.forget) >= 0.85
    forget_post = accuracy(post.model, post.tokenizer, concept.forget)
    retain_post = accuracy(post.model, post.tokenizer, concept.retain)
    record_property(f"{method}_forget_acc", round(forget_post, 4))
    record_property(f"{method}_retain_acc", round(retain_post, 4))
    record_property(f"{method}_stop", f"{stop['reason']}@{stop['step']}")
    # the stopping rule: the reported point is the model, and it reached the forget target
    assert stop["reached_target"] and forget_post == pytest.approx(stop["forget_acc"], abs=1e-3), stop
    assert forget_post <= cfg.stop_forget_acc
    if cfg.retain_tolerance is not None and stop["reason"] == "target":  # ... within the retain tolerance
        assert stop["within_retain_tolerance"], stop
    assert retain_post >= MIN_RETAIN_ONE_BUILD
    assert post.meta["unlearn"]["method"] == method


def test_suppress_changes_only_the_output_layer(pre, posts):
    post = posts["suppress"].model.state_dict()
    changed = [name for name, tensor in pre.model.state_dict().items() if not torch.equal(tensor, post[name])]
    assert changed == ["lm_head.weight"]


def test_save_model_roundtrip(pre, posts, tmp_path, setup):
    from palimpsest.models.loading import load_model

    _, concept, _ = setup
    out = save_model(posts["suppress"], tmp_path / "post")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    again = load_model(out)
    assert _state_hash(again.model) == _state_hash(posts["suppress"].model)
    assert accuracy(again.model, again.tokenizer, concept.forget) <= 0.25


def test_bad_input_is_a_clear_error(pre, setup):
    _, concept, retain = setup
    with pytest.raises(UnlearnError, match="unknown unlearning method"):
        unlearn("nope", pre, concept.forget, retain)
    with pytest.raises(UnlearnError, match="retain"):
        unlearn("graddiff", pre, concept.forget, [])
    with pytest.raises(UnlearnError, match="config must be"):
        unlearn("ga", pre, concept.forget, retain, config=METHODS["npo"].config_cls())
