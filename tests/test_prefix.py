"""palimpsest.capture.prefix: each prompt head run once into the key/value cache, the edited rest on top of it."""

from __future__ import annotations

import numpy as np
import torch

from palimpsest.capture import add_per_row, encode, intervene, score_answers
from palimpsest.capture.prefix import answer_logits_after_prefix, split_at_answer
from palimpsest.capture.scoring import scored_logits
from palimpsest.concepts import Item
from palimpsest.restoration.common import answer_positions

ITEMS = [  # prompt heads of several lengths, a repeated head, answers of one and two tokens
    Item(prompt="alice lives in the city of", answer="paris", subject="alice"),
    Item(prompt="alice lives in the city of", answer="rome oslo", subject="alice"),
    Item(prompt="q : where does bob live ?", answer="rome", subject="bob"),
    Item(prompt="bob works as a", answer="pilot baker", subject="bob"),
    Item(prompt="carol is", answer="oslo", subject="carol"),
]


def _batch(loaded, items=ITEMS):
    return encode(loaded.tokenizer, [it.prompt for it in items], [it.answer for it in items],
                  [it.subject for it in items])


def test_split_reads_the_rows_back(tiny):
    batch = _batch(tiny)
    split = split_at_answer(batch)
    assert len(split.prefix) == 4  # the two alice rows share one head
    for b in range(len(batch)):
        cut, n = int(batch.prompt_last[b]), int(batch.answer_len[b])
        head = split.prefix.input_ids[split.rows[b], :int(split.prefix.attention_mask[split.rows[b]].sum())]
        assert head.tolist() == batch.input_ids[b, :cut].tolist()
        assert split.score.input_ids[b, :n + 1].tolist() == batch.input_ids[b, cut:cut + n + 1].tolist()
        assert split.run.position_ids[b, 0] == cut
    # the edit's positions in run coordinates are the full batch's answer-predicting positions
    assert torch.equal(split.to_run(answer_positions(batch), fill=False), answer_positions(split.run))


def test_logprobs_equal_the_full_forward_pass(tiny):
    batch = _batch(tiny)
    cached = scored_logits(tiny.model, batch, None, answer_only=True)
    full = scored_logits(tiny.model, batch, None, answer_only=False)
    for (a, b) in zip(cached[0], full[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert answer_logits_after_prefix(tiny.model, encode(tiny.tokenizer, ["alice"], ["paris"])) is not None


def test_an_answer_position_edit_scores_as_on_the_full_sequence(tiny):
    """A per-row steering edit at the answer-predicting positions: the same log-probs and exact matches with the
    prompt heads cached as with every position recomputed (the edit really moves them: not a no-op)."""
    site = "blocks.1.hook_resid_post"
    vectors = torch.randn(len(ITEMS), tiny.model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 4

    def context(batch):
        return intervene(tiny.model, {site: add_per_row(vectors, positions=answer_positions(batch))})

    kwargs = dict(batch_size=8, context=context)
    cached = score_answers(tiny.model, tiny.tokenizer, ITEMS, answer_only=True, **kwargs)
    full = score_answers(tiny.model, tiny.tokenizer, ITEMS, answer_only=False, **kwargs)
    plain = score_answers(tiny.model, tiny.tokenizer, ITEMS, batch_size=8)
    np.testing.assert_allclose(cached.mean_logprob, full.mean_logprob, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cached.first_rank, full.first_rank)
    np.testing.assert_array_equal(cached.correct, full.correct)
    assert np.abs(full.mean_logprob - plain.mean_logprob).min() > 1e-3  # the edit changes every row


def test_left_padding_and_one_token_prompts_fall_back(tiny):
    left = encode(tiny.tokenizer, [it.prompt for it in ITEMS[:3]], [it.answer for it in ITEMS[:3]], padding="left")
    assert split_at_answer(left) is None
    no_answer = encode(tiny.tokenizer, ["alice lives"])
    assert split_at_answer(no_answer) is None


def test_organism_steering_sweep_is_unchanged(organism_pair_ga, organism_concept):
    """The shift-vector sweep on the organism's ga pair: cached prompt heads against full sequences, every
    (strength, item) exact match equal."""
    from palimpsest.restoration.steering import sweep_rows

    post = organism_pair_ga.post
    items = list(organism_concept.forget)[:8]
    site = "blocks.2.hook_resid_post"
    vector = torch.randn(post.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    strengths = [0.0, 1.0, 4.0, 16.0]
    table = torch.tensor(strengths)

    def context(batch, scales):
        return intervene(post.model, {site: add_per_row(scales[:, None] * vector[None, :],
                                                         positions=answer_positions(batch))})

    def row_context(batch, n=len(strengths)):
        return context(batch, table.repeat(len(batch) // n))

    cached = sweep_rows(post, items, strengths, context, batch_size=16, answer_only=True)
    full = sweep_rows(post, items, strengths, context, batch_size=16, answer_only=False)
    np.testing.assert_array_equal(cached, full)
    assert cached[0].any() and (cached != cached[:1]).any()  # strength 0 answers some; pushing changes some
