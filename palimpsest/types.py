"""Shared types every analyser speaks: Result, AuditConfig, the Analyser protocol and its registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from palimpsest.config.sae import SAEConfig

Status = Literal["ok", "inconclusive", "skipped", "error"]  # error: the analyser raised
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


def _fitted_verdict() -> dict[str, Any]:
    """The verdict thresholds fitted by `palimpsest validate` (data/verdict_fit.json) and where they came from."""
    path = Path(__file__).parent / "data" / "verdict_fit.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"values": {}, "source": None}
    values = dict(data.get("values", {}))
    if isinstance(values.get("residue_evidence"), list):
        values["residue_evidence"] = tuple(values["residue_evidence"])
    return {"values": values, "source": data.get("source")}


FITTED_VERDICT = _fitted_verdict()
_FIT = FITTED_VERDICT["values"]
FITTED_FIELDS: tuple[str, ...] = ("suppressed_min_residue", "deleted_max_residue", "min_residue_analyses",
                                  "suppressed_min_analyses", "residue_evidence")


Modality = Literal["text", "image"]  # text: a causal LM and prompt/answer items; image: a digits classifier
# what an analyser needs from the runner: activations at sites, an SAE per site (built once, shared), gradients
# through the model, a floor model (without one the analyser is skipped)
# "weights": reads or copies the weight tensors. Weights accelerate offloaded to disk (device_map) are read through
# accelerate (palimpsest.devices.read_tensor, materialise), so no need excludes an offloaded model by itself: an
# analyser that cannot run on one says why in `Analyser.offload_blocker` and the runner skips it with that reason
Need = Literal["activations", "sae", "gradients", "floor", "weights"]


class AnalyserConfig(BaseModel):
    """Base of every analyser's options: frozen, unknown fields refused. Subclass it once per analyser."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Analyser:
    """Base of every analyser. Subclasses set the class attributes and implement `measure` (or override `run`).

    `run(ctx)` checks the forget set is large enough, calls `measure(ctx)` and hands its Measurement to
    `palimpsest.audit.finalize.finalize` (guards, calibration, status, evidence), then adds `figures(measurement)`.
    """

    name: str = ""
    kind: Kind = "residue"
    title: str = ""
    description: str = ""
    Config: type[AnalyserConfig] = AnalyserConfig
    modalities: frozenset[str] = frozenset({"text"})
    needs: frozenset[str] = frozenset({"activations"})

    def sae_sites(self, ctx) -> tuple[str, ...]:
        """The sites this analyser reads an SAE at (the runner trains or loads each once, before any analyser runs)."""
        return ()

    def offload_blocker(self, ctx) -> str | None:
        """Why this analyser, with these options, cannot run while some model of the pair has weights offloaded to
        disk by accelerate (device_map); None when it can. The runner then skips it with this reason."""
        return None

    def run(self, ctx) -> Result:
        from palimpsest.audit.finalize import Measurement, finalize

        if ctx.config.min_items and len(ctx.concept.forget) < ctx.config.min_items:
            return inconclusive(self.name, f"only {len(ctx.concept.forget)} forget items "
                                           f"(< min_items={ctx.config.min_items})", kind=self.kind)
        if ctx.modality == "image":  # the digits models: the image measurement of this analyser (vision adapter)
            from palimpsest.vision import measures

            measured, figures = measures.measure(self, ctx), lambda m, c: measures.figures(self, m, c)
        else:
            measured, figures = self.measure(ctx), self.figures
        if isinstance(measured, Result):
            return measured
        if not isinstance(measured, Measurement):
            raise TypeError(f"{self.name}.measure returned {type(measured).__name__}, not a Measurement or Result")
        result = finalize(self, measured, ctx)
        for title, figure in figures(measured, ctx).items():
            result.add_figure(title, figure)
        return result

    def figures(self, measured, ctx) -> dict:
        return {}


REGISTRY: dict[str, Analyser] = {}


def register(cls: type) -> type:
    """Class decorator: instantiate and add an analyser to the one registry under its `name`."""
    instance = cls()
    if not instance.name or not issubclass(instance.Config, AnalyserConfig):
        raise TypeError(f"{cls.__name__} needs a name and a Config subclassing AnalyserConfig")
    if not callable(getattr(cls, "measure", None)) and cls.run is Analyser.run:
        raise TypeError(f"{cls.__name__} implements neither measure() nor run()")
    if instance.name in REGISTRY and type(REGISTRY[instance.name]).__qualname__ != cls.__qualname__:
        raise ValueError(f"analyser name {instance.name!r} registered twice")
    REGISTRY[instance.name] = instance
    return cls


