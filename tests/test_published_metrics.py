"""Metrics that carry a published name compute it as published: fixed inputs with hand-derived expected values."""

from __future__ import annotations

import pytest

from palimpsest.behavioural.mia import auc_gain_over_floor, privleak


@pytest.mark.parametrize("auc_post, auc_floor, expected", [
    # MUSE's AUC is 1 - the usual one: (1 - 0.8) = 0.2 vs (1 - 0.6) = 0.4 -> (0.2 - 0.4) / 0.4 * 100 = -50
    (0.8, 0.6, -50.0),
    # 0.05 vs 0.55 -> (0.05 - 0.55) / 0.55 * 100 = -90.909...
    (0.95, 0.45, -500.0 / 5.5),
    # like the retrained model -> 0
    (0.5, 0.5, 0.0),
    # over-unlearned (members look less member-like than in the retrain): 0.7 vs 0.5 -> (0.7 - 0.5) / 0.5 * 100 = +40
    (0.3, 0.5, 40.0),
])
def test_privleak_is_muses_sign_and_percent(auc_post, auc_floor, expected):
    assert privleak(auc_post, auc_floor) == pytest.approx(expected)


def test_the_old_relative_auc_is_kept_under_its_own_name():
    # the variant palimpsest reported as "privleak" before: (0.8 - 0.6) / 0.6 = +1/3, the opposite sign of MUSE's
    assert auc_gain_over_floor(0.8, 0.6) == pytest.approx(1 / 3)
    assert (auc_gain_over_floor(0.8, 0.6) > 0) != (privleak(0.8, 0.6) > 0)


def test_privleak_on_the_organism_reads_suppress_as_under_unlearned(organism_pair_suppress, organism_pair_oracle,
                                                                     organism_concept):
    """Measured (seed-0 organism, loss attack): suppress -100.0% (its members are perfectly separable: AUC 1.0),
    the oracle retrain +14.2% against the independently seeded floor (AUC 0.41 vs 0.48)."""
    from palimpsest.audit.runner import run_one
    from palimpsest.types import AuditConfig

    config = AuditConfig(n_bootstrap=100)
    suppress = run_one("mia", organism_pair_suppress, organism_concept, config=config).summary["privleak"]["loss"]
    oracle = run_one("mia", organism_pair_oracle, organism_concept, config=config).summary["privleak"]["loss"]
    assert suppress <= -50.0, suppress
    assert abs(oracle) < abs(suppress) / 2, (oracle, suppress)


# ---------------------------------------------------------------- Min-K% / Min-K%++ (open-unlearning's attacks)


def test_min_k_keeps_max_one_floor_k_n_tokens_for_lengths_1_to_20():
    """open-unlearning's MinKProbAttack keeps max(1, int(len * k)) tokens; k = 0.4 in its configs. By hand:
    floor(0.4 n) is 0 for n = 1, 2 (so 1 token), 1 for n = 3, 4, 2 for n = 5..7, 3 for n = 8, 9, ... 8 for n = 20."""
    from palimpsest.behavioural.mia import MIAConfig, kept_count

    expected = [1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8]
    assert [kept_count(n, 0.4) for n in range(1, 21)] == expected
    assert MIAConfig().k == 0.4
    # k = 0.2: floor(0.2 n) = 1 from n = 5 to 9, 2 from n = 10; ceil (palimpsest before) gave 2 at n = 6
    assert [kept_count(n, 0.2) for n in (4, 5, 6, 9, 10)] == [1, 1, 1, 1, 2]


def test_min_k_scores_are_the_mean_of_the_lowest_kept_log_probs():
    """5 tokens, k = 0.4 -> floor(2.0) = 2 kept: the two lowest log-probs -3 and -2 average to -2.5 (higher = more
    member-like, the negation of open-unlearning's score; the AUC is the same). Min-K%++ on (logp - mu) / sigma
    with sigma = sqrt(max(var, 1e-6)): var 0 for every token -> sigma 1e-3, so the z of the lowest two tokens,
    (-3 - 0) / 1e-3 and (-2 - 0) / 1e-3, average to -2500."""
    import numpy as np

    from palimpsest.behavioural.mia import VARIANCE_FLOOR, attack_scores

    logp = np.array([-1.0, -3.0, -0.5, -2.0, -0.1])
    stats = [{"logp": logp, "mu": np.zeros(5), "sigma": np.full(5, np.sqrt(VARIANCE_FLOOR))}]
    scores = attack_scores(stats, ["a text"], 0.4)
    assert scores["min_k"][0] == pytest.approx(-2.5)
    assert scores["min_k_plus_plus"][0] == pytest.approx(-2500.0)
    assert scores["loss"][0] == pytest.approx(logp.mean())


def test_reference_attack_is_the_loss_difference_to_the_reference_model():
    """open-unlearning ReferenceAttack: target loss - reference loss, higher = non-member; palimpsest negates it.
    Target mean log-probs -1 and -2 (losses 1, 2), reference losses 3 and 1: scores 3 - 1 = 2 and 1 - 2 = -1."""
    import numpy as np

    from palimpsest.behavioural.mia import attack_scores

    stats = [{"logp": np.array([-1.0, -1.0]), "mu": np.zeros(2), "sigma": np.ones(2)},
             {"logp": np.array([-2.0]), "mu": np.zeros(1), "sigma": np.ones(1)}]
    scores = attack_scores(stats, ["a", "b"], 0.4, reference_loss=np.array([3.0, 1.0]))
    assert scores["reference"].tolist() == pytest.approx([2.0, -1.0])


