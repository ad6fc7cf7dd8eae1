"""palimpsest.restoration: shift vectors, SAE-feature restoration, relearning, quantization, direction ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import palimpsest.restoration  # noqa: F401  (registers the analysers)
from palimpsest.concepts import ConceptSpec, Item
from palimpsest.sae import SAEConfig
from palimpsest.types import AuditConfig

NAMES = ("shift_vectors", "sae_restoration", "relearning", "quantization", "direction_ablation")

ITEMS = [
    Item(prompt="alice lives in the city of", answer="paris", subject="alice", fact_id="alice:city"),
    Item(prompt="q : where does alice live ?", answer="paris", subject="alice", fact_id="alice:city"),
    Item(prompt="bob lives in the city of", answer="rome", subject="bob", fact_id="bob:city"),
    Item(prompt="q : where does bob live ?", answer="rome", subject="bob", fact_id="bob:city"),
    Item(prompt="carol lives in the city of", answer="oslo", subject="carol", fact_id="carol:city"),
    Item(prompt="q : where does carol live ?", answer="oslo", subject="carol", fact_id="carol:city"),
    Item(prompt="alice works as a", answer="baker", subject="alice", fact_id="alice:job"),
    Item(prompt="bob works as a", answer="pilot", subject="bob", fact_id="bob:job"),
]


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _logits(loaded) -> torch.Tensor:
    from palimpsest.capture import encode

    batch = encode(loaded.tokenizer, [it.prompt for it in ITEMS], [it.answer for it in ITEMS])
    with torch.inference_mode():
        return loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.clone()


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_all_five_analysers_are_registered():
    from palimpsest.types import REGISTRY

    missing = [name for name in NAMES if name not in REGISTRY]
    assert not missing, missing
    for name in NAMES:
        assert REGISTRY[name].kind == "residue" and REGISTRY[name].description


def test_split_keeps_each_fact_on_one_side():
    from palimpsest.restoration.common import split_items

    train, held = split_items(ITEMS, seed=0)
    assert train and held and sorted(train + held) == list(range(len(ITEMS)))
    assert not {ITEMS[i].fact_id for i in train} & {ITEMS[i].fact_id for i in held}


def test_batched_sweep_equals_one_forward_per_strength(tiny):
    from palimpsest.restoration import sweep, sweep_one_by_one

    site = "blocks.1.hook_resid_post"
    paris = tiny.tokenizer.convert_tokens_to_ids("paris")
    vector = tiny.model.lm_head.weight[paris].detach().clone()
    strengths = [0.0, 0.5, 2.0, 8.0, 32.0, 128.0]
    batched = sweep(tiny, ITEMS, site, vector, strengths, batch_size=7)  # 7 rows: whole items only, uneven batches
    reference = sweep_one_by_one(tiny, ITEMS, site, vector, strengths)
    assert batched.shape == (len(strengths), len(ITEMS))
    np.testing.assert_array_equal(batched, reference)
    is_paris = np.array([it.answer == "paris" for it in ITEMS])
    assert batched[-1, is_paris].all() and not batched[-1, ~is_paris].any()  # a huge push makes 'paris' the answer
    assert batched[:, is_paris].sum() > batched[0, is_paris].sum() * len(strengths)  # ... and the sweep sees it change


def test_relearn_fits_a_copy_and_leaves_the_original(tiny):
    from palimpsest.restoration import relearn
    from palimpsest.restoration.common import correct

    before, logits = _state(tiny.model), _logits(tiny)
    tuned, curve = relearn(tiny, ITEMS, steps=40, lr=1e-2, batch_size=8, seed=0, eval_items=ITEMS, eval_every=10)
    assert correct(tuned, ITEMS).mean() > correct(tiny, ITEMS).mean()
    assert [s for s, _ in curve] == [0, 10, 20, 30, 40] and curve[-1][1] > curve[0][1]
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())
    assert torch.equal(logits, _logits(tiny))


def test_quantized_copy_rounds_weights_and_leaves_the_original(tiny):
    from palimpsest.restoration import quantized

    logits = _logits(tiny)
    for bits in (8, 4):
        q = _logits(quantized(tiny, bits))
        assert not torch.equal(q, logits) and (q - logits).abs().max() < 1.0
    assert torch.equal(logits, _logits(tiny))
    with pytest.raises(ValueError, match="use 8 or 4"):
        quantized(tiny, 3)


@pytest.mark.parametrize("bits", [8, 4])
def test_dequantized_linears_compute_what_quanto_computes(organism_pair_ga, organism_concept, bits):
    """The quantized copy holds plain linears with quanto's dequantized weights: the logits of quanto's own
    weight-only modules, exactly (measured max |diff| 0 at both widths on the organism)."""
    import copy

    from optimum.quanto import freeze, qint4, qint8, quantize

    from palimpsest.capture import encode
    from palimpsest.restoration.quantization import dequantized_linears

    post = organism_pair_ga.post

    def quanto_copy():
        model = copy.deepcopy(post.model)
        quantize(model, weights={8: qint8, 4: qint4}[bits])
        freeze(model)
        return model

    reference, plain = quanto_copy(), quanto_copy()
    assert dequantized_linears(plain) == sum(isinstance(m, torch.nn.Linear) for m in post.model.modules())
    assert not any(type(m).__name__ == "QLinear" for m in plain.modules())
    items = list(organism_concept.forget)[:4] + list(organism_concept.retain)[:4]
    batch = encode(post.tokenizer, [it.prompt for it in items], [it.answer for it in items])
    with torch.no_grad():
        expected = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        got = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert (got - expected).abs().max() <= 1e-5
    with torch.no_grad():
        plain_logits = post.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert (got - plain_logits).abs().max() > 1e-4  # the weights really are rounded


def test_head_edit_basis_spans_a_low_rank_output_layer_edit(tiny):
    import copy

    from palimpsest.restoration.head_ablation import head_edit_basis, random_basis

    edited_model = copy.deepcopy(tiny.model)
    gen = torch.Generator().manual_seed(0)
    weight = edited_model.get_output_embeddings().weight
    reads = torch.linalg.qr(torch.randn(weight.shape[1], 2, generator=gen))[0].T  # the 2 directions the edit reads
    with torch.no_grad():
        edited_model.get_output_embeddings().weight += torch.randn(weight.shape[0], 2, generator=gen) @ reads
    basis = head_edit_basis(tiny.model, edited_model, max_rank=8)
    assert basis.shape == (2, weight.shape[1])  # the numerical rank, not max_rank
    assert torch.allclose(basis @ basis.T, torch.eye(2), atol=1e-5)
    assert torch.allclose(reads @ basis.T @ basis, reads, atol=1e-4)  # the same subspace
    assert head_edit_basis(tiny.model, copy.deepcopy(tiny.model), max_rank=8) is None
    rand = random_basis(3, weight.shape[1], gen)
    assert torch.allclose(rand @ rand.T, torch.eye(3), atol=1e-5)


def test_unlearning_direction_is_the_mean_difference():
    from palimpsest.restoration import unlearning_directions

    gen = torch.Generator().manual_seed(0)
    before = torch.randn(20, 16, generator=gen)
    shift = torch.zeros(16)
    shift[3] = 5.0
    after = before + shift + 0.01 * torch.randn(20, 16, generator=gen)
    dirs = unlearning_directions(after, before)
    assert torch.allclose(dirs["mean"], shift, atol=0.05)
    assert abs(float(dirs["pc1"].norm()) - 1.0) < 1e-4


@pytest.fixture(scope="module")
def tiny_pair(tiny, tiny_dir):
    """pre = a tiny model fitted on ITEMS; post = the same with its output layer changed (head-only suppression)."""
    from palimpsest.models import ModelPair, load_model
    from palimpsest.restoration import relearn

    tiny = load_model(tiny_dir)  # a fresh copy: other tests' fixtures share the session `tiny`
    pre, _ = relearn(tiny, ITEMS, steps=60, lr=1e-2, batch_size=8, seed=0)
    post, _ = relearn(tiny, ITEMS, steps=60, lr=1e-2, batch_size=8, seed=0)
    with torch.no_grad():
        for it in ITEMS:
            post.model.lm_head.weight[post.tokenizer.convert_tokens_to_ids(it.answer)] *= -1.0
    return ModelPair(pre=pre, post=post)


def _run_ctx(name, pair, concept, config):
    """Run one analyser as the runner does: an AuditContext whose SAEs are built before the analyser runs."""
    from palimpsest.audit.context import AuditContext
    from palimpsest.audit.runner import build_saes
    from palimpsest.capture import Activations
    from palimpsest.types import REGISTRY

    analyser = REGISTRY[name]
    ctx = AuditContext(pair=pair, concept=concept, acts=Activations.for_pair(pair, concept), config=config)
    ctx.saes = build_saes({name: analyser}, ctx)
    return analyser.run(ctx.for_analyser(analyser))


@pytest.mark.parametrize("name", NAMES)
def test_analysers_leave_models_untouched_and_report_honestly(tiny_pair, name, tmp_path):

    concept = ConceptSpec(name="c", forget=tuple(ITEMS), retain=tuple(ITEMS[:2]), holdout=tuple(ITEMS[-4:]))
    sae = SAEConfig(total_tokens=2048, batch_size=16, min_selectivity=0.0, min_forget_firing=0.0)
    config = AuditConfig(n_bootstrap=50, min_items=4, sae=sae, cache_dir=str(tmp_path),
                         options={"relearning": {"steps": 3},
                                  "sae_restoration": {"min_explained_variance": 0.0, "n_random_draws": 1}})
    before = {k: (_logits(m), _hooks(m.model)) for k, m in tiny_pair.models().items()}
    result = _run_ctx(name, tiny_pair, concept, config)
    for key, loaded in tiny_pair.models().items():
        assert torch.equal(before[key][0], _logits(loaded)), f"{name} changed the {key} model's outputs"
        assert _hooks(loaded.model) == before[key][1]
    assert result.name == name and result.status in ("ok", "inconclusive")
    if name in ("shift_vectors", "sae_restoration"):  # head-only change: the stream is as pre
        assert result.status == "inconclusive", result.notes
        assert "after the last block" in result.notes[0] or "downstream of the SAE site" in result.notes[0]
    if name == "direction_ablation":  # ... so the directions come from the output layer's weight difference
        assert any("output-layer weight difference" in note for note in result.notes), result.notes
    if result.status == "ok":
        assert 0.0 <= result.residue <= 1.0 and result.ci[0] <= result.residue <= result.ci[1]
    else:
        assert result.residue is None and result.notes
    result.model_dump_json()  # every result serialises


# ------------------------------------------------------------------ the organism (ground truth known)

ORGANISM_CONFIG = dict(n_bootstrap=200)


def _run(name, pair, concept):
    before = {k: _organism_logits(m, concept) for k, m in pair.models().items()}
    result = _run_ctx(name, pair, concept, AuditConfig(**ORGANISM_CONFIG))
    for key, loaded in pair.models().items():
        assert torch.equal(before[key], _organism_logits(loaded, concept)), f"{name} changed {key}"
        assert _hooks(loaded.model) == 0
    return result


def _organism_logits(loaded, concept) -> torch.Tensor:
    from palimpsest.capture import encode

    items = list(concept.forget[:8])
    batch = encode(loaded.tokenizer, [it.prompt for it in items], [it.answer for it in items])
    with torch.inference_mode():
        return loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.clone()


@pytest.fixture(scope="module")
def suppress_results(organism_pair_suppress, organism_concept):
    return {name: _run(name, organism_pair_suppress, organism_concept) for name in NAMES}


@pytest.fixture(scope="module")
def oracle_results(organism_pair_oracle, organism_concept):
    return {name: _run(name, organism_pair_oracle, organism_concept) for name in NAMES}


@pytest.mark.slow
def test_suppress_is_restored_by_at_least_one_attack(suppress_results):
    # measured (seed-0 organism, portable kernels): direction_ablation 0.318 [0.136, 0.545], relearning and
    # quantization 0.0 (the stopping-rule suppress control of the population; test_population checks it over 4 worlds)
    ok = {n: r.residue for n, r in suppress_results.items() if r.status == "ok"}
    best = max(ok, key=ok.get) if ok else None
    assert ok and max(ok.values()) >= 0.2, {n: (r.status, r.residue, r.notes[:1]) for n, r in suppress_results.items()}
    assert suppress_results[best].ci[0] > 0.05


@pytest.mark.slow
def test_suppress_head_only_change_is_ablated_in_the_output_layer(suppress_results):
    assert suppress_results["shift_vectors"].status == "inconclusive"  # nothing to steer: the stream is as pre
    ablation = suppress_results["direction_ablation"]
    assert ablation.status == "ok" and ablation.summary["variant"].startswith("head top-")
    # measured: held-out accuracy 0.367 with the top head directions ablated, 0.233 with random ones (= post)
    assert ablation.summary["held_out_acc_ablated"] > ablation.summary["held_out_acc_random_control"]


@pytest.mark.slow
def test_oracle_every_restoration_stays_near_its_floor(oracle_results):
    for name, result in oracle_results.items():
        assert result.status not in ("skipped", "error"), (name, result.notes)
        if result.status == "ok":
            assert result.residue <= 0.25, (name, result.residue, result.summary)


@pytest.mark.slow
def test_random_direction_controls_stay_low(suppress_results, oracle_results, organism_pair_ga, organism_concept):
    ga = _run("shift_vectors", organism_pair_ga, organism_concept)
    for result in (ga, oracle_results["shift_vectors"], oracle_results["direction_ablation"]):
        if result.status == "ok":
            key = "held_out_acc_random_control"
            assert result.summary[key] <= result.summary["held_out_acc_post"] + 0.15, (result.name, result.summary)


@pytest.mark.slow
def test_relearning_recovers_more_after_ga_than_after_oracle(oracle_results, organism_pair_ga, organism_concept):
    ga = _run("relearning", organism_pair_ga, organism_concept)
    oracle = oracle_results["relearning"]
    assert ga.status == "ok", ga.notes
    assert ga.summary["held_out_acc_relearned"] > oracle.summary["held_out_acc_relearned"] + 0.1
    assert oracle.status == "ok" and oracle.residue <= 0.25


def test_relearning_on_related_text_restores_suppression_not_deletion(organism_pair_suppress, organism_pair_ga,
                                                                      organism_pair_oracle, organism_concept):
    config = AuditConfig(n_bootstrap=200, options={"relearning": {"data": "related"}})
    results = {name: _run_ctx("relearning", pair, organism_concept, config) for name, pair in
               (("suppress", organism_pair_suppress), ("ga", organism_pair_ga), ("oracle", organism_pair_oracle))}
    assert all(r.status == "ok" and r.summary["data"] == "related" for r in results.values()), results
    # fine-tuned on neighbour facts only (never a forget fact), scored on every forget fact
    assert results["oracle"].summary["n_held_out"] == len(organism_concept.forget)
    assert results["oracle"].residue <= 0.2, results["oracle"].summary
    for name in ("suppress", "ga"):
        assert results[name].residue >= results["oracle"].residue + 0.2, (name, results[name].summary)


def test_bad_options_are_refused_when_the_config_is_made():
    with pytest.raises(ValueError, match="options.relearning.data"):
        AuditConfig(options={"relearning": {"data": "nope"}})
    with pytest.raises(ValueError, match="options.quantization.bits"):
        AuditConfig(options={"quantization": {"bits": [3]}})
    with pytest.raises(ValueError, match="options.sae_restoration.modes"):
        AuditConfig(options={"sae_restoration": {"modes": ["inject", "replace"]}})
    with pytest.raises(ValueError, match="unknown field"):
        AuditConfig(options={"shift_vectors": {"strength": [1.0]}})
    config = AuditConfig(options={"relearning": {"data": "related", "steps": 3}})
    assert config.opts("relearning").data == "related" and config.opts("relearning").steps == 3
    assert config.opts("quantization").bits == (8, 4)  # defaults for analysers the config does not set


def test_one_rate_finalize_for_the_family():
    """calibrated_result: rates on the forgotten items, against the floor's rate; `blocked` keeps the calibration
    but says inconclusive, with the analyser's own summary."""
    from palimpsest.audit.context import AuditContext
    from palimpsest.restoration.common import RateMeasurement, calibrated_result
    from palimpsest.types import REGISTRY

    ctx = AuditContext(pair=None, concept=None, acts=None, config=AuditConfig(n_bootstrap=50))
    analyser = REGISTRY["direction_ablation"]
    pre = np.ones(8, dtype=bool)
    post_base = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    attacked = np.array([1, 1, 1, 0, 1, 1, 1, 1], dtype=bool)  # 3 of the 4 forgotten items back
    floor_base = np.zeros(8, dtype=bool)
    floor = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)  # the floor gets 2 of 8 right after the attack
    measured = RateMeasurement(post=attacked, floor=floor, ceiling=pre, post_base=post_base, floor_base=floor_base,
                               floor_source="test", evidence="ev", summary={"k": 1},
                               tables={"variants": [{"direction": "mean", "layers": "0", "train_acc": 0.5,
                                                    "held_out_acc": 0.5}]})
    result = calibrated_result(analyser, measured, ctx)
    assert result.status == "ok" and result.evidence == "ev" and result.figures
    assert result.residue == pytest.approx((0.75 - 0.25) / (1 - 0.25))
    assert result.summary["restoration_rate_post"] == 0.75 and result.summary["n_forgotten_held_out"] == 4
    blocked = calibrated_result(analyser, RateMeasurement(**{**measured.__dict__, "blocked": "tests nothing"}), ctx)
    assert blocked.status == "inconclusive" and blocked.residue is None and blocked.notes[0] == "tests nothing"
    assert blocked.post == result.post and blocked.summary == {"k": 1}


