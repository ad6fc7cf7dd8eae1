"""`palimpsest validate --worlds N --out DIR`: the verdict measured over a population of ground-truth cases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def load_audit_config(path: Path | None, **overrides):
    """An AuditConfig from a YAML/JSON file (same schema as the Python object), with `overrides` (not None) on top;
    a bad file raises palimpsest.config.files.ConfigError (one line; the CLI exits 2)."""
    from palimpsest.cli import audit_config

    return audit_config(path, **overrides)


def register(app: typer.Typer) -> None:
    from palimpsest.cli import BadInput, _progress, guarded, out

    @app.command()
    @guarded
    def validate(worlds: Annotated[int, typer.Option(help="organism worlds (seeds 0..N-1)")] = 4,
                 out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("out/validate"),
                 forget_sets: Annotated[int, typer.Option(help="forget sets drawn per world")] = 2,
                 controls: Annotated[Optional[str], typer.Option(help="comma-separated post-model kinds")] = None,
                 config: Annotated[Optional[Path], typer.Option(
                     help="AuditConfig as YAML/JSON (palimpsest config show); flags override it")] = None,
                 workers: Annotated[Optional[int], typer.Option(help="audit processes (default: one per core)")] = None,
                 seed: Annotated[Optional[int], typer.Option(help="[default: 0, or the --config file's]")] = None):
        """Audit post-models whose truth is known (worlds x forget sets x controls), score the verdict, fit its
        thresholds on half the worlds and test them on the rest: DIR/index.html and DIR/validation.json."""
        from palimpsest.validate.cases import CONTROLS
        from palimpsest.validate.runner import run_validation

        if worlds < 1 or forget_sets < 1:
            raise BadInput("--worlds and --forget-sets must be at least 1")
        chosen = tuple(c.strip() for c in controls.split(",") if c.strip()) if controls else CONTROLS
        unknown = sorted(set(chosen) - set(CONTROLS))
        if unknown:
            raise BadInput(f"unknown controls {unknown}; choose from {', '.join(CONTROLS)}")
        audit_config = load_audit_config(config, seed=seed)
        with _progress() as bar:
            task = bar.add_task("validate", total=None)

            def step(message: str, done: float = 0) -> None:
                bar.update(task, description=message, advance=done)
                bar.console.log(message)

            report = run_validation(out_dir, worlds=worlds, forget_sets=forget_sets, controls=chosen,
                                    config=audit_config, workers=workers, progress=step,
                                    total_hint=lambda total: bar.update(task, total=total))
        held = report["held_out"]["summary"]
        out.print(f"held-out accuracy {held.get('accuracy')} on {held.get('n')} cases "
                  f"(worlds {report['held_out']['worlds']}); false deleted (all cases): "
                  f"{report['summary'].get('false_deleted')}")
        out.print(f"validation page: {out_dir / 'index.html'}")
