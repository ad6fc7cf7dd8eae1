"""Write figures as standalone HTML and, through kaleido and a headless Chrome/Chromium, PNG, SVG and PDF.

A figure that cannot be written is an error (FigureExportError, one line naming the figure and the fix), never a
warning: a user who asked for PNGs and got none must not see exit 0.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping

import plotly.graph_objects as go

from palimpsest.io import atomic_write_text
from palimpsest.report.style import style_figure

FIGURE_FORMATS = ("html", "png", "svg", "pdf")
STATIC_FORMATS = ("png", "svg", "pdf")
DEFAULT_WIDTH, DEFAULT_HEIGHT = 800, 480
INSTALL_CHROME = ("install a headless Chromium (`apt-get install chromium`, or `plotly_get_chrome` in the "
                  "palimpsest environment) or point BROWSER_PATH at a Chrome/Chromium binary")


class FigureExportError(RuntimeError):
    """A figure could not be written; the message is one line that names the figure and the fix."""


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    formats = [f.strip().lower() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    unknown = sorted(set(formats) - set(FIGURE_FORMATS))
    if unknown:
        raise ValueError(f"unknown figure formats {unknown}: use {', '.join(FIGURE_FORMATS)}")
    return tuple(dict.fromkeys(formats))


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido will use: $BROWSER_PATH, then chromium/chrome on PATH and the usual install
    paths, then the one `plotly_get_chrome` downloads (choreographer's own search)."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    path = Chromium.find_browser(skip_local=False)
    return str(path) if path and Path(path).exists() else None


def chromium_available() -> bool:
    return find_browser() is not None


def check_static_export(formats: Iterable[str], what: str = "figures") -> str | None:
    """Raise FigureExportError before any work when PNG/SVG/PDF were asked for and cannot be written; returns the
    browser path (None when only HTML was asked for)."""
    static = [f for f in formats if f in STATIC_FORMATS]
    if not static:
        return None
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise FigureExportError(f"cannot export {what} as {','.join(static)}: kaleido is not installed; "
                                "`pip install 'kaleido>=1'` (a dependency of palimpsest)") from None
    browser = find_browser()
    if browser is None:
        raise FigureExportError(f"cannot export {what} as {','.join(static)}: no Chrome/Chromium found; "
                                f"{INSTALL_CHROME}")
    return browser


def slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_").lower()[:60] or "figure"


def figure_path(name: str) -> Path:
    """'probes/Probe accuracy per layer (last position)' -> probes__probe_accuracy_per_layer_last_position;
    a leading 'method/' of a demo run becomes a folder."""
    parts = name.split("/")
    folders, analysis, title = parts[:-2], parts[-2] if len(parts) > 1 else "", parts[-1]
    return Path(*folders, f"{slug(analysis)}__{slug(title)}" if analysis else slug(title))


def _size(fig: go.Figure, width: int | None, height: int | None) -> tuple[int, int]:
    return (int(width or fig.layout.width or DEFAULT_WIDTH), int(height or fig.layout.height or DEFAULT_HEIGHT))


def write_figures(figures: Mapping[str, go.Figure], out_dir: str | Path, formats: Iterable[str], *,
                  width: int | None = None, height: int | None = None, scale: float | int | None = None,
                  style: bool = True) -> list[Path]:
    """Write every figure in every format under out_dir (names from `figure_path`); each file appears whole or not
    at all. PNG/SVG/PDF go through one kaleido browser session; a figure that fails raises FigureExportError."""
    formats = parse_formats(formats)
    out_dir = Path(out_dir)
    browser = check_static_export(formats)
    figures = {name: style_figure(fig) if style else fig for name, fig in figures.items()}
    written: list[Path] = []
    for name, fig in figures.items():
        if "html" in formats:
            target = out_dir / f"{figure_path(name)}.html"
            atomic_write_text(target, fig.to_html(include_plotlyjs=True, full_html=True))
            written.append(target)
    static = [f for f in formats if f in STATIC_FORMATS]
    if static and figures:
        written += _write_static(figures, out_dir, static, browser, width=width, height=height, scale=scale)
    return written


def _write_static(figures: Mapping[str, go.Figure], out_dir: Path, formats: list[str], browser: str | None, *,
                  width: int | None, height: int | None, scale: float | int | None) -> list[Path]:
    import kaleido

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".figures.", suffix=".tmp"))
    try:
        jobs = []
        for index, (name, fig) in enumerate(figures.items()):
            w, h = _size(fig, width, height)
            spec = fig.to_dict()
            for fmt in formats:
                jobs.append((name, fmt, tmp / f"{index}.{fmt}", out_dir / f"{figure_path(name)}.{fmt}",
                             {"fig": spec, "path": tmp / f"{index}.{fmt}",
                              "opts": {"format": fmt, "width": w, "height": h, "scale": scale or 1}}))
        try:
            # mathjax=False: kaleido would otherwise fetch MathJax from a CDN (no figure here uses LaTeX); a
            # timeout well above kaleido's 90 s: a large grid on a loaded 2-core machine can take longer
            with _quiet("choreographer", "kaleido"):  # their warnings would add lines to our one-line error
                errors = kaleido.write_fig_from_object_sync([job[-1] for job in jobs],
                                                            kopts={"mathjax": False, "path": browser, "timeout": 600})
        except Exception as error:  # noqa: BLE001 — the browser did not start: name the first figure and the fix
            raise FigureExportError(f"could not export figure {jobs[0][0]!r} as {jobs[0][1]}: "
                                    f"{_first_line(error)}; {INSTALL_CHROME}") from None
        for name, fmt, source, _target, _spec in jobs:
            if not source.exists() or source.stat().st_size == 0:
                reason = _first_line(errors[0]) if errors else "kaleido wrote nothing"
                raise FigureExportError(f"could not export figure {name!r} as {fmt}: {reason}; check the figure "
                                        f"renders in report.html, else {INSTALL_CHROME}")
        written = []
        for _name, _fmt, source, target, _spec in jobs:
            target.parent.mkdir(parents=True, exist_ok=True)
            source.replace(target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    # choreographer's errors carry several sentences as separate args: the first says what happened
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def export_figures(result, out_dir: Path, formats, *, width: int | None = None, height: int | None = None,
                   scale: float | int | None = None) -> list[Path]:
    """Every figure of an audit result (the residue overview, behaviour, each analysis) under out_dir."""
    from palimpsest.report.gallery import audit_figures

    return write_figures(audit_figures(result), out_dir, formats, width=width, height=height, scale=scale,
                         style=False)
