"""depth, memorization, mia, pca_shift: unit tests on a tiny random model, ground truth on the organism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from palimpsest.behavioural.depth import UnlearningDepth, bootstrap_depth_capped, depth_capped_score
from palimpsest.behavioural.memorization import Memorization, exact_memorization, extraction_strength
from palimpsest.behavioural.mia import MembershipInference, MIAConfig, pairwise_wins
from palimpsest.behavioural.pca_shift import PCAShift, weight_changes
from palimpsest.concepts import Item
from palimpsest.types import AuditConfig, Result

CONFIG = AuditConfig(n_bootstrap=200)
ANALYSERS = (UnlearningDepth(), Memorization(), MembershipInference(), PCAShift())


def run(analyser, pair, concept, acts=None, config=CONFIG):
    """The analyser's Result on (pair, concept), as the runner calls it (its typed options in the context)."""
    from palimpsest.audit.context import AuditContext

    opts = config.options.get(analyser.name) or analyser.Config()
    return analyser.run(AuditContext(pair=pair, concept=concept, acts=acts, config=config, opts=opts))


# ------------------------------------------------------------------ pure functions


def test_extraction_strength_counts_the_predicted_suffix():
    assert extraction_strength(np.array([True, True, True])) == 1.0
    assert extraction_strength(np.array([False])) == 0.0
    assert extraction_strength(np.array([False, True, True, True])) == pytest.approx(0.75)
    # a miss late in the answer breaks the suffix even when earlier tokens were right
    assert extraction_strength(np.array([True, True, False, True])) == pytest.approx(0.25)
    assert exact_memorization(np.array([True, True, False, True])) == pytest.approx(0.75)


def test_depth_capped_is_one_ratio_of_averaged_drops():
    """palimpsest's variant (not UDS; see test_uds_reference.py): one weighted ratio over layer vectors."""
    d1 = np.array([0.01, 1.0, 2.0, 3.0])  # layer 0 is below min_delta and does not count
    assert depth_capped_score(d1, d1, 0.05) == pytest.approx(1.0)
    assert depth_capped_score(d1, np.zeros(4), 0.05) == pytest.approx(0.0)
    assert depth_capped_score(d1, np.array([5.0, 0.5, 4.0, -1.0]), 0.05) == pytest.approx((0.5 + 2.0 + 0.0) / 6.0)
    assert depth_capped_score(np.full(4, 0.01), np.ones(4), 0.05) is None


def test_depth_capped_bootstrap_matches_the_hand_written_percentile_interval():
    """stats.bootstrap_ci draws the same resamples the former vectorised depth bootstrap drew: same interval."""
    rng = np.random.default_rng(3)
    d1, d2 = rng.gamma(2.0, 0.5, (9, 4)), rng.gamma(1.0, 0.5, (9, 4))
    idx = np.random.default_rng(7).integers(0, 9, (300, 9))
    scores = [depth_capped_score(a, b, 0.05) for a, b in zip(d1[idx].mean(1), d2[idx].mean(1), strict=True)]
    expected = np.quantile([s for s in scores if s is not None], [0.025, 0.975])
    assert bootstrap_depth_capped(d1, d2, 0.05, n_bootstrap=300, ci_level=0.95, seed=7) == pytest.approx(
        tuple(expected))


def test_independent_bootstrap_drops_undefined_replicates_and_resamples_two_samples():
    from palimpsest.stats import bootstrap_ci_independent

    assert bootstrap_ci_independent(lambda idx: None, (5,), n_bootstrap=20) is None
    sizes = []
    lo, hi = bootstrap_ci_independent(lambda a, b: sizes.append((len(a), len(b))) or float(a.mean() - b.mean()),
                                      (6, 4), n_bootstrap=50, seed=1)
    assert lo <= hi and set(sizes) == {(6, 4)}


def test_mia_options_are_typed():
    from pydantic import ValidationError

    assert MIAConfig().attack == "loss" and MIAConfig(attack="zlib").attack == "zlib"
    with pytest.raises(ValidationError):
        MIAConfig(attack="nope")
    with pytest.raises(ValidationError):
        MIAConfig(kk=0.1)


