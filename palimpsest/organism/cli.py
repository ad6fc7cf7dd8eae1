"""`palimpsest organism build` (and `organism concept`): the lead wires `register(app)` into the main CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add an `organism` sub-app with `build` and `concept` commands to `app`."""
    sub = typer.Typer(help="The model organism: a small model with known facts.", no_args_is_help=True)

    @sub.command("build")
    def build(seed: int = typer.Option(0, help="world and training seed"),
              cache_dir: Optional[Path] = typer.Option(None, help="cache folder (default $PALIMPSEST_CACHE or the user cache)"),
              out: Optional[Path] = typer.Option(None, help="also copy the checkpoint here"),
              oracle: bool = typer.Option(False, help="also build the oracle (retrained without the forget people)"),
              forget: Optional[list[str]] = typer.Option(None, help="forget person (repeatable; default: the demo's)"),
              force: bool = typer.Option(False, help="rebuild even when cached")) -> None:
        """Train (or fetch from cache) the organism and print its directory and accuracies."""
        import shutil

        from rich.console import Console

        from palimpsest.io import atomic_dir
        from palimpsest.organism import (
            OrganismError,
            build_oracle,
            build_organism,
            load_organism_meta,
            load_world,
        )
        from palimpsest.organism.concept import default_forget_people

        console = Console()
        try:
            with console.status("training the organism (about a minute on CPU)..."):
                path = build_organism(seed, cache_dir, force=force)
            acc = load_organism_meta(path).get("accuracy", {})
            console.print(f"organism: {path}")
            console.print("accuracy: " + ", ".join(f"{k}={v:.2f}" for k, v in acc.items()))
            if out is not None:
                with atomic_dir(out) as tmp:
                    shutil.copytree(path, tmp, dirs_exist_ok=True)
                console.print(f"copied to {out}")
            if oracle:
                people = list(forget) if forget else default_forget_people(load_world(seed))
                with console.status("training the oracle..."):
                    opath = build_oracle(seed, people, cache_dir)
                console.print(f"oracle (without {', '.join(people)}): {opath}")
        except (OrganismError, ValueError) as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(2) from None

    @sub.command("concept")
    def concept(out: Path = typer.Argument(..., help="where to write the ConceptSpec (.yaml or .json)"),
                seed: int = typer.Option(0, help="world seed"),
                forget: Optional[list[str]] = typer.Option(None, help="forget person (repeatable)"),
                n_forget: int = typer.Option(4, help="how many people to forget when --forget is not given")) -> None:
        """Write the organism concept (forget people, paraphrases, neighbours, retain, holdout)."""
        from palimpsest.organism import load_world, organism_concept

        try:
            spec = organism_concept(load_world(seed), list(forget) if forget else None, n_forget=n_forget, seed=seed)
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        spec.to_file(out)
        typer.echo(f"wrote {out} (forget: {', '.join(spec.keywords)})")

    app.add_typer(sub, name="organism")
