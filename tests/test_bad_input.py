"""Issue #9: bad input and faults. Each gets a one-line error naming the problem and the fix, a non-zero exit code
(2 bad input, 1 other, 130 Ctrl-C) and nothing half-written left behind. Tiny random models only (seconds each).

Checklist (item -> tests; ones elsewhere are named by file):
- missing / unreadable model path: test_missing_model_path_cli, test_unreadable_model_cli,
  test_models.py::test_missing_path_is_one_line_error, test_cli.py::test_bad_inputs_exit_2_with_one_line
- pre/post with different tokenizers or architectures: test_pair_mismatch_cli, test_models.py::test_pair_checks,
  test_models.py::test_tokenizer_difference_is_named
- concept file with a missing field / empty forget set / missing file: test_bad_concept_cli,
  test_concepts.py::test_missing_field_names_file_item_and_field, test_concepts.py::test_empty_forget_set_is_refused
- answers the tokenizer cannot produce: test_unproducible_answer_cli, test_cli.py::test_unknown_answer_token_is_bad_input
- a site name that does not exist: test_unknown_site_cli, test_capture.py::test_bad_site_lists_valid_ones
- NaN / inf activations: test_non_finite_capture_names_model_site_rows, test_non_finite_logits_are_refused,
  test_non_finite_model_audit_and_capture_cli, test_capture.py::test_non_finite_activations_are_refused
- a cache file truncated by a crash: test_truncated_shard_*, test_sae_cache_*, test_sae_checkpoint_*,
  test_post_model_cache_*, test_vision_cache_*, test_organism.py::test_truncated_cache_is_rebuilt
- out of memory while capturing: test_oom_*
- Ctrl-C in the middle of an audit: test_interrupt_*, test_cli.py::test_interrupt_leaves_no_report
- pickle refused without --allow-pickle: test_pickle_checkpoint_cli, test_models.py::test_pickle_checkpoint_refused_*
- trust_remote_code never on: test_custom_code_checkpoint_is_refused_without_running_it,
  test_trust_remote_code_is_never_turned_on
- the report escapes concept and model text: test_report_escapes_every_text_field,
  test_cli.py::test_audit_writes_report_and_escapes
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from palimpsest.cli import app
from tests.tiny import make_tiny_model

runner = CliRunner()

CONCEPT = {
    "name": "tiny",
    "keywords": ["bob"],
    "forget": [{"prompt": "bob lives in the city of", "answer": "rome", "subject": "bob"},
               {"prompt": "alice works as a", "answer": "baker", "subject": "alice"}],
    "retain": [{"prompt": "carol lives in", "answer": "oslo", "subject": "carol"}],
}


def write_concept(tmp_path: Path, data=None, name: str = "concept.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data if data is not None else CONCEPT))
    return path


def error_line(output: str, *needles: str) -> str:
    """The one `error:` line; every needle must be in it (case-insensitive)."""
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def assert_nothing_left(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not leftovers, leftovers


def audit_args(pre, post, concept, out, *extra):
    return ["audit", "--pre", str(pre), "--post", str(post), "--concept", str(concept), "--out", str(out),
            "--analysers", "behaviour", *extra]


def capture_args(pre, post, concept, out, *extra):
    return ["capture", "--pre", str(pre), "--post", str(post), "--concept", str(concept), "--out", str(out), *extra]


# ---------------------------------------------------------------- model paths


def test_missing_model_path_cli(tiny_dir, tmp_path):
    concept = write_concept(tmp_path)
    out = tmp_path / "report"
    result = runner.invoke(app, audit_args(tmp_path / "nowhere", tiny_dir, concept, out))
    assert result.exit_code == 2
    error_line(result.output, "nowhere", "does not exist", "check the path")
    assert_nothing_left(out)


def _copy_model(tiny_dir: Path, target: Path) -> Path:
    shutil.copytree(tiny_dir, target)
    return target


def test_unreadable_model_cli(tiny_dir, tmp_path, monkeypatch):
    truncated = _copy_model(tiny_dir, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = runner.invoke(app, ["info", str(truncated)])
    assert result.exit_code == 2
    error_line(result.output, "truncated", "cannot load model", "re-download or re-save")

    bad_config = _copy_model(tiny_dir, tmp_path / "badconfig")
    text = (bad_config / "config.json").read_text()
    (bad_config / "config.json").write_text(text[: len(text) // 2])
    result = runner.invoke(app, ["info", str(bad_config)])
    assert result.exit_code == 2
    error_line(result.output, "config.json", "not valid JSON", "re-download")

    # no permission (root reads everything, so the OS error is simulated where the directory is listed)
    from palimpsest.models import loading

    def denied(path, allow_pickle):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(loading, "_check_local_files", denied)
    concept = write_concept(tmp_path)
    out = tmp_path / "report"
    result = runner.invoke(app, audit_args(tiny_dir, tiny_dir, concept, out))
    assert result.exit_code == 2
    error_line(result.output, "cannot read the model directory", "Permission denied", "may read it")
    assert_nothing_left(out)


def test_pair_mismatch_cli(tiny_dir, tmp_path):
    from tests.tiny import WORDS

    concept = write_concept(tmp_path)
    out = tmp_path / "report"
    wide = make_tiny_model(tmp_path / "wide", hidden=64)
    result = runner.invoke(app, audit_args(tiny_dir, wide, concept, out))
    assert result.exit_code == 2
    error_line(result.output, "hidden_size", "pre=32", "post=64", "post must be pre after unlearning")
    assert_nothing_left(out)

    swapped = list(WORDS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    other_tokenizer = make_tiny_model(tmp_path / "swapped", words=swapped)
    result = runner.invoke(app, capture_args(tiny_dir, other_tokenizer, concept, tmp_path / "acts"))
    assert result.exit_code == 2
    error_line(result.output, "tokenizers differ", "same architecture, config and tokenizer")
    assert_nothing_left(tmp_path / "acts")

    result = runner.invoke(app, audit_args(tiny_dir, tiny_dir, concept, out, "--floor", str(wide)))
    assert result.exit_code == 2
    error_line(result.output, "hidden_size", "floor must be")
    assert_nothing_left(out)


# ---------------------------------------------------------------- concept files, answers, sites


def test_bad_concept_cli(tiny_dir, tmp_path):
    out = tmp_path / "report"
    missing_field = write_concept(tmp_path, dict(CONCEPT, forget=[{"prompt": "bob lives in"}]), "missing.yaml")
    result = runner.invoke(app, audit_args(tiny_dir, tiny_dir, missing_field, out))
    assert result.exit_code == 2
    error_line(result.output, "missing.yaml", "forget item 0", "'answer'", "missing")
    assert_nothing_left(out)

    empty = write_concept(tmp_path, dict(CONCEPT, forget=[]), "empty.yaml")
    result = runner.invoke(app, capture_args(tiny_dir, tiny_dir, empty, tmp_path / "acts"))
    assert result.exit_code == 2
    error_line(result.output, "forget set is empty")
    assert_nothing_left(tmp_path / "acts")

    result = runner.invoke(app, audit_args(tiny_dir, tiny_dir, tmp_path / "absent.yaml", out))
    assert result.exit_code == 2
    error_line(result.output, "absent.yaml", "not found")
    assert_nothing_left(out)


@pytest.mark.parametrize("answer", ["atlantis", "[/x] atlantis", "[bold]rome"])
def test_unproducible_answer_cli(tiny_dir, tmp_path, answer):
    """Text from the concept file goes into the error line verbatim (never read as terminal markup)."""
    concept = write_concept(tmp_path, dict(CONCEPT, retain=[{"prompt": "carol lives in", "answer": answer}]))
    out = tmp_path / "report"
    result = runner.invoke(app, audit_args(tiny_dir, tiny_dir, concept, out))
    assert result.exit_code == 2, result.output
    error_line(result.output, "retain item 0", repr(answer), "cannot be produced", "use a word in the model's vocabulary")
    assert_nothing_left(out)


def test_unknown_site_cli(tiny_dir, tmp_path):
    concept = write_concept(tmp_path)
    out = tmp_path / "acts"
    result = runner.invoke(app, capture_args(tiny_dir, tiny_dir, concept, out, "--sites", "blocks.0.hook_nonsense"))
    assert result.exit_code == 2
    line = error_line(result.output, "blocks.0.hook_nonsense", "valid sites are")
    assert "blocks.{0..1}" in line and "hook_resid_post" in line
    assert_nothing_left(out)


def test_error_line_is_never_wrapped(tmp_path):
    deep = tmp_path.joinpath(*(["a-rather-long-folder-name"] * 6), "missing-model")
    result = runner.invoke(app, ["info", str(deep)])
    assert result.exit_code == 2
    error_line(result.output, str(deep), "does not exist")


# ---------------------------------------------------------------- NaN / inf


def _nan_model(tiny_dir: Path, target: Path, token: str = "bob") -> Path:
    """The tiny model with NaN in one token's embedding: every prompt containing `token` turns non-finite."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(token)] = float("nan")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def nan_dir(tiny_dir, tmp_path_factory):
    return _nan_model(tiny_dir, tmp_path_factory.mktemp("nan") / "model")


