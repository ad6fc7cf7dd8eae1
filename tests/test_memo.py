"""The speed paths of real-model audits give the numbers of the slow paths they replace: results kept per model
(capture.memo) are reused only while the model is unchanged, depth's layer sweep batched over layers equals one
forward pass per layer, and greedy answers stopped once their ROUGE-L recall is settled score as the full ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from palimpsest.behavioural import utility
from palimpsest.behavioural.utility import recall_settled, rouge_l_recall
from palimpsest.capture import (
    encode,
    intervene,
    memo,
    replace_with,
    resid_post_sites,
    run_and_capture,
    score_answers,
    scoring,
)
from palimpsest.capture.memo import memoized, model_stamp


@pytest.fixture(autouse=True)
def kept(request):
    """Results are kept only inside a session (the runner opens one per audit, the demo one for all its audits)."""
    if request.node.get_closest_marker("outside_a_session"):
        yield
        return
    with memo.session():
        yield


@pytest.mark.outside_a_session
def test_nothing_is_kept_outside_a_session_and_a_session_drops_what_it_kept(tiny):
    assert memoized(tiny.model, "k", lambda: 1) == 1 and memoized(tiny.model, "k", lambda: 2) == 2
    with memo.session():
        assert memoized(tiny.model, "k", lambda: 3) == 3
        with memo.session():  # a nested session shares the outer one's results
            assert memoized(tiny.model, "k", lambda: 4) == 3
        assert memoized(tiny.model, "k", lambda: 5) == 3
    with memo.session():
        assert memoized(tiny.model, "k", lambda: 6) == 6


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """How many times score_answers really ran its forward passes."""
    calls: list[int] = []
    real = scoring._score_answers

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "_score_answers", counting)
    return calls


def _first_param(model) -> torch.nn.Parameter:
    return next(p for p in model.parameters() if p.ndim == 2)


def _items(concept, n: int = 12):
    return list(concept.forget)[:n]


def test_scores_reused_and_invalidated(organism_pair_suppress, organism_concept, counted):
    pre = organism_pair_suppress.pre
    items = _items(organism_concept)
    first = score_answers(pre.model, pre.tokenizer, items, batch_size=4)
    again = score_answers(pre.model, pre.tokenizer, items, batch_size=4)
    assert len(counted) <= 1  # the first may itself be a reuse of an earlier test's scores
    np.testing.assert_array_equal(again.mean_logprob, first.mean_logprob)
    again.mean_logprob[:] = 99.0  # a caller writing into its copy does not change what the next one gets
    assert not np.any(score_answers(pre.model, pre.tokenizer, items, batch_size=4).mean_logprob == 99.0)
    kept = len(counted)
    # a hook installed: the edited model's scores, computed afresh and different
    site = resid_post_sites(pre.model)[0]
    with intervene(pre.model, {site: replace_with(torch.zeros(pre.d_model))}):
        edited = score_answers(pre.model, pre.tokenizer, items, batch_size=4)
    assert len(counted) == kept + 1
    assert not np.allclose(edited.mean_logprob, first.mean_logprob)
    # a weight edited in place and put back: computed afresh both times (its version counter moved)
    weight = _first_param(pre.model)
    with torch.no_grad():
        weight.mul_(0.5)
    halved = score_answers(pre.model, pre.tokenizer, items, batch_size=4)
    with torch.no_grad():
        weight.mul_(2.0)
    restored = score_answers(pre.model, pre.tokenizer, items, batch_size=4)
    assert len(counted) == kept + 3
    assert not np.allclose(halved.mean_logprob, first.mean_logprob)
    np.testing.assert_allclose(restored.mean_logprob, first.mean_logprob, rtol=1e-5, atol=1e-6)
    # other inputs are other keys
    score_answers(pre.model, pre.tokenizer, items, batch_size=3)
    assert len(counted) == kept + 4


def test_stamp_refuses_hooks_and_follows_mode(tiny):
    model = tiny.model
    stamp = model_stamp(model)
    assert stamp is not None and model_stamp(model) == stamp
    handle = model.model.layers[0].register_forward_hook(lambda *a: None)
    try:
        assert model_stamp(model) is None
        assert memoized(model, "k", lambda: 1) == 1 and memoized(model, "k", lambda: 2) == 2  # never kept
    finally:
        handle.remove()
    model.train()
    try:
        assert model_stamp(model) != stamp
    finally:
        model.eval()
    assert model_stamp(model) == stamp
    assert memoized(model, "k2", lambda: [1]) == [1] and memoized(model, "k2", lambda: [2]) == [1]


def test_captures_are_reused_only_for_the_same_inputs(organism_pair_suppress, organism_concept):
    from palimpsest.capture import capture

    pre = organism_pair_suppress.pre
    sites = resid_post_sites(pre.model)[:2]
    items = _items(organism_concept, 8)
    a = capture(pre.model, pre.tokenizer, items, sites, position="last", batch_size=4)
    b = capture(pre.model, pre.tokenizer, items, sites, position="last", batch_size=4)
    assert a[sites[0]] is b[sites[0]] and a is not b  # the tensors are shared, the dict is the caller's
    c = capture(pre.model, pre.tokenizer, items, sites, position="subject", batch_size=4)
    assert not torch.equal(c[sites[0]], a[sites[0]])


def _one_pass_per_layer(target, source, items, span: str = "answer") -> np.ndarray:
    """Depth's former sweep: one forward pass per patched layer."""
    from palimpsest.behavioural.depth import _mean_answer_logprob, patch_mask
    from palimpsest.capture.backends import forward_kwargs

    sites = resid_post_sites(target.model)
    batch = encode(target.tokenizer, [it.prompt for it in items], [it.answer for it in items],
                   [it.subject for it in items])
    _, states = run_and_capture(source.model, source.tokenizer, batch, sites, "torch")
    mask = patch_mask(batch, span)
    per_layer = []
    with torch.inference_mode():
        for site in sites:
            with intervene(target.model, {site: replace_with(states[site], mask)}):
                per_layer.append(_mean_answer_logprob(target.model(**forward_kwargs(batch)).logits, batch))
    return torch.stack(per_layer, dim=1).double().numpy()


