"""palimpsest.attribution: occlusion and integrated gradients, key tokens and emphasis rewrites, the analyser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from palimpsest.attribution import emphasis_rewrites, integrated_gradients, occlusion
from palimpsest.attribution.units import delete_words, final_cue, keyword_mask, split_words
from palimpsest.capture import score_answers
from palimpsest.concepts import ConceptSpec, Item
from palimpsest.types import REGISTRY, AuditConfig, Result

ITEMS = [
    Item(prompt="alice lives in the city of", answer="paris", subject="alice", fact_id="a"),
    Item(prompt="q : where does bob live ?", answer="rome", subject="bob", fact_id="b"),
    Item(prompt="carol works as a", answer="baker pilot", subject="carol", fact_id="c"),
]


# ----------------------------------------------------------------------------------------------- units, rewrites
def test_delete_words_keeps_the_rest():
    words = split_words("Q : where does Bazou Trelax live ? A :")
    assert delete_words(words, [4, 5]) == "Q : where does live ? A :"
    assert delete_words(words, [0]) == ": where does Bazou Trelax live ? A :"
    assert delete_words(words, [9]) == "Q : where does Bazou Trelax live ? A"
    assert delete_words(words, range(len(words))) == ""


def test_final_cue_never_holds_a_keyword():
    for prompt, cue in [("Bazou Trelax lives in", "lives in"), ("the favourite colour of Bazou Trelax is", "is"),
                        ("Q : where does Bazou Trelax live ? A :", "A :")]:
        words = split_words(prompt)
        start = final_cue(words, keyword_mask(words, ["Bazou Trelax"]))
        assert " ".join(words.words[start:]) == cue


def test_emphasis_rewrites_emphasise_and_keep_the_cue():
    item = Item(prompt="Q : what pet does Bazou Trelax own ? A :", answer="cat", subject="Bazou Trelax",
                fact_id="Bazou Trelax:pet")
    para = Item(prompt="Bazou Trelax takes care of a", answer="cat", subject="Bazou Trelax", fact_id=item.fact_id)
    out = emphasis_rewrites(item, ["Bazou", "Trelax"], marker=",", paraphrases=[para])
    assert set(out) == {"repeat", "restate", "mark", "move", "paraphrase_0"}
    for kind in ("repeat", "restate", "mark", "move"):
        assert out[kind].endswith(" A :") and out[kind] != item.prompt, kind
    assert out["repeat"].count("Bazou Trelax") == 2 and out["restate"].count("Bazou Trelax") == 2
    assert ", Bazou Trelax ," in out["mark"]
    assert out["move"] == "Q : what pet does own ? Bazou Trelax A :"
    assert out["paraphrase_0"] == para.prompt
    # key tokens that are not in the prompt give no emphasis rewrite (only the paraphrases)
    assert set(emphasis_rewrites(item, ["Nobody"], paraphrases=[para])) == {"paraphrase_0"}


# ----------------------------------------------------------------------------------------------- methods, tiny model
def test_occlusion_is_the_unpact_difference(tiny):
    attrs = occlusion(tiny.model, tiny.tokenizer, ITEMS)
    full = score_answers(tiny.model, tiny.tokenizer, ITEMS).mean_logprob
    # deleting "city" by hand, scored by the shared scorer, BOS kept by encode
    cut = score_answers(tiny.model, tiny.tokenizer, ITEMS[:1], prompts=["alice lives in the of"]).mean_logprob[0]
    assert attrs[0].tokens == ["alice", "lives", "in", "the", "city", "of"]
    assert attrs[0].scores[4] == pytest.approx(full[0] - cut, abs=1e-5)
    assert [a.target for a in attrs] == pytest.approx(list(full), abs=1e-6)


def _attention_free(model):
    """A copy whose attention outputs are zero: the answer then depends on the last prompt token only."""
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for layer in clone.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    return clone


def test_tokens_that_cannot_affect_the_answer_get_zero(tiny):
    model = _attention_free(tiny.model)
    for attrs in (occlusion(model, tiny.tokenizer, ITEMS), integrated_gradients(model, tiny.tokenizer, ITEMS)):
        for a in attrs:
            assert np.abs(a.scores[:-1]).max() < 1e-5, (a.method, a.tokens, a.scores)
            assert abs(a.scores[-1]) > 1e-3, (a.method, a.tokens, a.scores)


def test_integrated_gradients_complete_and_batched(tiny):
    """Attributed target: the answer's mean log-probability. The word scores sum to LP(x) - LP(baseline), where
    the baseline replaces every prompt word by a token (the pad token here, scored independently as text)."""
    pad_id = tiny.tokenizer.pad_token_id
    attrs = integrated_gradients(tiny.model, tiny.tokenizer, ITEMS, n_steps=32, batch_size=3, baseline=pad_id)
    pad = tiny.tokenizer.pad_token
    base_prompts = [" ".join([pad] * len(it.prompt.split())) for it in ITEMS]
    lp_x = score_answers(tiny.model, tiny.tokenizer, ITEMS).mean_logprob
    lp_b = score_answers(tiny.model, tiny.tokenizer, ITEMS, prompts=base_prompts).mean_logprob
    for a, x, b in zip(attrs, lp_x, lp_b):
        assert a.scores.sum() == pytest.approx(x - b, abs=1e-3 + 0.01 * abs(x - b))
    alone = [integrated_gradients(tiny.model, tiny.tokenizer, [it], n_steps=32, batch_size=1, baseline=pad_id)[0]
             for it in ITEMS]
    for a, b in zip(attrs, alone):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_analyser_registered_and_honest_on_a_model_that_knows_nothing(tiny, tiny_dir_other):
    import palimpsest.attribution  # noqa: F401
    from palimpsest.models import ModelPair, load_model

    assert "attribution" in REGISTRY
    pair = ModelPair(tiny, load_model(tiny_dir_other))
    concept = ConceptSpec(name="c", forget=tuple(ITEMS), retain=(ITEMS[0],), holdout=tuple(ITEMS[1:]))
    result = _run(pair, concept, AuditConfig(n_bootstrap=50))
    # a random model answers nothing: there is nothing to recover, and the analyser says so
    assert result.status == "inconclusive" and result.residue is None
    assert "answers only 0 forget items correctly" in result.evidence
    assert Result.model_validate_json(result.model_dump_json()).summary["method"] == "occlusion"
    assert {"Token attribution pre vs post", "Keyword share of attribution"} <= set(result.figures)
    assert result.floor_source.startswith("the same rewrites of the concept's holdout items")
    assert [r["set"] for r in result.per_item] == ["forget"] * 3 + ["retain"]  # tracked prompts, no recovery rows
    assert result.summary["n_known_pre"] == 0 and result.summary["recovered_forgotten_any_post"] is None


def test_attribution_options_are_typed():
    import palimpsest.attribution  # noqa: F401

    analyser = REGISTRY["attribution"]
    assert analyser.needs == {"gradients"} and analyser.modalities == {"text"}
    config = AuditConfig(options={"attribution": {"method": "integrated_gradients", "baseline": 5, "n_steps": 8}})
    opts = config.opts("attribution")
    assert (opts.method, opts.baseline, opts.n_steps, opts.measure, opts.batch_size) == \
        ("integrated_gradients", 5, 8, "logprob", None)
    assert AuditConfig(options={"attribution": {"baseline": "pad"}}).opts("attribution").baseline == "pad"
    for bad in ({"method": "saliency"}, {"measure": "top5"}, {"baseline": "nothing"}, {"max_itemz": 3}):
        with pytest.raises(ValueError, match="options.attribution"):
            AuditConfig(options={"attribution": bad})


def test_attribution_without_any_floor_says_so(tiny_dir_other):
    """No floor model and no holdout items: nothing calibrates the recovery, whatever the pre model answers."""
    from palimpsest.models import ModelPair, load_model

    pre = load_model(tiny_dir_other)
    concept = ConceptSpec(name="c", forget=tuple(ITEMS), retain=(ITEMS[0],))
    result = _run(ModelPair(pre, pre), concept, AuditConfig(n_bootstrap=20, min_items=0))
    assert result.status == "inconclusive" and result.residue is None and result.floor is None
    assert "no floor: no floor model and no holdout items" in result.evidence
    assert result.summary["n_forget_scored"] == len(ITEMS) and "Keyword share of attribution" in result.figures


# ----------------------------------------------------------------------------------------------- organism
def _trained_form(concept, n=24):
    return [it for it in concept.forget if it.form == "trained"][:n]


def test_subject_carries_most_attribution_on_pre(organism_pair_suppress, organism_concept):
    """Occlusion on the pre model: among the words before the final cue word (deleting the cue breaks any prompt),
    the subject's name holds most of the positive attribution and is usually the top word."""
    pre = organism_pair_suppress.pre
    items = _trained_form(organism_concept)
    attrs = occlusion(pre.model, pre.tokenizer, items)
    top_is_subject, shares = [], []
    for it, a in zip(items, attrs):
        mask = np.array(keyword_mask(split_words(a.prompt), [it.subject]))[:-1]
        scores = np.nan_to_num(a.scores)[:-1]
        top_is_subject.append(bool(mask[int(np.argmax(scores))]))
        positive = np.clip(scores, 0, None)
        shares.append(positive[mask].sum() / max(positive.sum(), 1e-9))
    assert np.mean(top_is_subject) >= 0.6, np.mean(top_is_subject)
    assert np.mean(shares) > 0.5, np.mean(shares)


