"""Export every figure of an audit as standalone HTML and, where a Chromium is installed, PNG/SVG (kaleido)."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import plotly.io as pio

FIGURE_FORMATS = ("html", "png", "svg")


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_").lower()[:60] or "figure"


def chromium_available() -> bool:
    return any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome"))


def export_figures(result, out_dir: Path, formats) -> list[Path]:
    unknown = set(formats) - set(FIGURE_FORMATS)
    if unknown:
        raise ValueError(f"unknown figure formats {sorted(unknown)}: use {', '.join(FIGURE_FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    results = ([result.behaviour] if result.behaviour else []) + list(result.analyses.values())
    static = [f for f in formats if f != "html"]
    can_static = static and chromium_available()
    if static and not can_static:
        warnings.warn("PNG/SVG export needs a Chromium (and kaleido); writing HTML figures only", stacklevel=2)
    for r in results:
        for title, figure_json in r.figures.items():
            fig = pio.from_json(figure_json)
            stem = out_dir / f"{r.name}__{_slug(title)}"
            if "html" in formats:
                fig.write_html(str(stem) + ".html", include_plotlyjs=True, full_html=True)
                written.append(Path(str(stem) + ".html"))
            if can_static:
                for fmt in static:
                    try:
                        fig.write_image(str(stem) + f".{fmt}")
                        written.append(Path(str(stem) + f".{fmt}"))
                    except Exception as error:  # kaleido missing or browser failure: keep the HTML
                        warnings.warn(f"could not write {fmt}: {error}", stacklevel=2)
                        can_static = False
                        break
    return written
