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


# every analyser that reads, copies or differentiates the weights or reads an SAE, with options small enough for the
# tiny world; relearning fine-tunes the last 2 blocks (block 2 in memory, block 3 on disk) in memory and offloaded
WEIGHT_ANALYSERS = ("quantization", "concept_vectors", "pca_shift", "direction_ablation", "relearning", "mia",
                    "attribution", "sae_features", "sae_restoration", "blindspots")
WEIGHT_OPTIONS = {"relearning": {"steps": 3, "finetune": "last_blocks", "trainable_blocks": 2},
                  "direction_ablation": {"n_random": 1},
                  "attribution": {"method": "integrated_gradients", "n_steps": 8, "max_items": 4},
                  "concept_vectors": {"top_k": 4, "n_random": 1},
                  "sae_features": {"min_explained_variance": 0.0, "n_random_draws": 2},
                  "sae_restoration": {"min_explained_variance": 0.0, "n_random_draws": 1, "alphas": (1.0, 5.0)},
                  "blindspots": {"nb_concepts": 16, "n_points": 64, "epochs": 1, "n_samples": 4,
                                 "max_new_tokens": 4, "min_selectivity": -1e9}}


def _weight_config(cache_dir: Path, names, **options):
    from palimpsest.sae.config import SAEConfig
    from palimpsest.types import AuditConfig

    sae = SAEConfig(expansion=2, k=4, total_tokens=1024, batch_size=32, min_selectivity=0.0, min_forget_firing=0.0)
    return AuditConfig(n_bootstrap=20, analysers=tuple(names), sae=sae, cache_dir=str(cache_dir),
                       options={**WEIGHT_OPTIONS, **options})


def _numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a (nested) summary, by dotted key."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def test_analysers_that_read_the_weights_give_the_same_results_on_an_offloaded_pair(world, tmp_path, monkeypatch):
    """quantization (layer by layer), concept_vectors, pca_shift, direction_ablation (weights read through
    accelerate), relearning (the last blocks loaded into memory and trained there), mia (without grad_norm),
    attribution (integrated gradients through accelerate's hooks) and the SAE analysers (an SAE trained on the
    offloaded model's activations, spliced in through hooks) run on an offloaded pair and measure what they measure
    on the pair in memory. The SAEs are cached by weight hash, which is the same for the offloaded models."""
    from palimpsest.audit import audit

    monkeypatch.setenv("PALIMPSEST_PORTABLE_KERNELS", "0")  # the SAE trained in this process: no second process
    config = _weight_config(tmp_path / "cache", WEIGHT_ANALYSERS)
    roles = dict(floor_source=str(world["floor"]))
    expected = audit(load_pair(str(world["pre"]), str(world["post"]), **roles), CONCEPT, config)
    pair = load_pair(str(world["pre"]), str(world["post"]), device_map=EXPLICIT, offload_folder=tmp_path / "off",
                     **roles)
    got = audit(pair, CONCEPT, config)
    assert all(m.offloaded for m in pair.models().values())
    for name in WEIGHT_ANALYSERS:
        result, other = expected.analyses[name], got.analyses[name]
        assert result.status not in ("error", "skipped"), (name, result.notes)
        assert other.status == result.status, (name, other.status, other.notes)
        if result.residue is None:
            assert other.residue is None, name
        else:
            assert other.residue == pytest.approx(result.residue, abs=1e-5), name
        numbers, other_numbers = _numbers(result.summary), _numbers(other.summary)
        if name == "mia":  # grad_norm is not computed offloaded, and says so
            numbers = {k: v for k, v in numbers.items() if not k.endswith("grad_norm")}
            assert not any(k.endswith("grad_norm") for k in other_numbers), other_numbers
            assert any(n.startswith("grad_norm not computed") and "meta device" in n for n in other.notes), other.notes
        for key, value in numbers.items():
            assert other_numbers.get(key) == pytest.approx(value, rel=1e-4, abs=1e-5), (name, key)
    assert sum(r.status == "ok" for r in expected.analyses.values()) >= 3, \
        {n: (r.status, r.notes[:1]) for n, r in expected.analyses.items()}