def test_non_finite_capture_names_model_site_rows(nan_dir):
    from palimpsest.capture import CaptureError, NonFiniteError, capture
    from palimpsest.models import load_model

    loaded = load_model(nan_dir)
    prompts = ["alice lives in", "bob lives in", "carol works as a"]
    with pytest.raises(NonFiniteError, match=r"^post: non-finite .* at blocks\.1\.hook_resid_post in 1 of 3 rows.*"
                                             r"--dtype float32") as info:
        capture(loaded.model, loaded.tokenizer, prompts, ["blocks.1.hook_resid_post"], model_name="post")
    assert isinstance(info.value, CaptureError)
    clean = capture(loaded.model, loaded.tokenizer, [prompts[0], prompts[2]], ["blocks.1.hook_resid_post"])
    assert torch.isfinite(clean["blocks.1.hook_resid_post"]).all()


def test_non_finite_logits_are_refused(nan_dir):
    from palimpsest.capture import NonFiniteError, score_answers
    from palimpsest.concepts import Item
    from palimpsest.models import load_model

    loaded = load_model(nan_dir)
    items = [Item(prompt="alice lives in", answer="paris"), Item(prompt="bob lives in", answer="rome")]
    with pytest.raises(NonFiniteError, match="non-finite .*logits on 1 of 2 answers"):
        score_answers(loaded.model, loaded.tokenizer, items)


