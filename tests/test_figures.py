"""Figures: the one publication style, static export through kaleido + Chromium, and `palimpsest figures RUN_DIR`.

The results are built by hand (no model): a probes result with its per-layer table, behaviour bars with intervals,
a demo of two methods and a validation report, each the shape the analysers and runners write.
"""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import plotly.graph_objects as go
import pytest
from typer.testing import CliRunner

from palimpsest.audit import AuditResult
from palimpsest.cli import app
from palimpsest.concepts import ConceptSpec, Item
from palimpsest.probes.figures import probe_accuracy_figures
from palimpsest.report import audit_figures, figure, run_figures, write_audit, write_figures
from palimpsest.report import figures as export
from palimpsest.report.comparison import comparison_figure, write_comparison
from palimpsest.report.figures import FigureExportError, find_browser
from palimpsest.report.style import PALETTE, ROLES, style_figure
from palimpsest.report.validation_figures import validation_figures
from palimpsest.types import AuditConfig, Result

runner = CliRunner()
needs_chromium = pytest.mark.skipif(find_browser() is None, reason="no Chrome/Chromium installed (apt-get install "
                                                                   "chromium, or plotly_get_chrome): no static export")
N_TEST = 40


def _probe_rows(post_equals_pre: bool) -> list[dict]:
    rows = []
    for position in ("last", "subject"):
        for layer in range(4):
            pre = 0.4 + 0.1 * layer
            for variant, acc in (("pre", pre), ("post", pre if post_equals_pre else 0.15), ("transfer", pre),
                                 ("floor", 0.1), ("shuffled", 0.12)):
                rows.append({"layer": layer, "site": f"blocks.{layer}.hook_resid_post", "position": position,
                             "variant": variant, "prob_true": acc, "accuracy": acc})
    return rows


def _audit(residue: float = 0.9, suppress: bool = True) -> AuditResult:
    rows = _probe_rows(post_equals_pre=suppress)
    probes = Result(name="probes", residue=residue, ci=(residue - 0.1, min(1.0, residue + 0.05)),
                    summary={"n_test_items": N_TEST}, tables={"per_layer": rows})
    for title, fig in probe_accuracy_figures(rows, ("last", "subject")).items():  # stored as the analyser does
        probes.add_figure(title, fig)
    lens = Result(name="logit_lens", residue=residue / 2, ci=(residue / 2 - 0.1, residue / 2 + 0.1))
    lens_fig = go.Figure([go.Scatter(x=[0, 1, 2, 3], y=[0.1 * i + (0.2 if "retain" in n else 0) for i in range(4)],
                                     name=n) for n in ("pre forget", "pre retain", "post forget", "post retain")])
    lens_fig.update_layout(xaxis_title="layer", yaxis_title="probability", template="plotly_white")
    lens.add_figure("logit lens: answer probability per layer", lens_fig)
    behaviour = Result(name="behaviour", kind="behaviour", summary={"forget_acc_pre": 0.9, "forget_acc_post": 0.1})
    behaviour.add_figure("Accuracy per item set", go.Figure(
        [go.Bar(name=m, x=["forget", "retain"], y=[a, 0.9], marker_color="#4C78A8",
                error_y={"type": "data", "array": [0.05, 0.05]}) for m, a in (("pre", 0.9), ("post", 0.1))]))
    concept = ConceptSpec(name="toy", forget=(Item(prompt="Ada lives in", answer=" Paris", subject="Ada"),),
                          retain=(Item(prompt="Bo lives in", answer=" Rome"),))
    return AuditResult(verdict="suppressed" if suppress else "deleted", collateral=False, behaviour_forgotten=True,
                       reasons=["toy"], behaviour=behaviour, analyses={"probes": probes, "logit_lens": lens},
                       config=AuditConfig(), concept=concept, models={"pre": "a", "post": "b"})


