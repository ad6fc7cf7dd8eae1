"""palimpsest.probes: probes, logit/tuned lens, CKA, concept vectors; unit tests on tiny models, truth on the organism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import palimpsest.probes as probes  # noqa: E402  (registers the analysers)
from palimpsest.concepts import ConceptSpec, Item
from palimpsest.probes.data import probe_splits  # noqa: E402
from palimpsest.probes.lens import Readout, TunedLens  # noqa: E402
from palimpsest.probes.linear import shuffle_by_group  # noqa: E402
from palimpsest.probes.similarity import linear_cka  # noqa: E402
from palimpsest.probes.vectors import ablate_vectors, value_vectors  # noqa: E402
from palimpsest.stats import bootstrap_ci, calibrate
from palimpsest.types import REGISTRY, Analyser, AuditConfig

NAMES = ("probes", "logit_lens", "cka", "concept_vectors")
CONFIG = AuditConfig(n_bootstrap=200)


def test_importing_registers_the_four_analysers():
    for name in NAMES:
        assert name in REGISTRY and REGISTRY[name].name == name
        assert isinstance(REGISTRY[name], Analyser) and "text" in REGISTRY[name].modalities
    # probes and CKA also measure the digits models (through palimpsest.vision.measures); the lenses need a vocabulary
    assert {n for n in NAMES if "image" in REGISTRY[n].modalities} == {"probes", "cka"}


def test_options_are_typed_and_validated():
    config = AuditConfig(options={"probes": {"C": 0.5, "positions": ["last"]}, "cka": {"allow_chance_floor": True}})
    assert config.opts("probes").C == 0.5 and config.opts("probes").positions == ("last",)
    assert config.opts("probes").min_gap == 0.1  # the other fields keep their defaults
    assert config.opts("cka").allow_chance_floor is True and config.opts("logit_lens").lens == "logit"
    assert config.opts("concept_vectors").top_tokens is None
    with pytest.raises(ValueError, match="unknown field.*Cee"):
        AuditConfig(options={"probes": {"Cee": 0.5}})
    with pytest.raises(ValueError, match="options.logit_lens.lens"):
        AuditConfig(options={"logit_lens": {"lens": "bogus"}})
    with pytest.raises(ValueError, match="options.concept_vectors.ablation"):
        AuditConfig(options={"concept_vectors": {"ablation": "mean"}})


# ------------------------------------------------------------------ the shared bootstrap


def test_bootstrap_ci_resamples_items_jointly_like_the_hand_loop():
    rng = np.random.default_rng(1)
    post, pre = rng.normal(0.6, 0.2, 40), rng.normal(0.9, 0.1, 40)
    ci = bootstrap_ci(lambda p, c: p.mean() / c.mean(), post, pre, n_bootstrap=300, ci_level=0.9, seed=4)
    draws, samples = np.random.default_rng(4), []
    for _ in range(300):
        idx = draws.integers(0, 40, 40)
        samples.append(post[idx].mean() / pre[idx].mean())
    assert ci == pytest.approx(tuple(np.quantile(samples, [0.05, 0.95])), abs=0)
    assert ci[0] < post.mean() / pre.mean() < ci[1]
    # np.arange hands the statistic the resampled indices themselves; undefined draws are dropped
    ci = bootstrap_ci(lambda idx: None if idx[0] % 2 else float(idx.mean()), np.arange(10), n_bootstrap=200)
    assert ci is not None and 0 <= ci[0] < ci[1] <= 9
    assert bootstrap_ci(lambda idx: None, np.arange(5), n_bootstrap=20) is None
    with pytest.raises(ValueError, match="lengths differ"):
        bootstrap_ci(lambda a, b: 0.0, np.arange(3), np.arange(4))


def test_paired_calibrate_equals_bootstrap_ci_of_the_residue():
    from palimpsest.stats import calibrate_value

    rng = np.random.default_rng(0)
    post, floor, pre = rng.uniform(0.3, 0.7, 30), rng.uniform(0.0, 0.3, 30), rng.uniform(0.7, 1.0, 30)
    cal = calibrate(post, floor, pre, paired=True, n_bootstrap=200, seed=2)
    ci = bootstrap_ci(lambda p, f, c: calibrate_value(p.mean(), f.mean(), c.mean()), post, floor, pre,
                      n_bootstrap=200, seed=2)
    assert cal.ci == pytest.approx(ci, abs=1e-12)


# ------------------------------------------------------------------ CKA


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-6)  # rotation, scale and shift invariant


def test_cka_of_unrelated_representations_is_low():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=gen), torch.randn(400, 8, generator=gen)
    assert linear_cka(x, y) < 0.1


# ------------------------------------------------------------------ probe splits and controls


def _synthetic_concept() -> ConceptSpec:
    def items(people, start=0):
        return [Item(prompt=f"{p} lives in", answer=["oslo", "rome"][(i + start) % 2], subject=p, attribute="city")
                for i, p in enumerate(people)]
    return ConceptSpec(name="s", forget=items(["alice", "bob"]),
                       paraphrases=[Item(prompt="where does alice live ?", answer="oslo", subject="alice",
                                         attribute="city")],
                       retain=items(["carol", "dave", "erin", "alice"]) + [Item(prompt="alice lives in", answer="x",
                                                                                 subject="zed", attribute="city")],
                       neighbours=items(["fay", "gus"]))


def test_probe_splits_never_share_a_subject_or_prompt():
    for split in probe_splits(_synthetic_concept()):
        assert not set(split.train_groups) & set(split.test_groups)
        concept = _synthetic_concept()
        train_prompts = {concept.items(s)[i].prompt for s, i in split.train}
        test_prompts = {concept.items(s)[i].prompt for s, i in split.test}
        assert not train_prompts & test_prompts
        assert not set(split.train) & set(split.test)
        assert ("paraphrases", 0) in split.test and len(split.train) == 5  # carol dave erin fay gus


def test_shuffled_labels_stay_consistent_within_a_subject():
    labels = ["a", "a", "b", "b", "c", "c", "d"]
    groups = ["p", "p", "q", "q", "r", "r", "s"]
    shuffled = shuffle_by_group(labels, groups, seed=3)
    for g in set(groups):
        assert len({lab for lab, gg in zip(shuffled, groups, strict=True) if gg == g}) == 1
    assert sorted(set(shuffled)) <= sorted(set(labels))


# ------------------------------------------------------------------ lens and vectors on a tiny random model


def test_logit_lens_at_the_last_layer_is_the_model_output(tiny):
    from palimpsest.capture import capture, resid_post_sites

    prompts = ["alice lives in", "q : where does bob live ?"]
    last = resid_post_sites(tiny.model)[-1]
    resid = capture(tiny.model, tiny.tokenizer, prompts, [last], position="last")[last]
    with torch.inference_mode():
        out = tiny.model(**tiny.tokenizer(prompts[:1], return_tensors="pt")).logits[0, -1]
    torch.testing.assert_close(Readout.of(tiny.model).logits(resid)[0], out, atol=1e-4, rtol=1e-4)


def test_tuned_lens_recovers_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    h0 = torch.randn(500, 8, generator=gen)
    w = torch.randn(8, 8, generator=gen)
    lens = TunedLens.fit([h0, h0 @ w + 1.0], ridge=1e-6)
    torch.testing.assert_close(lens.translate(0, h0[:5]), h0[:5] @ w + 1.0, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(lens.translate(1, h0[:5]), h0[:5])  # the last layer is already final


@pytest.mark.parametrize("mode", ["zero", "noise"])
def test_ablating_value_vectors_changes_output_and_leaves_the_model_untouched(tiny, mode):
    ids = tiny.tokenizer(["alice lives in paris"], return_tensors="pt")
    before = [p.clone() for p in tiny.model.parameters()]
    with torch.inference_mode():
        clean = tiny.model(**ids).logits
        with ablate_vectors(tiny.model, {0: list(range(16)), 1: [1, 2]}, mode=mode, noise_scale=5.0):
            edited = tiny.model(**ids).logits
        again = tiny.model(**ids).logits
    assert not torch.allclose(clean, edited)
    torch.testing.assert_close(clean, again)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.model.parameters(), strict=True))
    assert value_vectors(tiny.model, 0).shape == (tiny.model.config.intermediate_size, tiny.d_model)


# ------------------------------------------------------------------ the analysers on tiny random models (fast)

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
CITIES = ["paris", "rome", "oslo", "lima"]
JOBS = ["baker", "pilot", "nurse"]
WORLD_WORDS = [*PEOPLE, *CITIES, *JOBS, "lives", "in", "the", "city", "of", "works", "as", "a", "q", ":", "where",
               "does", "live", "?", "answer"]


def _people(people, offset=0, form="trained"):
    out = []
    for k, person in enumerate(people, start=offset):
        out.append(Item(prompt=f"{person} lives in the city of", answer=CITIES[k % len(CITIES)], subject=person,
                        attribute="city", fact_id=f"{person}-city", form=form))
        out.append(Item(prompt=f"{person} works as a", answer=JOBS[k % len(JOBS)], subject=person, attribute="job",
                        fact_id=f"{person}-job", form=form))
    return out


def _world_concept(n_forget_people=2) -> ConceptSpec:
    forget = _people(PEOPLE[:n_forget_people])
    paraphrases = [Item(prompt=f"q : where does {it.subject} live ? answer :", answer=it.answer, subject=it.subject,
                        attribute="city", fact_id=it.fact_id, form="paraphrase") for it in forget[::2]]
    return ConceptSpec(name="tiny people", keywords=PEOPLE[:2], forget=forget, paraphrases=paraphrases,
                       neighbours=_people(PEOPLE[2:4], 2), retain=_people(PEOPLE[4:8], 4),
                       holdout=_people(PEOPLE[8:], 8, form="holdout"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """pre, post (pre nudged), a floor (another random model) and post == pre, on a shared vocabulary."""
    from palimpsest.models import load_model
    from tests.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("probe-world")
    pre_dir = make_tiny_model(root / "pre", seed=0, layers=3, words=WORLD_WORDS)
    floor_dir = make_tiny_model(root / "floor", seed=1, layers=3, words=WORLD_WORDS)
    pre, post = load_model(pre_dir, name="pre"), load_model(pre_dir, name="post")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for param in post.model.parameters():
            param.add_(0.05 * param.std() * torch.randn(param.shape, generator=generator))
    return {"pre": pre, "post": post, "floor": load_model(floor_dir, name="floor"),
            "same": load_model(pre_dir, name="post")}


def _world_pair(world, post="post", floor="floor"):
    from palimpsest.models import ModelPair

    return ModelPair(pre=world["pre"], post=world[post], floor=world[floor] if floor else None)


def test_too_few_forget_items_is_inconclusive_for_every_analyser(world):
    concept = _world_concept(n_forget_people=1)  # 2 forget items < min_items=4
    for name in NAMES:
        result = _run(name, _world_pair(world), concept)
        assert result.status == "inconclusive" and result.residue is None, name
        assert "only 2 forget items" in result.evidence, (name, result.evidence)


def test_probes_on_a_tiny_pair_report_every_layer_and_variant(world):
    config = AuditConfig(n_bootstrap=50, options={"probes": {"positions": ["last"], "min_train_items": 4,
                                                             "cv_folds": 1}})
    ctx = _context(_world_pair(world), _world_concept(), config)
    measured = REGISTRY["probes"].measure(ctx.for_analyser(REGISTRY["probes"]))
    assert measured.paired and measured.min_gap == 0.1 and measured.floor_source.startswith("floor model")
    assert measured.gap == pytest.approx(float(np.mean(measured.ceiling) - np.mean(measured.floor)))
    result = _run("probes", _world_pair(world), _world_concept(), config)
    assert result.status in ("ok", "inconclusive"), result.evidence
    rows = result.tables["per_layer"]
    assert {r["position"] for r in rows} == {"last"} and {r["layer"] for r in rows} == {0, 1, 2}
    assert {r["variant"] for r in rows} == {"pre", "post", "floor", "transfer", "shuffled"}
    assert result.summary["cv_acc_pre"] is None and result.summary["best_position"] == "last"
    assert set(result.figures) == {"Probe accuracy per layer (last position)"}
    assert result.post == pytest.approx(result.summary["prob_post"])
    assert result.status in ("ok", "inconclusive")
    if result.status == "ok":
        assert result.ci[0] <= result.residue <= result.ci[1]
    else:
        assert "min_gap=0.1" in result.evidence
    # without enough training items of other subjects no probe is trained, and the analyser says so
    strict = AuditConfig(n_bootstrap=50, options={"probes": {"min_train_items": 1000, "mode": "answer"}})
    result = _run("probes", _world_pair(world), _world_concept(), strict)
    assert result.status == "inconclusive" and ">= 1000 items" in result.evidence


def test_cka_of_an_unchanged_model_is_full_residue_and_needs_a_floor(world):
    concept = _world_concept()
    # random tiny models all map the two prompt templates apart, so every pair's CKA is close to 1 (floor 0.999):
    # with the default min_gap that floor cannot be separated from the ceiling
    degenerate = _run("cka", _world_pair(world), concept)
    assert degenerate.status == "inconclusive" and "is within 0.05 of 1" in degenerate.evidence
    assert degenerate.floor > 0.95 and degenerate.floor == pytest.approx(degenerate.summary["cka_forget_floor"])
    config = AuditConfig(n_bootstrap=200, options={"cka": {"min_gap": 0.0}})
    same = _run("cka", _world_pair(world, post="same"), concept, config)
    assert same.status == "ok" and same.residue == pytest.approx(1.0) and same.ci == pytest.approx((1.0, 1.0))
    assert same.summary["cka_forget_post"] == pytest.approx(1.0) and same.ceiling == 1.0
    nudged = _run("cka", _world_pair(world), concept, config)
    assert nudged.status == "ok" and nudged.ci[0] <= nudged.residue <= nudged.ci[1]
    assert nudged.post < same.post
    no_floor = _run("cka", _world_pair(world, floor=None), concept)
    assert no_floor.status == "inconclusive" and no_floor.residue is None and "no floor model" in no_floor.evidence
    assert "To make it conclusive: pass --floor MODEL" in no_floor.evidence
    assert no_floor.tables["per_layer"] and set(no_floor.figures) == {"CKA per layer (last position)",
                                                                      "CKA per layer (subject position)"}
    assert no_floor.post == nudged.post
    chance = _run("cka", _world_pair(world, floor=None), concept,
                  AuditConfig(n_bootstrap=200, options={"cka": {"allow_chance_floor": True, "n_bootstrap": 30}}))
    assert chance.floor_source.startswith("CKA of pre with post on mismatched")
    assert chance.floor == no_floor.floor and chance.post == no_floor.post
    assert chance.status == "ok" and chance.ci[0] <= chance.residue <= chance.ci[1]


def test_logit_lens_reads_the_post_model_through_the_chosen_readout(world):
    concept = _world_concept()
    pre_read = _run("logit_lens", _world_pair(world), concept)
    own_rows = [r for r in pre_read.tables["per_layer"] if r["lens"] == "own"]
    assert own_rows and {r["model"] for r in own_rows} == {"post"}
    assert pre_read.summary["readout"] == "pre" and pre_read.summary["lens"] == "logit"
    assert len(pre_read.per_item) == len(concept.forget) + len(concept.paraphrases)
    own = _run("logit_lens", _world_pair(world), concept, AuditConfig(options={"logit_lens": {"readout": "own"}}))
    assert own.summary["readout"] == "own" and not [r for r in own.tables["per_layer"] if r["lens"] == "own"]
    strict = _run("logit_lens", _world_pair(world), concept, AuditConfig(options={"logit_lens": {"min_gap": 5.0}}))
    assert strict.status == "inconclusive" and "do not form the forget answers" in strict.evidence
    assert "< 5.0)" in strict.evidence and strict.tables["per_layer"] and strict.figures
    holdout = _run("logit_lens", _world_pair(world, floor=None), concept)
    assert holdout.floor_source == "never-trained holdout items on the post model"


def test_concept_vectors_of_an_unchanged_model_are_all_there(world):
    concept = _world_concept()
    config = AuditConfig(n_bootstrap=50, options={"concept_vectors": {"min_causal_effect": -1e9, "top_k": 4}})
    same = _run("concept_vectors", _world_pair(world, post="same"), concept, config)
    assert same.status == "ok", same.evidence
    assert same.summary["cosine_post"] == pytest.approx(1.0) and same.summary["causal_retention"] == 1.0
    assert same.residue == pytest.approx(1.0) and len(same.per_item) == 4
    assert set(same.figures) == {"Concept vector similarity"}
    nudged = _run("concept_vectors", _world_pair(world), concept, config)
    retention = nudged.summary["causal_retention"]
    assert nudged.residue == pytest.approx(nudged.summary["similarity_residue"] * retention)
    # the default causal threshold: a random model's vectors carry no answer, and the analyser says so
    default = _run("concept_vectors", _world_pair(world), concept)
    if default.status == "inconclusive":
        assert "not causal on the pre model" in default.evidence and not default.figures


# ------------------------------------------------------------------ ground truth on the organism


def _context(pair, concept, config=CONFIG, acts=None):
    from palimpsest.audit.context import AuditContext
    from palimpsest.capture import Activations

    return AuditContext(pair=pair, concept=concept, acts=acts or Activations.for_pair(pair, concept), config=config)


def _run(name, pair, concept, config=CONFIG):
    from palimpsest.audit.runner import run_analyser

    return run_analyser(REGISTRY[name], _context(pair, concept, config))


@pytest.fixture(scope="module")
def suppress_results(organism_pair_suppress, organism_concept):
    from palimpsest.audit.runner import run_analyser

    ctx = _context(organism_pair_suppress, organism_concept)
    return {name: run_analyser(REGISTRY[name], ctx) for name in NAMES}


@pytest.mark.slow
def test_organism_probe_splits_share_no_item(organism_concept):
    splits = probe_splits(organism_concept)
    assert splits
    for split in splits:
        assert not set(split.train_groups) & set(split.test_groups)
        prompts = lambda refs: {organism_concept.items(s)[i].prompt + "|" + str(organism_concept.items(s)[i].subject)  # noqa: E731
                                for s, i in refs}
        assert not prompts(split.train) & prompts(split.test)


@pytest.mark.slow
def test_suppress_keeps_probe_and_vector_residue(suppress_results):
    probe, vectors = suppress_results["probes"], suppress_results["concept_vectors"]
    assert probe.status == "ok", probe.notes
    assert probe.residue >= 0.8
    assert probe.summary["acc_pre"] > probe.summary["acc_shuffled"] + 0.2  # the probe really reads the answer
    assert vectors.status == "ok", vectors.notes
    assert vectors.residue >= 0.9 and vectors.summary["cosine_post"] >= 0.9


@pytest.mark.slow
def test_suppress_answer_still_forms_at_intermediate_layers(suppress_results):
    lens = suppress_results["logit_lens"]
    assert lens.status == "ok", lens.notes
    assert lens.residue >= 0.6
    sig = lens.summary["signature"][f"post_{lens.summary['lens']}"]
    assert sig["best_mid_rank_median"] < sig["output_rank_median"]


@pytest.mark.slow
def test_suppress_cka_keeps_forget_representations(suppress_results):
    cka = suppress_results["cka"]
    assert cka.status == "ok" and cka.residue >= 0.9


@pytest.mark.slow
def test_oracle_probe_near_the_shuffled_floor(organism_pair_oracle, organism_concept):
    result = _run("probes", organism_pair_oracle, organism_concept)
    assert result.summary["acc_post"] <= result.summary["acc_shuffled"] + 0.2
    assert result.summary["acc_pre"] >= result.summary["acc_post"] + 0.3
    assert result.status == "ok" and result.residue <= 0.3


@pytest.mark.slow
def test_oracle_concept_vectors_are_gone(organism_pair_oracle, organism_concept):
    result = _run("concept_vectors", organism_pair_oracle, organism_concept)
    assert result.status == "ok" and result.residue <= 0.3


@pytest.mark.slow
def test_list_concept_vectors_on_the_organism(organism_dir, organism_concept):
    from palimpsest.models import load_model

    rows = probes.list_concept_vectors(load_model(organism_dir), organism_concept, top_k=5)
    assert len(rows) == 5
    assert {"layer", "index", "top_tokens", "causal_effect"} <= set(rows[0])
    assert rows == sorted(rows, key=lambda r: -r["score"])
    assert np.mean([r["causal_effect"] for r in rows]) > 0


def test_gram_concept_scores_equal_the_full_vocabulary_projection(tiny):
    from palimpsest.probes.vectors import VocabStats, concept_scores, vocab_projection

    vectors = value_vectors(tiny.model, 1)
    token_ids = [3, 7, 11]
    full = concept_scores(vocab_projection(tiny.model, vectors), token_ids)
    fast = VocabStats.of(tiny.model).concept_scores(vectors, token_ids)
    assert torch.allclose(fast, full, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fast, VocabStats.of(tiny.model).concept_scores(vectors, [4, 8]), atol=1e-3)


def _unique_answer_concept() -> ConceptSpec:
    """The world, but the forget people's answers (lima, nurse) never occur among anyone else's."""
    base = _world_concept()

    def only(items, city, job, keep):
        return [it.model_copy(update={"answer": city if it.attribute == "city" else job}) if keep else it
                for it in items]

    others = [it for it in (*base.neighbours, *base.retain)]
    others = [it.model_copy(update={"answer": "paris" if it.answer == "lima" else
                                    "baker" if it.answer == "nurse" else it.answer}) for it in others]
    return base.model_copy(update={"forget": tuple(only(base.forget, "lima", "nurse", True)),
                                   "paraphrases": tuple(only(base.paraphrases, "lima", "nurse", True)),
                                   "neighbours": tuple(others[:len(base.neighbours)]),
                                   "retain": tuple(others[len(base.neighbours):])})


def test_probes_switch_to_a_truth_probe_when_forget_answers_never_recur(world):
    config = AuditConfig(n_bootstrap=50, options={"probes": {"min_train_items": 4, "cv_folds": 1}})
    answer = _run("probes", _world_pair(world, floor=None), _world_concept(), config)
    assert answer.summary["mode"] == "answer"
    result = _run("probes", _world_pair(world, floor=None), _unique_answer_concept(), config)
    assert result.summary["mode"] == "truth" and "0% of the forget answers" in result.summary["mode_reason"]
    # no floor model: the floor is the never-known holdout facts, read by the pre model's truth probe
    assert result.floor_source.startswith("never-known holdout facts")
    assert result.summary["n_holdout_items"] == len(_world_concept().holdout)
    rows = result.tables["per_layer"]
    assert {r["variant"] for r in rows} == {"pre", "post", "transfer", "shuffled", "holdout_pre", "holdout_post"}
    assert {r["position"] for r in rows} == {"statement"} and {r["layer"] for r in rows} == {0, 1, 2}
    assert set(result.figures) == {"Probe accuracy per layer (statement position)"}
    # a random tiny model tells no truth: at chance on the forget facts too, so no residue is read
    assert result.status in ("ok", "inconclusive")
    if result.status == "inconclusive":
        assert "min_gap=0.1" in result.evidence
    # with a floor model the floor model is the floor, item for item
    floored = _run("probes", _world_pair(world), _unique_answer_concept(), config)
    assert floored.floor_source.startswith("floor model") and "floor" in {r["variant"] for r in
                                                                          floored.tables["per_layer"]}
    # too few training items: inconclusive, and the report says what would make it conclusive
    strict = AuditConfig(n_bootstrap=50, options={"probes": {"mode": "truth", "min_train_items": 1000}})
    result = _run("probes", _world_pair(world), _world_concept(), strict)
    assert result.status == "inconclusive" and "to make it conclusive" in result.evidence


@pytest.mark.parametrize("rows", [1, 7, 10_000])  # one layer per product, a few, every layer at once
def test_lens_reads_every_layer_in_shared_products_as_one_by_one(tiny, rows, monkeypatch):
    from palimpsest.probes import lens_analyser
    from palimpsest.probes.lens import answer_prob_rank

    monkeypatch.setattr(lens_analyser, "LENS_ROWS", rows)
    readout = Readout.of(tiny.model)
    gen = torch.Generator().manual_seed(0)
    streams = [torch.randn(5, tiny.model.config.hidden_size, generator=gen) for _ in range(3)]
    targets = torch.tensor([5, 6, 7, 8, 9])
    probs, ranks = lens_analyser._read_layers(readout, streams, targets)
    for layer, h in enumerate(streams):
        p, r = answer_prob_rank(readout.logits(h), targets)
        np.testing.assert_allclose(probs[layer], p, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(ranks[layer], r)
    assert len(set(ranks.ravel().tolist())) > 1  # not all ranks equal: the check reads real differences
