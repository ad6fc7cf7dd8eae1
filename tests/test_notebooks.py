"""The notebooks in notebooks/: committed without outputs, and each runs top to bottom on the model organism.

Each notebook is executed with nbclient in a kernel of this interpreter, in a temporary working directory (nothing
is written into the repository), with $PALIMPSEST_CACHE pointing at the organism cache the fixtures build first.
A check cell appended to the in-memory copy reads the notebook's results back, so the assertions test what the
notebook computed, not only that it ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("01_quickstart", "02_probes_and_lens", "03_sae_features", "04_attribution", "05_restoration")
TIMEOUT_S = 900  # per cell; a cold cache trains the SAEs and post-models inside the notebooks
MARK = "__palimpsest_check__"

# what each notebook needs built before it runs (post-models; the organism itself comes with organism_setup)
NEEDS = {"05_restoration": ("organism_pair_suppress", "organism_pair_ga")}

# appended to each notebook: prints the results the assertions below check, as one JSON line
RESULTS_BY_PAIR = ('_found = {f"{a}/{p}": {"status": r.status, "residue": r.residue, "ci": r.ci, "evidence": r.evidence} '
                   'for (a, p), r in results.items()}')
CHECKS = {
    "01_quickstart": '_found = {"verdict": result.verdict, "collateral": result.collateral, '
                     '"statuses": {n: r.status for n, r in result.analyses.items()}, '
                     '"report": str((out / "report.html").resolve())}',
    "02_probes_and_lens": RESULTS_BY_PAIR,
    "03_sae_features": RESULTS_BY_PAIR,
    "04_attribution": RESULTS_BY_PAIR,
    "05_restoration": RESULTS_BY_PAIR,
}


def _path(name: str) -> Path:
    return NOTEBOOK_DIR / f"{name}.ipynb"


# ------------------------------------------------------------------ the committed files


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)
    readme = (NOTEBOOK_DIR / "README.md").read_text(encoding="utf-8")
    assert all(f"{name}.ipynb" in readme for name in NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = nbformat.read(_path(name), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{name} cell {index} has outputs: clear them before committing"
        assert cell.execution_count is None, f"{name} cell {index} has an execution count"
        assert "execution" not in cell.metadata, f"{name} cell {index} keeps execution timings"


# ------------------------------------------------------------------ running them


@pytest.fixture(scope="module")
def kernel_of_this_interpreter(tmp_path_factory):
    """A `python3` kernelspec for sys.executable, found first through JUPYTER_PATH, so the notebooks run in this
    environment whatever other `python3` kernels the machine has."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(root / "kernels" / "python3")
    return root


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _execute(name: str, workdir: Path) -> tuple[nbformat.NotebookNode, dict]:
    nb = nbformat.read(_path(name), as_version=4)
    check = f"import json as _json, sys as _sys\n{CHECKS[name]}\n_found['python'] = _sys.executable\n" \
            f"print({MARK!r} + _json.dumps(_found, default=str))"
    nb.cells.append(nbformat.v4.new_code_cell(check))
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    line = next(line for line in _text(nb.cells[-1]).splitlines() if line.startswith(MARK))
    return nb, json.loads(line[len(MARK):])


def _ok(found: dict, key: str) -> dict:
    entry = found[key]
    assert entry["status"] == "ok", (key, entry)
    return entry


def _check_quickstart(nb, found, workdir):
    assert found["verdict"] == "suppressed", found
    assert "verdict: suppressed" in _text(nb.cells[-2])  # the notebook's own last cell
    assert not [n for n, s in found["statuses"].items() if s in ("skipped", "error")], found["statuses"]  # none raised
    report = Path(found["report"])
    assert report.is_file() and report.is_relative_to(workdir.resolve())


def _check_probes(nb, found, workdir):
    for analyser in ("logit_lens", "probes", "cka", "concept_vectors"):
        if analyser == "concept_vectors" and found[f"{analyser}/suppress"]["status"] == "inconclusive":
            # a build whose pre model has no causal concept vectors (seed-0 organism: ablating the top ten lowers the
            # forget log-odds by 0.031, under the 0.05 bar) is honestly inconclusive on both models, for that reason
            assert found[f"{analyser}/oracle"]["status"] == "inconclusive", found[f"{analyser}/oracle"]
            assert "not causal on the pre model" in found[f"{analyser}/suppress"].get("evidence", ""), found
            continue
        s, o = _ok(found, f"{analyser}/suppress"), _ok(found, f"{analyser}/oracle")
        assert s["ci"][0] >= 0.35, (analyser, s)  # significantly above suppressed_min_residue
        assert o["residue"] <= 0.3 and s["residue"] >= o["residue"] + 0.5, (analyser, s, o)


def _check_sae(nb, found, workdir):
    assert _ok(found, "sae_features/suppress")["residue"] >= 0.8
    assert _ok(found, "sae_features/oracle")["residue"] <= 0.2
    assert _ok(found, "sae_features/sauce")["residue"] >= 0.8  # clamped at inference: suppression by construction
    for pair in ("suppress", "oracle"):
        assert found[f"blindspots/{pair}"]["status"] not in ("skipped", "error"), found[f"blindspots/{pair}"]


def _check_attribution(nb, found, workdir):
    s, o = _ok(found, "attribution/suppress"), _ok(found, "attribution/oracle")
    assert s["residue"] >= o["residue"] + 0.2, (s, o)


def _check_restoration(nb, found, workdir):
    assert {k.split("/")[0] for k in found if "/" in k} == {"shift_vectors", "direction_ablation", "sae_restoration",
                                                           "relearning", "quantization"}
    for analyser in ("shift_vectors", "sae_restoration"):  # the stream of suppress is pre's
        assert found[f"{analyser}/suppress"]["status"] == "inconclusive", found[f"{analyser}/suppress"]
    # ... so the ablation reads the output layer's edit and undoes part of it: more than on the oracle, by a margin
    # (seed-0 organism, every kernel path here: suppress 0.32 [0.14, 0.55], oracle 0.05; bound +0.1, margin 0.17;
    # over worlds the suppress residue is 0.15-0.5, see tests/test_population.py)
    ablation, oracle = found["direction_ablation/suppress"], found["direction_ablation/oracle"]
    assert ablation["status"] == "ok" and ablation["residue"] >= oracle["residue"] + 0.1, (ablation, oracle)
    for key, entry in found.items():
        if "/" not in key:
            continue
        assert entry["status"] not in ("skipped", "error"), (key, entry)
        if key.endswith("/oracle"):  # nothing to restore in a retrained model: every attack stays near its floor
            assert entry["status"] == "ok" and entry["residue"] <= 0.25, (key, entry)


CHECKERS = {"01_quickstart": _check_quickstart, "02_probes_and_lens": _check_probes, "03_sae_features": _check_sae,
            "04_attribution": _check_attribution, "05_restoration": _check_restoration}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, organism_setup, organism_pair_suppress, kernel_of_this_interpreter, tmp_path,
                       monkeypatch, request, record_property):
    for fixture in NEEDS.get(name, ()):
        request.getfixturevalue(fixture)
    monkeypatch.setenv("PALIMPSEST_CACHE", str(organism_setup.cache))  # the kernel inherits this environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_of_this_interpreter))
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    nb, found = _execute(name, tmp_path)
    assert Path(found["python"]).resolve() == Path(sys.executable).resolve()
    for key, entry in found.items():
        if isinstance(entry, dict) and "residue" in entry:
            record_property(key, entry["residue"] if entry["residue"] is None else round(entry["residue"], 4))
    CHECKERS[name](nb, found, tmp_path)
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before  # nothing written next to the notebooks
