import json

import pytest
import yaml
from typer.testing import CliRunner

from palimpsest.cli import app

runner = CliRunner()

CONCEPT = {
    "name": "tiny <script>alert(1)</script>",
    "keywords": ["alice"],
    "forget": [{"prompt": "alice lives in the city of <script>alert(2)</script>", "answer": "paris",
                "subject": "alice"},
               {"prompt": "alice works as a", "answer": "baker", "subject": "alice"}],
    "retain": [{"prompt": "bob lives in", "answer": "rome", "subject": "bob"}],
}


@pytest.fixture()
def concept_file(tmp_path):
    path = tmp_path / "concept.yaml"
    path.write_text(yaml.safe_dump(CONCEPT))
    return path


def test_help_and_info(tiny_dir):
    assert runner.invoke(app, ["--help"]).exit_code == 0
    result = runner.invoke(app, ["info", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    assert "blocks.1.hook_resid_post" in result.output and "LlamaForCausalLM" in result.output


def test_bad_inputs_exit_2_with_one_line(tiny_dir, tmp_path, concept_file):
    result = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "forget": []}))
    result = runner.invoke(app, ["audit", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept", str(bad),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "forget set is empty" in result.output
    assert not (tmp_path / "o").exists()
    result = runner.invoke(app, ["capture", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept",
                                 str(concept_file), "--sites", "blocks.5.hook_resid_post", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "valid sites are" in result.output
    assert not (tmp_path / "c").exists()


def test_unknown_answer_token_is_bad_input(tiny_dir, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(dict(CONCEPT, forget=[{"prompt": "alice lives in", "answer": "atlantis"}])))
    result = runner.invoke(app, ["audit", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept", str(path),
                                 "--out", str(tmp_path / "o"), "--analysers", "probes"])
    assert result.exit_code == 2 and "forget item 0" in result.output and "atlantis" in result.output


def test_capture_writes_safetensors(tiny_dir, tmp_path, concept_file):
    from safetensors.torch import load_file

    result = runner.invoke(app, ["capture", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept",
                                 str(concept_file), "--out", str(tmp_path / "acts")])
    assert result.exit_code == 0, result.output
    tensors = load_file(str(tmp_path / "acts" / "post.forget.safetensors"))
    assert tensors["blocks.1.hook_resid_post"].shape == (2, 32)


def test_audit_writes_report_and_escapes(tiny_dir, tiny_dir_other, tmp_path, concept_file):
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", "--pre", str(tiny_dir), "--post", str(tiny_dir_other), "--concept",
                                 str(concept_file), "--out", str(out), "--analysers", "behaviour"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["verdict"] in {"deleted", "suppressed", "not_forgotten", "inconclusive"}
    assert isinstance(metrics["collateral"], bool) and "forget_acc_pre" in metrics["behaviour"]
    html = (out / "report.html").read_text()
    assert "<script>alert(" not in html and "&lt;script&gt;alert(1)" in html
    from palimpsest.audit import AuditResult

    again = AuditResult.load(out / "results.json")
    assert again.verdict == metrics["verdict"]


def test_interrupt_leaves_no_report(tiny_dir, tmp_path, concept_file, monkeypatch):
    from palimpsest.audit import behaviour

    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(behaviour.Behaviour, "run", boom)
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept",
                                 str(concept_file), "--out", str(out), "--analysers", "behaviour"])
    assert result.exit_code == 130 and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".audit")]


def test_validate_bad_input_exits_2_before_any_work(tmp_path):
    result = runner.invoke(app, ["validate", "--worlds", "0", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "at least 1" in result.output
    result = runner.invoke(app, ["validate", "--controls", "oracle,nope", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "nope" in result.output and "suppress" in result.output
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"suppressed_min_residu": 0.3}))
    result = runner.invoke(app, ["validate", "--config", str(config), "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "suppressed_min_residu" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()  # nothing was started, nothing written


def test_audit_offloads_to_disk_from_the_command_line(tiny_dir, tmp_path, concept_file):
    """--device-map auto with a --max-memory too small for the weights offloads them to disk (--offload-folder, one
    subfolder per model) and the audit still runs; a bad --max-memory is one line, exit 2, before any load."""
    bad = runner.invoke(app, ["audit", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept",
                              str(concept_file), "--out", str(tmp_path / "bad"), "--device-map", "auto",
                              "--max-memory", "2GiB"])
    assert bad.exit_code == 2 and "--max-memory" in bad.output and not (tmp_path / "bad").exists()
    folder = tmp_path / "offload"
    result = runner.invoke(app, ["audit", "--pre", str(tiny_dir), "--post", str(tiny_dir), "--concept",
                                 str(concept_file), "--out", str(tmp_path / "o"), "--analysers", "probes,depth",
                                 "--device-map", "auto", "--max-memory", '{"cpu": 20000}',
                                 "--offload-folder", str(folder)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "metrics.json").is_file()
    # each model gets its own subfolder (safetensors weights offloaded to disk are read in place, so it may stay empty)
    assert (folder / "pre").is_dir() and (folder / "post").is_dir()
