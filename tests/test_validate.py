"""`palimpsest validate` on the organism: the population runs end to end, and each control is what it claims."""

from __future__ import annotations

import json

import pytest
import torch

from palimpsest.audit.context import AuditContext
from palimpsest.audit.runner import run_analyser
from palimpsest.audit.verdict import decide
from palimpsest.concepts import concept_from_dict
from palimpsest.types import Analyser, AuditConfig, Result

# a reduced population: one world, its default forget set, one control of each truth, fast analysers
FAST = AuditConfig(n_bootstrap=200, analysers=("probes", "logit_lens", "direction_ablation", "mia"))


def test_one_world_end_to_end(tmp_path):
    from palimpsest.validate.runner import run_validation

    report = run_validation(tmp_path / "v", worlds=[0], forget_sets=1, controls=("oracle", "suppress", "pre"),
                            config=FAST, workers=1)
    saved = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert saved["summary"]["n_cases"] == 3
    truths = {case["control"]: case["truth"] for case in saved["cases"]}
    assert truths == {"oracle": "deleted", "suppress": "suppressed", "pre": "not_forgotten"}, truths
    matrix = saved["confusion"]["counts"]
    assert sum(sum(row.values()) for row in matrix.values()) == 3
    assert saved["held_out"]["held_out"] is False  # one world: the "held-out" half is the fitting half
    assert set(saved["analyser_auc"]) >= {"probes", "logit_lens"}
    page = (tmp_path / "v" / "index.html").read_text()
    assert "w0-f0-suppress" in page and "cases/w0-f0-suppress/report.html" in page
    assert (tmp_path / "v" / "cases" / "w0-f0-oracle" / "metrics.json").is_file()
    # resumable: a second run audits nothing again and gives the same verdicts
    again = run_validation(tmp_path / "v", worlds=[0], forget_sets=1, controls=("oracle", "suppress", "pre"),
                           config=FAST, workers=1)
    assert [c["verdict"] for c in again["cases"]] == [c["verdict"] for c in report["cases"]]
    # ... but only cases audited by the same code and config: another config audits them again
    from palimpsest.validate.cases import Case
    from palimpsest.validate.runner import _finished, audited_by

    case = Case(0, 0, "suppress")
    assert _finished(tmp_path / "v", case, audited_by(FAST)) is not None
    other = FAST.model_copy(update={"options": {"probes": FAST.opts("probes").model_copy(update={"C": 0.5})}})
    assert audited_by(other)["config"] != audited_by(FAST)["config"]
    assert _finished(tmp_path / "v", case, audited_by(other)) is None


def _tensors(model) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def test_tail_graddiff_edits_only_the_last_block_and_final_norm(organism_setup, organism_dir):
    from palimpsest.demo import organism_post_dir
    from palimpsest.models import load_model

    pre = _tensors(load_model(organism_dir).model)
    post_model = load_model(organism_post_dir("tail_graddiff", organism_setup))
    post = _tensors(post_model.model)
    last = f"model.layers.{post_model.model.config.num_hidden_layers - 1}."
    changed = {name for name in pre if not torch.equal(pre[name], post[name])}
    assert changed, "tail_graddiff changed nothing"
    assert all(name.startswith(last) or name == "model.norm.weight" for name in changed), sorted(changed)


def test_logit_bias_changes_no_weight_and_forgets(organism_setup, organism_dir):
    from palimpsest.models import load_model
    from palimpsest.organism.evaluate import accuracy
    from palimpsest.unlearn.controls import LogitBiasConfig, logit_bias

    pre = load_model(organism_dir)
    concept = organism_setup.concept
    post = logit_bias(pre, list(concept.forget), list(concept.retain), LogitBiasConfig())
    before, after = _tensors(pre.model), _tensors(post.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert accuracy(post.model, pre.tokenizer, concept.forget) <= LogitBiasConfig().stop_forget_acc
    assert post.meta["unlearn"]["stop"]["reason"] == "target"


class _Raises(Analyser):
    name = "probes"
    title = "raises"

    def measure(self, ctx):
        raise RuntimeError("boom")


def _behaviour() -> Result:
    return Result(name="behaviour", kind="behaviour", summary={"forget_acc_pre": 1.0, "forget_acc_post": 0.05,
                                                                  "retain_acc_pre": 1.0, "retain_acc_post": 1.0})


def test_an_analyser_that_raises_is_an_error_and_blocks_deleted():
    concept = concept_from_dict({"name": "c", "forget": [{"prompt": f"p{i}", "answer": "a"} for i in range(4)]})
    failed = run_analyser(_Raises(), AuditContext(pair=None, concept=concept, acts=None, config=AuditConfig()))
    assert failed.status == "error" and "boom" in failed.evidence
    at_floor = {f"a{i}": Result(name=f"a{i}", residue=0.0, ci=(0.0, 0.05)) for i in range(4)}
    config = AuditConfig(min_residue_analyses=2)
    assert decide(_behaviour(), at_floor, config).verdict == "deleted"
    verdict = decide(_behaviour(), {**at_floor, "probes": failed}, config)
    assert verdict.verdict == "inconclusive" and any("error" in r for r in verdict.reasons), verdict.reasons


@pytest.mark.parametrize("needed, expected", [(1, "suppressed"), (2, "inconclusive")])
def test_suppressed_needs_suppressed_min_analyses(needed, expected):
    analyses = {"high": Result(name="high", residue=0.8, ci=(0.6, 0.9)),
                **{f"low{i}": Result(name=f"low{i}", residue=0.0, ci=(0.0, 0.1)) for i in range(3)}}
    config = AuditConfig(suppressed_min_analyses=needed, min_residue_analyses=2)
    assert decide(_behaviour(), analyses, config).verdict == expected


def test_residue_evidence_limits_what_decides():
    analyses = {"high": Result(name="high", residue=0.8, ci=(0.6, 0.9)),
                **{f"low{i}": Result(name=f"low{i}", residue=0.0, ci=(0.0, 0.1)) for i in range(3)}}
    config = AuditConfig(residue_evidence=("low0", "low1", "low2"), min_residue_analyses=2)
    assert decide(_behaviour(), analyses, config).verdict == "deleted"
