"""Fast unit tests for palimpsest.validate: scoring a synthetic population of audited cases, fitting the verdict's
thresholds offline, splitting worlds and rendering the validation page. No model is loaded or trained."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pydantic
import pytest

from palimpsest.types import AuditConfig, Result
from palimpsest.validate.page import render_validation, write_validation_page
from palimpsest.validate.scoring import (
    CaseOutcome,
    analyser_auc,
    confusion,
    evaluate_config,
    fit_verdict,
    fitted_config,
    split_worlds,
    summary,
)

# the pre-fit thresholds, explicit: the shipped defaults are whatever the last validation run fitted
BASE = AuditConfig(suppressed_min_residue=0.35, deleted_max_residue=0.2, min_residue_analyses=2,
                   suppressed_min_analyses=1, residue_evidence=None)

# ---------------------------------------------------------------- synthetic audit results


@dataclass
class FakeAudit:
    """What fit_verdict reads from an AuditResult."""

    behaviour: Result | None
    analyses: dict[str, Result] = field(default_factory=dict)


def behaviour(forgotten: bool = True) -> Result:
    return Result(name="behaviour", kind="behaviour", status="ok",
                  summary={"forget_acc_pre": 1.0, "forget_acc_post": 0.1 if forgotten else 0.9,
                           "retain_acc_pre": 1, "retain_acc_post": 1})


def residue(name: str, value: float, lo: float, hi: float, status: str = "ok") -> Result:
    return Result(name=name, kind="residue", status=status, residue=value, ci=(lo, hi))


NOISE = [0.05, 0.15, 0.3, 0.45, 0.5, 0.25]  # identical in both truths: AUC 0.5


def separable_population() -> list[tuple[str, FakeAudit]]:
    """good1 and good2 separate suppressed from deleted perfectly; noise has the same values in both truths (and
    lower bounds up to 0.45 on deleted cases, so with every analyser as evidence no deleted case can be called
    deleted)."""
    cases: list[tuple[str, FakeAudit]] = []
    for r in NOISE:
        cases.append(("suppressed", FakeAudit(behaviour(), {
            "good1": residue("good1", 0.6, 0.45, 0.75), "good2": residue("good2", 0.55, 0.42, 0.7),
            "noise": residue("noise", r, r - 0.05, r + 0.05)})))
        cases.append(("deleted", FakeAudit(behaviour(), {
            "good1": residue("good1", 0.05, 0.0, 0.12), "good2": residue("good2", 0.03, 0.0, 0.1),
            "noise": residue("noise", r, r - 0.05, r + 0.05)})))
    for _ in range(2):
        cases.append(("not_forgotten", FakeAudit(behaviour(forgotten=False), {
            "good1": residue("good1", 0.9, 0.8, 1.0), "good2": residue("good2", 0.9, 0.8, 1.0),
            "noise": residue("noise", 0.3, 0.2, 0.4)})))
    return cases


def outcome(case_id: str, truth: str, verdict: str, control: str = "ga", world: int = 0, **kwargs) -> CaseOutcome:
    construction = kwargs.pop("construction", truth)
    return CaseOutcome(case_id=case_id, world=world, forget_set=0, control=control, construction=construction,
                       truth=truth, verdict=verdict, report=f"{case_id}/report.html", **kwargs)


def hand_population() -> list[CaseOutcome]:
    return [
        outcome("s1", "suppressed", "suppressed", control="suppress"),
        outcome("s2", "suppressed", "deleted", control="suppress"),  # false deleted
        outcome("s3", "suppressed", "inconclusive", control="logit_bias"),
        outcome("d1", "deleted", "deleted", control="oracle"),
        outcome("d2", "deleted", "suppressed", control="oracle"),  # false suppressed
        outcome("n1", "not_forgotten", "not_forgotten", control="pre"),
        outcome("w1", "not_forgotten", "not_forgotten", control="suppress", construction="suppressed",
                weak_control=True),
        outcome("u1", "unknown", "deleted", control="ga"),
        outcome("u2", "unknown", "suppressed", control="ga"),
    ]


# ---------------------------------------------------------------- confusion and summary


def test_confusion_counts_scored_cases_only():
    conf = confusion(hand_population())
    assert conf["labels"]["truth"] == ["deleted", "suppressed", "not_forgotten"]
    assert conf["labels"]["verdict"] == ["deleted", "suppressed", "not_forgotten", "inconclusive"]
    assert conf["n"] == 7
    assert sum(map(sum, conf["matrix"])) == 7  # the two unknown cases are not scored
    assert conf["counts"]["suppressed"] == {"deleted": 1, "suppressed": 1, "not_forgotten": 0, "inconclusive": 1}
    assert conf["matrix"][0] == [1, 1, 0, 0]  # deleted row
    assert conf["matrix"][2] == [0, 0, 2, 0]  # not_forgotten row


def test_summary_on_hand_made_population():
    s = summary(hand_population())
    assert s["n"] == 7 and s["n_cases"] == 9 and s["n_unknown"] == 2
    assert s["correct"] == 4
    assert s["accuracy"] == pytest.approx(4 / 7)
    assert s["false_deleted"] == 1 and s["false_deleted_rate"] == pytest.approx(1 / 3)
    assert s["false_suppressed"] == 1 and s["false_suppressed_rate"] == pytest.approx(1 / 2)
    assert s["inconclusive"] == 1
    assert s["by_truth"]["suppressed"] == {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)}
    assert s["by_truth"]["not_forgotten"]["accuracy"] == 1.0
    assert s["by_control"]["suppress"]["n"] == 3 and s["by_control"]["suppress"]["deleted"] == 1
    assert s["by_control"]["ga"]["scored"] == 0 and s["by_control"]["ga"]["n"] == 2
    assert s["weak_controls"] == ["w1"]
    assert s["unknown_by_control"] == {"ga": {"deleted": 1, "suppressed": 1}}


def test_summary_rates_are_none_without_cases():
    s = summary([outcome("n1", "not_forgotten", "not_forgotten")])
    assert s["false_deleted_rate"] is None and s["false_suppressed_rate"] is None
    assert s["by_truth"]["deleted"]["accuracy"] is None
    assert summary([])["accuracy"] is None


def test_case_outcome_forbids_extra_fields():
    with pytest.raises(pydantic.ValidationError):
        CaseOutcome(case_id="x", world=0, forget_set=0, control="ga", construction="deleted", truth="deleted",
                    verdict="deleted", residues={}, surprise=1)


# ---------------------------------------------------------------- analyser AUC


def auc_population(pos: list[float], neg: list[float], name: str = "a") -> list[CaseOutcome]:
    cases = [outcome(f"s{i}", "suppressed", "suppressed", residues={name: {"residue": v, "ci": [v, v],
                                                                           "status": "ok"}})
             for i, v in enumerate(pos)]
    cases += [outcome(f"d{i}", "deleted", "deleted", residues={name: {"residue": v, "ci": [v, v], "status": "ok"}})
              for i, v in enumerate(neg)]
    return cases


def test_auc_perfect_separation_is_one():
    result = analyser_auc(auc_population([0.6, 0.7, 0.8, 0.5], [0.0, 0.1, 0.05]), n_bootstrap=200)["a"]
    assert result["auc"] == 1.0
    assert result["ci"] == [1.0, 1.0]
    assert result["n_suppressed"] == 4 and result["n_deleted"] == 3


def test_auc_identical_residues_is_chance_and_ci_in_unit_interval():
    rng = np.random.default_rng(1)
    same = [0.3] * 5
    result = analyser_auc(auc_population(same, same), n_bootstrap=200)["a"]
    assert result["auc"] == 0.5
    noisy = analyser_auc(auc_population(list(rng.uniform(0, 1, 30)), list(rng.uniform(0, 1, 30))),
                         n_bootstrap=500)["a"]
    assert 0.3 < noisy["auc"] < 0.7
    lo, hi = noisy["ci"]
    assert 0.0 <= lo <= noisy["auc"] <= hi <= 1.0 and hi - lo > 0.05
    # deterministic under a seed, and the seed matters
    population = auc_population(list(rng.uniform(0, 1, 20)), list(rng.uniform(0, 1, 20)))
    assert analyser_auc(population, seed=3)["a"]["ci"] == analyser_auc(population, seed=3)["a"]["ci"]
    assert analyser_auc(population, seed=3)["a"]["ci"] != analyser_auc(population, seed=4)["a"]["ci"]


def test_auc_ignores_non_ok_and_needs_two_per_class():
    cases = auc_population([0.6, 0.7], [0.1])
    cases.append(outcome("d9", "deleted", "deleted", residues={"a": {"residue": 0.9, "ci": None,
                                                                     "status": "inconclusive"}}))
    cases.append(outcome("d10", "deleted", "deleted", residues={"a": {"residue": None, "ci": None,
                                                                      "status": "skipped"}}))
    result = analyser_auc(cases)["a"]
    assert result["auc"] is None and result["n_deleted"] == 1 and "reason" in result


# ---------------------------------------------------------------- fitting the verdict


def test_fit_verdict_picks_the_separating_analysers():
    train = separable_population()
    base = BASE
    truths = [t for t, _ in train]
    base_verdicts = evaluate_config(train, base)
    base_errors = sum(v != t for t, v in zip(truths, base_verdicts))
    assert base_errors > 0  # the noise analyser spoils the default verdict on some deleted cases
    fit = fit_verdict(train, base)
    assert fit.train_false_deleted == 0
    assert fit.train_errors <= fit.base_errors == base_errors
    assert fit.train_errors == 0
    assert fit.values["residue_evidence"] == ("good1", "good2")
    assert fit.train_auc["good1"] == 1.0 and fit.train_auc["noise"] == 0.5
    assert fit.train_cases == len(train) and fit.candidates_tried > 100
    assert "false" in fit.criterion
    # the chosen config, re-decided, reproduces the reported training numbers
    config = fitted_config(base, fit.model_dump(mode="json")["values"])
    assert config.residue_evidence == ("good1", "good2")
    verdicts = evaluate_config([a for _, a in train], config)
    assert sum(v != t for t, v in zip(truths, verdicts)) == fit.train_errors


def test_fit_verdict_removes_false_deleted():
    """Suppressed cases whose residue lower bounds sit just under the default deleted bound: the default calls them
    deleted; the fit must not."""
    train: list[tuple[str, FakeAudit]] = []
    for i in range(4):
        train.append(("suppressed", FakeAudit(behaviour(), {
            f"a{j}": residue(f"a{j}", 0.3, 0.18, 0.42) for j in range(2)})))
        train.append(("deleted", FakeAudit(behaviour(), {
            f"a{j}": residue(f"a{j}", 0.02 + 0.01 * i, 0.0, 0.08) for j in range(2)})))
    fit = fit_verdict(train, BASE)
    assert fit.base_false_deleted == 4
    assert fit.train_false_deleted == 0
    assert fit.train_errors <= fit.base_errors
    verdicts = evaluate_config(train, fitted_config(BASE, fit.values))
    assert not any(t == "suppressed" and v == "deleted" for (t, _), v in zip(train, verdicts))


def test_fit_verdict_respects_a_given_grid():
    train = separable_population()
    fit = fit_verdict(train, BASE, grid={"suppressed_min_residue": [0.35], "deleted_max_residue": [0.2],
                                                  "min_residue_analyses": [2], "suppressed_min_analyses": [1],
                                                  "residue_evidence": [None]})
    assert fit.candidates_tried == 1
    assert fit.train_errors == fit.base_errors
    with pytest.raises(ValueError):
        fit_verdict(train, BASE, grid={"seed": [1]})


# ---------------------------------------------------------------- splitting worlds


def test_split_worlds():
    split = split_worlds([3, 1, 0, 2])
    assert split == ([0, 1], [2, 3])
    assert split.held_out is True and split.fit == [0, 1] and split.test == [2, 3]
    fit_worlds, test_worlds = split_worlds([2, 0, 1])
    assert (fit_worlds, test_worlds) == ([0, 1], [2])
    one = split_worlds([5])
    assert one == ([5], [5]) and one.held_out is False
    with pytest.raises(ValueError):
        split_worlds([])


# ---------------------------------------------------------------- the page


def test_validation_page_renders_and_escapes(tmp_path):
    cases = hand_population()
    evil = outcome("w9-<b>evil</b>", "deleted", "deleted", world=1,
                   residues={"a": {"residue": 0.1, "ci": [0.0, 0.2], "status": "ok"}})
    cases.append(evil)
    train = separable_population()
    fit = fit_verdict(train, BASE, grid={"min_residue_analyses": [2], "suppressed_min_analyses": [1]})
    fit.train_worlds = [0]
    held = [c for c in cases if c.world == 1]
    report = {
        "summary": summary(cases), "confusion": confusion(cases),
        "held_out": {"summary": summary(held), "confusion": confusion(held), "worlds": [1]},
        "fitted_all": {"summary": summary(cases), "confusion": confusion(cases)},
        "fit": fit.model_dump(mode="json"),
        "analyser_auc": analyser_auc(auc_population([0.6, 0.7, 0.8], [0.0, 0.1, 0.2]) + cases, n_bootstrap=100),
        "cases": [c.model_dump() for c in cases], "kernels": "kernel <script>x</script>", "seconds": 12.5,
        "config": BASE.model_dump(mode="json"),
    }
    html = render_validation(report, "validation <i>title</i>")
    for case in hand_population():
        assert case.case_id in html
    assert 'href="s1/report.html"' in html
    assert "w9-<b>evil</b>" not in html
    assert "w9-&lt;b&gt;evil&lt;/b&gt;" in html
    assert "validation &lt;i&gt;title&lt;/i&gt;" in html and "<i>title</i>" not in html
    assert "kernel <script>x</script>" not in html
    assert "Held-out accuracy 100.0%" in html  # world 1 holds only the evil case, called right
    assert "Not held out" not in html
    assert "the fitted thresholds)" in html
    path = write_validation_page(report, tmp_path / "out")
    assert path == tmp_path / "out" / "index.html" and path.read_text(encoding="utf-8") == html.replace(
        "validation &lt;i&gt;title&lt;/i&gt;", "palimpsest validation")


def test_validation_page_flags_training_numbers():
    cases = [outcome("a", "deleted", "deleted")]
    report = {"summary": summary(cases), "confusion": confusion(cases),
              "held_out": {"summary": summary(cases), "confusion": confusion(cases), "worlds": [0]},
              "fit": {"values": {}, "criterion": "c", "train_worlds": [0]}, "analyser_auc": {},
              "cases": [c.model_dump() for c in cases], "kernels": "", "seconds": 1.0, "config": {}}
    assert "Not held out" in render_validation(report, "t")


def test_standard_metric_auc_reads_each_metric_the_way_the_field_does():
    """PrivLeak is read "lower = less forgotten" (strongly negative = under-unlearned): suppressed cases at -90 and
    -80 vs deleted at +5 and -2 separate perfectly, AUC 1; jaccard_top200 is read "higher = less forgotten": the
    same values in the other direction give AUC 0 (the reading points the wrong way); missing values are left out."""
    from palimpsest.validate.scoring import standard_metric_auc

    def case(i, truth, privleak, jaccard):
        return outcome(f"{truth}{i}", truth, truth, standard={"privleak.loss": privleak, "jaccard_top200": jaccard})

    cases = [case(0, "suppressed", -90.0, 0.1), case(1, "suppressed", -80.0, 0.2),
             case(2, "deleted", 5.0, 0.9), case(3, "deleted", -2.0, 0.8), case(4, "deleted", None, None)]
    result = standard_metric_auc(cases, n_bootstrap=50)
    assert result["privleak.loss"]["auc"] == 1.0 and result["privleak.loss"]["less_forgotten"] == "lower"
    assert result["jaccard_top200"]["auc"] == 0.0 and result["jaccard_top200"]["n_deleted"] == 2
    assert result["uds"]["auc"] is None and "needs at least 2" in result["uds"]["reason"]
