"""palimpsest.sae: sae-lens training and caching, SAUCE features and clamping, RA-SAE blindspots, the CLI."""

from __future__ import annotations

import sys

import pytest
import torch

SITE_TINY = "blocks.1.hook_resid_post"
TINY_CORPUS = [f"{p} lives in {c} ." for p in ("alice", "bob", "carol") for c in ("paris", "rome", "oslo")] + \
    [f"{p} works as a {j} ." for p in ("alice", "bob", "carol") for j in ("baker", "pilot")] + \
    ["q : where does alice live ? answer : paris .", "the city of bob is rome ."]


def _tiny_cfg(**kw):
    from palimpsest.sae import SAEConfig

    return SAEConfig(**{"expansion": 4, "k": 4, "total_tokens": 2048, "batch_size": 64, **kw})


# ---------------------------------------------------------------- unit tests (tiny random model)


def test_train_cache_and_reload(tiny, tmp_path):
    from palimpsest.sae import get_or_train_sae, train
    from palimpsest.sae.data import corpus_activations

    sae, quality = get_or_train_sae(tiny, SITE_TINY, TINY_CORPUS, _tiny_cfg(), cache_dir=tmp_path)
    for key in ("explained_variance", "l0", "dead_fraction", "ce_loss_clean", "ce_loss_spliced", "loss_recovered"):
        assert key in quality
    assert quality["l0"] <= 4 + 1e-6
    folders = list((tmp_path / "sae").iterdir())
    assert len(folders) == 1 and (folders[0] / "cfg.json").is_file() and (folders[0] / "sae_weights.safetensors").is_file()
    train._MEMO.clear()
    again, quality_again = get_or_train_sae(tiny, SITE_TINY, TINY_CORPUS, _tiny_cfg(), cache_dir=tmp_path)
    assert again is not sae and quality_again == quality
    x = corpus_activations(tiny.model, tiny.tokenizer, SITE_TINY, TINY_CORPUS[:3])
    assert torch.allclose(sae.encode(x), again.encode(x))
    # another config is another SAE
    get_or_train_sae(tiny, SITE_TINY, TINY_CORPUS, _tiny_cfg(k=2), cache_dir=tmp_path)
    assert len(list((tmp_path / "sae").iterdir())) == 2


def test_other_architecture_and_bad_name(tiny, tmp_path):
    from palimpsest.sae import SAEError, get_or_train_sae

    sae, quality = get_or_train_sae(tiny, SITE_TINY, TINY_CORPUS, _tiny_cfg(architecture="standard",
                                    arch_kwargs={"l1_coefficient": 1e-4}), cache_dir=tmp_path)
    assert type(sae).__name__ == "StandardSAE" and quality["l0"] > 0
    with pytest.raises(SAEError, match="unknown SAE architecture"):
        get_or_train_sae(tiny, SITE_TINY, TINY_CORPUS, _tiny_cfg(architecture="nope"), cache_dir=tmp_path)


