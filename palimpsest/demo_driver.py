"""The one loop every demo runs (organism, SmolLM2, digits): for each method make the post-model, audit it and write
its report; then write the comparison page; return the results by method."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

Step = Callable[[str, float], None]  # (message, units of work just finished)
# audit one method: make its post-model, audit the pair; returns the AuditResult
AuditMethod = Callable[[str], Any]
# write one method's report into the given directory (None: audit_method wrote it itself)
WriteReport = Callable[[Any, Path], None]
# run several methods at once (e.g. a process pool); yields (method, AuditResult) as each finishes, reports written
Pool = Callable[[Sequence[str]], Iterable[tuple[str, Any]]]


def run_methods(out_dir: str | Path, methods: Sequence[str], audit_method: AuditMethod, *, title: str,
                expected: dict[str, str] | Callable[[dict], dict[str, str]] | None = None,
                notes: Sequence[str] | Callable[[dict], Sequence[str]] = (),
                write: WriteReport | None = None, pool: Pool | None = None,
                progress: Step | None = None) -> dict:
    """Audit every method, write DIR/<method>/ and DIR/index.html; returns {method: AuditResult} in `methods` order.

    Without `pool` the methods run one after the other in this process: `audit_method(method)`, then
    `write(result, DIR/method)`. With `pool`, it runs them (and writes their reports) and yields each as it finishes.
    `expected` (the verdict each control must get) and `notes` may be functions of the results, for what is known
    only at the end (a control's behaviour gate, the total time).
    """
    from palimpsest.capture import memo

    with memo.session():  # the audits share what depends only on their pre model (captures, scores: capture.memo)
        return _run_methods(out_dir, methods, audit_method, title=title, expected=expected, notes=notes,
                            write=write, pool=pool, progress=progress)


def _run_methods(out_dir, methods, audit_method, *, title, expected, notes, write, pool, progress) -> dict:
    from palimpsest.report.comparison import write_comparison

    out_dir = Path(out_dir)
    step = progress or (lambda message, done=0: None)
    results: dict = {}
    finished = pool(methods) if pool is not None else _serial(methods, audit_method, write, out_dir)
    for method, result in finished:
        results[method] = result
        step(f"{method}: {result.verdict}", 1)
    results = {method: results[method] for method in methods if method in results}
    wanted = expected(results) if callable(expected) else {m: v for m, v in (expected or {}).items() if m in results}
    write_comparison(results, out_dir, title=title, expected=wanted,
                     notes=list(notes(results) if callable(notes) else notes))
    return results


def _serial(methods: Sequence[str], audit_method: AuditMethod, write: WriteReport | None, out_dir: Path):
    for method in methods:
        result = audit_method(method)
        if write is not None:
            write(result, out_dir / method)
        yield method, result
