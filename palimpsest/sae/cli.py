"""`palimpsest sae train`: train a sae-lens SAE at a site of a model, streamed from disk, resumable.

Wire it with `from palimpsest.sae.cli import register; register(app)`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer


def _fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _corpus(model, corpus_file: Path | None, concept_file: Path | None, n_generated: int, seed: int) -> list[str]:
    """Texts to train on: the corpus file's lines, the concept's prompts+answers, else the model's own samples."""
    from palimpsest.concepts import load_concept
    from palimpsest.sae.blindspots import generate_texts
    from palimpsest.sae.data import concept_corpus

    texts: list[str] = []
    if corpus_file is not None:
        if not corpus_file.is_file():
            _fail(f"{corpus_file}: corpus file not found (give a text file, one text per line)")
        texts += [line.strip() for line in corpus_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if concept_file is not None:
        texts = concept_corpus(load_concept(concept_file), texts)
    if n_generated > 0 and (not texts or corpus_file is None):
        texts += generate_texts(model, n_generated, seed=seed, max_new_tokens=48)
    return texts


def _store_ok(store_dir: Path) -> bool:
    """True when a finished activation store is there and intact; a damaged one is removed (and said so)."""
    from palimpsest.capture import CaptureError, ShardedActivations

    if not store_dir.exists():
        return False
    try:
        ShardedActivations(store_dir).verify()
        return True
    except CaptureError as error:
        typer.echo(f"warning: {str(error).splitlines()[0]}: capturing the activations again", err=True)
        shutil.rmtree(store_dir, ignore_errors=True)
        return False


def train_command(model: str, site: str, out: Path, *, corpus: Path | None = None, concept: Path | None = None,
                  architecture: str = "topk", expansion: int = 8, k: int = 8, tokens: int = 200_000,
                  batch_size: int = 256, n_generated: int = 256, resume: bool = True, device: str = "cpu",
                  n_checkpoints: int = 10, seed: int = 0) -> Path:
    """Capture activations to shards (once), train with checkpoints (resumed when present), save in sae-lens's
    format with quality.json next to it. Work files live in `.<out>.work/` beside `out` until the end."""
    from palimpsest.capture import (
        CaptureError,
        NonFiniteError,
        ShardedActivations,
        SiteError,
        capture_to_disk,
        resolve,
    )
    from palimpsest.concepts import ConceptError
    from palimpsest.models import ModelLoadError, load_model
    from palimpsest.sae.config import SAEConfig
    from palimpsest.sae.data import shard_batches
    from palimpsest.sae.quality import sae_quality
    from palimpsest.sae.train import SAEError, corpus_hash, model_hash, save_sae, train_sae

    try:
        config = SAEConfig(architecture=architecture, expansion=expansion, k=k, total_tokens=tokens,
                           batch_size=batch_size, seed=seed)
        loaded = load_model(model, device=device)
        resolve(loaded.model, site)
        work = out.parent / f".{out.name}.work"
        if work.exists() and not resume:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        corpus_path = work / "corpus.json"
        if corpus_path.is_file():  # resuming: train on exactly the texts captured before
            texts = json.loads(corpus_path.read_text())
        else:
            texts = _corpus(loaded, corpus, concept, n_generated, seed)
            if not texts:
                _fail("no training text: give --corpus FILE, --concept FILE, or --n-generated > 0")
            from palimpsest.io import atomic_write_text

            atomic_write_text(corpus_path, json.dumps(texts))
        store_dir = work / "activations"
        if not _store_ok(store_dir):
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task(f"capturing {site}", total=len(texts))
                capture_to_disk(loaded.model, loaded.tokenizer, texts, [site], store_dir,
                                progress=lambda n: bar.advance(task, n))
        store = ShardedActivations(store_dir)
        if store.rows < batch_size:
            _fail(f"the corpus gives only {store.rows} tokens, fewer than one batch of {batch_size}: give more text "
                  "or a smaller --batch-size")
        d_in = int(next(store.iter_shards(site)).shape[-1])
        batches = shard_batches(store, site, batch_size, buffer_size=config.shuffle_buffer, seed=seed)
        training_sae, trainer = train_sae(batches, d_in, config, device=device, checkpoint_dir=work / "checkpoints",
                                          n_checkpoints=n_checkpoints, progress=True)
        sample = next(store.iter_batches(site, min(store.rows, 20_000)))
        meta = {"site": site, "model": str(model), "model_hash": model_hash(loaded.model),
                "corpus_hash": corpus_hash(texts), "n_texts": len(texts), "n_tokens": store.rows,
                "config": config.model_dump(mode="json")}
        _, quality = save_sae(training_sae.cpu(), out, meta,
                              lambda sae: sae_quality(sae.to(device), sample, loaded, site, texts, trainer=trainer))
        shutil.rmtree(work, ignore_errors=True)
        return Path(out)
    except (SAEError, ModelLoadError, SiteError, ConceptError, ValueError) as error:
        _fail(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    except CaptureError as error:  # NaN/inf activations are the model's fault (2); out of memory at batch 1 is not
        _fail(str(error).strip().splitlines()[0], 2 if isinstance(error, NonFiniteError) else 1)


def register(app: typer.Typer) -> None:
    """Add `sae train` to a typer app."""
    sae_app = typer.Typer(help="sparse autoencoders (sae-lens) on a model's activations", no_args_is_help=True)

    @sae_app.command("train")
    def train(
        model: Annotated[str, typer.Option(help="HF hub id, local model directory or .gguf file")],
        site: Annotated[str, typer.Option(help="site name, e.g. blocks.2.hook_resid_post")],
        out: Annotated[Path, typer.Option(help="output folder (sae-lens format + quality.json)")],
        corpus: Annotated[Optional[Path], typer.Option(help="text file, one training text per line")] = None,
        concept: Annotated[Optional[Path], typer.Option(help="ConceptSpec whose prompts+answers join the corpus")] = None,
        architecture: Annotated[str, typer.Option(help="sae-lens architecture: topk, standard, gated, jumprelu, ...")] = "topk",
        expansion: Annotated[int, typer.Option(help="d_sae = expansion x d_model")] = 8,
        k: Annotated[int, typer.Option(help="active features per token (TopK)")] = 8,
        tokens: Annotated[int, typer.Option(help="training samples (tokens)")] = 200_000,
        batch_size: Annotated[int, typer.Option(help="tokens per training step")] = 256,
        n_generated: Annotated[int, typer.Option(help="texts sampled from the model itself when no --corpus")] = 256,
        resume: Annotated[bool, typer.Option(help="resume an interrupted run from its checkpoints")] = True,
        device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
        seed: int = 0,
    ) -> None:
        """Train an SAE at SITE of MODEL; interrupted runs resume from their last checkpoint."""
        path = train_command(model, site, out, corpus=corpus, concept=concept, architecture=architecture,
                             expansion=expansion, k=k, tokens=tokens, batch_size=batch_size, n_generated=n_generated,
                             resume=resume, device=device, seed=seed)
        quality = json.loads((path / "quality.json").read_text())
        typer.echo(f"saved {path}: explained variance {quality['explained_variance']:.3f}, L0 {quality['l0']:.1f}, "
                   f"dead {quality['dead_fraction']:.1%}, next-token loss {quality['ce_loss_clean']:.3f} -> "
                   f"{quality['ce_loss_spliced']:.3f} with the SAE spliced in")

    app.add_typer(sae_app, name="sae")
