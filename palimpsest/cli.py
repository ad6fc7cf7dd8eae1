"""`palimpsest ...`: exit code 0 on success, 2 on bad input, 1 otherwise."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="palimpsest: audit machine unlearning from the inside — deleted, or only suppressed?")
console = Console(stderr=True)
out = Console()


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from palimpsest.capture import AnswerTokenError, NonFiniteError, SiteError
    from palimpsest.concepts import ConceptError
    from palimpsest.config.files import ConfigError
    from palimpsest.models import ModelLoadError

    # NonFiniteError: the model's own numbers are NaN/inf (broken weights, or a dtype that overflows)
    return (ModelLoadError, ConceptError, SiteError, AnswerTokenError, NonFiniteError, FileNotFoundError, BadInput,
            ConfigError)


class BadInput(ValueError):
    """Bad command-line input."""


def guarded(func):
    """One line for the user instead of a traceback: exit 2 for bad input, 1 for other failures, 130 for Ctrl-C."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            _say("[yellow]interrupted: nothing half-written was left behind[/]")
            raise typer.Exit(130) from None
        except _bad_input_errors() as error:
            _say(f"[red]error:[/] {_one_line(error)}")
            raise typer.Exit(2) from None
        except Exception as error:  # noqa: BLE001 — the last resort must still be one line
            if os.environ.get("PALIMPSEST_DEBUG"):
                raise
            _say(f"[red]error:[/] {escape(type(error).__name__)}: {_one_line(error)} "
                 "(set PALIMPSEST_DEBUG=1 for a traceback)")
            raise typer.Exit(1) from None
    return wrapper


def _say(markup: str) -> None:
    """One line on stderr: never wrapped at the terminal width (a log or a test sees exactly one line)."""
    console.print(markup, soft_wrap=True, highlight=False)


def _one_line(error: BaseException) -> str:
    """The first line of the message, escaped: text from concept files or paths must not be read as rich markup."""
    text = str(error).strip().splitlines()
    return escape(text[0] if text else type(error).__name__)


ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", help="AuditConfig as YAML/JSON (palimpsest config show prints every field); flags override it")]