def test_pairwise_wins_is_the_sklearn_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1, 1, 30).round(1), rng.normal(0, 1, 20).round(1)  # rounding makes ties
    expected = roc_auc_score(np.r_[np.ones(30), np.zeros(20)], np.r_[members, nonmembers])
    assert pairwise_wins(members, nonmembers).mean() == pytest.approx(expected)


# ------------------------------------------------------------------ tiny random model: the contract


def _teach(loaded, items, steps: int = 60) -> None:
    """Fine-tune a tiny random model on the items' full text until it knows them (a toy 'pre' model)."""
    from palimpsest.capture import encode

    batch = encode(loaded.tokenizer, [it.prompt for it in items], [it.answer for it in items])
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    torch.manual_seed(0)
    opt = torch.optim.Adam(loaded.model.parameters(), lr=1e-2)
    loaded.model.train()
    for _ in range(steps):
        loss = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    loaded.model.eval()


@pytest.fixture(scope="module")
def tiny_setup(tiny_dir, tiny_dir_other):
    from palimpsest.capture import score_answers
    from palimpsest.concepts import ConceptSpec, Item
    from palimpsest.models import ModelPair, load_model

    def item(prompt, answer, wrong=(), subject=None):
        return Item(prompt=prompt, answer=answer, subject=subject, perturbed_answers=wrong)

    forget = [item("alice lives in", "paris", ("rome",), "alice"), item("bob lives in", "oslo", ("rome",), "bob"),
              item("alice works as a", "pilot", ("baker",), "alice"), item("bob works as a", "baker", ("pilot",), "bob"),
              item("the city of alice is", "paris", ("oslo", "rome"), "alice"),
              item("q : where does bob live ? answer :", "oslo", ("paris",), "bob")]
    retain = [item("carol lives in", "rome", ("paris",), "carol"), item("carol works as a", "baker", ("pilot",), "carol")]
    holdout = [item("the city of carol is", "oslo"), item("q : where does alice live ? answer :", "rome"),
               item("the city of bob is", "rome"), item("q : where does carol live ? answer :", "paris")]
    concept = ConceptSpec(name="tiny", forget=forget, retain=retain, holdout=holdout)
    pre = load_model(tiny_dir, name="pre")
    _teach(pre, forget + retain)
    assert score_answers(pre.model, pre.tokenizer, forget).accuracy == 1.0
    post = load_model(tiny_dir_other, name="post")
    floor = load_model(tiny_dir_other, name="floor")
    return concept, ModelPair(pre, post, floor), ModelPair(pre, post)


@pytest.mark.parametrize("analyser", ANALYSERS, ids=lambda a: a.name)
def test_analysers_return_serialisable_results_and_leave_models_untouched(analyser, tiny_setup):
    from palimpsest.capture import Activations, encode

    concept, pair, pair_no_floor = tiny_setup
    batch = encode(pair.pre.tokenizer, ["alice lives in"])
    before = pair.pre.model(input_ids=batch.input_ids).logits.detach().clone()
    for p in (pair, pair_no_floor):
        result = run(analyser, p, concept, Activations.for_pair(p, concept))
        assert result.name == analyser.name
        assert result.status in ("ok", "inconclusive", "skipped")  # never "error": the analyser did not raise
        assert result.residue is None or 0.0 <= result.residue <= 1.0
        assert Result.model_validate_json(result.model_dump_json()) == result
        assert result.figures, "every analyser draws at least one figure"
        result.metrics()
    after = pair.pre.model(input_ids=batch.input_ids).logits.detach()
    assert torch.equal(before, after), "hooks must be removed"


def test_depth_without_a_floor_or_holdout_says_what_it_needs(tiny_setup):
    concept, _, pair_no_floor = tiny_setup
    config = AuditConfig(n_bootstrap=50, options={"depth": {"holdout_floor": False}})
    result = run(UnlearningDepth(), pair_no_floor, concept, config=config)
    assert result.status == "inconclusive" and result.residue is None
    assert "To make it conclusive: pass --floor MODEL" in result.evidence
    assert len(result.tables["per_layer"]) == pair_no_floor.pre.n_layers
    few = concept.model_copy(update={"holdout": concept.holdout[:3]})  # < min_holdout_items=4
    result = run(UnlearningDepth(), pair_no_floor, few)
    assert result.status == "inconclusive" and "3 holdout items" in result.evidence