def test_non_finite_model_audit_and_capture_cli(tiny_dir, nan_dir, tmp_path):
    """A NaN model stops the audit (exit 2) instead of reading as "forgotten" or a quiet inconclusive."""
    concept = write_concept(tmp_path)
    out = tmp_path / "report"
    result = runner.invoke(app, audit_args(tiny_dir, nan_dir, concept, out))
    assert result.exit_code == 2, result.output
    error_line(result.output, "post: non-finite", "1 of 2 rows", "--dtype float32")
    assert_nothing_left(out)
    result = runner.invoke(app, capture_args(tiny_dir, nan_dir, concept, tmp_path / "acts"))
    assert result.exit_code == 2, result.output
    error_line(result.output, "post: non-finite", "hook_resid_post")
    assert_nothing_left(tmp_path / "acts")


# ---------------------------------------------------------------- caches truncated by a crash

SITE = "blocks.1.hook_resid_post"
TEXTS = ["alice lives in paris .", "bob lives in rome .", "carol works as a baker .", "q : where does bob live ?"]


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


def test_truncated_shard_is_refused_with_its_size(tiny, tmp_path):
    from palimpsest.capture import CaptureError, ShardedActivations, capture_to_disk

    path = capture_to_disk(tiny.model, tiny.tokenizer, TEXTS, [SITE], tmp_path / "store", batch_size=2)
    store = ShardedActivations(path)
    store.verify()
    shard = path / store.manifest["shards"][1]["file"]
    _truncate(shard)
    with pytest.raises(CaptureError, match=r"unreadable shard \(\d+ bytes, the manifest says \d+.*capture the store"):
        ShardedActivations(path).verify()
    with pytest.raises(CaptureError, match="unreadable shard"):
        ShardedActivations(path).load(SITE)
    (path / "manifest.json").write_text('{"sites": ["x"], "shar')
    with pytest.raises(CaptureError, match="corrupt manifest"):
        ShardedActivations(path)