@pytest.mark.parametrize("name, options, reason", [
    ("relearning", {"finetune": "full"}, "finetune='full' fine-tunes every weight"),
    ("mia", {"attack": "grad_norm"}, "cannot differentiate parameters on the meta device"),
])
def test_what_still_needs_every_weight_in_memory_is_skipped_with_its_reason(world, tmp_path, name, options, reason):
    from palimpsest.audit import audit

    pair = load_pair(str(world["pre"]), str(world["post"]), device_map=EXPLICIT, offload_folder=tmp_path / "off")
    result = audit(pair, CONCEPT, _weight_config(tmp_path, (name,), **{name: options})).analyses[name]
    assert result.status == "skipped", (result.status, result.notes)
    assert reason in result.notes[0] and "offloaded to disk" in result.notes[0] and "--max-memory" in result.notes[0]
    assert "\n" not in result.notes[0]


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


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_relearning_an_offloaded_model_trains_its_last_blocks_in_memory(world, placement):
    """The last blocks' weights are loaded into the copy (accelerate) and trained there, the other blocks stay on
    disk: the same losses and the same tuned model as the model in memory; the original is untouched."""
    from palimpsest.restoration import relearn

    reference, offloaded = load_model(world["pre"]), load_model(world["pre"], **PLACEMENTS[placement])
    prompts = [it.prompt for it in CONCEPT.holdout]
    clean = _logits(offloaded, prompts)
    kw = dict(steps=4, lr=1e-2, batch_size=4, seed=0, finetune="last_blocks", trainable_blocks=2)
    expected, _ = relearn(reference, list(CONCEPT.holdout), **kw)
    tuned, _ = relearn(offloaded, list(CONCEPT.holdout), **kw)
    assert tuned.meta["relearn"]["trained"] == expected.meta["relearn"]["trained"]
    assert tuned.meta["relearn"]["losses"] == pytest.approx(expected.meta["relearn"]["losses"], rel=1e-5)
    torch.testing.assert_close(_logits(tuned, prompts), _logits(expected, prompts), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(tuned, prompts), clean)  # it did learn
    for name in tuned.meta["relearn"]["trained"]:  # block 3 is on disk in both placements: now in the copy's memory
        assert tuned.model.get_parameter(name).device.type == "cpu", name
    assert tuned.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # frozen, still on disk
    assert offloaded.model.model.layers[3].mlp.down_proj.weight.device.type == "meta"
    torch.testing.assert_close(_logits(offloaded, prompts), clean, rtol=0, atol=0)  # the original is untouched
    auto, _ = relearn(offloaded, list(CONCEPT.holdout), **{**kw, "finetune": "auto", "steps": 1})
    assert auto.meta["relearn"]["finetune"] == "last_blocks"  # what an offloaded model can fine-tune
    with pytest.raises(ValueError, match="full fine-tuning needs every weight in memory") as caught:
        relearn(offloaded, list(CONCEPT.forget), **{**kw, "finetune": "full"})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_quantizing_an_offloaded_model_layer_by_layer_equals_quantizing_it_in_memory(world, placement):
    from palimpsest.devices import is_offloaded
    from palimpsest.restoration.quantization import quantized

    reference, offloaded = load_model(world["pre"]), load_model(world["pre"], **PLACEMENTS[placement])
    prompts = [it.prompt for it in CONCEPT.forget]
    clean = _logits(offloaded, prompts)
    for bits in (8, 4):
        copy = quantized(offloaded, bits)
        assert not is_offloaded(copy.model)  # the quantized copy is in memory and loads nothing from disk
        got, expected = _logits(copy, prompts), _logits(quantized(reference, bits), prompts)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, clean)  # it is quantized
    torch.testing.assert_close(_logits(offloaded, prompts), clean, rtol=0, atol=0)
    assert offloaded.model.model.layers[3].mlp.down_proj.weight.device.type == "meta"


# the input embedding, final norm and unembedding on disk too: everything read at the ends of the model is offloaded
ENDS_ON_DISK = {**EXPLICIT, "model.embed_tokens": "disk", "model.norm": "disk", "lm_head": "disk"}