def test_shard_batches_fixed_size_and_endless(tiny, tmp_path):
    from palimpsest.capture import ShardedActivations, capture_to_disk
    from palimpsest.sae import shard_batches

    store = ShardedActivations(capture_to_disk(tiny.model, tiny.tokenizer, TINY_CORPUS, [SITE_TINY],
                                               tmp_path / "acts", batch_size=4))
    it = shard_batches(store, SITE_TINY, 16, buffer_size=32)  # store larger than the buffer: streamed
    batches = [next(it) for _ in range(3 * store.rows // 16)]  # three epochs
    assert all(b.shape == (16, tiny.d_model) for b in batches)


def test_training_resumes_from_checkpoint(tmp_path):
    from palimpsest.sae import tensor_batches, train_sae

    data = torch.randn(2048, 16)
    cfg = _tiny_cfg(total_tokens=2048, batch_size=64)
    train_sae(tensor_batches(data, 64), 16, cfg, checkpoint_dir=tmp_path, n_checkpoints=3)
    assert any(p.name.isdigit() for p in tmp_path.iterdir())
    seen = []

    def counting():
        for batch in tensor_batches(data, 64):
            seen.append(1)
            yield batch

    _, trainer = train_sae(counting(), 16, cfg, checkpoint_dir=tmp_path, n_checkpoints=3)
    assert trainer.n_training_samples >= 2048
    assert 0 < len(seen) < 2048 // 64  # started from the last checkpoint, not from zero


def test_sauce_clamp_edits_only_the_copy(tiny, sae_cache):
    from palimpsest.capture import encode
    from palimpsest.sae import get_or_train_sae, sauce_clamp, site_inputs

    sae, _ = get_or_train_sae(tiny, SITE_TINY, TINY_CORPUS, _tiny_cfg(), cache_dir=sae_cache / "tiny")
    x = site_inputs(tiny.model, tiny.tokenizer, TINY_CORPUS, SITE_TINY)
    fired = (sae.encode(torch.cat([a for _, a in x])) > 0).float().mean(0)
    features = torch.argsort(fired, descending=True)[:3].tolist()
    batch = encode(tiny.tokenizer, TINY_CORPUS[:4])
    with torch.no_grad():
        ref_logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    clamped = sauce_clamp(tiny, sae, SITE_TINY, features, clamp_value=-2.0)
    identity = sauce_clamp(tiny, sae, SITE_TINY, features, clamp_value=1.0, share_weights=True)
    with torch.no_grad():
        c_logits = clamped.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        i_logits = identity.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        after = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert not torch.allclose(c_logits, ref_logits, atol=1e-4)  # the clamp changes the output
    assert torch.allclose(i_logits, ref_logits, atol=1e-5)  # clamp x1 = no change: reconstruction error preserved
    assert torch.equal(after, ref_logits)  # the reference model is untouched
    assert next(identity.model.parameters()).data_ptr() == next(tiny.model.parameters()).data_ptr()
    assert next(clamped.model.parameters()).data_ptr() != next(tiny.model.parameters()).data_ptr()
    # what the SAE sees at the site (the input of the clamping hook) is unchanged
    y = site_inputs(clamped.model, clamped.tokenizer, TINY_CORPUS, SITE_TINY)
    assert all(torch.allclose(a, b) for (_, a), (_, b) in zip(x, y, strict=True))
    with pytest.raises(ValueError, match="no concept features"):
        sauce_clamp(tiny, sae, SITE_TINY, [])


def test_overcomplete_without_its_package_init():
    from palimpsest.sae import overcomplete_sae

    module = overcomplete_sae()
    assert hasattr(module, "RATopKSAE")
    assert "overcomplete.models" not in sys.modules  # the vision-model half was never imported


def test_cli_sae_train(tiny_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from palimpsest.sae.cli import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    register(app)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TINY_CORPUS * 4))
    out = tmp_path / "sae"
    args = ["sae", "train", "--model", str(tiny_dir), "--site", SITE_TINY, "--out", str(out), "--corpus", str(corpus),
            "--tokens", "2048", "--batch-size", "64", "--expansion", "2", "--k", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "cfg.json").is_file() and (out / "quality.json").is_file()
    assert not (tmp_path / ".sae.work").exists()
    bad = CliRunner().invoke(app, [*args[:5], "blocks.9.hook_resid_post", *args[6:]])
    assert bad.exit_code == 2 and "does not exist" in bad.output


# ---------------------------------------------------------------- on the model organism

MIN_EXPLAINED_VARIANCE = 0.7
SAUCE_SITE = "blocks.0.hook_resid_post"


def _audit_config(sae_cache, **fields):
    from palimpsest.types import AuditConfig

    return AuditConfig(n_bootstrap=200, cache_dir=str(sae_cache), options={"blindspots": {"n_samples": 192}},
                       **fields)


def _context(pair, concept, config, names):
    """An AuditContext with the SAEs of the analysers `names` built, as the runner builds them."""
    from palimpsest.audit.context import AuditContext
    from palimpsest.audit.registry import load_analysers
    from palimpsest.audit.runner import build_saes
    from palimpsest.capture import Activations

    analysers = {n: load_analysers()[n] for n in names}
    ctx = AuditContext(pair=pair, concept=concept, acts=Activations.for_pair(pair, concept), config=config)
    ctx.saes = build_saes(analysers, ctx)
    return ctx


def _run(name, pair, concept, config):
    from palimpsest.audit.registry import load_analysers

    ctx = _context(pair, concept, config, [name])
    analyser = load_analysers()[name]
    return analyser.run(ctx.for_analyser(analyser))


# ---------------------------------------------------------------- the analysers' SAEs are built once, by the runner

TINY_CONCEPT_ITEMS = [("alice lives in the city of", "paris", "alice"), ("q : where does alice live ?", "paris", "alice"),
                      ("alice works as a", "baker", "alice"), ("the city of alice is", "paris", "alice")]
TINY_OTHER_ITEMS = [("bob lives in the city of", "rome", "bob"), ("carol works as a", "pilot", "carol"),
                    ("bob works as a", "baker", "bob"), ("the city of carol is", "oslo", "carol")]


@pytest.fixture()
def tiny_concept():
    from palimpsest.concepts import ConceptSpec, Item

    def items(rows):
        return tuple(Item(prompt=p, answer=a, subject=s, fact_id=f"{s}:{a}") for p, a, s in rows)

    return ConceptSpec(name="alice", keywords=("alice",), forget=items(TINY_CONCEPT_ITEMS),
                       retain=items(TINY_OTHER_ITEMS[:2]), neighbours=items(TINY_OTHER_ITEMS[2:]))


@pytest.fixture()
def tiny_pair(tiny):
    from palimpsest.models import ModelPair

    return ModelPair(pre=tiny, post=tiny)


def _tiny_audit(tmp_path, **options):
    from palimpsest.types import AuditConfig

    return AuditConfig(n_bootstrap=20, sae=_tiny_cfg(corpus=tuple(TINY_CORPUS), min_selectivity=0.0,
                                                     min_forget_firing=0.0),
                       cache_dir=str(tmp_path), options=options)


def test_one_sae_per_site_shared_by_its_readers(tiny_pair, tiny_concept, tmp_path, monkeypatch):
    """sae_features and sae_restoration read the middle layer of a plain pair: one SAE, trained once, the same
    object for both; blindspots asks for an RA-SAE there, under its own key."""
    from palimpsest.sae import train
    from palimpsest.sae.analyser import default_site

    monkeypatch.setattr(train, "_MEMO", {})  # nothing loaded in this process: the cache folder count is the truth

    site = default_site(tiny_pair.pre.model)
    config = _tiny_audit(tmp_path, blindspots={"nb_concepts": 16, "n_points": 64, "epochs": 1})
    ctx = _context(tiny_pair, tiny_concept, config, ["sae_features", "sae_restoration", "blindspots"])
    assert sorted(ctx.saes.built) == sorted([site, f"archetypal:{site}"])
    assert len(list((tmp_path / "sae").iterdir())) == 1  # one sae-lens SAE trained and cached
    sae, quality = ctx.saes.get(site)
    assert int(sae.W_dec.shape[0]) == 4 * tiny_pair.pre.d_model and "explained_variance" in quality
    fit = ctx.saes.get(f"archetypal:{site}")
    assert fit.sae.nb_concepts == 16 and len(fit.rows) == len(ctx.saes.corpus) == len(fit.codes)
    assert fit.quality["r2"] <= 1.0


def test_analysers_read_the_built_sae_and_never_build_one(tiny_pair, tiny_concept, tmp_path, monkeypatch):
    from palimpsest.audit.context import AuditContext, SAENotBuilt
    from palimpsest.audit.registry import load_analysers
    from palimpsest.capture import Activations
    from palimpsest.sae import blindspots, train

    config = _tiny_audit(tmp_path, blindspots={"nb_concepts": 16, "n_points": 64, "epochs": 1, "n_samples": 4,
                                               "max_new_tokens": 4, "min_selectivity": -1e9})
    names = ["sae_features", "sae_restoration", "blindspots"]
    ctx = _context(tiny_pair, tiny_concept, config, names)

    def refuse(*args, **kwargs):
        raise AssertionError("an analyser trained an SAE")

    monkeypatch.setattr(train, "get_or_train_sae", refuse)
    monkeypatch.setattr(train, "train_sae", refuse)
    monkeypatch.setattr(blindspots, "train_ra_sae", refuse)
    for name in names:
        analyser = load_analysers()[name]
        result = analyser.run(ctx.for_analyser(analyser))
        assert result.status in ("ok", "inconclusive"), (name, result.notes)
    features = load_analysers()["sae_features"].run(ctx.for_analyser(load_analysers()["sae_features"]))
    assert features.summary["d_sae"] == 4 * tiny_pair.pre.d_model  # the AuditConfig.sae SAE (expansion 4)
    assert features.summary["n_corpus_texts"] == len(ctx.saes.corpus)
    spots = load_analysers()["blindspots"].run(ctx.for_analyser(load_analysers()["blindspots"]))
    assert spots.summary["nb_concepts"] == 16 and spots.tables["concepts"]
    # with nothing built, an analyser cannot read an SAE (it never falls back to training one)
    bare = AuditContext(pair=tiny_pair, concept=tiny_concept, acts=Activations.for_pair(tiny_pair, tiny_concept),
                        config=config)
    with pytest.raises(SAENotBuilt):
        load_analysers()["sae_features"].run(bare.for_analyser(load_analysers()["sae_features"]))


def test_an_sae_that_cannot_be_built_is_the_readers_error(tiny_pair, tiny_concept, tmp_path):
    from palimpsest.audit.registry import load_analysers
    from palimpsest.audit.runner import run_analyser

    config = _tiny_audit(tmp_path, sae_features={"site": "blocks.9.hook_resid_post"})
    ctx = _context(tiny_pair, tiny_concept, config, ["sae_features"])
    assert isinstance(ctx.saes.built["blocks.9.hook_resid_post"], Exception)
    result = run_analyser(load_analysers()["sae_features"], ctx)
    assert result.status == "error" and "could not be built" in result.evidence


def test_sae_options_are_typed():
    from palimpsest.types import AuditConfig

    with pytest.raises(ValueError, match="unknown field"):  # SAE training fields live in AuditConfig.sae now
        AuditConfig(options={"sae_features": {"k": 4}})
    with pytest.raises(ValueError, match="unknown field"):
        AuditConfig(options={"sae_restoration": {"cache_dir": "x"}})
    assert AuditConfig(options={"blindspots": {"top_k": 4}}).opts("blindspots").top_k == 4


@pytest.fixture(scope="module")
def organism_sae(organism_pair_suppress, organism_concept, sae_cache):
    from palimpsest.sae import SAEConfig, concept_corpus, get_or_train_sae
    from palimpsest.sae.analyser import default_site

    pre = organism_pair_suppress.pre
    site = default_site(pre.model)
    sae, quality = get_or_train_sae(pre, site, concept_corpus(organism_concept), SAEConfig(), cache_dir=sae_cache)
    return site, sae, quality


def test_organism_sae_quality(organism_sae):
    _, _, quality = organism_sae
    assert quality["explained_variance"] >= MIN_EXPLAINED_VARIANCE, quality
    assert quality["dead_fraction"] < 0.9
    assert quality["ce_loss_spliced"] < quality["ce_loss_mean_ablated"]


def test_concept_features_fire_on_forget_prompts(organism_sae, organism_pair_suppress, organism_concept):
    from palimpsest.sae import concept_features

    site, sae, _ = organism_sae
    feats = concept_features(sae, organism_pair_suppress.pre, site, organism_concept, None)
    assert len(feats) >= 1
    assert all(f > r for f, r in zip(feats.mean_forget, feats.mean_retain, strict=True))
    assert feats.top_tokens[0] and feats.top_tokens[0][0]["activation"] > 0
    assert type(feats).model_validate_json(feats.model_dump_json()) == feats


def test_suppress_keeps_concept_features(organism_pair_suppress, organism_concept, sae_cache):
    result = _run("sae_features", organism_pair_suppress, organism_concept, _audit_config(sae_cache))
    assert result.status == "ok", result.notes
    assert result.residue >= 0.8 and result.summary["activation_survival"] > 0.8


@pytest.mark.slow
def test_oracle_concept_features_fall(organism_pair_oracle, organism_pair_suppress, organism_concept, sae_cache):
    oracle = _run("sae_features", organism_pair_oracle, organism_concept, _audit_config(sae_cache))
    suppress = _run("sae_features", organism_pair_suppress, organism_concept, _audit_config(sae_cache))
    assert oracle.status == "ok", oracle.notes
    assert oracle.summary["activation_survival"] < 0.6
    assert oracle.residue < suppress.residue - 0.3




@pytest.fixture(scope="module")
def organism_sauce(organism_setup, organism_pair_suppress, sae_cache):
    from palimpsest.demo import sauce_post
    from palimpsest.models import ModelPair

    pre = organism_pair_suppress.pre
    return ModelPair(pre, sauce_post(pre, organism_setup.concept), organism_pair_suppress.floor)


def test_sauce_follows_its_stopping_rule_and_is_called_what_its_behaviour_allows(organism_sauce, organism_concept,
                                                                                sae_cache, record_property):
    """SAUCE picks its clamp by the stopping rule (the first candidate reaching the forget target within the retain
    tolerance, else the fallback the rule names) and, weights untouched, is suppression by construction: the audit
    must call it suppressed when its behaviour is forgotten, not_forgotten when it is not (a weak control), never
    deleted. Measured on the seed-0 organism (portable kernels, every kernel path here): rule "target_outside_retain_
    tolerance" at min_selectivity 0.5, clamp -10, 16 features; forget 0.95 -> 0.28 (bound 0.35, margin 0.07 = 4 of 60
    items); retain 0.96 -> 0.47: this organism's names are not separable from everyone else's."""
    from palimpsest.audit.runner import audit
    from palimpsest.capture import score_answers
    from palimpsest.sae import SAEConfig

    pre, post = organism_sauce.pre, organism_sauce.post
    sauce = post.meta["sauce"]
    assert sauce["sites"][0] == sauce["site"] == SAUCE_SITE and all(sauce["features"].values())
    assert next(post.model.parameters()).data_ptr() != next(pre.model.parameters()).data_ptr()

    def acc(lm, items):
        return float(score_answers(lm.model, lm.tokenizer, list(items)).correct.mean())

    stop, cfg = sauce["stop"], SAEConfig()
    search = stop["search"]
    assert acc(pre, organism_concept.forget) > 0.8
    forget_post = acc(post, organism_concept.forget)
    record_property("sauce_forget_acc", round(forget_post, 4))
    record_property("sauce_rule", f"{stop['reason']} sel={stop['min_selectivity']} clamp={stop['clamp_value']} "
                                  f"n={stop['n_features']}")
    assert forget_post == pytest.approx(stop["forget_acc"], abs=1e-3)  # the reported stopping point is the model
    first_good = next((i for i, r in enumerate(search) if r["meets_target"] and r["within_tolerance"]), None)
    if first_good is not None:  # the rule stops at the first candidate meeting both, and tries nothing after it
        assert stop["reason"] == "target" and first_good == len(search) - 1
    elif any(r["meets_target"] for r in search):
        assert stop["reason"] == "target_outside_retain_tolerance"
        assert stop["forget_acc"] <= cfg.sauce_forget_target
    else:
        assert stop["reason"] == "target_not_reached"
        assert stop["forget_acc"] == min(r["forget_acc"] for r in search)
    assert acc(pre, organism_concept.forget) > 0.8  # the reference model is untouched by the copy's hooks
    result = audit(organism_sauce, organism_concept, _audit_config(sae_cache, analysers=("sae_features",)))
    assert set(result.analyses) == {"sae_features"}
    features = result.analyses["sae_features"]
    assert features.status == "ok" and features.residue >= 0.8  # the stream reaching the clamp is the pre model's
    assert any("SAUCE" in note for note in features.notes)
    expected = "suppressed" if result.behaviour_forgotten else "not_forgotten"
    assert result.verdict == expected, result.reasons


@pytest.mark.slow
def test_blindspots_oracle_generates_the_concept_no_more_than_the_floor(organism_pair_oracle, organism_concept,
                                                                        sae_cache):
    oracle = _run("blindspots", organism_pair_oracle, organism_concept, _audit_config(sae_cache))
    assert oracle.status == "ok", oracle.notes
    # measured on the current organism: forget-concept prevalence drop 0.30 (oracle) at one thread per worker, 0.19
    # at two (sampled generations and the RA-SAE depend on the thread count), and 0.18 for suppress: the drop does
    # not separate oracle from suppress here (it did on the older organism: 0.53 vs 0.07), so only the calibrated
    # residue is asserted (measured 0.0)
    assert oracle.residue <= 0.3  # it generates the concept no more than the floor model, which never saw them
    assert oracle.tables["concepts"] and oracle.figures


# ---------------------------------------------------------------- the self-generated corpus and token filters


def test_training_activations_skip_the_sink_and_massive_tokens(tiny):
    from palimpsest.sae.data import corpus_activations, site_inputs, training_activations

    plain, info = training_activations(tiny.model, tiny.tokenizer, SITE_TINY, TINY_CORPUS)
    assert torch.equal(plain, corpus_activations(tiny.model, tiny.tokenizer, SITE_TINY, TINY_CORPUS))
    assert info == {"n_tokens": plain.shape[0]}
    rows = site_inputs(tiny.model, tiny.tokenizer, TINY_CORPUS, SITE_TINY)
    skipped, info = training_activations(tiny.model, tiny.tokenizer, SITE_TINY, TINY_CORPUS, skip_first=1)
    assert skipped.shape[0] == sum(a.shape[0] - 1 for _, a in rows) == info["n_tokens"]
    torch.testing.assert_close(skipped[: rows[0][1].shape[0] - 1], rows[0][1][1:])
    # a ratio just above 1 keeps only the tokens at most that far above the median norm
    kept, info = training_activations(tiny.model, tiny.tokenizer, SITE_TINY, TINY_CORPUS, skip_first=1,
                                      max_norm_ratio=1.05)
    norms = skipped.norm(dim=-1)
    assert info["n_massive_dropped"] == int((norms > 1.05 * norms.median()).sum()) > 0
    assert kept.shape[0] == skipped.shape[0] - info["n_massive_dropped"]
    assert float(kept.norm(dim=-1).max()) <= 1.05 * float(norms.median()) + 1e-4


def test_token_filters_join_the_cache_key_only_when_set():
    from palimpsest.sae import SAEConfig

    assert SAEConfig().training_key() == SAEConfig(skip_first_positions=0, max_norm_ratio=None).training_key()
    keys = {SAEConfig().training_key(), SAEConfig(skip_first_positions=1).training_key(),
            SAEConfig(max_norm_ratio=10.0).training_key()}
    assert len(keys) == 3
    # the corpus settings change the corpus (its hash is in the cache key), not the training fields
    assert SAEConfig(self_corpus_texts=8).training_key() == SAEConfig().training_key()
    with pytest.raises(ValueError):
        SAEConfig(max_norm_ratio=0.5)


def test_self_corpus_is_sampled_once_and_cached_on_disk(tiny, tmp_path, monkeypatch):
    from palimpsest.sae import blindspots, corpus

    monkeypatch.setattr(corpus, "_MEMO", {})
    texts = corpus.self_corpus(tiny, 6, 5, seed=0, cache_dir=tmp_path)
    assert len(texts) == 6 and all(isinstance(t, str) and t for t in texts)
    files = list((tmp_path / "sae_corpus").iterdir())
    assert len(files) == 1
    monkeypatch.setattr(corpus, "_MEMO", {})

    def refuse(*args, **kwargs):
        raise AssertionError("sampled again although the corpus is cached")
    monkeypatch.setattr(blindspots, "generate_texts", refuse)
    assert corpus.self_corpus(tiny, 6, 5, seed=0, cache_dir=tmp_path) == texts
    files[0].write_text("{not json")  # a damaged file is sampled again
    monkeypatch.undo()
    monkeypatch.setattr(corpus, "_MEMO", {})
    assert corpus.self_corpus(tiny, 6, 5, seed=0, cache_dir=tmp_path) == texts
    assert corpus.self_corpus(tiny, 0, 5, cache_dir=tmp_path) == []


def test_an_sae_with_a_self_corpus_reports_held_out_quality_and_is_gated_on_it(tiny_pair, tiny_concept, tmp_path):
    from palimpsest.sae.analyser import default_site
    from palimpsest.sae.quality import gate_explained_variance
    from palimpsest.types import AuditConfig

    config = AuditConfig(n_bootstrap=20, cache_dir=str(tmp_path),
                         sae=_tiny_cfg(self_corpus_texts=10, self_corpus_tokens=6, held_out_share=0.2,
                                       skip_first_positions=1, max_norm_ratio=10.0))
    ctx = _context(tiny_pair, tiny_concept, config, ["sae_features"])
    site = default_site(tiny_pair.pre.model)
    _, quality = ctx.saes.get(site)
    assert quality["n_held_out_texts"] == 2 and quality["n_held_out_tokens"] > 0
    assert quality["skipped_first_positions"] == 1 and "n_massive_dropped" in quality
    assert quality["explained_variance_held_out"] <= 1.0 and quality["train_seconds"] >= 0
    assert gate_explained_variance(quality) == quality["explained_variance_held_out"]
    assert gate_explained_variance({"explained_variance": 0.7}) == 0.7
    # the training corpus: the concept's texts, then the 8 sampled texts not held out
    assert len(ctx.saes.corpus) == len(tiny_concept_texts(tiny_concept)) + 8


def tiny_concept_texts(concept):
    from palimpsest.sae.data import concept_corpus

    return concept_corpus(concept)
