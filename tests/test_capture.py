import pytest
import torch

from palimpsest.capture import (
    Activations,
    CaptureError,
    ShardedActivations,
    SiteError,
    ablate_direction,
    add_vector,
    capture,
    capture_to_disk,
    intervene,
    score_answers,
)
from palimpsest.concepts import ConceptSpec, Item

ITEMS = [
    Item(prompt="alice lives in the city of", answer="paris", subject="alice"),
    Item(prompt="q : where does bob live ?", answer="rome", subject="bob"),
    Item(prompt="carol works as a", answer="baker pilot", subject="carol"),
]
SITES = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.0.hook_attn_out",
         "blocks.0.hook_resid_mid", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post",
         "ln_final.hook_normalized"]


@pytest.fixture(scope="module")
def bridged(tiny_dir):
    """A private copy of the tiny model for the transformer_lens backend: TransformerBridge wraps the HF modules in
    place, so the session-wide `tiny` that other tests deep-copy (relearning, quantization) must never see it."""
    from palimpsest.models import load_model

    return load_model(tiny_dir)


@pytest.mark.parametrize("position", ["last", "subject", "answer_mean"])
def test_backends_agree(bridged, position):
    tiny = bridged
    ref = capture(tiny.model, tiny.tokenizer, ITEMS, SITES, position=position, backend="torch")
    for backend in ("transformer_lens", "nnsight"):
        other = capture(tiny.model, tiny.tokenizer, ITEMS, SITES, position=position, backend=backend)
        for site in SITES:
            assert other[site].shape == ref[site].shape, (backend, site)
            torch.testing.assert_close(other[site], ref[site], atol=1e-5, rtol=1e-5, msg=f"{backend} {site}")