def audit_config(path: Path | None, **overrides):
    """The AuditConfig of a command: the --config file (or the defaults), the flags given (not None) on top."""
    from palimpsest.config.files import config_from_data, load_config

    if path is not None:
        return load_config(path, **overrides)
    return config_from_data({}, "command-line options", **overrides)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def _max_memory(text: str | None) -> dict | None:
    """--max-memory as a dict; a bad value is a one-line error before any model loads."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not value:
        raise BadInput(f"--max-memory {text!r}: give a JSON object such as '{{\"cpu\": \"2GiB\"}}'")
    return value


@app.command()
@guarded
def info(source: Annotated[str, typer.Argument(help="HF hub id, local model directory or .gguf file")],
         allow_pickle: Annotated[bool, typer.Option(help="allow pickle (.bin) checkpoints")] = False):
    """Architecture, layers, d_model and the sites available for capture."""
    from palimpsest.capture import valid_sites
    from palimpsest.models import load_model

    loaded = load_model(source, allow_pickle=allow_pickle)
    cfg = loaded.model.config
    table = Table(title=f"{loaded.source}")
    table.add_column("property")
    table.add_column("value")
    params = sum(p.numel() for p in loaded.model.parameters())
    for key, value in (("architecture", type(loaded.model).__name__), ("parameters", f"{params:,}"),
                       ("layers", cfg.num_hidden_layers), ("d_model", cfg.hidden_size),
                       ("heads", cfg.num_attention_heads), ("vocab", cfg.vocab_size)):
        table.add_row(key, str(value))
    out.print(table)
    sites = valid_sites(loaded.model)
    out.print(f"sites ({len(sites)}): " + ", ".join(sites))


@app.command()
@guarded
def capture(pre: Annotated[str, typer.Option(help="model before unlearning")],
            post: Annotated[str, typer.Option(help="model after unlearning")],
            concept: Annotated[Path, typer.Option(help="ConceptSpec .yaml/.json")],
            out_dir: Annotated[Path, typer.Option("--out", help="output directory")],
            sites: Annotated[str, typer.Option(help="comma-separated site names, or 'resid' for every resid_post")] = "resid",
            position: Annotated[str, typer.Option(help="last | subject | answer_mean | all")] = "last",
            backend: Annotated[str, typer.Option(help="torch | transformer_lens | nnsight")] = "torch",
            batch_size: int = 32,
            device: str = "cpu",
            allow_pickle: bool = False):
    """Capture activations of pre and post on every item set of a concept, as safetensors."""
    from safetensors.torch import save_file

    from palimpsest.capture import BACKENDS, POSITIONS, resid_post_sites
    from palimpsest.capture import capture as run_capture
    from palimpsest.concepts import load_concept
    from palimpsest.io import atomic_dir
    from palimpsest.models import load_pair

    if position not in POSITIONS:
        raise BadInput(f"--position {position!r} is not one of {', '.join(POSITIONS)}")
    if backend not in BACKENDS:
        raise BadInput(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    spec = load_concept(concept)
    pair = load_pair(pre, post, device=device, allow_pickle=allow_pickle)
    site_list = resid_post_sites(pair.pre.model) if sites == "resid" else [s.strip() for s in sites.split(",") if s.strip()]
    sets = [(name, spec.items(name)) for name in ("forget", "paraphrases", "neighbours", "retain", "holdout")]
    total = 2 * sum(len(items) for _, items in sets)
    with _progress() as progress, atomic_dir(out_dir) as tmp:
        task = progress.add_task("capturing", total=total)
        for model_name, loaded in (("pre", pair.pre), ("post", pair.post)):
            for set_name, items in sets:
                if not items:
                    continue
                acts = run_capture(loaded.model, loaded.tokenizer, items, site_list, position=position,  # type: ignore[arg-type]
                                   backend=backend, batch_size=batch_size, model_name=model_name,  # type: ignore[arg-type]
                                   progress=lambda n: progress.advance(task, n))
                save_file({k: v.contiguous() for k, v in acts.items()}, str(tmp / f"{model_name}.{set_name}.safetensors"))
    out.print(f"wrote {escape(str(out_dir))}", soft_wrap=True)


@app.command(name="audit")
@guarded
def audit_cmd(pre: Annotated[str, typer.Option(help="model before unlearning")],
              post: Annotated[str, typer.Option(help="model after unlearning")],
              concept: Annotated[Path, typer.Option(help="ConceptSpec .yaml/.json")],
              out_dir: Annotated[Path, typer.Option("--out", help="output directory for report.html and metrics.json")],
              floor: Annotated[Optional[str], typer.Option(help="a model that never learned the concept (calibration floor)")] = None,
              analysers: Annotated[Optional[str], typer.Option(help="comma-separated analyser names (default: all)")] = None,
              figures: Annotated[str, typer.Option(help="also export figures: comma-separated png,svg,html")] = "",
              config_file: ConfigOption = None,
              device: Annotated[Optional[str], typer.Option(help="cpu | cuda | mps [default: cpu]")] = None,
              dtype: Annotated[Optional[str], typer.Option(help="float32 | bfloat16 | float16")] = None,
              device_map: Annotated[Optional[str], typer.Option(
                  help="shard a model larger than one GPU across devices (accelerate), e.g. auto or a JSON map")] = None,
              max_memory: Annotated[Optional[str], typer.Option(
                  help='with --device-map: the most each device may hold, JSON, e.g. \'{"cpu": "2GiB"}\'')] = None,
              offload_folder: Annotated[Optional[Path], typer.Option(
                  help="with --device-map: where weights that do not fit go (default: a temporary folder)")] = None,
              backend: Annotated[Optional[str], typer.Option(help="torch | transformer_lens | nnsight [default: torch]")] = None,
              batch_size: Annotated[Optional[int], typer.Option(help="[default: 32]")] = None,
              seed: Annotated[Optional[int], typer.Option(help="[default: 0]")] = None,
              allow_pickle: Annotated[bool, typer.Option(help="allow pickle (.bin) checkpoints")] = False):
    """Audit one (pre, post) pair on a concept: report.html + metrics.json in --out."""
    from palimpsest.audit import audit
    from palimpsest.concepts import load_concept
    from palimpsest.models import load_pair
    from palimpsest.report import write_audit
    from palimpsest.report.figures import FigureExportError, check_static_export, parse_formats

    try:
        formats = parse_formats(figures)
    except ValueError as error:
        raise BadInput(f"--figures: {error}") from None
    names = tuple(a.strip() for a in analysers.split(",")) if analysers else None
    # the config first: a bad file is refused before any model loads
    config = audit_config(config_file, device=device, backend=backend, batch_size=batch_size, seed=seed,
                          analysers=names)
    spec = load_concept(concept)
    try:  # before the models load: an export that cannot happen fails now, not after the audit
        check_static_export(formats)
    except FigureExportError as error:
        _say(f"[red]error:[/] {_one_line(error)}")
        raise typer.Exit(1) from None
    pair = load_pair(pre, post, floor_source=floor, device=config.device, dtype=dtype, allow_pickle=allow_pickle,
                     device_map=device_map, max_memory=_max_memory(max_memory), offload_folder=offload_folder)
    with _progress() as progress:
        task = progress.add_task("auditing", total=None)

        def step(name: str, index: int, total: int) -> None:
            progress.update(task, total=total, completed=index, description=f"auditing: {name}")

        result = audit(pair, spec, config, progress=step)
    try:
        write_audit(result, out_dir, figure_formats=formats)
    except FigureExportError as error:
        _say(f"[red]error:[/] {_one_line(error)}")
        raise typer.Exit(1) from None
    out.print(f"verdict: [bold]{result.verdict}[/]" + (" (collateral)" if result.collateral else ""))
    out.print(f"report: {escape(str(out_dir / 'report.html'))}", soft_wrap=True)
    if formats:
        out.print(f"figures: {escape(str(out_dir / 'figures'))}", soft_wrap=True)


@app.command(name="figures")
@guarded
def figures_cmd(run_dir: Annotated[Path, typer.Argument(help="a finished audit, demo or validate run's --out folder")],
                fmt: Annotated[str, typer.Option("--format", help="comma-separated: png, svg, pdf, html")] = "png,svg",
                out_dir: Annotated[Optional[Path], typer.Option(
                    "--out", help="where the figures go (default: RUN_DIR/figures)")] = None,
                width: Annotated[Optional[int], typer.Option(
                    help="width in layout pixels (default: each figure's own, else 800)", min=50)] = None,
                height: Annotated[Optional[int], typer.Option(
                    help="height in layout pixels (default: each figure's own, else 480)", min=50)] = None,
                scale: Annotated[Optional[float], typer.Option(
                    help="PNG resolution multiplier (e.g. 3 for print at a column width)", min=0.1)] = None,
                only: Annotated[Optional[str], typer.Option(
                    help="comma-separated parts of figure names to keep, e.g. probes,comparison")] = None,
                list_only: Annotated[bool, typer.Option("--list", help="print the figure names, write nothing")] = False):
    """Redraw a finished run's figures from its saved results (no model needed): every analysis of an audit; for a
    demo also the comparison heatmap across methods; for validate the confusion matrices, AUC and ROC curves."""
    from palimpsest.report.figures import FigureExportError, check_static_export, parse_formats, write_figures
    from palimpsest.report.gallery import RunDirError, run_figures

    try:
        formats = parse_formats(fmt)
    except ValueError as error:
        raise BadInput(f"--format: {error}") from None
    if not formats:
        raise BadInput("--format: give at least one of png, svg, pdf, html")
    try:
        if not list_only:
            check_static_export(formats)
        figures = run_figures(run_dir)
        if only:
            wanted = [part.strip() for part in only.split(",") if part.strip()]
            figures = {name: fig for name, fig in figures.items() if any(w in name for w in wanted)}
            if not figures:
                raise RunDirError(f"--only {only}: no figure of {run_dir} matches")
        if list_only:
            for name in figures:
                out.print(escape(name), soft_wrap=True, highlight=False)
            return
        target = out_dir if out_dir is not None else run_dir / "figures"
        written = write_figures(figures, target, formats, width=width, height=height, scale=scale, style=False)
    except (RunDirError, FigureExportError) as error:
        _say(f"[red]error:[/] {_one_line(error)}")
        raise typer.Exit(1) from None
    out.print(f"wrote {len(written)} files ({len(figures)} figures as {','.join(formats)}) to "
              f"{escape(str(target))}", soft_wrap=True)


config_app = typer.Typer(no_args_is_help=True, help="Audit configs: print the fully resolved config.")
app.add_typer(config_app, name="config")


@config_app.command(name="show")
@guarded
def config_show(config_file: ConfigOption = None):
    """Print the fully resolved AuditConfig (every field, every analyser's options) as YAML; it loads back with
    --config."""
    from palimpsest.config.files import dump_config

    config = audit_config(config_file)
    sys.stdout.write(dump_config(config))
    sys.stdout.flush()


concept_app = typer.Typer(no_args_is_help=True, help="Concept files: import a benchmark's splits as a ConceptSpec.")
app.add_typer(concept_app, name="concept")

SplitOption = Optional[str]


@concept_app.command(name="import")
@guarded
def concept_import(
        paths: Annotated[list[Path], typer.Argument(help="the data set's files (.json, .jsonl, .parquet) or folders")],
        fmt: Annotated[str, typer.Option("--format", help="tofu | muse | wmdp | rwku")],
        out_path: Annotated[Path, typer.Option("--out", help="the ConceptSpec to write (.yaml or .json)")],
        forget: Annotated[SplitOption, typer.Option(help="forget splits, comma-separated (default: "
                                                         "TOFU forget10, MUSE knowmem,verbmem,privleak, WMDP wmdp-*, "
                                                         "RWKU forget_level1,forget_level2)")] = None,
        retain: Annotated[SplitOption, typer.Option(help="retain splits, or none (TOFU retain_perturbed, else "
                                                         "retain90 for forget10; MUSE knowmem,privleak)")] = None,
        holdout: Annotated[SplitOption, typer.Option(help="never-trained splits (membership non-members), or none "
                                                          "(TOFU holdout10 for forget10; MUSE privleak)")] = None,
        neighbours: Annotated[SplitOption, typer.Option(help="neighbour splits, or none (TOFU real_authors_perturbed,"
                                                             "world_facts_perturbed; RWKU neighbor_level1,"
                                                             "neighbor_level2)")] = None,
        name: Annotated[Optional[str], typer.Option(help="concept name (default: FORMAT-FORGET)")] = None,
        chat_template: Annotated[Optional[str], typer.Option(
            help="render question prompts with this model's chat template (hub id or local directory): the "
                 "format the audited (instruct) models were fine-tuned on")] = None,
        system_prompt: Annotated[Optional[str], typer.Option(help="system turn of the chat template")] = None,
        date_string: Annotated[Optional[str], typer.Option(
            help="date_string passed to the chat template (Llama 3.x; open-unlearning uses '10 Apr 2025')")] = None,
        mc_format: Annotated[str, typer.Option(help="WMDP: letters (lm-eval's prompt, choices A-D) | cloze "
                                                    "(the choice texts scored)")] = "letters"):
    """Import TOFU / MUSE / WMDP / RWKU files as a ConceptSpec; notes say what the import decided (subjects,
    prompts, scoring)."""
    from palimpsest.concepts.importers import PromptFormat, Selection, import_concept

    if out_path.suffix not in (".yaml", ".yml", ".json"):
        raise BadInput(f"--out {out_path}: give a .yaml or .json file name")
    prompts = PromptFormat.from_options(chat_template, system_prompt, date_string)
    spec, notes = import_concept(fmt, paths, selection=Selection(forget, retain, holdout, neighbours), name=name,
                                 prompts=prompts, mc_format=mc_format)
    for note in notes:
        _say(f"[yellow]note:[/] {escape(note)}")
    spec.to_file(out_path)
    counts = ", ".join(f"{item_set} {len(spec.items(item_set))}" for item_set in
                       ("forget", "paraphrases", "neighbours", "retain", "holdout"))
    out.print(f"wrote {escape(str(out_path))}: {escape(spec.name)} ({counts})", soft_wrap=True, highlight=False)


@app.command(name="concept-vectors")
@guarded
def concept_vectors_cmd(model: Annotated[str, typer.Option(help="model directory, hub id or .gguf")],
                        concept: Annotated[Path, typer.Option(help="ConceptSpec .yaml/.json")],
                        top_k: Annotated[int, typer.Option(help="how many vectors to list")] = 10,
                        ablation: Annotated[str, typer.Option(help="zero | noise")] = "zero",
                        allow_pickle: bool = False):
    """List the MLP value vectors that carry the concept: layer, index, top tokens, causal effect."""
    from palimpsest.concepts import load_concept
    from palimpsest.models import load_model
    from palimpsest.probes import list_concept_vectors

    if ablation not in ("zero", "noise"):
        raise BadInput(f"--ablation {ablation!r}: use zero or noise")
    spec = load_concept(concept)
    loaded = load_model(model, allow_pickle=allow_pickle)
    rows = list_concept_vectors(loaded, spec, top_k=top_k, ablation=ablation)
    table = Table(title=f"concept vectors of {spec.name}")
    for column in ("layer", "index", "score", "causal effect", "top tokens"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row.get("layer")), str(row.get("index")), f"{row.get('score', float('nan')):.3g}",
                      f"{row.get('causal_effect', float('nan')):.3g}",
                      " ".join(str(t) for t in row.get("top_tokens", [])[:8]))
    out.print(table)


def main() -> None:  # pragma: no cover
    sys.exit(app())


def _register_subcommands() -> None:
    """Commands that live with their stage (organism, unlearn, sae, probes, demo)."""
    import importlib

    for module in ("palimpsest.organism.cli", "palimpsest.unlearn.cli", "palimpsest.sae.cli",
                   "palimpsest.probes.cli", "palimpsest.demo", "palimpsest.validate.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name == module:
                continue
            raise
        mod.register(app)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    main()
