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