@pytest.mark.parametrize("tokens", [1, 200, 100_000])  # one layer per pass, a few, every layer in one pass
def test_depth_sweep_batched_over_layers_equals_one_pass_per_layer(organism_pair_ga, organism_concept, tokens,
                                                                    monkeypatch):
    from palimpsest.behavioural import depth

    pair, items = organism_pair_ga, _items(organism_concept, 10)
    expected = _one_pass_per_layer(pair.pre, pair.post, items)
    monkeypatch.setattr(depth, "PATCH_TOKENS", tokens)
    base, got = depth.patching_drops(pair.pre, pair.post, items, batch_size=len(items))
    assert got.shape == expected.shape == (len(items), len(resid_post_sites(pair.pre.model)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    drops = base[:, None] - got
    assert np.abs(drops).max() > 0.05  # ga changed the states: the patches move the answers, the check has teeth


@pytest.mark.parametrize("generation, settled", [
    (" Paris", False),  # the last word may still grow ("Parisian")
    (" Paris,", True), (" Par", False), ("The city of Paris is", True), (" paris.", True), ("", False),
    (" Lyon, then Paris and", True), (" Parisian food", False),
])
def test_recall_settled_only_when_no_continuation_can_change_it(generation, settled):
    scorer = utility._scorer()
    assert recall_settled(scorer, "Paris", generation) is settled
    if settled:  # then every continuation has recall 1
        for tail in ("", "ian", " and more", "x"):
            assert rouge_l_recall(["Paris"], [generation + tail])[0] == 1.0


def test_recall_settled_needs_every_reference_word_in_order():
    scorer = utility._scorer()
    assert not recall_settled(scorer, "New York", " New York")
    assert recall_settled(scorer, "New York", " New York, the city")
    assert not recall_settled(scorer, "New York", " York, New ")  # LCS 1 of 2


def test_greedy_answers_stopped_at_settled_recall_score_as_the_full_ones(organism_pair_ga, organism_concept,
                                                                         monkeypatch):
    stoppers: list = []

    class Recorded(utility.RecallSettled):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stoppers.append(self)

    monkeypatch.setattr(utility, "RecallSettled", Recorded)
    items = [*organism_concept.retain, *organism_concept.neighbours, *organism_concept.forget][:24]
    refs = [it.answer for it in items]
    prompts = [it.prompt for it in items]
    for loaded in (organism_pair_ga.pre, organism_pair_ga.post):
        stoppers.clear()
        full = utility._greedy_answers(loaded, prompts, 24, 8, None)
        cut = utility._greedy_answers(loaded, prompts, 24, 8, refs)  # not greedy_answers: a kept result runs nothing
        np.testing.assert_array_equal(rouge_l_recall(refs, cut), rouge_l_recall(refs, full))
        assert all(len(c) <= len(f) for c, f in zip(cut, full))
        if loaded is organism_pair_ga.pre:  # pre states most answers: the stop fired on those rows
            assert sum(sum(s.settled) for s in stoppers) >= len(items) // 2


def test_answer_window_logits_equal_the_full_logits(organism_pair_ga, organism_concept):
    from palimpsest.capture.backends import forward_kwargs
    from palimpsest.capture.scoring import answer_logits, answer_token_logprobs

    items = [*organism_concept.forget[:5], *organism_concept.paraphrases[:5]]
    model, tok = organism_pair_ga.post.model, organism_pair_ga.post.tokenizer
    batch = encode(tok, [it.prompt for it in items], [it.answer for it in items])
    with torch.inference_mode():
        full = model(**forward_kwargs(batch)).logits
        window, offset = answer_logits(model, batch)
    assert offset > 0 and window.shape[1] < full.shape[1]  # the unembedding ran on fewer positions
    for got, expected in zip(answer_token_logprobs(window, batch, offset)[0], answer_token_logprobs(full, batch)[0]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_an_audit_reusing_kept_results_equals_one_computed_afresh(organism_pair_suppress, organism_pair_ga,
                                                                   organism_concept, monkeypatch, tmp_path):
    """Two audits of one pre model: the second reuses the first's pre-side results (captures, scores, greedy
    answers, MIA statistics, depth's S1) and gives what an audit computing everything afresh gives."""
    from palimpsest.audit import audit
    from palimpsest.types import AuditConfig

    names = ("probes", "logit_lens", "memorization", "mia", "depth", "relearning")
    config = AuditConfig(n_bootstrap=50, analysers=names, cache_dir=str(tmp_path))
    from palimpsest.models import ModelPair

    pre, floor = organism_pair_ga.pre, organism_pair_ga.floor  # one pre (and floor) model, two audits
    audit(ModelPair(pre=pre, post=organism_pair_suppress.post, floor=floor), organism_concept, config)
    reused = audit(organism_pair_ga, organism_concept, config)
    monkeypatch.setenv("PALIMPSEST_NO_MEMO", "1")
    fresh = audit(organism_pair_ga, organism_concept, config)
    assert reused.verdict == fresh.verdict
    for name in names:
        a, b = reused.analyses[name], fresh.analyses[name]
        assert a.status == b.status and a.status not in ("error", "skipped"), (name, a.status, a.notes)
        assert (a.residue is None) == (b.residue is None), name
        if a.residue is not None:
            assert a.residue == pytest.approx(b.residue, abs=1e-6), name
        for key, value in b.summary.items():
            if isinstance(value, float):
                assert a.summary[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (name, key)