def test_ablation_candidates_side_by_side_score_as_one_by_one(organism_pair_ga, organism_concept):
    """direction_ablation scores its candidates on copies of the fitting items in shared forward passes: every
    candidate's exact matches equal scoring it alone (single-layer, every-layer and two-edits-per-site cases; an
    uneven last group)."""
    from palimpsest.capture import ablate_direction, capture, resid_post_sites
    from palimpsest.restoration.common import correct, edited
    from palimpsest.restoration.direction_ablation import candidates_correct

    post, items = organism_pair_ga.pre, list(organism_concept.forget)[:6]  # the pre model: it knows the answers
    sites = resid_post_sites(post.model)
    # each layer's mean state on these prompts: projecting it out changes some answers (the check has teeth)
    states = capture(post.model, post.tokenizer, [it.prompt for it in items], sites, position="last")
    directions = [states[site].float().mean(0) for site in sites]
    candidates = {("mean", str(i)): [(site, ablate_direction(d))] for i, (site, d) in enumerate(zip(sites, directions))}
    candidates[("mean", "all")] = [(site, ablate_direction(d)) for site, d in zip(sites, directions)]
    candidates[("twice", "0")] = [(sites[0], ablate_direction(directions[0])), (sites[0], ablate_direction(directions[1]))]
    got = candidates_correct(post, items, candidates, rows=len(items) * 3)
    for label, edits in candidates.items():
        alone = correct(post, items, batch_size=len(items), context=edited(post.model, lambda b, e=edits: e))
        np.testing.assert_array_equal(got[label], alone, err_msg=str(label))
    assert len({tuple(v) for v in got.values()}) > 1  # the candidates differ: not all the same answers