def _validation() -> dict:
    cases = []
    for i in range(8):
        truth = "suppressed" if i % 2 else "deleted"
        residue = (0.6 if truth == "suppressed" else 0.1) + 0.03 * i
        cases.append({"case_id": f"w{i % 2}-f0-c{i}", "world": i % 2, "truth": truth, "verdict": truth,
                      "control": "c", "residues": {
                          "probes": {"residue": residue, "ci": [residue - 0.1, residue + 0.1], "status": "ok"},
                          "cka": {"residue": 0.5 - 0.02 * i, "ci": None, "status": "ok"}}})
    conf = {"labels": {"truth": ["deleted", "suppressed", "not_forgotten"],
                       "verdict": ["deleted", "suppressed", "not_forgotten", "inconclusive"]},
            "matrix": [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 0]], "n": 8}
    return {"summary": {"n": 8}, "confusion": conf, "held_out": {"confusion": conf, "summary": {}},
            "analyser_auc": {"probes": {"auc": 1.0, "ci": [1.0, 1.0]}, "cka": {"auc": 0.4, "ci": [0.1, 0.7]}},
            "fit": {"values": {"suppressed_min_residue": 0.35}}, "cases": cases,
            "config": {"suppressed_min_residue": 0.35}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    audit_dir = write_audit(_audit(), root / "audit")
    results = {"suppress": _audit(0.95), "oracle": _audit(0.05, suppress=False)}
    for method, result in results.items():
        write_audit(result, root / "demo" / method)
    write_comparison(results, root / "demo", title="toy demo", expected={"suppress": "suppressed"})
    (root / "validate").mkdir()
    (root / "validate" / "validation.json").write_text(json.dumps(_validation()), encoding="utf-8")
    return {"audit": audit_dir, "demo": root / "demo", "validate": root / "validate"}


# ---------------------------------------------------------------- the style


def test_every_figure_uses_the_template_and_integer_layer_ticks():
    figures = audit_figures(_audit())
    assert list(figures)[0] == "overview/Calibrated residue per analysis"
    for name, fig in figures.items():
        assert fig.layout.template.layout.colorway == tuple(PALETTE), name
    probe = figures["probes/Probe accuracy per layer (last position)"]
    assert list(probe.layout.xaxis.tickvals) == [0, 1, 2, 3] and probe.layout.xaxis.title.text.startswith("layer (")
    lens = figures["logit_lens/logit lens: answer probability per layer"]
    assert list(lens.layout.xaxis.tickvals) == [0, 1, 2, 3]
    assert lens.layout.yaxis.title.text == "P(correct answer)"


def test_coinciding_lines_differ_in_colour_dash_and_marker_and_carry_bands():
    fig = figure(_audit(), "Probe accuracy per layer (last position)")  # by its title alone
    lines = {t.name: t for t in fig.data if t.fill in (None, "none")}
    styles = {(t.line.color, t.line.dash, t.marker.symbol) for n, t in lines.items() if n in ("pre", "post", "transfer")}
    assert len(styles) == 3  # pre, post and transfer coincide on a suppression: all three stay distinguishable
    assert lines["pre"].line.color == ROLES["pre"]["color"] and lines["post"].line.dash == ROLES["post"]["dash"]
    widths = [t.line.width for t in fig.data if t.fill in (None, "none")]
    assert widths == sorted(widths, reverse=True)  # the widest drawn first, under the others
    bands = [t for t in fig.data if t.fill == "toself"]
    assert bands and all(0.0 <= y <= 1.0 for t in bands for y in t.y)  # Wilson bands from n_test_items
    assert len(bands) == 3  # pre (the same as post and transfer, drawn once), floor, shuffled
    assert f"n = {N_TEST}" in fig.layout.yaxis.title.text


def test_style_is_idempotent_and_keeps_deliberate_colours():
    fig = figure(_audit(), "overview/Calibrated residue per analysis")
    again = style_figure(fig)
    assert again.to_plotly_json() == fig.to_plotly_json()
    assert isinstance(fig.data[0].marker.color, tuple)  # per-status colours stay
    texts = [a.text for a in fig.layout.annotations]
    assert any("suppressed_min_residue" in t for t in texts) and any("deleted_max_residue" in t for t in texts)
    with pytest.raises(KeyError, match="no figure"):
        figure(_audit(), "nothing of the kind")


def test_comparison_heatmap_marks_the_thresholds():
    fig = comparison_figure({"suppress": _audit(0.95), "oracle": _audit(0.05, suppress=False)})
    heat = fig.data[0]
    assert list(heat.y) == ["suppress", "oracle"] and "probes" in heat.x
    config = AuditConfig()
    assert {config.deleted_max_residue, config.suppressed_min_residue} <= set(heat.colorbar.tickvals)


def test_validation_figures_roc_and_confusion():
    figures = validation_figures(_validation())
    assert {"validate/Confusion matrix, held-out worlds", "validate/Residue AUC per analyser",
            "validate/ROC curve per analyser"} <= set(figures)
    roc = figures["validate/ROC curve per analyser"]
    assert "probes: AUC 1.00" in [a.text.split(" [")[0] for a in roc.layout.annotations]
    old = _validation()
    for case in old["cases"]:
        del case["residues"]
    with pytest.raises(ValueError, match="re-run `palimpsest validate`"):
        validation_figures(old)


# ---------------------------------------------------------------- run directories


def test_run_figures_of_each_kind_of_run(runs):
    assert "probes/Probe accuracy per layer (last position)" in run_figures(runs["audit"])
    demo = run_figures(runs["demo"])
    assert list(demo)[0] == "comparison/Residue per method and analysis"
    assert "oracle/probes/Probe accuracy per layer (last position)" in demo
    assert json.loads((runs["demo"] / "comparison.json").read_text())["methods"] == ["suppress", "oracle"]
    assert "validate/ROC curve per analyser" in run_figures(runs["validate"])


def test_figures_cli_lists_without_a_browser(runs, monkeypatch):
    monkeypatch.setattr(export, "find_browser", lambda: None)
    result = runner.invoke(app, ["figures", str(runs["demo"]), "--list", "--only", "comparison"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "comparison/Residue per method and analysis"


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "missing",
    lambda tmp: (tmp / "empty").mkdir() or tmp / "empty",
    lambda tmp: ((tmp / "old").mkdir(), (tmp / "old" / "metrics.json").write_text("{}"))[0] or tmp / "old",
    lambda tmp: ((tmp / "bad").mkdir(), (tmp / "bad" / "results.json").write_text("{\"verdict\": 1}"))[0]
    or tmp / "bad",
], ids=["missing", "empty", "metrics-only", "unreadable"])
def test_figures_cli_bad_run_dir_is_one_line_exit_1(tmp_path, make):
    result = runner.invoke(app, ["figures", str(make(tmp_path)), "--format", "html", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not (tmp_path / "o").exists()


def test_no_browser_is_an_error_naming_the_fix(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "find_browser", lambda: None)
    result = runner.invoke(app, ["figures", str(runs["audit"]), "--format", "png", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "apt-get install chromium" in line and "plotly_get_chrome" in line
    with pytest.raises(FigureExportError, match=r"report is written.*palimpsest figures"):
        write_audit(_audit(), tmp_path / "audit", figure_formats=("png",))
    assert (tmp_path / "audit" / "report.html").is_file() and not (tmp_path / "audit" / "figures").exists()
    with pytest.raises(ValueError, match="unknown figure formats"):
        write_audit(_audit(), tmp_path / "audit2", figure_formats=("gif",))
    assert not (tmp_path / "audit2").exists()


# ---------------------------------------------------------------- static export (kaleido + Chromium)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _svg_size(path: Path) -> tuple[float, float]:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return float(root.attrib["width"].removesuffix("px")), float(root.attrib["height"].removesuffix("px"))


@needs_chromium
def test_export_one_figure_of_each_kind_to_png_and_svg(runs, tmp_path):
    """A line plot with bands, bars with error bars, the comparison heatmap, ROC small multiples and a confusion
    matrix: PNG at scale 2 and SVG, each file whole and of the size asked for."""
    picks = {**{k: v for k, v in run_figures(runs["demo"]).items()
                if k in ("comparison/Residue per method and analysis", "suppress/overview/Calibrated residue per "
                         "analysis", "suppress/probes/Probe accuracy per layer (last position)")},
             **{k: v for k, v in run_figures(runs["validate"]).items()
                if k in ("validate/ROC curve per analyser", "validate/Confusion matrix, held-out worlds")}}
    assert len(picks) == 5
    written = write_figures(picks, tmp_path, ("png", "svg"), width=600, height=400, scale=2)
    assert len(written) == 10
    for path in written:
        assert path.stat().st_size > 5_000, path
        if path.suffix == ".png":
            assert _png_size(path) == (1200, 800), path
        else:
            assert _svg_size(path) == (1200, 800), path  # kaleido scales the SVG canvas too
    assert (tmp_path / "suppress" / "probes__probe_accuracy_per_layer_last_position.svg").is_file()
    assert not list(tmp_path.rglob(".figures.*"))  # the temporary folder is gone


@needs_chromium
def test_figures_cli_exports_and_keeps_each_figures_own_size(runs, tmp_path):
    result = runner.invoke(app, ["figures", str(runs["validate"]), "--format", "png", "--only", "ROC",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    fig = run_figures(runs["validate"])["validate/ROC curve per analyser"]
    assert _png_size(tmp_path / "validate__roc_curve_per_analyser.png") == (fig.layout.width, fig.layout.height)


@pytest.mark.slow
@needs_chromium
def test_export_every_figure_in_every_format(runs, tmp_path):
    for kind, run_dir in runs.items():
        result = runner.invoke(app, ["figures", str(run_dir), "--format", "png,svg,pdf,html",
                                     "--out", str(tmp_path / kind)])
        assert result.exit_code == 0, result.output
        n = len(run_figures(run_dir))
        files = [p for p in (tmp_path / kind).rglob("*") if p.is_file()]
        assert len(files) == 4 * n and all(p.stat().st_size > 1_000 for p in files)
        assert all(p.read_bytes()[:5] == b"%PDF-" for p in files if p.suffix == ".pdf")


def _audit_args(tiny_dir, tmp_path, out: Path, figures: str) -> list[str]:
    concept = tmp_path / "concept.json"
    concept.write_text(json.dumps({"name": "tiny", "forget": [{"prompt": "alice lives in", "answer": "paris"}],
                                   "retain": [{"prompt": "bob lives in", "answer": "rome"}]}))
    return ["audit", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept", str(concept), "--out", str(out),
            "--analysers", "behaviour", "--figures", figures]


def test_audit_figures_without_a_browser_fails_before_the_audit(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "find_browser", lambda: None)
    result = runner.invoke(app, _audit_args(tiny_dir, tmp_path, tmp_path / "out", "png,svg"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no Chrome/Chromium found" in lines[0] and "apt-get install chromium" in lines[0]
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, _audit_args(tiny_dir, tmp_path, tmp_path / "out", "png,gif"))
    assert result.exit_code == 2 and "unknown figure formats ['gif']" in result.output


@needs_chromium
def test_audit_figures_flag_writes_png_and_svg(tiny_dir, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, _audit_args(tiny_dir, tmp_path, out, "png,svg"))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == ["behaviour__accuracy_per_item_set.png", "behaviour__accuracy_per_item_set.svg",
                     "overview__calibrated_residue_per_analysis.png", "overview__calibrated_residue_per_analysis.svg"]
    assert _png_size(out / "figures" / "overview__calibrated_residue_per_analysis.png") == (800, 420)