def test_truncated_shard_in_sae_work_folder_is_captured_again(tiny_dir, tmp_path, capsys):
    """`palimpsest sae train` resumes from its work folder; a damaged activation store there is rebuilt."""
    from palimpsest.capture import ShardedActivations, capture_to_disk
    from palimpsest.models import load_model
    from palimpsest.sae.cli import train_command

    loaded = load_model(tiny_dir)
    texts = TEXTS * 8
    out = tmp_path / "sae"
    work = tmp_path / ".sae.work"
    work.mkdir()
    (work / "corpus.json").write_text(json.dumps(texts))
    store = capture_to_disk(loaded.model, loaded.tokenizer, texts, [SITE], work / "activations", batch_size=4)
    good = ShardedActivations(store).load(SITE)
    _truncate(sorted(store.glob("shard_*.safetensors"))[-1])
    seen = {}
    import palimpsest.sae.train as train_module

    real_train = train_module.train_sae

    def spy(batches, d_in, config, **kwargs):  # the store is sound again by the time training reads it
        seen["rows"] = ShardedActivations(store).load(SITE)
        return real_train(batches, d_in, config, **kwargs)

    import unittest.mock

    with unittest.mock.patch.object(train_module, "train_sae", spy):
        path = train_command(str(tiny_dir), SITE, out, tokens=512, batch_size=32, expansion=2, k=4,
                             n_checkpoints=0, n_generated=0)
    assert "capturing the activations again" in capsys.readouterr().err
    torch.testing.assert_close(seen["rows"], good)
    assert (path / "quality.json").is_file() and not work.exists()


def _tiny_sae_config(**kw):
    from palimpsest.sae import SAEConfig

    return SAEConfig(**{"expansion": 2, "k": 4, "total_tokens": 512, "batch_size": 32, **kw})


@pytest.mark.parametrize("damage", ["truncate", "flip", "legacy-truncate", "quality"])
def test_sae_cache_damage_is_detected_and_rebuilt(tiny, tmp_path, damage):
    from palimpsest.sae import get_or_train_sae, train

    corpus = TEXTS * 4
    train._MEMO.clear()
    sae, quality = get_or_train_sae(tiny, SITE, corpus, _tiny_sae_config(), cache_dir=tmp_path)
    (folder,) = (tmp_path / "sae").iterdir()
    weights = folder / "sae_weights.safetensors"
    good = weights.read_bytes()
    assert train.cache_problem(folder) is None
    if damage == "truncate":
        _truncate(weights)
    elif damage == "flip":  # same size, other bytes: only the recorded hash can tell
        _flip_last_byte(weights)
    elif damage == "legacy-truncate":  # a cache saved before fingerprints: loading it must fail, not pass
        meta = json.loads((folder / "palimpsest.json").read_text())
        meta.pop("weights")
        (folder / "palimpsest.json").write_text(json.dumps(meta))
        _truncate(weights)
    else:
        (folder / "quality.json").write_text('{"explained_var')
    assert damage == "legacy-truncate" or train.cache_problem(folder) is not None
    train._MEMO.clear()
    with pytest.warns(RuntimeWarning, match="damaged SAE cache .*training it again"):
        again, quality_again = get_or_train_sae(tiny, SITE, corpus, _tiny_sae_config(), cache_dir=tmp_path)
    assert train.cache_problem(folder) is None and weights.read_bytes() == good  # same seed, same SAE

    def measured(q: dict) -> dict:  # the training's wall times differ between the two builds
        return {k: v for k, v in q.items() if not k.endswith("_seconds")}
    assert measured(quality_again) == measured(quality)
    train._MEMO.clear()


def test_load_sae_damaged_is_one_clear_error(tiny, tmp_path):
    from palimpsest.sae import SAEError, get_or_train_sae, train
    from palimpsest.sae.train import load_sae

    train._MEMO.clear()
    get_or_train_sae(tiny, SITE, TEXTS * 4, _tiny_sae_config(), cache_dir=tmp_path)
    train._MEMO.clear()
    (folder,) = (tmp_path / "sae").iterdir()
    _truncate(folder / "sae_weights.safetensors")
    with pytest.raises(SAEError, match="cannot load the SAE .*damaged or truncated: train it again"):
        load_sae(folder)


