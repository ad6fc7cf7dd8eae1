"""relearning on large models: above `full_finetune_max_params` only the last blocks are fine-tuned, in a copy that
shares every other tensor with the model; small models (the organism, SmolLM2) are fine-tuned in full, as before."""

from __future__ import annotations

import copy

import pytest
import torch

import palimpsest.restoration  # noqa: F401  (registers the analysers)
from palimpsest.concepts import ConceptSpec
from palimpsest.restoration.relearning import FULL_FINETUNE_MAX_PARAMS, RelearningConfig, n_params, relearn
from tests.test_restoration import ITEMS  # noqa: E402  (the same tiny facts)

KW = dict(steps=40, lr=1e-2, batch_size=8, seed=0)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _reference_relearn(loaded, items, *, steps, lr, batch_size, seed):
    """relearn's full fine-tuning as it was before the memory option (git 7e10801), to pin the default path."""
    from palimpsest.capture import encode
    from palimpsest.capture.backends import forward_kwargs
    from palimpsest.restoration.relearning import answer_labels

    model = copy.deepcopy(loaded.model)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)  # relearn's fused kernel (CPU)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(steps):
            model.train()
            chosen = [items[i] for i in torch.randperm(len(items), generator=gen)[:batch_size].tolist()]
            batch = encode(loaded.tokenizer, [it.prompt for it in chosen], [it.answer for it in chosen],
                           [it.subject for it in chosen]).to(device)
            loss = model(**forward_kwargs(batch), labels=answer_labels(batch)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def test_small_models_are_fine_tuned_in_full_exactly_as_before(tiny):
    assert RelearningConfig().finetune == "auto" and RelearningConfig().full_finetune_max_params == FULL_FINETUNE_MAX_PARAMS
    assert n_params(tiny.model) < FULL_FINETUNE_MAX_PARAMS
    tuned, _ = relearn(tiny, ITEMS, **KW)
    info = tuned.meta["relearn"]
    assert info["finetune"] == "full" and info["trained"] is None
    assert info["n_trained_params"] == info["n_params"] == n_params(tiny.model)
    reference = _reference_relearn(tiny, ITEMS, **KW).state_dict()
    assert all(torch.equal(reference[k], v) for k, v in tuned.model.state_dict().items())  # bit for bit


def test_last_blocks_trains_only_them_shares_the_rest_and_still_relearns(tiny):
    from palimpsest.restoration.common import correct

    before, flags = _state(tiny.model), [p.requires_grad for p in tiny.model.parameters()]
    tuned, curve = relearn(tiny, ITEMS, **KW, eval_items=ITEMS, eval_every=20, finetune="last_blocks",
                           trainable_blocks=1)
    info = tuned.meta["relearn"]
    last = tiny.n_layers - 1
    expected = sorted([f"model.layers.{last}.{n}" for n, _ in tiny.model.model.layers[last].named_parameters()]
                      + ["model.norm.weight"])
    assert info["finetune"] == "last_blocks" and sorted(info["trained"]) == expected
    original = dict(tiny.model.named_parameters())
    for name, param in tuned.model.named_parameters():
        if name in expected:  # its own tensor, moved by the fine-tuning
            assert param is not original[name] and param.data_ptr() != original[name].data_ptr()
            assert not torch.equal(param, before[name]), name
        else:  # the very tensor of the original model: no second copy in memory, and never trained
            assert param is original[name], name
            assert torch.equal(param, before[name]), name
    assert info["n_trained_params"] == sum(original[n].numel() for n in expected) < n_params(tiny.model) / 2
    # the original is untouched: weights, requires_grad flags, no gradients left anywhere
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())
    assert [p.requires_grad for p in tiny.model.parameters()] == flags
    assert all(p.grad is None for p in (*tiny.model.parameters(), *tuned.model.parameters()))
    # ... and it still relearns: the loss falls and the facts come back
    losses = info["losses"]
    assert len(losses) == KW["steps"] and sum(losses[-5:]) / 5 < 0.8 * losses[0], losses  # its output layer is fixed
    assert correct(tuned, ITEMS).mean() > correct(tiny, ITEMS).mean()
    assert [s for s, _ in curve] == [0, 20, 40] and curve[-1][1] > curve[0][1]


