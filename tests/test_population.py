"""Properties that hold on most organism builds, asserted over several worlds rather than on one.

Each world (its own seed: other people, facts and initial weights) stands for another build: what a machine with
other kernels would train. A property true of the method, not of one draw, must hold in most of them. The values
measured here (portable kernels; every kernel path on this machine builds the same worlds) are in the comments.
"""

from __future__ import annotations

import pytest

WORLDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def worlds():
    from palimpsest.organism import cache_root
    from palimpsest.validate.cases import Case
    from palimpsest.validate.runner import _setup, build_setups

    cache = str(cache_root(None))
    build_setups([Case(w, 0, "oracle") for w in WORLDS], cache, 2, lambda *args, **kwargs: None)
    return {w: _setup(w, 0, cache) for w in WORLDS}


@pytest.fixture(scope="module")
def references(worlds):
    from palimpsest.models import load_model

    return {w: (load_model(s.pre_dir, name="pre"), load_model(s.floor_dir, name="floor")) for w, s in worlds.items()}


def _post(method: str, setup):
    from palimpsest.demo import organism_post_dir
    from palimpsest.models import load_model

    return load_model(organism_post_dir(method, setup), name="post")


def _count(values: dict[int, float], ok) -> int:
    return sum(bool(ok(v)) for v in values.values())


def test_methods_generalise_retain_in_most_worlds(worlds, references, record_property):
    """The stopping rule reaches each method's forget target in every world, and the concept's retain people (never
    trained on) keep at least half their accuracy in at least 3 of 4 worlds. Measured (worlds 0-3, portable
    kernels): graddiff 0.84 / 0.68 / 0.76 / 0.84, npo 0.80 / 0.68 / 0.80 / 0.84, rmu 0.64 / 0.64 / 0.88 / 0.92,
    suppress 0.92 / 0.88 / 0.84 / 0.92: every world clears 0.5, the closest by 0.14."""
    from palimpsest.organism.evaluate import accuracy
    from palimpsest.unlearn import METHODS

    for method in ("graddiff", "npo", "rmu", "suppress"):
        retain = {}
        for w, setup in worlds.items():
            post = _post(method, setup)
            stop = _stop_of(setup, method)
            assert stop["reached_target"], (method, w, stop)
            assert accuracy(post.model, post.tokenizer, setup.concept.forget) <= METHODS[method].config_cls().stop_forget_acc
            retain[w] = accuracy(post.model, post.tokenizer, setup.concept.retain)
        record_property(f"{method}_retain_by_world", {w: round(v, 3) for w, v in retain.items()})
        assert _count(retain, lambda v: v >= 0.5) >= 3, (method, retain)


def _stop_of(setup, method: str) -> dict:
    import json

    from palimpsest.demo import organism_post_dir

    return json.loads((organism_post_dir(method, setup) / "unlearn.json").read_text())["unlearn"]["stop"]


def test_direction_ablation_reads_the_suppress_edit_in_most_worlds(worlds, references, record_property):
    """The head-only edit lives in a few directions of lm_head: projecting them out restores more of the suppress
    control's answers than of the oracle's, by at least 0.1, in at least 3 of 4 worlds, and nothing significant of the
    oracle's in any. Measured (worlds 0-3, portable kernels): suppress minus oracle 0.27 / 0.18 / 0.38 / 0.24 (bound
    0.1, closest margin 0.08), oracle lower bounds 0.0 in all four (bound 0.2); on the other-kernel builds (default
    kernels, portability off) 0.50 / 0.30 / 0.16 / 0.23 and 0.0 throughout; the suppress control's lower bound
    reaches suppressed_min_residue (0.35) in few worlds, so that is not asserted."""
    from palimpsest.audit.runner import run_one
    from palimpsest.models import ModelPair, load_model
    from palimpsest.types import AuditConfig

    config = AuditConfig(n_bootstrap=300)

    def run(pair, concept):
        return run_one("direction_ablation", pair, concept, config=config)

    gain, oracle_low = {}, {}
    for w, setup in worlds.items():
        pre, floor = references[w]
        result = run(ModelPair(pre=pre, post=_post("suppress", setup), floor=floor), setup.concept)
        oracle = run(ModelPair(pre=pre, post=load_model(setup.oracle_dir, name="post"), floor=floor), setup.concept)
        gain[w] = (result.residue or 0.0) - (oracle.residue or 0.0)
        oracle_low[w] = oracle.ci[0] if oracle.ci else 0.0
    record_property("suppress_minus_oracle_by_world", {w: round(v, 3) for w, v in gain.items()})
    record_property("oracle_ci_low_by_world", {w: round(v, 3) for w, v in oracle_low.items()})
    assert _count(gain, lambda v: v >= 0.1) >= 3, gain
    assert _count(oracle_low, lambda v: v <= 0.2) == len(WORLDS), oracle_low
