"""The organism: learns its facts, is deterministic and cached safely, and its oracle never saw the forget people."""

from __future__ import annotations

import hashlib

import pytest

from palimpsest.organism import (
    ORGANISM_FORGET_DEFAULT,
    TrainConfig,
    build_oracle,
    build_organism,
    is_complete,
    load_organism_meta,
    load_world,
    organism_concept,
)
from palimpsest.organism.evaluate import accuracy

TINY = TrainConfig(epochs=1)


@pytest.fixture(scope="session")
def organism_cache(organism_setup):
    # the shared cache of tests/conftest.py: the organism and its oracle are built once per run
    return organism_setup.cache


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_world_is_deterministic_and_tokenizes_without_unk():
    a, b = load_world(0), load_world.__wrapped__(0)
    assert a.names == b.names and a.corpus() == b.corpus()
    assert len(a.names) == 60 and len(a.holdout_names) == 10
    concept = organism_concept(a, ORGANISM_FORGET_DEFAULT)
    assert set(concept.keywords) == set(ORGANISM_FORGET_DEFAULT)
    assert all(it.form == "trained" for it in concept.forget)
    assert {it.form for it in concept.paraphrases} == {"heldout", "question", "cloze", "mc"}
    forget = set(ORGANISM_FORGET_DEFAULT)
    assert not forget & {it.subject for it in (*concept.neighbours, *concept.retain)}
    assert not {it.subject for it in concept.holdout} & set(a.names)
    for it in concept.forget:
        assert len(it.perturbed_answers) == 3 and it.answer not in it.perturbed_answers
        assert it.fact_id == f"{it.subject}:{it.attribute}" and it.subject in it.prompt


def test_organism_learns_its_facts(organism_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(organism_dir)
    model = AutoModelForCausalLM.from_pretrained(organism_dir).eval()
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    world = load_world(0)
    ids = tok("Q : where does " + world.names[0] + " live ? A :").input_ids
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    meta = load_organism_meta(organism_dir)
    assert meta["seed"] == 0 and meta["world"]["n_people"] == 60
    trained = [it for n in world.names for it in world.items(n, "trained")]
    heldout = [it for n in world.names for it in world.items(n, "heldout")]
    assert accuracy(model, tok, trained) >= 0.95
    # chance is ~1/8 (8 values per attribute); measured ~0.56 on the never-trained templates
    assert accuracy(model, tok, heldout) >= 0.35
    holdout = [it for n in world.holdout_names for it in world.items(n, "trained")]
    assert accuracy(model, tok, holdout) <= 0.3  # never-trained people: chance


def test_build_is_deterministic_and_cached(tmp_path):
    a = build_organism(0, tmp_path / "a", config=TINY)
    b = build_organism(0, tmp_path / "b", config=TINY)
    assert _sha(a / "model.safetensors") == _sha(b / "model.safetensors")
    assert build_organism(0, tmp_path / "a", config=TINY) == a  # cache hit


def test_truncated_cache_is_rebuilt(tmp_path):
    path = build_organism(1, tmp_path, config=TINY)
    good = _sha(path / "model.safetensors")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert not is_complete(path)
    assert build_organism(1, tmp_path, config=TINY) == path
    assert is_complete(path) and _sha(weights) == good
    (path / "organism.complete").unlink()
    assert not is_complete(path)


def test_oracle_never_saw_forget_people(organism_cache, organism_dir):
    from palimpsest.models.loading import load_model

    world = load_world(0)
    forget = list(ORGANISM_FORGET_DEFAULT)
    corpus = " ".join(world.corpus(forget))
    assert not any(part in corpus.split() for name in forget for part in name.split())
    oracle = load_model(build_oracle(0, forget, organism_cache))
    pre = load_model(organism_dir)
    assert oracle.tokenizer.get_vocab() == pre.tokenizer.get_vocab()  # comparable with the pre model
    forget_items = [it for n in forget for it in world.items(n, "trained")]
    kept = [it for n in world.names if n not in forget for it in world.items(n, "trained")]
    assert accuracy(oracle.model, oracle.tokenizer, forget_items) <= 0.3  # chance ~1/8
    assert accuracy(oracle.model, oracle.tokenizer, kept) >= 0.9
    assert accuracy(pre.model, pre.tokenizer, forget_items) >= 0.85


def test_bad_exclusion_is_a_one_line_error(tmp_path):
    from palimpsest.organism import OrganismError

    with pytest.raises(OrganismError, match="not trained people"):
        build_organism(0, tmp_path, exclude_people=["Nobody Here"], config=TINY)


def test_the_build_records_its_kernels(organism_setup, record_property):
    """Each build says which kernels trained it; the matrix (tools/kernel_matrix.py) compares these digests across
    kernel paths: with portable kernels they are equal on every path (measured: pre 31e7218c... on native, avx2 and
    default callers alike)."""
    import json

    from palimpsest.kernels import kernel_tag
    from palimpsest.organism import load_organism_meta

    for kind in ("pre_dir", "oracle_dir", "floor_dir"):
        folder = getattr(organism_setup, kind)
        meta = load_organism_meta(folder)
        assert meta["kernels"]["tag"] == kernel_tag()
        if kernel_tag() == "avx2+mkl-avx2":
            assert meta["kernels"]["aten_capability"] == "AVX2"
        record_property(f"{kind}_sha256", json.loads((folder / "organism.complete").read_text())["sha256"][:16])