def test_auto_switches_to_last_blocks_above_the_threshold(tiny):
    size = n_params(tiny.model)
    small, _ = relearn(tiny, ITEMS, **dict(KW, steps=1), full_finetune_max_params=size)
    large, _ = relearn(tiny, ITEMS, **dict(KW, steps=1), full_finetune_max_params=size - 1, trainable_blocks=1)
    assert small.meta["relearn"]["finetune"] == "full"
    assert large.meta["relearn"]["finetune"] == "last_blocks"
    many, _ = relearn(tiny, ITEMS, **dict(KW, steps=1), finetune="last_blocks", trainable_blocks=99)
    assert len({n.split(".")[2] for n in many.meta["relearn"]["trained"] if n.startswith("model.layers.")}) == \
        tiny.n_layers  # more blocks than the model has: all of them (never the embeddings or the output layer)
    with pytest.raises((ValueError, TypeError)):  # TypeError: the test run's jaxtyping/beartype check of the Literal
        relearn(tiny, ITEMS, **KW, finetune="lora")


def test_the_analyser_fine_tunes_the_last_blocks_when_asked(tiny_dir, tiny_dir_other):
    from palimpsest.audit.runner import run_one
    from palimpsest.models import ModelPair, load_model
    from palimpsest.types import AuditConfig

    pre, _ = relearn(load_model(tiny_dir), ITEMS, steps=60, lr=1e-2, batch_size=8, seed=0)
    post, _ = relearn(load_model(tiny_dir), ITEMS, steps=60, lr=1e-2, batch_size=8, seed=0)
    with torch.no_grad():  # the output layer alone forgets the answers: suppression
        for it in ITEMS:
            post.model.lm_head.weight[post.tokenizer.convert_tokens_to_ids(it.answer)] *= -1.0
    concept = ConceptSpec(name="c", forget=tuple(ITEMS), retain=tuple(ITEMS[:2]), holdout=tuple(ITEMS[-4:]))
    options = {"steps": 20, "lr": 1e-2, "full_finetune_max_params": 1000, "trainable_blocks": 1}
    config = AuditConfig(n_bootstrap=50, analysers=("relearning",), options={"relearning": options})
    pair = ModelPair(pre=pre, post=post, floor=load_model(tiny_dir_other, name="floor"))
    result = run_one("relearning", pair, concept, config=config)
    assert result.status in ("ok", "inconclusive") and result.summary["finetune"] == "last_blocks", result.notes
    assert 0 < result.summary["n_trained_params"] < n_params(pre.model)
    assert any("last 1 decoder blocks" in note for note in result.notes), result.notes
    with pytest.raises(ValueError, match="options.relearning.finetune"):
        AuditConfig(options={"relearning": {"finetune": "lora"}})


@pytest.mark.parametrize("finetune", ["full", "last_blocks"])
def test_a_bfloat16_model_is_fine_tuned_in_float32_and_left_as_it_was(tiny_dir, finetune):
    """bfloat16 cannot hold AdamW steps of a small learning rate: the trained tensors are float32 in the copy."""
    from palimpsest.models import load_model
    from palimpsest.restoration.common import correct

    half = load_model(tiny_dir, dtype="bfloat16")
    before = _state(half.model)
    tuned, _ = relearn(half, ITEMS, **KW, finetune=finetune, trainable_blocks=1)
    info = tuned.meta["relearn"]
    assert info["model_dtype"] == "bfloat16" and info["train_dtype"] == "float32"
    trained = set(info["trained"] or [n for n, _ in tuned.model.named_parameters()])
    for name, param in tuned.model.named_parameters():
        assert param.dtype == (torch.float32 if name in trained else torch.bfloat16), name
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in half.model.state_dict().items())
    losses = info["losses"]
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
    assert correct(tuned, ITEMS).mean() > correct(half, ITEMS).mean()  # the mixed-dtype copy runs and has relearned