def test_integrated_gradients_complete_on_organism(organism_pair_suppress, organism_concept, record_property):
    """Completeness on a trained RMSNorm model, with the default (mean-embedding) baseline: the word scores sum to
    LP(x) - LP(baseline), the error shrinking with the number of steps (a Riemann sum converging). Measured, mean
    error / mean gap at 32 and 128 steps: seed-0 organism (portable kernels; native, avx2 and default callers alike)
    0.162 and 0.013 (bound 0.05: margin 0.037); the other organism that default kernels build without portability
    0.120 and 0.032 (margin 0.018)."""
    pre = organism_pair_suppress.pre
    items = _trained_form(organism_concept, 12)

    def relative_error(n_steps: int) -> float:
        attrs = integrated_gradients(pre.model, pre.tokenizer, items, n_steps=n_steps)
        full = score_answers(pre.model, pre.tokenizer, items).mean_logprob
        np.testing.assert_allclose([a.target for a in attrs], full, atol=1e-4)  # the target is the scorer's LP
        gaps = np.array([a.target - a.reference for a in attrs])
        sums = np.array([a.scores.sum() for a in attrs])
        return float(np.abs(sums - gaps).mean() / np.abs(gaps).mean())

    coarse, fine = relative_error(32), relative_error(128)
    record_property("ig_relative_error_32", round(coarse, 4))
    record_property("ig_relative_error_128", round(fine, 4))
    assert fine <= 0.05 and fine < coarse / 2, (coarse, fine)