def test_transformer_lens_matches_hf_hidden_states(bridged):
    from palimpsest.capture import encode

    tiny = bridged
    acts = capture(tiny.model, tiny.tokenizer, ITEMS, ["blocks.0.hook_resid_post"], position="last",
                   backend="transformer_lens")
    batch = encode(tiny.tokenizer, [it.prompt for it in ITEMS])
    with torch.inference_mode():
        hidden = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(acts["blocks.0.hook_resid_post"], hidden[torch.arange(3), batch.prompt_last],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_padding_alone_equals_batched(tiny, padding):
    batched = capture(tiny.model, tiny.tokenizer, ITEMS, SITES, position="last", padding=padding)
    for i, item in enumerate(ITEMS):
        alone = capture(tiny.model, tiny.tokenizer, [item], SITES, position="last")
        for site in SITES:
            torch.testing.assert_close(batched[site][i], alone[site][0], atol=1e-5, rtol=1e-4)


def test_subject_position_points_at_subject(tiny):
    subj = capture(tiny.model, tiny.tokenizer, ITEMS[:1], ["hook_embed"], position="subject")["hook_embed"]
    alice = tiny.tokenizer.convert_tokens_to_ids("alice")
    expected = tiny.model.get_input_embeddings().weight[alice]
    torch.testing.assert_close(subj[0], expected.detach())


def test_bad_site_lists_valid_ones(tiny):
    with pytest.raises(SiteError, match="valid sites are.*hook_resid_post"):
        capture(tiny.model, tiny.tokenizer, ITEMS, ["blocks.9.hook_resid_post"])
    with pytest.raises(SiteError):
        capture(tiny.model, tiny.tokenizer, ITEMS, ["blocks.0.hook_nonsense"])


def test_streaming_matches_in_memory(tiny, tmp_path):
    texts = [f"{it.prompt} {it.answer}" for it in ITEMS] * 3
    store = ShardedActivations(capture_to_disk(tiny.model, tiny.tokenizer, texts, SITES[-2:], tmp_path / "acts",
                                               batch_size=2))
    memory = capture(tiny.model, tiny.tokenizer, texts, SITES[-2:], position="all", batch_size=64)
    for site in SITES[-2:]:
        torch.testing.assert_close(store.load(site), memory[site], atol=1e-5, rtol=1e-5)
    assert store.rows == memory[SITES[-1]].shape[0]
    assert len(store.manifest["shards"]) == 5
    batches = list(store.iter_batches(SITES[-1], 7))
    assert all(b.shape[0] == 7 for b in batches) and len(batches) == store.rows // 7


def test_truncated_shard_is_detected(tiny, tmp_path):
    path = capture_to_disk(tiny.model, tiny.tokenizer, ["alice lives in paris"] * 4, SITES[-1:], tmp_path / "s",
                           batch_size=2)
    shard = sorted(path.glob("shard_*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(CaptureError, match="unreadable shard"):
        ShardedActivations(path).load(SITES[-1])


def test_failed_stream_leaves_nothing(tiny, tmp_path):
    with pytest.raises(SiteError):
        capture_to_disk(tiny.model, tiny.tokenizer, ["alice"], ["blocks.7.hook_resid_post"], tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_interventions_removed_even_on_error(tiny):
    hooks_before = _hook_count(tiny.model)
    before = score_answers(tiny.model, tiny.tokenizer, ITEMS).mean_logprob
    with pytest.raises(RuntimeError):
        with intervene(tiny.model, {"blocks.0.hook_resid_post": add_vector(torch.ones(32), 10.0)}):
            changed = score_answers(tiny.model, tiny.tokenizer, ITEMS).mean_logprob
            assert not (changed == before).all()
            raise RuntimeError("boom")
    after = score_answers(tiny.model, tiny.tokenizer, ITEMS).mean_logprob
    assert (after == before).all()
    assert _hook_count(tiny.model) == hooks_before


def test_ablate_direction_zeroes_component(tiny):
    direction = torch.randn(32)
    seen = {}

    def record(h):
        seen["h"] = h.clone()
        return h

    with intervene(tiny.model, [("blocks.0.hook_resid_post", ablate_direction(direction)),
                                ("blocks.0.hook_resid_post", record)]):
        score_answers(tiny.model, tiny.tokenizer, ITEMS)
    unit = direction / direction.norm()
    assert (seen["h"] @ unit).abs().max() < 1e-4


def test_head_site_intervention_round_trips(tiny):
    before = score_answers(tiny.model, tiny.tokenizer, ITEMS).mean_logprob
    with intervene(tiny.model, {"blocks.0.attn.hook_z": lambda z: z}):
        same = score_answers(tiny.model, tiny.tokenizer, ITEMS).mean_logprob
    assert abs(same - before).max() < 1e-6


def test_non_finite_activations_are_refused(tiny):
    with intervene(tiny.model, {"blocks.0.hook_resid_post": lambda h: h * float("nan")}):
        with pytest.raises(CaptureError, match="non-finite"):
            capture(tiny.model, tiny.tokenizer, ITEMS, ["blocks.1.hook_resid_post"])


def test_activations_cache_by_model_and_set(tiny, tiny_dir_other):
    from palimpsest.models import ModelPair, load_model

    pair = ModelPair(tiny, load_model(tiny_dir_other))
    concept = ConceptSpec(name="c", forget=tuple(ITEMS[:2]), retain=(ITEMS[2],))
    acts = Activations.for_pair(pair, concept)
    pre = acts.get("pre", "blocks.1.hook_resid_post", "forget")
    post = acts.get("post", "blocks.1.hook_resid_post", "forget")
    assert pre.shape == (2, 32) and not torch.allclose(pre, post)
    assert acts.get("pre", "blocks.1.hook_resid_post", "forget") is pre
    assert len(acts.layers("pre", "retain")) == 2
    assert acts.get("pre", "blocks.0.hook_resid_post", "holdout").shape[0] == 0


def test_score_answers_multi_token(tiny):
    scores = score_answers(tiny.model, tiny.tokenizer, ITEMS)
    assert len(scores.token_logprobs[2]) == 2 and len(scores.token_logprobs[0]) == 1
    assert scores.correct.dtype == bool and (scores.mean_logprob < 0).all()