def test_sae_checkpoint_damaged_by_a_crash_is_skipped(tmp_path):
    from palimpsest.sae.data import tensor_batches
    from palimpsest.sae.train import _checkpoints, train_sae

    acts = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    config = _tiny_sae_config(total_tokens=640)
    checkpoints = tmp_path / "checkpoints"
    train_sae(tensor_batches(acts, 32, seed=0), 16, config, checkpoint_dir=checkpoints, n_checkpoints=3)
    saved = _checkpoints(checkpoints)
    assert len(saved) >= 2
    newest = saved[0]
    _truncate(newest / "trainer_state.pt")
    with pytest.warns(RuntimeWarning, match="damaged SAE checkpoint"):
        sae, _trainer = train_sae(tensor_batches(acts, 32, seed=0), 16, config, checkpoint_dir=checkpoints,
                                  n_checkpoints=3)
    assert not newest.exists() or (newest / "trainer_state.pt").stat().st_size > 0
    assert all(torch.isfinite(p).all() for p in sae.parameters())


def test_post_model_cache_damage_is_detected_and_rebuilt(tiny_dir, tmp_path, monkeypatch):
    """The organism and its post-models share `is_complete` (marker + size + sha256); a damaged one is rebuilt."""
    import palimpsest.unlearn as unlearn
    from palimpsest.concepts import load_concept
    from palimpsest.demo import OrganismSetup, organism_post_dir
    from palimpsest.io import atomic_dir
    from palimpsest.models import load_model
    from palimpsest.organism import is_complete
    from palimpsest.organism.build import write_checkpoint

    builds = []

    def fake_make_post_model(method, pre_dir, concept, world, out_dir, seed=0, **_):
        builds.append(method)
        loaded = load_model(pre_dir)
        with atomic_dir(out_dir) as tmp:
            write_checkpoint(loaded.model, loaded.tokenizer, tmp)
        return Path(out_dir)

    monkeypatch.setattr(unlearn, "make_post_model", fake_make_post_model)
    setup = OrganismSetup(pre_dir=tiny_dir, oracle_dir=tiny_dir, floor_dir=tiny_dir,
                          concept=load_concept(write_concept(tmp_path)), world=None, cache=tmp_path / "cache")
    setup.cache.mkdir()
    post = organism_post_dir("ga", setup)
    assert is_complete(post) and builds == ["ga"]
    assert organism_post_dir("ga", setup) == post and builds == ["ga"]  # a sound cache is reused
    good = (post / "model.safetensors").read_bytes()
    for damage in (_truncate, _flip_last_byte):
        damage(post / "model.safetensors")
        assert not is_complete(post)
        assert organism_post_dir("ga", setup) == post
        assert is_complete(post) and (post / "model.safetensors").read_bytes() == good
    assert builds == ["ga"] * 3


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_vision_cache_damage_is_detected_and_rebuilt(tmp_path, monkeypatch, damage):
    from palimpsest.vision import organism

    trained = []
    monkeypatch.setattr(organism, "train_classifier", lambda model, *a, **k: trained.append(1))  # init weights only
    first = organism.build_digits_model("mlp", 0, cache_dir=tmp_path)
    weights = Path(first.source) / "model.safetensors"
    good = weights.read_bytes()
    organism.build_digits_model("mlp", 0, cache_dir=tmp_path)
    assert len(trained) == 1  # cached
    (_truncate if damage == "truncate" else _flip_last_byte)(weights)
    with pytest.warns(RuntimeWarning, match="damaged vision model cache"):
        again = organism.build_digits_model("mlp", 0, cache_dir=tmp_path)
    assert len(trained) == 2 and weights.read_bytes() == good
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


# ---------------------------------------------------------------- out of memory while capturing


def _oom_above(monkeypatch, limit: int, error=None):
    """run_and_capture fails like an out-of-memory GPU for batches larger than `limit`."""
    import palimpsest.capture.activations as activations

    real = activations.run_and_capture
    sizes = []

    def flaky(model, tokenizer, batch, sites, backend, **kwargs):
        sizes.append(len(batch))
        if len(batch) > limit:
            raise error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, tokenizer, batch, sites, backend, **kwargs)

    monkeypatch.setattr(activations, "run_and_capture", flaky)
    monkeypatch.setenv("PALIMPSEST_NO_MEMO", "1")  # every capture runs its forward passes (capture.memo)
    return sizes


ITEM_PROMPTS = ["alice lives in", "bob lives in the city of", "carol works as a", "q : where does bob live ?",
                "the city of alice is", "bob works as a", "alice is a"]


