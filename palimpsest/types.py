"""Shared types every analyser speaks: Result, AuditConfig, the Analyser protocol and its registry."""

from __future__ import annotations

import json
from typing import Any, Callable, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "inconclusive", "skipped"]
Kind = Literal["behaviour", "residue", "info"]


class Result(BaseModel):
    """What one analyser found. `residue` is in [0, 1]: 0 = at the floor (never learned), 1 = as before unlearning."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind = "residue"
    status: Status = "ok"
    residue: float | None = None
    ci: tuple[float, float] | None = None
    floor: float | None = None
    ceiling: float | None = None
    post: float | None = None
    floor_source: str | None = None  # what the floor is: "oracle model", "shuffled labels", ...
    summary: dict[str, Any] = Field(default_factory=dict)
    per_item: list[dict[str, Any]] = Field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    figures: dict[str, str] = Field(default_factory=dict)  # title -> plotly figure JSON
    notes: list[str] = Field(default_factory=list)
    evidence: str = ""

    def add_figure(self, title: str, figure) -> None:
        self.figures[title] = figure.to_json()

    def metrics(self) -> dict[str, Any]:
        """The entry of this result in metrics.json (no figures, no per-item rows)."""
        out: dict[str, Any] = {"residue": self.residue, "ci": list(self.ci) if self.ci else None, "status": self.status,
                               "kind": self.kind}
        for key in ("floor", "ceiling", "post", "floor_source"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.summary)
        if self.notes:
            out["notes"] = list(self.notes)
        return json.loads(json.dumps(out, default=float))


class AuditConfig(BaseModel):
    """Every threshold and knob of an audit, printed in the report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    device: str = "cpu"
    batch_size: int = 32
    backend: Literal["transformer_lens", "nnsight", "torch"] = "torch"
    n_bootstrap: int = 1000
    ci_level: float = 0.95
    # behaviour: the forget set counts as forgotten when post accuracy on it is at most this share of pre accuracy
    forgotten_max_relative_acc: float = 0.5
    # ... and at most this absolute accuracy
    forgotten_max_acc: float = 0.35
    # residue: suppressed when the strongest calibrated residue's lower CI bound is above this
    suppressed_min_residue: float = 0.35
    # deleted when no residue score's interval lies wholly above this (every lower bound is at most this)
    deleted_max_residue: float = 0.2
    # minimum analysers with status ok needed for a deleted verdict
    min_residue_analyses: int = 2
    # collateral: retain or neighbour accuracy fell by more than this (absolute)
    collateral_max_drop: float = 0.1
    # fewer forget items than this and analyses say inconclusive
    min_items: int = 4
    analysers: tuple[str, ...] | None = None  # None = all registered
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def option(self, analyser: str, key: str, default: Any) -> Any:
        return self.options.get(analyser, {}).get(key, default)


@runtime_checkable
class Analyser(Protocol):
    name: str
    kind: Kind
    title: str
    description: str

    def run(self, pair, concept, acts, config: AuditConfig) -> Result: ...


REGISTRY: dict[str, Analyser] = {}


def register(cls: type) -> type:
    """Class decorator: instantiate and add an analyser to the registry under its `name`."""
    instance = cls()
    if instance.name in REGISTRY and type(REGISTRY[instance.name]) is not cls:
        raise ValueError(f"analyser name {instance.name!r} registered twice")
    REGISTRY[instance.name] = instance
    return cls


def skipped(name: str, reason: str, kind: Kind = "residue") -> Result:
    return Result(name=name, kind=kind, status="skipped", notes=[reason], evidence=reason)


def inconclusive(name: str, reason: str, kind: Kind = "residue", **fields: Any) -> Result:
    return Result(name=name, kind=kind, status="inconclusive", notes=[reason], evidence=reason, **fields)


AnalyserFactory = Callable[[], Analyser]
