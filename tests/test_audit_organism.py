"""The suite tests itself: the full audit must call the organism's ground-truth controls right."""

import json

from palimpsest.audit import audit
from palimpsest.report import write_audit
from palimpsest.types import AuditConfig

CONFIG = AuditConfig(n_bootstrap=300)


def _record(record_property, result) -> None:
    for name, r in result.analyses.items():
        if r.kind == "residue" and r.ci is not None:
            record_property(f"{name}_ci_low", round(r.ci[0], 4))


def test_oracle_is_deleted(organism_pair_oracle, organism_concept, tmp_path, record_property):
    result = audit(organism_pair_oracle, organism_concept, CONFIG)
    _record(record_property, result)
    assert result.verdict == "deleted", result.reasons
    assert not result.collateral
    usable = [r for r in result.analyses.values() if r.kind == "residue" and r.status == "ok"]
    assert len(usable) >= 8  # the deletion verdict rests on many analyses, not one
    write_audit(result, tmp_path / "oracle")
    metrics = json.loads((tmp_path / "oracle" / "metrics.json").read_text())
    assert metrics["verdict"] == "deleted" and set(metrics["analyses"]) >= {"probes", "logit_lens", "depth", "mia"}


def test_suppress_is_suppressed(organism_pair_suppress, organism_concept, record_property):
    result = audit(organism_pair_suppress, organism_concept, CONFIG)
    _record(record_property, result)
    assert result.verdict == "suppressed", result.reasons
    strong = [n for n, r in result.analyses.items() if r.residue is not None and r.ci and r.ci[0] >= 0.35]
    # the read-out analysers see the untouched internals
    assert {"probes", "logit_lens"} <= set(strong)
