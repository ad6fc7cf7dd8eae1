"""Loading a .gguf file: config, weights (RoPE un-permutation), tokenizer and re-saving, on a tiny written file."""

from __future__ import annotations

import json

import pytest
import torch

from palimpsest.models import load_model
from palimpsest.models.loading import ModelLoadError
from tests import gguf_writer
from tests.gguf_writer import (
    CHAT_TEMPLATE,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LAYERS,
    reference_tokenizer,
    write_tiny_gguf,
)

TEXTS = ["The capital of France is Paris.", "Q: What is the capital of Spain?\nA: Madrid",
         "Bob lives in Rome and works as a pilot.", "zebra quiz 42 !"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=0)


@pytest.fixture(scope="module")
def loaded(written):
    return load_model(written[0])


def _ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


def _max_logit_diff(model_a, model_b, tokenizer) -> float:
    with torch.inference_mode():
        return max(float((model_a(_ids(tokenizer, t)).logits - model_b(_ids(tokenizer, t)).logits).abs().max())
                   for t in TEXTS)


def test_config_matches_reference(written, loaded):
    _, ref = written
    cfg, want = loaded.model.config, ref.config
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert cfg.model_type == "llama"
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "vocab_size", "max_position_embeddings", "head_dim", "tie_word_embeddings", "bos_token_id",
                "eos_token_id"):
        assert getattr(cfg, key) == getattr(want, key), key
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        HIDDEN, LAYERS, HEADS, KV_HEADS)
    assert cfg.rope_parameters["rope_theta"] == pytest.approx(want.rope_parameters["rope_theta"])
    assert cfg.rms_norm_eps == pytest.approx(want.rms_norm_eps, rel=1e-6)  # GGUF stores it as float32
    assert loaded.n_layers == LAYERS and loaded.d_model == HIDDEN
    assert not loaded.model.training


def test_weights_and_logits_match_reference(written, loaded):
    _, ref = written
    got = loaded.model.state_dict()
    for name, tensor in ref.state_dict().items():
        torch.testing.assert_close(got[name], tensor, atol=0, rtol=0, msg=name)
    assert _max_logit_diff(loaded.model, ref, loaded.tokenizer) <= 1e-4


def test_tied_embeddings_file_loads_tied(tmp_path):
    path, ref = write_tiny_gguf(tmp_path / "tied.gguf", seed=1, tie_embeddings=True)
    lm = load_model(path)
    assert lm.model.config.tie_word_embeddings is True
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()
    assert _max_logit_diff(lm.model, ref, lm.tokenizer) <= 1e-4


def test_without_rope_permutation_logits_differ(tmp_path, monkeypatch):
    # the check above must be able to fail: a file written without llama.cpp's q/k permutation loads wrong
    monkeypatch.setattr(gguf_writer, "_permute_for_rope", lambda weight, *heads: weight)
    path, ref = write_tiny_gguf(tmp_path / "unpermuted.gguf", seed=0)
    lm = load_model(path)
    assert _max_logit_diff(lm.model, ref, lm.tokenizer) > 1e-3


def test_tokenizer_matches_reference_bpe(loaded):
    tok, ref = loaded.tokenizer, reference_tokenizer()
    text = "The capital of France is Paris."
    ids = tok(text)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "ĠParis", "."]
    for t in [*TEXTS, " leading space", "naïve café"]:
        assert tok(t)["input_ids"] == ref.encode(t).ids, t
        assert tok.decode(tok(t)["input_ids"]) == t
    vocab = ref.get_vocab()
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tok.pad_token_id == vocab["<|im_end|>"]
    # control tokens stay whole instead of being cut into bytes
    assert tok("<|im_start|>user")["input_ids"][0] == vocab["<|im_start|>"]
    assert tok.chat_template == CHAT_TEMPLATE
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_loaded_model_saves_and_reloads(loaded, tmp_path):
    out = tmp_path / "resaved"
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config.get("quantization_config") is None
    assert list(out.glob("*.safetensors"))
    again = load_model(out)
    for t in TEXTS:
        assert again.tokenizer(t)["input_ids"] == loaded.tokenizer(t)["input_ids"]
    assert _max_logit_diff(again.model, loaded.model, loaded.tokenizer) == 0.0


def test_missing_gguf_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "absent.gguf")


def test_corrupt_gguf_is_a_load_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 12)
    with pytest.raises(ModelLoadError, match="cannot load this GGUF"):
        load_model(bad)