def test_depth_without_a_floor_reads_s1_from_never_known_holdout_facts(tiny_setup):
    from palimpsest.models import ModelPair

    concept, pair, _ = tiny_setup
    unchanged = run(UnlearningDepth(), ModelPair(pair.pre, pair.pre), concept, config=CONFIG)
    assert unchanged.summary["s1_source"] == "holdout" and "never-known holdout" in unchanged.floor_source
    assert unchanged.status == "ok" and unchanged.residue == pytest.approx(1.0)  # post == pre: S2 drops nothing
    assert unchanged.summary["uds"] == pytest.approx(0.0, abs=1e-6)
    moved = run(UnlearningDepth(), ModelPair(pair.pre, pair.post), concept, config=CONFIG)
    assert moved.status == "ok" and moved.residue < unchanged.residue  # an unrelated model's states remove more


def test_holdout_patch_with_the_items_own_prompts_changes_nothing(tiny_setup):
    from palimpsest.behavioural.depth import counterfactual_items, holdout_patching_drops

    concept, pair, _ = tiny_setup
    items = list(concept.forget)
    # the items as their own holdout: each source is the item itself (pool in turn), so every patch is a no-op
    assert [c.prompt for c in counterfactual_items(items, items)] == [it.prompt for it in items]
    base, patched = holdout_patching_drops(pair.pre, items, items, batch_size=4)
    np.testing.assert_allclose(patched, np.repeat(base[:, None], patched.shape[1], 1), atol=1e-5)
    # a real holdout: the source prompt is a holdout prompt, the answer the forget item's
    cf = counterfactual_items(items, list(concept.holdout))
    assert [c.answer for c in cf] == [it.answer for it in items]
    assert {c.prompt for c in cf} <= {h.prompt for h in concept.holdout}
    same_attribute = counterfactual_items(
        [Item(prompt="x is", answer="a", attribute="job")],
        [Item(prompt="h1 is", answer="b", attribute="city"), Item(prompt="h2 is", answer="c", attribute="job")])
    assert same_attribute[0].prompt == "h2 is"


def test_organism_depth_without_a_floor_tells_oracle_from_suppress(organism_pair_suppress, organism_pair_oracle,
                                                                   organism_concept):
    from palimpsest.models import ModelPair

    results = {name: run(UnlearningDepth(), ModelPair(p.pre, p.post), organism_concept, config=CONFIG)
               for name, p in (("suppress", organism_pair_suppress), ("oracle", organism_pair_oracle))}
    assert all(r.summary["s1_source"] == "holdout" for r in results.values())
    # measured (seed 0, native kernels): suppress 1.00, oracle 0.06 (bounds: margin 0.1 and 0.24)
    assert results["suppress"].residue > 0.9, results["suppress"].residue
    assert results["oracle"].residue < 0.3, results["oracle"].residue


def test_depth_of_a_model_against_itself_is_one_and_of_pre_is_zero(tiny_setup):
    from palimpsest.models import ModelPair

    concept, pair, _ = tiny_setup
    config = CONFIG
    same = run(UnlearningDepth(), ModelPair(pair.pre, pair.floor, pair.floor), concept, config=config)
    unchanged = run(UnlearningDepth(), ModelPair(pair.pre, pair.pre, pair.floor), concept, config=config)
    assert same.status == "ok" and same.summary["depth"] == pytest.approx(1.0)
    assert unchanged.status == "ok" and unchanged.summary["depth"] == pytest.approx(0.0, abs=1e-6)
    assert unchanged.residue == pytest.approx(1.0)


def test_weight_change_sees_exactly_the_edited_tensor(tiny_dir):
    from palimpsest.models import load_model

    pre, post = load_model(tiny_dir), load_model(tiny_dir)
    with torch.no_grad():
        post.model.lm_head.weight.mul_(1.1)
    rows = {r["tensor"]: r["rel_change"] for r in weight_changes(pre.model, post.model)}
    assert rows["lm_head.weight"] == pytest.approx(0.1, rel=1e-4)
    assert all(v == 0.0 for k, v in rows.items() if k != "lm_head.weight")


# ------------------------------------------------------------------ the organism: ground truth


def _run(analyser, pair, concept):
    from palimpsest.capture import Activations

    return run(analyser, pair, concept, Activations.for_pair(pair, concept))


