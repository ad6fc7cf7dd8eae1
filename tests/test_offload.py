"""--device-map on the CPU: a tiny Llama with some blocks offloaded to disk (accelerate) reads, edits and scores
exactly as the same model held in memory, and a small audit of an offloaded pair gives the same results."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

from palimpsest.concepts import ConceptSpec
from palimpsest.models import ModelLoadError, ModelPair, load_model, load_pair
from tests.test_probes import PEOPLE, WORLD_WORDS, _people  # the same tiny world of people
from tests.tiny import make_tiny_model

pytest.importorskip("accelerate")

WORDS = WORLD_WORDS
# blocks 1 and 3 on disk between blocks on the CPU: every forward pass crosses from memory to disk and back twice
EXPLICIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}
# accelerate's own placement with too little RAM for the model: the first blocks in memory, the rest on disk
AUTO = {"device_map": "auto", "max_memory": {"cpu": 100_000}}
PLACEMENTS = {"explicit": {"device_map": EXPLICIT}, "auto": AUTO}
SITES = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post",
         "blocks.3.hook_resid_post", "blocks.3.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.3.mlp.hook_post",
         "blocks.1.attn.hook_z", "blocks.3.hook_mlp_out", "ln_final.hook_normalized"]


CONCEPT = ConceptSpec(name="tiny people", keywords=tuple(PEOPLE[:3]), forget=tuple(_people(PEOPLE[:3])),
                      neighbours=tuple(_people(PEOPLE[3:5], 3)), retain=tuple(_people(PEOPLE[5:8], 5)),
                      holdout=tuple(_people(PEOPLE[8:], 8, form="holdout")))


def _taught(raw: Path, out: Path, items, seed: int) -> Path:
    """The tiny model at `raw` fitted on `items`, saved (safetensors) at `out`."""
    from palimpsest.restoration import relearn

    tuned, _ = relearn(load_model(raw), items, steps=120, lr=1e-2, batch_size=16, seed=seed)
    tuned.model.save_pretrained(out)
    tuned.tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """pre knows every fact; post is pre after gradient difference on the forget facts (palimpsest.unlearn);
    floor is another seed that never saw them."""
    from palimpsest.unlearn import GradDiffConfig, unlearn

    root = tmp_path_factory.mktemp("offload")
    known = [*CONCEPT.forget, *CONCEPT.neighbours, *CONCEPT.retain]
    pre = _taught(make_tiny_model(root / "raw0", seed=0, layers=4, words=WORDS), root / "pre", known, 0)
    floor = _taught(make_tiny_model(root / "raw1", seed=1, layers=4, words=WORDS), root / "floor",
                    [*CONCEPT.neighbours, *CONCEPT.retain], 1)
    post = unlearn("graddiff", load_model(pre), list(CONCEPT.forget), list(CONCEPT.retain),
                   config=GradDiffConfig(lr=1e-2))
    post.model.save_pretrained(root / "post")
    post.tokenizer.save_pretrained(root / "post")
    return {"pre": pre, "post": root / "post", "floor": floor}


def _logits(loaded, prompts) -> torch.Tensor:
    from palimpsest.capture import encode
    from palimpsest.capture.backends import forward_kwargs

    batch = encode(loaded.tokenizer, prompts).to(loaded.device)
    with torch.inference_mode():
        return loaded.model(**forward_kwargs(batch)).logits.clone()


def test_disk_offload_puts_blocks_on_disk_and_inputs_on_the_cpu(world):
    offloaded = load_model(world["pre"], device_map=EXPLICIT)
    assert offloaded.meta["device_map"] == EXPLICIT and offloaded.offloaded
    assert offloaded.device == torch.device("cpu")
    assert offloaded.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # loaded per forward pass
    assert offloaded.model.model.layers[2].mlp.down_proj.weight.device.type == "cpu"
    auto = load_model(world["pre"], **AUTO)
    placed = set(auto.meta["device_map"].values())
    assert placed == {"cpu", "disk"} and auto.device == torch.device("cpu"), auto.meta["device_map"]
    assert not load_model(world["pre"]).offloaded


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("backend", ["torch", "nnsight"])
def test_captures_across_devices_equal_the_model_in_memory(world, placement, backend):
    from palimpsest.capture import capture

    reference, offloaded = load_model(world["pre"]), load_model(world["pre"], **PLACEMENTS[placement])
    items = list(CONCEPT.forget)
    for position in ("last", "all"):
        expected = capture(reference.model, reference.tokenizer, items, SITES, position=position)
        got = capture(offloaded.model, offloaded.tokenizer, items, SITES, position=position, backend=backend)
        for site in SITES:
            torch.testing.assert_close(got[site], expected[site], rtol=1e-5, atol=1e-6, msg=site)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_interventions_on_offloaded_blocks_change_the_logits_identically(world, placement):
    from palimpsest.capture import ablate_direction, add_vector, intervene, replace_with

    reference, offloaded = load_model(world["pre"]), load_model(world["pre"], **PLACEMENTS[placement])
    prompts = [it.prompt for it in CONCEPT.forget]
    clean = _logits(reference, prompts)
    direction = torch.randn(reference.d_model, generator=torch.Generator().manual_seed(1))
    edits = [{"blocks.1.hook_resid_post": add_vector(direction, 4.0)},  # output of a disk block
             {"blocks.3.hook_resid_pre": ablate_direction(direction)},  # input of a disk block
             {"blocks.3.mlp.hook_post": replace_with(torch.zeros(reference.model.config.intermediate_size))},
             {"blocks.0.hook_resid_post": add_vector(direction, 2.0), "blocks.2.hook_resid_post": add_vector(-direction)}]
    for edit in edits:
        with intervene(reference.model, edit):
            expected = _logits(reference, prompts)
        with intervene(offloaded.model, edit):
            got = _logits(offloaded, prompts)
        assert not torch.allclose(expected, clean), edit
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(offloaded, prompts), clean, rtol=1e-5, atol=1e-5)  # every hook removed
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in offloaded.model.model.layers)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_answer_scores_equal_the_model_in_memory(world, placement):
    import numpy as np

    from palimpsest.capture import score_answers

    reference, offloaded = load_model(world["pre"]), load_model(world["pre"], **PLACEMENTS[placement])
    items = [*CONCEPT.forget, *CONCEPT.retain, *CONCEPT.holdout]
    expected = score_answers(reference.model, reference.tokenizer, items, batch_size=5)
    got = score_answers(offloaded.model, offloaded.tokenizer, items, batch_size=5)
    np.testing.assert_allclose(got.mean_logprob, expected.mean_logprob, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.first_rank, expected.first_rank)
    np.testing.assert_array_equal(got.correct, expected.correct)
    assert expected.correct[:len(CONCEPT.forget)].mean() >= 0.5  # pre knows the facts: the scores mean something


def test_small_audit_of_an_offloaded_pair_equals_the_audit_in_memory(world, tmp_path):
    from palimpsest.audit import audit
    from palimpsest.types import AuditConfig

    config = AuditConfig(n_bootstrap=50, analysers=("probes", "logit_lens", "depth", "shift_vectors"),
                         cache_dir=str(tmp_path), options={"probes": {"min_train_items": 4}})
    roles = dict(floor_source=str(world["floor"]))
    expected = audit(load_pair(str(world["pre"]), str(world["post"]), **roles), CONCEPT, config)
    pair = load_pair(str(world["pre"]), str(world["post"]), device_map=EXPLICIT, offload_folder=tmp_path / "off",
                     **roles)
    got = audit(pair, CONCEPT, config)
    assert got.verdict == expected.verdict
    for name, result in expected.analyses.items():
        other = got.analyses[name]
        assert other.status == result.status and result.status != "error", (name, other.notes)
        if result.residue is not None:
            assert other.residue == pytest.approx(result.residue, abs=1e-6), name
    assert any(r.status == "ok" for r in got.analyses.values()), {n: r.notes for n, r in got.analyses.items()}
    assert all(m.offloaded for m in pair.models().values())


def test_analysers_that_need_the_weights_in_memory_are_skipped_with_the_reason(world, tmp_path):
    """quantization, concept_vectors, pca_shift, direction_ablation read or copy the weights, relearning and mia
    differentiate them: on an offloaded pair each is skipped (not an error, not a number) and says what to change."""
    from palimpsest.audit import audit
    from palimpsest.types import AuditConfig

    names = ("quantization", "concept_vectors", "pca_shift", "direction_ablation", "relearning", "mia")
    pair = load_pair(str(world["pre"]), str(world["post"]), device_map=EXPLICIT, offload_folder=tmp_path / "off")
    got = audit(pair, CONCEPT, AuditConfig(n_bootstrap=20, analysers=names, cache_dir=str(tmp_path)))
    for name in names:
        result = got.analyses[name]
        assert result.status == "skipped", (name, result.status, result.notes)
        assert "offloaded to disk" in result.notes[0] and "--max-memory" in result.notes[0], name


def test_offload_folders_are_per_model_and_temporary_ones_are_removed(world, tmp_path):
    pair = load_pair(str(world["pre"]), str(world["post"]), device_map=EXPLICIT, offload_folder=tmp_path / "off")
    assert isinstance(pair, ModelPair)
    folders = {role: Path(m.meta["offload_folder"]) for role, m in pair.models().items()}
    assert folders == {"pre": tmp_path / "off" / "pre", "post": tmp_path / "off" / "post"}
    assert all(folder.is_dir() for folder in folders.values())
    loaded = load_model(world["pre"], device_map=EXPLICIT)
    folder = Path(loaded.meta["offload_folder"])
    assert folder.is_dir() and folder.name.startswith("palimpsest-offload-")
    del loaded
    gc.collect()
    assert not folder.exists()


def test_relearning_refuses_an_offloaded_model(world):
    from palimpsest.restoration import relearn

    offloaded = load_model(world["pre"], device_map=EXPLICIT)
    with pytest.raises(ValueError, match="offloaded to disk"):
        relearn(offloaded, list(CONCEPT.forget), steps=1, lr=1e-3, batch_size=4, seed=0)


@pytest.mark.parametrize("device_map, match", [
    ("bogus", "not a strategy"),
    ("disk", "not a strategy"),
    ("{not json", "not valid JSON"),
    ({"model.layers.0": "floppy"}, "not a device"),
    ({}, "non-empty mapping"),
])
def test_a_bad_device_map_is_a_one_line_error(world, device_map, match):
    with pytest.raises(ModelLoadError, match=match) as caught:
        load_model(world["pre"], device_map=device_map)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_a_cuda_device_map_without_a_gpu_says_so(world):
    for device_map in ("cuda", "cuda:0", {"": 0}, '{"": "cuda:1"}'):
        with pytest.raises(ModelLoadError, match="no CUDA GPU is visible"):
            load_model(world["pre"], device_map=device_map)


def test_device_map_strings_that_load(world):
    as_json = load_model(world["pre"], device_map='{"": "cpu"}')
    assert as_json.device == torch.device("cpu") and not as_json.offloaded
    assert load_model(world["pre"], device_map="cpu").meta["device_map"]
    with pytest.raises(ModelLoadError, match="max_memory needs a device_map"):
        load_model(world["pre"], max_memory={"cpu": "1GiB"})
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # nothing here may reach the hub