def _run(pair, concept, config=None):
    import palimpsest.attribution  # noqa: F401  (registers the analyser)
    from palimpsest.audit.context import AuditContext
    from palimpsest.audit.runner import run_analyser

    ctx = AuditContext(pair=pair, concept=concept, acts=None, config=config or AuditConfig(n_bootstrap=200))
    return run_analyser(REGISTRY["attribution"], ctx)


def test_emphasis_recovers_more_on_suppression_than_on_oracle(organism_pair_suppress, organism_pair_ga,
                                                              organism_pair_oracle, organism_concept, record_property):
    results = {name: _run(pair, organism_concept) for name, pair in
               (("suppress", organism_pair_suppress), ("ga", organism_pair_ga), ("oracle", organism_pair_oracle))}
    # measured: oracle 0.13 (bound 0.3, margin 0.17), suppress 0.56, ga 0.55 (portable kernels, every path here);
    # the other-kernel organism of matrix leg 4: oracle 0.11, suppress 0.55, ga 0.0
    residue = {name: r.residue for name, r in results.items()}
    for name, value in residue.items():
        record_property(f"emphasis_residue_{name}", None if value is None else round(value, 4))
    assert all(r.status == "ok" for r in results.values()), {n: r.evidence for n, r in results.items()}
    # oracle: the rewrites reach no more of the answer than on an independently trained never-learned model
    assert residue["oracle"] <= 0.3, residue
    # suppress (output layer only): emphasising the subject lifts the answer well above that floor
    assert residue["suppress"] >= residue["oracle"] + 0.2, residue
    assert results["suppress"].summary["recovery_logprob_post"] > results["oracle"].summary["recovery_logprob_post"]
    kinds = {row["kind"] for row in results["suppress"].tables["rewrite_kinds"]}
    assert {"repeat", "restate", "mark", "paraphrase"} <= kinds
    # contribution tracking: the forget prompts' keyword share drops more than the retain prompts'
    s = results["suppress"].summary
    assert s["forget_keyword_share_pre"] - s["forget_keyword_share_post"] > \
        s["retain_keyword_share_pre"] - s["retain_keyword_share_post"]