def test_depth_is_one_for_the_oracle_against_itself(organism_pair_oracle, organism_concept):
    from palimpsest.models import ModelPair

    floor = organism_pair_oracle.floor
    pair = ModelPair(organism_pair_oracle.pre, floor, floor)
    result = _run(UnlearningDepth(), pair, organism_concept)
    assert result.status == "ok"
    assert result.summary["depth"] > 0.95 and result.residue < 0.05


def test_depth_is_zero_for_suppress(organism_pair_suppress, organism_concept):
    result = _run(UnlearningDepth(), organism_pair_suppress, organism_concept)
    assert result.status == "ok"
    # only the head changed: patching post's residual stream into pre changes nothing at any layer
    assert max(abs(x) for x in result.summary["delta_s2"]) < 1e-3
    assert min(result.summary["delta_s1"]) > 0.5, "the floor model's states must remove the answer"
    assert result.summary["depth"] < 0.05 and result.ci[0] > 0.9


def test_depth_calls_the_independent_oracle_deep(organism_pair_oracle, organism_concept):
    """The default residue (depth_capped) calls the independently retrained oracle deep. The published UDS is
    reported beside it and reads the same pair shallower: measured UDS 0.68 (residue 0.32, CI 0.25-0.39) against
    depth_capped 0.89 (residue 0.107), because per-example ratios count the basis mismatch between two retrains as
    retained knowledge, which the floor cap removes. Bounds: residue < 0.3 (margin 0.19); UDS > 0.5 (margin 0.18)."""
    result = run(UnlearningDepth(), organism_pair_oracle, organism_concept)
    assert result.status == "ok" and result.summary["score"] == "capped"
    assert result.residue < CONFIG.deleted_max_residue + 0.1
    assert result.summary["uds"] > 0.5 and result.summary["uds"] < result.summary["depth_capped"]


def test_mia_separates_members_on_pre_and_not_on_the_oracle(organism_pair_oracle, organism_pair_suppress,
                                                            organism_concept):
    oracle = _run(MembershipInference(), organism_pair_oracle, organism_concept)
    assert oracle.summary["auc_pre"]["loss"] > 0.8
    assert abs(oracle.summary["auc_post"]["loss"] - 0.5) < 0.2
    assert oracle.status == "ok" and oracle.residue < 0.25
    suppressed = _run(MembershipInference(), organism_pair_suppress, organism_concept)
    # the head edit hides the answers, but the rest of each forget sentence is still memorised
    assert suppressed.status == "ok" and suppressed.residue > 0.5


def test_extraction_strength_on_known_and_unknown_items(organism_pair_oracle, organism_concept):
    from palimpsest.capture import score_answers

    pre = organism_pair_oracle.pre
    known = score_answers(pre.model, pre.tokenizer, organism_concept.forget)
    unknown = score_answers(pre.model, pre.tokenizer, organism_concept.holdout)
    es_known = [extraction_strength(t) for t in known.token_top1]
    es_unknown = [extraction_strength(t) for t in unknown.token_top1]
    memorised = [es for es, ok in zip(es_known, known.correct, strict=True) if ok]
    assert memorised and all(es == 1.0 for es in memorised)
    assert all(es == 0.0 for es, ok in zip(es_unknown, unknown.correct, strict=True) if not ok)
    assert np.mean(es_known) > 0.9 and np.mean(es_unknown) < 0.4
    result = _run(Memorization(), organism_pair_oracle, organism_concept)
    assert result.summary["forget_es_pre"] > 0.9
    assert result.summary["forget_es_post"] < 0.4
    assert result.summary["forget_quality"] > result.summary["forget_quality_pre"]


def test_weight_change_shows_only_the_head_for_suppress(organism_pair_suppress, organism_pair_ga, organism_concept):
    suppress = _run(PCAShift(), organism_pair_suppress, organism_concept)
    changed = suppress.summary["weight_change"]["changed"]
    assert changed and all(name.startswith("lm_head") for name in changed)
    assert max(suppress.summary["forget_shift_post"]) < 1e-4, "identical internals: no activation shift"
    ga = _run(PCAShift(), organism_pair_ga, organism_concept)
    assert any(not name.startswith("lm_head") for name in ga.summary["weight_change"]["changed"])
    assert max(ga.summary["forget_shift_post"]) > 0.1