def test_gradient_norm_is_the_mean_parameter_norm_of_one_texts_loss(tiny):
    """GradNormAttack: per text, mean over parameter tensors of ||dL/dtheta||_2, L the mean NLL of the scored
    tokens; checked against torch autograd written out here, and the model's weights and grads are left as found."""
    import torch

    from palimpsest.behavioural.mia import gradient_norms
    from palimpsest.capture import encode

    text = "the cat sat"
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    got = gradient_norms(tiny.model, tiny.tokenizer, [text], None, 2)
    batch = encode(tiny.tokenizer, [text])
    tiny.model.zero_grad()
    with torch.enable_grad():
        logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], batch.input_ids[0, 1:])
        params = [p for p in tiny.model.parameters()]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    expected = torch.stack([g.norm(p=2) for g in grads if g is not None]).mean().item()
    assert got[0] == pytest.approx(expected, rel=1e-4)
    assert all(torch.equal(before[n], p) and p.grad is None for n, p in tiny.model.named_parameters())


# ---------------------------------------------------------------- truth ratio, forget quality, model utility


class _Scores:
    def __init__(self, mean_logprob):
        import numpy as np

        self.mean_logprob = np.asarray(mean_logprob, dtype=float)


def test_truth_ratio_is_the_geometric_mean_open_unlearning_computes(monkeypatch):
    """Two items, two perturbed answers each. Length-normalised log-probs (mean answer-token log p):
    item 1: paraphrased -1, perturbed -1 and -3; item 2: paraphrased -2, perturbed -2 and -2.
    Geometric (open-unlearning): R1 = exp(mean(-1, -3)) / exp(-1) = exp(-2 + 1) = e^-1 = 0.36788;
    R2 = exp(-2) / exp(-2) = 1. Arithmetic (paper): R1 = (e^-1 + e^-3) / 2 / e^-1 = (1 + e^-2) / 2 = 0.56767; R2 = 1.
    Forget statistic mean(min(R, 1/R)): geometric (0.36788 + 1) / 2 = 0.68394; arithmetic (0.56767 + 1) / 2 = 0.78383.
    Retain statistic mean(max(0, 1 - R)): geometric (0.63212 + 0) / 2 = 0.31606."""
    import math

    from palimpsest.behavioural import memorization
    from palimpsest.concepts.spec import Item

    items = [Item(prompt="p1", answer="a", paraphrased_answer="a2", perturbed_answers=("b", "c")),
             Item(prompt="p2", answer="d", paraphrased_answer="d2", perturbed_answers=("e", "f"))]
    table = {"a2": -1.0, "b": -1.0, "c": -3.0, "d2": -2.0, "e": -2.0, "f": -2.0}
    monkeypatch.setattr(memorization, "score_answers",
                        lambda model, tok, its, answers, batch_size: _Scores([table[a] for a in answers]))
    ratios = memorization.truth_ratios(None, None, items, 8)
    assert ratios.geometric.tolist() == pytest.approx([math.exp(-1), 1.0], rel=1e-8)
    assert ratios.arithmetic.tolist() == pytest.approx([(1 + math.exp(-2)) / 2, 1.0])
    assert memorization.truth_ratio_statistic("forget", ratios.geometric) == pytest.approx(0.683940, abs=1e-6)
    assert memorization.truth_ratio_statistic("forget", ratios.arithmetic) == pytest.approx(0.783834, abs=1e-6)
    assert memorization.truth_ratio_statistic("retain", ratios.geometric) == pytest.approx(0.316060, abs=1e-6)


def test_forget_quality_is_the_ks_p_value_against_the_floor():
    """KS two-sample test (TOFU forget quality): samples {1, 2, 3} vs {4, 5, 6} are fully separated, D = 1; the exact
    two-sided p-value for n = m = 3 is 2 / C(6, 3) = 2 / 20 = 0.1. Identical samples: D = 0, p = 1."""
    import numpy as np

    from palimpsest.behavioural.memorization import TruthRatios, forget_quality_summary

    def tr(values):
        return TruthRatios(np.array(values, float), np.array(values, float), list(range(len(values))), False)

    ratios = {("forget", "post"): tr([1, 2, 3]), ("forget", "pre"): tr([4, 5, 6]), ("forget", "floor"): tr([4, 5, 6])}
    out = forget_quality_summary(ratios, floor=True)
    assert out["forget_quality"] == pytest.approx(0.1)
    assert out["forget_quality_pre"] == pytest.approx(1.0)
    assert forget_quality_summary(ratios, floor=False) == {}


def test_model_utility_is_the_harmonic_mean_and_zero_if_one_score_is():
    """hmean(0.5, 1.0, 1.0) = 3 / (2 + 1 + 1) = 0.75; one zero component -> 0 (scipy hmean, open-unlearning)."""
    from palimpsest.behavioural.utility import model_utility, normalised_probability, rouge_l_recall

    assert model_utility({"a": 0.5, "b": 1.0, "c": 1.0}) == pytest.approx(0.75)
    assert model_utility({"a": 0.0, "b": 1.0}) == pytest.approx(0.0)
    assert model_utility({}) is None
    # normalised probability: 0.5 / (0.5 + 0.25 + 0.25) = 0.5
    import numpy as np

    assert normalised_probability(np.array([0.5]), [np.array([0.25, 0.25])])[0] == pytest.approx(0.5)
    # ROUGE-L recall: LCS of "paris is the capital" in "the capital is paris" is 2 words ("the capital" or
    # "is ... "): 2 / 4 = 0.5; a generation containing the reference in order -> 1
    assert rouge_l_recall(["paris is the capital"], ["the capital is paris"])[0] == pytest.approx(0.5)
    assert rouge_l_recall(["paris"], ["it is paris of course"])[0] == pytest.approx(1.0)