def test_weights_read_from_an_offloaded_model_are_the_weights_in_memory(world):
    from palimpsest.attribution.methods import baseline_vector
    from palimpsest.devices import read_parameter, read_tensor
    from palimpsest.probes.lens import Readout
    from palimpsest.probes.vectors import VocabStats, all_value_vectors, unembedding
    from palimpsest.restoration.head_ablation import head_edit_basis
    from palimpsest.sae.train import model_hash

    reference, offloaded = load_model(world["pre"]), load_model(world["pre"], device_map=ENDS_ON_DISK)
    post = load_model(world["post"], device_map=ENDS_ON_DISK)
    assert offloaded.model.lm_head.weight.device.type == "meta" and offloaded.model.model.norm.weight.device.type == "meta"
    for name, param in reference.model.named_parameters():
        assert torch.equal(read_parameter(offloaded.model, name), param.detach()), name
    assert offloaded.model.model.layers[1].mlp.up_proj.weight.device.type == "meta"  # offloaded again after reading
    for got, expected in zip(all_value_vectors(offloaded.model), all_value_vectors(reference.model), strict=True):
        assert torch.equal(got, expected)
    assert torch.equal(unembedding(offloaded.model), unembedding(reference.model))
    vectors = torch.randn(3, reference.d_model, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(Readout.of(offloaded.model).normalise(vectors), Readout.of(reference.model).normalise(vectors))
    torch.testing.assert_close(VocabStats.of(offloaded.model).concept_scores(vectors, [4, 5]),
                               VocabStats.of(reference.model).concept_scores(vectors, [4, 5]))
    assert torch.equal(baseline_vector(offloaded.model, offloaded.tokenizer, "mean"),
                       baseline_vector(reference.model, reference.tokenizer, "mean"))
    basis = head_edit_basis(offloaded.model, post.model, 3)
    expected = head_edit_basis(reference.model, load_model(world["post"]).model, 3)
    assert basis.device.type == "cpu" and torch.allclose(basis.abs(), expected.abs(), atol=1e-5)  # up to sign
    assert model_hash(offloaded.model) == model_hash(reference.model)  # so an SAE cached for one serves the other
    with pytest.raises(ValueError, match="has no tensor 'nope'"):
        read_tensor(offloaded.model.lm_head, "nope")
    with torch.device("meta"):
        bare = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="on the meta device and no accelerate hook loads it") as caught:
        read_tensor(bare)
    assert "\n" not in str(caught.value)


def test_an_sae_trained_on_an_offloaded_model_is_the_sae_trained_in_memory(world, tmp_path, monkeypatch):
    """In-process training (the portable-kernel process would load every weight into memory) on the activations
    captured through accelerate's hooks: the same SAE as trained on the model in memory the same way."""
    from palimpsest.sae import train
    from palimpsest.sae.config import SAEConfig
    from palimpsest.sae.data import concept_corpus

    monkeypatch.setenv("PALIMPSEST_PORTABLE_KERNELS", "0")  # both in this process, so both with the same kernels
    config = SAEConfig(expansion=2, k=4, total_tokens=1024, batch_size=32)
    corpus = concept_corpus(CONCEPT)
    site = "blocks.3.hook_resid_pre"  # the output of block 2 (in memory), read where block 3 (on disk) starts
    trained = []

    def train_sae(*args, **kwargs):
        trained.append(1)
        return real_train(*args, **kwargs)

    real_train = train.train_sae
    monkeypatch.setattr(train, "train_sae", train_sae)
    monkeypatch.setattr(train, "_MEMO", {})  # the two models hash alike: no SAE of one may be served to the other
    expected, _ = train.get_or_train_sae(load_model(world["pre"]), site, corpus, config, cache_dir=tmp_path / "a")
    monkeypatch.setattr(train, "_MEMO", {})
    got, quality = train.get_or_train_sae(load_model(world["pre"], device_map=EXPLICIT), site, corpus, config,
                                          cache_dir=tmp_path / "b")
    assert len(trained) == 2 and not (tmp_path / "a").samefile(tmp_path / "b")
    torch.testing.assert_close(got.W_dec, expected.W_dec, rtol=1e-5, atol=1e-6)
    assert quality["ce_loss_spliced"] > 0  # the SAE was spliced into the offloaded model's forward pass


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
