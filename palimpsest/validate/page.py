"""The validation page: how often the verdict matched the truth, on held-out worlds, and which analysers separate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from palimpsest.io import atomic_write_text
from palimpsest.report.html import FigureCounter, badge, esc, fmt, key_values, page, table
from palimpsest.report.validation_figures import (
    auc_figure,
    auc_rows,
    confusion_figure,
    roc_figure,
    roc_threshold,
)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.1f}%"


def _confusion_table(conf: dict) -> str:
    labels = conf.get("labels", {})
    truths, verdicts = list(labels.get("truth", [])), list(labels.get("verdict", []))
    matrix = conf.get("matrix", [])
    if not truths or not verdicts:
        return '<p class="muted">(no scored cases)</p>'
    head = "<th>truth \\ verdict</th>" + "".join(f"<th>{badge(v)}</th>" for v in verdicts) + "<th>n</th>"
    rows = []
    for i, truth in enumerate(truths):
        counts = matrix[i] if i < len(matrix) else [0] * len(verdicts)
        cells = []
        for j, count in enumerate(counts):
            style = ' style="font-weight:700"' if j < len(verdicts) and verdicts[j] == truth else ""
            cells.append(f'<td class="num"{style}>{esc(count)}</td>')
        rows.append(f"<tr><th>{esc(truth)}</th>{''.join(cells)}<td class=\"num\">{esc(sum(counts))}</td></tr>")
    return f'<table><tr>{head}</tr>{"".join(rows)}</table>'


def _case_rows(cases: list[dict]) -> str:
    head = ["case", "world", "forget set", "control", "construction", "truth", "weak control", "verdict",
            "correct", "collateral"]
    rows = []
    for c in cases:
        case_id, report = c.get("case_id", ""), c.get("report") or ""
        link = f'<a href="{esc(report)}">{esc(case_id)}</a>' if report else esc(case_id)
        truth, verdict = c.get("truth", "unknown"), c.get("verdict", "")
        mark = "—" if truth not in ("deleted", "suppressed", "not_forgotten") else ("✓" if verdict == truth else "✗")
        cells = [link, esc(c.get("world", "")), esc(c.get("forget_set", "")), esc(c.get("control", "")),
                 esc(c.get("construction", "")), esc(truth), "weak" if c.get("weak_control") else "",
                 badge(str(verdict)), mark, "yes" if c.get("collateral") else "no"]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f'<div class="scroll"><table><tr>{header}</tr>{"".join(rows)}</table></div>'


def render_validation(report: dict, title: str) -> str:
    """The validation page for a report dict (keys: summary, confusion, held_out, fit, analyser_auc, cases, kernels,
    seconds, config); every piece of text is escaped."""
    figures = FigureCounter()
    overall = report.get("summary") or {}
    held = report.get("held_out") or {}
    held_summary = held.get("summary") or {}
    fit = report.get("fit") or {}
    cases = [c.model_dump() if hasattr(c, "model_dump") else dict(c) for c in report.get("cases") or []]
    test_worlds = list(held.get("worlds") or [])
    train_worlds = list(fit.get("train_worlds") or [])
    not_held_out = held.get("held_out") is False or bool(set(test_worlds) & set(train_worlds))

    body = [f"<h1>{esc(title)}</h1>",
            "<p>Each case is one unlearned model of a model-organism world whose truth is known by construction "
            "(deleted, suppressed or not forgotten; the behaviour gate moves a suppression control that did not "
            "forget to not_forgotten). The verdict's thresholds are fitted on some worlds and scored on the "
            "others. Click a case for its full audit report.</p>"]
    headline = (f'<div class="card"><b>Held-out accuracy {esc(_pct(held_summary.get("accuracy")))}</b> '
                f'({esc(held_summary.get("correct", "—"))} / {esc(held_summary.get("n", "—"))} scored cases on '
                f'worlds {esc(", ".join(str(w) for w in test_worlds) or "—")}); '
                f'<b>false deleted: {esc(held_summary.get("false_deleted", "—"))}</b> '
                f'(suppressed cases called deleted, rate {esc(_pct(held_summary.get("false_deleted_rate")))}); '
                f'false suppressed: {esc(held_summary.get("false_suppressed", "—"))}. '
                f'All worlds: accuracy {esc(_pct(overall.get("accuracy")))} over {esc(overall.get("n", "—"))} '
                f'scored of {esc(overall.get("n_cases", len(cases)))} cases.')
    fitted_all = (report.get("fitted_all") or {}).get("summary")
    if fitted_all:
        headline += (f' The fitted thresholds on every world: accuracy {esc(_pct(fitted_all.get("accuracy")))}, '
                     f'false deleted {esc(fitted_all.get("false_deleted", "—"))}.')
    if not_held_out:
        headline += (' <p><b style="color:#b00">Not held out:</b> the thresholds were fitted on the same world(s) '
                     "they are scored on, so these numbers are training numbers.</p>")
    body.append(headline + "</div>")

    body.append("<h2>Confusion matrix (held-out worlds)</h2>")
    held_conf = held.get("confusion") or {}
    body.append(_confusion_table(held_conf))
    if held_conf.get("labels"):
        body.append(figures.div(confusion_figure(held_conf).to_json(), "Truth x verdict, held-out worlds"))
    body.append("<h2>Confusion matrix (all worlds, the run's thresholds)</h2>")
    body.append(_confusion_table(report.get("confusion") or {}))
    if (report.get("fitted_all") or {}).get("confusion"):
        body.append("<h2>Confusion matrix (all worlds, the fitted thresholds)</h2>")
        body.append(_confusion_table(report["fitted_all"]["confusion"]))

    body.append("<h2>Per-analyser separation</h2>")
    body.append("<p>ROC AUC of each analyser's calibrated residue for suppressed (positive) vs deleted cases, over "
                "the cases where it reached a conclusion; 95% stratified bootstrap interval. 0.5 is chance.</p>")
    separation = auc_rows(report.get("analyser_auc") or {})
    if any(entry.get("auc") is not None for _, entry in separation):
        body.append(figures.div(auc_figure(separation).to_json(), "Residue AUC per analyser (95% bootstrap CI)"))
    try:
        roc = roc_figure(cases, report.get("analyser_auc"), suppressed_min_residue=roc_threshold(report))
        body.append(figures.div(roc.to_json(), "ROC curve per analyser: residue, suppressed (positive) vs deleted"))
    except ValueError:
        pass  # fewer than 2 cases of each truth with a residue: the table below says so
    body.append(table([{"analyser": name, "auc": entry.get("auc"), "95% CI": entry.get("ci"),
                        "suppressed cases": entry.get("n_suppressed"), "deleted cases": entry.get("n_deleted"),
                        "note": entry.get("reason", "")} for name, entry in separation]))

    standard = report.get("standard_metric_auc") or {}
    if standard:
        body.append("<h2>Published metrics on ground truth</h2>")
        body.append("<p>ROC AUC of each published metric (and palimpsest's variants) for suppressed (positive) vs "
                    "deleted cases, the value read the way the field reads it (less forgotten = higher or lower, "
                    "see docs/metrics.md); 0.5 is chance, below 0.5 the usual reading points the wrong way.</p>")
        body.append(table([{"metric": name, "analyser": e.get("analyser"), "published": e.get("published"),
                            "less forgotten": e.get("less_forgotten"), "auc": e.get("auc"), "95% CI": e.get("ci"),
                            "suppressed cases": e.get("n_suppressed"), "deleted cases": e.get("n_deleted"),
                            "note": e.get("reason", "")} for name, e in auc_rows(standard)]))

    body.append("<h2>Fitted thresholds</h2>")
    if fit:
        body.append(f'<p>{esc(fit.get("criterion", ""))}</p>')
        body.append(key_values(fit.get("values") or {}))
        body.append(key_values({"training worlds": train_worlds, "training cases": fit.get("train_cases"),
                                "training errors": fit.get("train_errors"),
                                "training false deleted": fit.get("train_false_deleted"),
                                "base config errors": fit.get("base_errors"),
                                "base config false deleted": fit.get("base_false_deleted"),
                                "candidates tried": fit.get("candidates_tried")}))
    else:
        body.append('<p class="muted">(no fit)</p>')

    body.append("<h2>By control</h2>")
    body.append(table([{"control": control, **row} for control, row in (overall.get("by_control") or {}).items()]))
    by_truth = overall.get("by_truth") or {}
    if by_truth:
        body.append(table([{"truth": truth, **row} for truth, row in by_truth.items()]))
    weak = overall.get("weak_controls") or []
    if weak:
        body.append(f'<p class="muted">Weak controls (suppressed by construction, behaviour not forgotten): '
                    f'{esc(", ".join(weak))}</p>')
    unknown = overall.get("unknown_by_control") or {}
    if unknown:
        body.append("<p>Cases of unknown truth, verdicts per control (not scored):</p>")
        body.append(table([{"control": control, **counts} for control, counts in unknown.items()]))

    body.append(f"<h2>Cases ({len(cases)})</h2>")
    body.append(_case_rows(cases))

    body.append("<h2>Configuration</h2>")
    body.append(key_values(report.get("config") or {}))
    if report.get("kernels"):
        body.append(f'<details><summary>Kernels</summary><pre>{esc(report["kernels"])}</pre></details>')
    if report.get("seconds") is not None:
        body.append(f'<p class="muted">Took {fmt(float(report["seconds"]))} s.</p>')
    return page(title, "\n".join(body))


def write_validation_page(report: dict, out_dir: str | Path, title: str = "palimpsest validation") -> Path:
    """Write out_dir/index.html atomically; returns its path."""
    return atomic_write_text(Path(out_dir) / "index.html", render_validation(report, title))