@pytest.mark.parametrize("error", [None, RuntimeError("CUDA error: out of memory")])
def test_oom_retries_with_smaller_batch_and_says_so(tiny, monkeypatch, error):
    from palimpsest.capture import capture

    sites = ["blocks.0.hook_resid_post", SITE]
    expected = capture(tiny.model, tiny.tokenizer, ITEM_PROMPTS, sites, batch_size=8)
    sizes = _oom_above(monkeypatch, 2, error)
    with pytest.warns(RuntimeWarning) as record:
        got = capture(tiny.model, tiny.tokenizer, ITEM_PROMPTS, sites, batch_size=8, model_name="post")
    messages = [str(w.message) for w in record]
    assert any(re.search(r"post: out of memory .* at batch size 8; retrying with batch size 4", m) for m in messages)
    assert any("batch size 4; retrying with batch size 2" in m for m in messages)
    assert sizes[:3] == [7, 4, 2] and max(sizes[3:]) <= 2
    for site in sites:
        torch.testing.assert_close(got[site], expected[site], atol=1e-5, rtol=1e-5)


def test_oom_at_batch_size_one_is_a_clear_error(tiny, monkeypatch):
    from palimpsest.capture import CaptureError, capture

    _oom_above(monkeypatch, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(CaptureError, match="pre: out of memory even at batch size 1 .*smaller model"):
            capture(tiny.model, tiny.tokenizer, ITEM_PROMPTS, [SITE], batch_size=4, model_name="pre")


def test_other_runtime_errors_are_not_retried(tiny, monkeypatch):
    from palimpsest.capture import capture

    sizes = _oom_above(monkeypatch, 0, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        capture(tiny.model, tiny.tokenizer, ITEM_PROMPTS, [SITE], batch_size=4)
    assert sizes == [4]


def test_oom_while_streaming_to_disk(tiny, monkeypatch, tmp_path):
    from palimpsest.capture import ShardedActivations, capture, capture_to_disk

    expected = capture(tiny.model, tiny.tokenizer, ITEM_PROMPTS, [SITE], position="all")
    _oom_above(monkeypatch, 3)
    with pytest.warns(RuntimeWarning, match="retrying with batch size 3"):
        path = capture_to_disk(tiny.model, tiny.tokenizer, ITEM_PROMPTS, [SITE], tmp_path / "s", batch_size=6)
    store = ShardedActivations(path)
    store.verify()
    torch.testing.assert_close(store.load(SITE), expected[SITE], atol=1e-5, rtol=1e-5)


def test_oom_cli_capture_still_succeeds(tiny_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    concept = write_concept(tmp_path)
    reference = runner.invoke(app, capture_args(tiny_dir, tiny_dir, concept, tmp_path / "ref"))
    assert reference.exit_code == 0, reference.output
    _oom_above(monkeypatch, 1)
    with pytest.warns(RuntimeWarning, match="retrying with batch size 1"):
        result = runner.invoke(app, capture_args(tiny_dir, tiny_dir, concept, tmp_path / "acts", "--batch-size", "2"))
    assert result.exit_code == 0, result.output
    for file in (tmp_path / "ref").iterdir():
        got, want = load_file(str(tmp_path / "acts" / file.name)), load_file(str(file))
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Ctrl-C


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


def test_interrupt_while_writing_the_report(tiny_dir, tmp_path, monkeypatch):
    from palimpsest.report import audit_report

    concept = write_concept(tmp_path)
    out = tmp_path / "report"
    monkeypatch.setattr(audit_report, "metrics_json", _interrupt)  # report.html is already in the temp folder
    result = runner.invoke(app, audit_args(tiny_dir, tiny_dir, concept, out))
    assert result.exit_code == 130
    assert "interrupted: nothing half-written was left behind" in result.output
    assert_nothing_left(out)


def test_interrupted_rerun_keeps_the_previous_report(tiny_dir, tmp_path, monkeypatch):
    from palimpsest.audit import behaviour

    concept = write_concept(tmp_path)
    out = tmp_path / "report"
    first = runner.invoke(app, audit_args(tiny_dir, tiny_dir, concept, out))
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(behaviour.Behaviour, "run", _interrupt)
    result = runner.invoke(app, audit_args(tiny_dir, tiny_dir, concept, out))
    assert result.exit_code == 130
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_interrupt_during_capture_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    import palimpsest.capture as capture_module

    real = capture_module.capture
    calls = []

    def interrupt_on_second(*args, **kwargs):  # the first set is already on disk in the temp folder
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_module, "capture", interrupt_on_second)
    out = tmp_path / "acts"
    result = runner.invoke(app, capture_args(tiny_dir, tiny_dir, write_concept(tmp_path), out))
    assert result.exit_code == 130 and len(calls) == 2
    assert_nothing_left(out)


# ---------------------------------------------------------------- pickle and remote code


def test_pickle_checkpoint_cli(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    target = tmp_path / "pickled"
    target.mkdir()
    for file in tiny_dir.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, target / file.name)
    torch.save(load_file(str(tiny_dir / "model.safetensors")), target / "pytorch_model.bin")
    result = runner.invoke(app, ["info", str(target)])
    assert result.exit_code == 2
    error_line(result.output, "pytorch_model.bin", "pickle", "--allow-pickle")
    concept = write_concept(tmp_path)
    out = tmp_path / "report"
    result = runner.invoke(app, audit_args(tiny_dir, target, concept, out))
    assert result.exit_code == 2
    error_line(result.output, "--allow-pickle")
    assert_nothing_left(out)
    allowed = runner.invoke(app, ["info", str(target), "--allow-pickle"])
    assert allowed.exit_code == 0, allowed.output


def test_custom_code_checkpoint_is_refused_without_running_it(tiny_dir, tmp_path):
    model = _copy_model(tiny_dir, tmp_path / "custom")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil_llama", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (model / "config.json").write_text(json.dumps(config))
    sentinel = tmp_path / "code-ran"
    (model / "modeling_evil.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil_llama'\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    result = runner.invoke(app, ["info", str(model)])
    assert result.exit_code == 2
    error_line(result.output, "evil_llama", "custom code", "trust_remote_code stays off")
    assert not sentinel.exists()


def test_trust_remote_code_is_never_turned_on():
    """Every from_pretrained in the library says trust_remote_code=False; nothing ever passes True."""
    root = Path(__file__).resolve().parents[1] / "palimpsest"
    for file in root.rglob("*.py"):
        text = file.read_text(encoding="utf-8")
        assert not re.search(r"trust_remote_code\s*=\s*(?!False\b)", text), file
        for call in re.finditer(r"\.from_pretrained\(", text):
            args = text[call.end():text.find(")\n", call.end())]
            assert "trust_remote_code=False" in args, (file, args[:120])


# ---------------------------------------------------------------- the report escapes every text


def test_report_escapes_every_text_field():
    from palimpsest.audit import AuditResult
    from palimpsest.concepts import ConceptSpec, Item
    from palimpsest.report.audit_report import render_report
    from palimpsest.types import AuditConfig, Result

    evil = '<img src=x onerror=alert(1)>"</script><script>alert(2)</script>'
    concept = ConceptSpec(name=evil, description=evil, keywords=(evil,),
                          forget=(Item(prompt=evil, answer=evil, subject=evil),),
                          retain=(Item(prompt=evil, answer=evil),))
    figure = json.dumps({"data": [{"type": "bar", "x": [evil], "y": [1]}], "layout": {"title": {"text": evil}}})
    result = Result(name="probes", status="ok", residue=0.5, ci=(0.4, 0.6), floor_source=evil, evidence=evil,
                    notes=[evil], summary={evil: evil, "nested": {evil: [evil]}},
                    tables={evil: [{evil: evil, "generation": evil}]},
                    per_item=[{"prompt": evil, "model output": evil}], figures={evil: figure})
    behaviour = Result(name="behaviour", kind="behaviour", summary={"forget_acc_pre": 1.0, "generation": evil},
                       per_item=[{"completion": evil}])
    audit = AuditResult(verdict="inconclusive", collateral=False, behaviour_forgotten=None, reasons=[evil],
                        missing_evidence=[evil], strongest_evidence=evil, behaviour=behaviour,
                        analyses={"probes": result}, config=AuditConfig(), concept=concept,
                        models={"pre": evil, "post": evil}, timings={evil: 1.0})
    html = render_report(audit)
    assert "<img" not in html and "<script>alert" not in html and "</script><script>alert" not in html
    figures = html.count('Plotly.newPlot("fig')
    assert figures == 2 and html.count("<script") == 1 + figures  # plotly itself and the figures, nothing more
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
