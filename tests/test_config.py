"""Config files: `--config FILE` on audit/demo/validate, `palimpsest config show`, one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.config.files import ConfigError, dump_config, load_config
from palimpsest.types import AuditConfig

runner = CliRunner()

CONCEPT = {"name": "tiny", "forget": [{"prompt": "alice lives in", "answer": "paris", "subject": "alice"}],
           "retain": [{"prompt": "bob lives in", "answer": "rome", "subject": "bob"}]}


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


def _error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:"), output
    return lines[0]


BAD = {
    # (file content, what the one line must name)
    "unknown_analyser": ({"options": {"nope": {"k": 1}}}, ("nope", "valid:", "depth", "mia", "pca_shift")),
    "unknown_option": ({"options": {"mia": {"atack": "zlib"}}}, ("atack", "valid:", "attack", "k", "min_gap")),
    "unknown_field": ({"suppressed_min_residu": 0.3}, ("suppressed_min_residu", "valid:", "suppressed_min_residue")),
    "unknown_sae_field": ({"sae": {"expanson": 2}}, ("expanson", "valid:", "expansion")),
    "bad_value": ({"options": {"mia": {"attack": "nope"}}}, ("options.mia.attack", "loss")),
    "bad_type": ({"n_bootstrap": "many"}, ("n_bootstrap", "many")),
    "not_a_mapping": ("- just\n- a list\n", ("mapping",)),
    "not_yaml": ("a: [unclosed\n", ("not valid YAML",)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_config_show_refuses_a_bad_file_with_one_line(case, tmp_path):
    content, needles = BAD[case]
    path = _write(tmp_path / "bad.yaml", content)
    result = runner.invoke(app, ["config", "show", "--config", path])
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert "bad.yaml" in line
    for needle in needles:
        assert needle in line, (needle, line)


@pytest.mark.parametrize("case", ["unknown_analyser", "unknown_option", "unknown_field"])
def test_audit_refuses_a_bad_config_before_loading_anything(case, tiny_dir, tmp_path):
    content, needles = BAD[case]
    path = _write(tmp_path / "bad.yaml", content)
    concept = _write(tmp_path / "concept.yaml", CONCEPT)
    out = tmp_path / "report"
    result = runner.invoke(app, ["audit", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept", concept,
                                 "--out", str(out), "--config", path])
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert all(needle in line for needle in needles), line
    assert not out.exists()


def test_demo_and_validate_refuse_a_bad_config(tmp_path):
    path = _write(tmp_path / "bad.yaml", BAD["unknown_option"][0])
    for args in (["demo", "--out", str(tmp_path / "d")], ["validate", "--out", str(tmp_path / "v")]):
        result = runner.invoke(app, [*args, "--config", path])
        assert result.exit_code == 2, result.output
        assert "atack" in _error_line(result.output)
    assert not (tmp_path / "d").exists() and not (tmp_path / "v").exists()


def test_a_missing_config_file_is_bad_input(tmp_path):
    result = runner.invoke(app, ["config", "show", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "missing.yaml" in _error_line(result.output)


def test_config_show_loads_back_equal_to_the_default(tmp_path):
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert set(shown["options"]) >= {"behaviour", "depth", "mia", "memorization", "pca_shift"}
    assert shown["options"]["mia"] == {"attack": "loss", "k": 0.4, "p": 2, "text": "full", "min_gap": 0.1}
    path = _write(tmp_path / "shown.yaml", result.output)
    assert load_config(path) == AuditConfig()
    assert load_config(path).resolved() == AuditConfig().resolved()


def test_config_show_resolves_a_file_and_the_dump_round_trips(tmp_path):
    path = _write(tmp_path / "c.yaml", {"seed": 3, "options": {"mia": {"attack": "zlib"}}, "sae": {"k": 4}})
    result = runner.invoke(app, ["config", "show", "--config", path])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["seed"] == 3 and shown["options"]["mia"]["attack"] == "zlib" and shown["sae"]["k"] == 4
    assert shown["options"]["depth"] == {"span": "answer", "tau": 0.05, "score": "capped", "min_delta": 0.05,
                                        "cap": "floor", "holdout_floor": True, "min_holdout_items": 4}
    config = load_config(path)
    again = load_config(_write(tmp_path / "again.yaml", dump_config(config)))
    assert again == config and again.opts("mia").attack == "zlib"


def test_json_files_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"seed": 5, "device": "cpu", "options": {"pca_shift": {"n_components": 3}}}))
    assert load_config(path).seed == 5
    assert load_config(path, seed=7, device=None).seed == 7  # a flag given overrides the file; None leaves it
    assert load_config(path).opts("pca_shift").n_components == 3
    with pytest.raises(ConfigError, match="c.json"):
        load_config(_write(tmp_path / "c.json", "{not json"))


# ---------------------------------------------------------------- the organism: a config file changes the verdict


@pytest.fixture(scope="module")
def suppress_paths(organism_setup, tmp_path_factory):
    from palimpsest.demo import organism_post_dir

    folder = tmp_path_factory.mktemp("config_organism")
    concept = folder / "concept.yaml"
    concept.write_text(yaml.safe_dump(organism_setup.concept.model_dump(mode="json")), encoding="utf-8")
    return {"pre": organism_setup.pre_dir, "post": organism_post_dir("suppress", organism_setup),
            "floor": organism_setup.floor_dir, "concept": concept}


def _audit(paths, out, config_path):
    result = runner.invoke(app, ["audit", "--pre", str(paths["pre"]), "--post", str(paths["post"]), "--floor",
                                 str(paths["floor"]), "--concept", str(paths["concept"]), "--out", str(out),
                                 "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def test_a_config_file_changes_the_verdict_of_the_suppress_control(suppress_paths, tmp_path):
    """depth and mia both see the suppress control's untouched internals (residue CI well above the bound): with
    the defaults the verdict is suppressed; asking for three strong analyses of the two that run cannot be met, and
    two conclusive analyses are fewer than min_residue_analyses, so the verdict falls to inconclusive."""
    base = {"analysers": ["depth", "mia"], "n_bootstrap": 200, "options": {"mia": {"attack": "loss", "k": 0.3}}}
    default = _audit(suppress_paths, tmp_path / "default", _write(tmp_path / "default.yaml", base))
    assert default["verdict"] == "suppressed", default["reasons"]
    assert default["config"]["options"]["mia"] == {"attack": "loss", "k": 0.3, "p": 2, "text": "full", "min_gap": 0.1}
    assert default["analyses"]["mia"]["k"] == 0.3  # the option reached the analyser
    assert default["config"]["options"]["depth"]["span"] == "answer"  # every analyser's defaults are recorded

    strict = _audit(suppress_paths, tmp_path / "strict",
                    _write(tmp_path / "strict.yaml", {**base, "suppressed_min_analyses": 3}))
    assert strict["verdict"] == "inconclusive", strict["reasons"]
    assert strict["config"]["suppressed_min_analyses"] == 3
    assert strict["thresholds_source"]["fitted"] is False
    html = (tmp_path / "strict" / "report.html").read_text(encoding="utf-8")
    assert "Analyser options" in html and "suppressed_min_analyses" in html and "min_delta" in html
