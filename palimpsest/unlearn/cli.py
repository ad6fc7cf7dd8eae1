"""`palimpsest unlearn --method M --model DIR --concept C.yaml --out DIR`: the lead wires `register(app)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the `unlearn` command to `app`."""

    @app.command("unlearn")
    def unlearn_cmd(method: str = typer.Option(..., help="ga | graddiff | npo | rmu | suppress | oracle (organism only)"),
                    model: Path = typer.Option(..., help="pre-unlearning model directory (HF checkpoint)"),
                    concept: Path = typer.Option(..., help="ConceptSpec file (.yaml/.json)"),
                    out: Path = typer.Option(..., help="output directory for the unlearned model"),
                    seed: int = typer.Option(0, help="random seed"),
                    config: Optional[str] = typer.Option(None, help='JSON overrides of the method config, e.g. \'{"lr": 1e-4}\''),
                    device: str = typer.Option("cpu", help="cpu or cuda")) -> None:
        """Unlearn the concept's forget items (keeping its retain items) and save the new model."""
        from rich.console import Console

        from palimpsest.concepts.spec import ConceptError, load_concept
        from palimpsest.models.loading import ModelLoadError, load_model
        from palimpsest.organism.build import OrganismError, load_organism_meta
        from palimpsest.unlearn import (
            METHODS,
            POST_METHODS,
            UnlearnError,
            make_post_model,
            save_model,
            unlearn,
        )

        console = Console()
        try:
            if method not in POST_METHODS:
                raise UnlearnError(f"unknown method {method!r}; choose one of {', '.join(POST_METHODS)}")
            spec = load_concept(concept)
            cfg = None
            if config:
                try:
                    overrides = json.loads(config)
                except json.JSONDecodeError as error:
                    raise UnlearnError(f"--config is not valid JSON ({error.msg})") from None
                if method == "oracle":
                    raise UnlearnError("--config does not apply to oracle (it is a retrain)")
                cfg = METHODS[method].config_cls.from_dict(overrides)
            organism = bool(load_organism_meta(model))
            if method == "oracle" and not organism:
                raise UnlearnError("oracle needs an organism model (a directory with organism.json): "
                                   "real models cannot be retrained here")
            with console.status(f"unlearning with {method}..."):
                if organism:
                    path = make_post_model(method, model, spec, None, out, seed, config=cfg)
                else:
                    pre = load_model(model, device=device)
                    post = unlearn(method, pre, list(spec.forget), list(spec.retain), config=cfg, seed=seed)
                    path = save_model(post, out)
            console.print(f"{method}: wrote {path}")
        except (UnlearnError, ConceptError, ModelLoadError, OrganismError) as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(2) from None
