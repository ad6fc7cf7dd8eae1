"""Audit config files: `load_config(path)` reads an AuditConfig from YAML or JSON (the schema of
`AuditConfig.model_dump`), `dump_config(config)` writes the fully resolved config (every analyser's options with
their defaults) as YAML that `load_config` reads back.

Every problem is one line naming the file and the first fault: an unknown analyser or field (with the valid ones),
a bad value, a file that is not YAML/JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from palimpsest.types import AuditConfig


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate: one line, naming the file and the first problem."""


def _read(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror or type(error).__name__})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)  # YAML 1.1 reads JSON too
    except (ValueError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({first})") from None


def _valid_fields(model: type[BaseModel], loc: tuple) -> tuple[str, ...]:
    """The fields of the (nested) model that `loc` (a pydantic error location, ending at the bad key) lives in."""
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ()
        model = annotation
    return tuple(model.model_fields)


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    where = ".".join(str(x) for x in loc)
    if first["type"] == "extra_forbidden":
        valid = _valid_fields(AuditConfig, loc)
        return f"unknown field {where!r}" + (f"; valid: {', '.join(valid)}" if valid else "")
    message = str(first["msg"]).removeprefix("Value error, ")
    if loc == ("options",):  # the options validator's own message names the analyser and the valid fields
        return message
    value = first.get("input")
    shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) or value is None else ""
    return f"{where}: {message}{shown}" if where else message


def _without_default_options(data: dict) -> dict:
    """Drop analyser options equal to that analyser's defaults (a resolved dump loads back equal to the original)."""
    options = data.get("options")
    if not isinstance(options, dict):
        return data
    from palimpsest.audit.registry import load_analysers

    analysers = load_analysers()
    kept = {}
    for name, value in options.items():
        if name in analysers and isinstance(value, dict):
            try:
                if analysers[name].Config(**value) == analysers[name].Config():
                    continue
            except (ValidationError, TypeError):
                pass  # validated (and reported) below
        kept[name] = value
    return {**data, "options": kept}


def config_from_data(data: Any, source: str = "config", **overrides: Any) -> AuditConfig:
    """An AuditConfig from already-parsed data (a mapping of AuditConfig fields), `overrides` (not None) on top."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of AuditConfig fields, got {type(data).__name__}")
    data = _without_default_options({**data, **{k: v for k, v in overrides.items() if v is not None}})
    try:
        return AuditConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_first_problem(error)}") from None
    except ValueError as error:  # raised outside pydantic's wrapping (e.g. by the registry)
        raise ConfigError(f"{source}: {str(error).strip().splitlines()[0]}") from None


def load_config(path: str | Path, **overrides: Any) -> AuditConfig:
    """The AuditConfig in the YAML/JSON file `path` (same schema as `AuditConfig.model_dump`); `overrides` that are
    not None replace the file's values (command-line flags). Raises ConfigError (one line) on any problem."""
    path = Path(path)
    return config_from_data(_read(path), str(path), **overrides)


def dump_config(config: AuditConfig | None = None) -> str:
    """The fully resolved config (every field, every analyser's options with defaults) as YAML."""
    import yaml

    resolved = (config or AuditConfig()).resolved()
    header = ("# palimpsest audit config, fully resolved: every field and every analyser's options with their\n"
              "# defaults. Edit and pass with --config FILE (palimpsest audit / demo / validate).\n")
    return header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, default_flow_style=False)
