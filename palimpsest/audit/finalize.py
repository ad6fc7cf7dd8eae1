"""From an analyser's measurement to its Result: the minimum-gap guard, calibration, status and evidence, in one
place for every calibrated analyser."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from palimpsest.stats import calibrate
from palimpsest.types import Result, inconclusive


@dataclass
class Measurement:
    """What an analyser measured, before calibration. post / floor / ceiling: per-item values (or scalars);
    `paired` when the three are the same items (bootstrapped jointly). `gap` (default: mean ceiling - mean floor)
    must reach `min_gap` for a residue to be read; `degenerate` replaces the default inconclusive reason.
    `evidence` is formatted with post, floor, ceiling and residue."""

    post: Any
    floor: Any
    ceiling: Any
    floor_source: str
    evidence: str
    paired: bool = True
    min_gap: float = 0.0
    gap: float | None = None
    degenerate: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    per_item: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # anything the analyser's figures need that is not in the Result
    extra: dict[str, Any] = field(default_factory=dict)


def finalize(analyser, measured: Measurement, ctx) -> Result:
    """Calibrate (residue = (post - floor) / (ceiling - floor), bootstrap CI) and write the status and evidence."""
    config = ctx.config
    cal = calibrate(measured.post, measured.floor, measured.ceiling, paired=measured.paired and
                    np.size(measured.post) == np.size(measured.floor) == np.size(measured.ceiling),
                    n_bootstrap=config.n_bootstrap, ci_level=config.ci_level, seed=config.seed)
    common = dict(floor=cal.floor, ceiling=cal.ceiling, post=cal.post, floor_source=measured.floor_source,
                  summary=measured.summary, per_item=measured.per_item, tables=measured.tables)
    gap = cal.ceiling - cal.floor if measured.gap is None else measured.gap
    if cal.residue is None or gap < measured.min_gap:
        reason = measured.degenerate or (
            f"the pre model ({cal.ceiling:.3f}) is not above the floor ({cal.floor:.3f}) by min_gap="
            f"{measured.min_gap} (gap {gap:.3f}): this measure cannot separate learned from never learned")
        result = inconclusive(analyser.name, reason.format(gap=gap, floor=cal.floor, ceiling=cal.ceiling,
                                                           post=cal.post), kind=analyser.kind, **common)
        result.notes.extend(measured.notes)
        return result
    evidence = measured.evidence.format(post=cal.post, floor=cal.floor, ceiling=cal.ceiling, residue=cal.residue)
    return Result(name=analyser.name, kind=analyser.kind, status="ok", residue=cal.residue, ci=cal.ci,
                  notes=list(measured.notes), evidence=evidence, **common)