class AuditConfig(BaseModel):
    """Every threshold and knob of an audit, printed in the report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    device: str = "cpu"
    batch_size: int = 32
    # how activations are captured (text models; image models: nnsight or torch); interventions (steering,
    # restoration, ablation) edit the HF modules with torch hooks whichever backend captures
    backend: Literal["transformer_lens", "nnsight", "torch"] = "torch"
    n_bootstrap: int = 1000
    ci_level: float = 0.95
    # behaviour: the forget set counts as forgotten when post accuracy on it is at most this share of pre accuracy
    forgotten_max_relative_acc: float = 0.5
    # ... and at most this absolute accuracy
    forgotten_max_acc: float = 0.35
    # residue: suppressed when the strongest calibrated residue's lower CI bound is above this
    # (this and the next four fields default to the values fitted by `palimpsest validate`: see thresholds_source)
    suppressed_min_residue: float = _FIT.get("suppressed_min_residue", 0.35)
    # deleted when no residue score's interval lies wholly above this (every lower bound is at most this)
    deleted_max_residue: float = _FIT.get("deleted_max_residue", 0.2)
    # minimum evidence analysers with status ok needed for a deleted verdict
    min_residue_analyses: int = _FIT.get("min_residue_analyses", 2)
    # suppressed needs at least this many evidence analyses whose interval lies wholly above suppressed_min_residue
    # (more than one guards against one analyser's chance excursion among many: a multiple-comparison correction)
    suppressed_min_analyses: int = _FIT.get("suppressed_min_analyses", 1)
    # the residue analysers whose scores decide the verdict (None: every residue analyser); the others are reported
    residue_evidence: tuple[str, ...] | None = _FIT.get("residue_evidence", None)
    # collateral: retain or neighbour accuracy fell by more than this (absolute)
    collateral_max_drop: float = 0.1
    # fewer forget items than this and analyses say inconclusive
    min_items: int = 4
    analysers: tuple[str, ...] | None = None  # which analysers run (None: every one of the audit's modality)
    # the one SAE configuration: every analyser that reads an SAE at a site reads the same one, trained once
    sae: SAEConfig = Field(default_factory=SAEConfig)
    # where SAEs are cached (None: $PALIMPSEST_CACHE, else the user cache folder)
    cache_dir: str | None = None
    # analyser name -> its typed options (palimpsest config show lists every field and default)
    options: dict[str, SerializeAsAny[AnalyserConfig]] = Field(default_factory=dict)

    @field_validator("options", mode="before")
    @classmethod
    def _typed_options(cls, value: Any) -> dict[str, AnalyserConfig]:
        if not isinstance(value, dict):
            raise ValueError(f"options must map analyser names to their options, got {type(value).__name__}")
        from palimpsest.audit.registry import load_analysers

        analysers = load_analysers()
        out = {}
        for name, options in value.items():
            if name not in analysers:
                raise ValueError(f"unknown analyser {name!r} in options; valid: {', '.join(analysers)}")
            config_cls = analysers[name].Config
            if isinstance(options, config_cls):
                out[name] = options
                continue
            if isinstance(options, BaseModel):
                options = options.model_dump()
            if not isinstance(options, dict):
                raise ValueError(f"options.{name} must be a mapping of its fields, got {type(options).__name__}")
            unknown = sorted(set(options) - set(config_cls.model_fields))
            if unknown:
                raise ValueError(f"options.{name}: unknown field(s) {', '.join(unknown)}; valid: "
                                 f"{', '.join(config_cls.model_fields) or '(none)'}")
            try:
                out[name] = config_cls(**options)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(x) for x in first["loc"])
                raise ValueError(f"options.{name}.{where}: {first['msg']}") from None
        return out

    def opts(self, analyser: str) -> AnalyserConfig:
        """The typed options of `analyser` (its defaults unless this config sets some)."""
        if analyser in self.options:
            return self.options[analyser]
        from palimpsest.audit.registry import load_analysers

        return load_analysers()[analyser].Config()

    def resolved(self) -> dict[str, Any]:
        """This config with every analyser's options filled in with defaults: what metrics.json records."""
        from palimpsest.audit.registry import load_analysers

        data = self.model_dump(mode="json")
        data["options"] = {name: self.opts(name).model_dump(mode="json") for name in load_analysers()}
        return data

    def thresholds_source(self) -> dict[str, Any]:
        """Where the verdict's fitted thresholds came from: the validation run that fitted them, when this config
        still has its values, else that they were set by the user."""
        source = FITTED_VERDICT["source"]
        if source and all(getattr(self, k) == _FIT.get(k, getattr(self, k)) for k in FITTED_FIELDS):
            return {"fitted": True, **source}
        return {"fitted": False, "note": "thresholds set by the user (or no fit shipped): not the validated defaults"}


def skipped(name: str, reason: str, kind: Kind = "residue") -> Result:
    return Result(name=name, kind=kind, status="skipped", notes=[reason], evidence=reason)


def inconclusive(name: str, reason: str, kind: Kind = "residue", **fields: Any) -> Result:
    return Result(name=name, kind=kind, status="inconclusive", notes=[reason], evidence=reason, **fields)


