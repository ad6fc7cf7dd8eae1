"""The published Unlearning Depth Score (UDS), checked against values derived by hand from its definition.

Definition (the UDS paper; reference code gnueaj/unlearning-depth-score, compute_uds.py): per example i and layer l,
Δ^S1_il = log p_full − log p_(retain patched at l), Δ^S2_il = log p_full − log p_(unlearned patched at l), each the
mean log-prob of the answer tokens; FT_i = {l : Δ^S1_il > τ};
UDS_i = Σ_{l∈FT_i} Δ^S1_il · clip(Δ^S2_il / Δ^S1_il, 0, 1) / Σ_{l∈FT_i} Δ^S1_il; UDS = mean of UDS_i over the examples
with FT_i non-empty (the others are excluded). Patched: the positions predicting the answer tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from palimpsest.behavioural.depth import (
    DepthConfig,
    UnlearningDepth,
    bootstrap_uds,
    depth_capped_score,
    patch_mask,
    uds,
    uds_per_example,
)
from palimpsest.capture.tokens import EncodedBatch, encode
from tests.test_depth_metrics import CONFIG, run, tiny_setup  # noqa: F401  (tiny_setup: a fixture)

TAU = 0.05

# ------------------------------------------------------------------ aggregation: per-example mean, not ratio of means


def test_uds_is_the_mean_of_per_example_scores_not_a_ratio_of_mean_drops():
    # item A: only layer 0 counts (Δ^S1 = 2 > τ; layer 1: 0 ≤ τ); the post model changed nothing there:
    #   UDS_A = 2·clip(0/2, 0, 1) / 2 = 0
    # item B: both layers count (0.1, 0.08 > τ) and the post model reproduces both drops:
    #   UDS_B = (0.1·1 + 0.08·1) / (0.1 + 0.08) = 1
    # UDS = (0 + 1) / 2 = 0.5, both examples used.
    # Ratio of item-averaged drops (palimpsest's depth_capped aggregation, no cap here): mean Δ^S1 = [1.05, 0.04],
    # mean Δ^S2 = [0.05, 0.04]; only layer 0 has mean Δ^S1 > 0.05: 1.05·(0.05/1.05) / 1.05 = 1/21 ≈ 0.0476.
    d1 = np.array([[2.0, 0.0], [0.1, 0.08]])
    d2 = np.array([[0.0, 0.0], [0.1, 0.08]])
    np.testing.assert_allclose(uds_per_example(d1, d2, TAU), [0.0, 1.0])
    score, n_used = uds(d1, d2, TAU)
    assert score == pytest.approx(0.5) and n_used == 2
    assert depth_capped_score(d1.mean(0), d2.mean(0), TAU) == pytest.approx(1 / 21)


def test_uds_clips_each_layer_ratio_to_zero_one():
    # layer 0: Δ^S2/Δ^S1 = 5 → clipped to 1; layer 1: −1/3 → clipped to 0: UDS = (1·1 + 3·0) / (1 + 3) = 0.25
    score, n_used = uds(np.array([[1.0, 3.0]]), np.array([[5.0, -1.0]]), TAU)
    assert score == pytest.approx(0.25) and n_used == 1


def test_tau_excludes_layers_per_example():
    d1, d2 = np.array([[0.04, 1.0, 0.5]]), np.array([[0.04, 0.5, 0.5]])
    # τ = 0.05: layer 0 (0.04) does not count: (1·0.5 + 0.5·1) / (1 + 0.5) = 2/3
    assert uds(d1, d2, 0.05) == (pytest.approx(2 / 3), 1)
    # τ = 0.03: it counts: (0.04·1 + 1·0.5 + 0.5·1) / (0.04 + 1 + 0.5) = 1.04 / 1.54
    assert uds(d1, d2, 0.03) == (pytest.approx(1.04 / 1.54), 1)


def test_tau_excludes_whole_examples_and_counts_them():
    # item C: no layer has Δ^S1 > τ (0.01; 0.05 is not > 0.05: the threshold is strict, as in the reference), so
    # UDS_C is undefined and C is left out of the mean: UDS of {A, B, C} = (0 + 1) / 2 = 0.5, 2 examples used.
    d1 = np.array([[2.0, 0.0], [0.1, 0.08], [0.01, 0.05]])
    d2 = np.array([[0.0, 0.0], [0.1, 0.08], [0.01, 0.05]])
    per = uds_per_example(d1, d2, TAU)
    assert np.isnan(per[2]) and per[:2].tolist() == [0.0, 1.0]
    assert uds(d1, d2, TAU) == (pytest.approx(0.5), 2)
    assert uds(d1[2:], d2[2:], TAU) == (None, 0)  # every example excluded: undefined
    with pytest.raises(ValueError, match="tau"):
        uds(d1, d2, -0.1)


def test_uds_bootstrap_resamples_examples():
    """The interval is the percentile interval of UDS recomputed on resampled examples (excluded ones stay out)."""
    rng = np.random.default_rng(3)
    d1, d2 = rng.gamma(2.0, 0.5, (9, 4)), rng.gamma(1.0, 0.5, (9, 4))
    d1[0] = 0.01  # an example with no counted layer
    idx = np.random.default_rng(7).integers(0, 9, (300, 9))
    scores = [uds(d1[i], d2[i], TAU)[0] for i in idx]
    expected = np.quantile([s for s in scores if s is not None], [0.025, 0.975])
    assert bootstrap_uds(d1, d2, TAU, n_bootstrap=300, ci_level=0.95, seed=7) == pytest.approx(tuple(expected))


def test_depth_options_default_to_the_published_span_with_the_capped_residue():
    from pydantic import ValidationError

    opts = DepthConfig()
    assert (opts.span, opts.tau, opts.score) == ("answer", 0.05, "capped")
    assert DepthConfig(span="prompt", score="capped").span == "prompt"
    with pytest.raises(ValidationError):
        DepthConfig(tau=-0.1)
    with pytest.raises(ValidationError):
        DepthConfig(score="nope")


# ------------------------------------------------------------------ the patched span

# Two rows as `encode` produces them on the tiny word-level tokenizer (<bos> prepended, one token a word):
#   row 0: prompt "alice lives" (3 tokens: <bos> alice lives) + answer "paris oslo" (2 tokens): 5 tokens
#   row 1: prompt "bob lives in city" (5 tokens) + answer "rome" (1 token): 6 tokens, the widest row
# Right padding: row 0 = [<bos> alice lives paris oslo <pad>], prompt_last 2, answer_start 3.
#   The positions whose next-token prediction is an answer token: 2 (→ paris) and 3 (→ oslo); row 1: 4 (→ rome).
# Left padding: row 0 = [<pad> <bos> alice lives paris oslo], prompt_last 3, answer_start 4: positions 3 and 4.
PROMPTS, ANSWERS = ["alice lives", "bob lives in city"], ["paris oslo", "rome"]
RIGHT = EncodedBatch(input_ids=torch.tensor([[1, 4, 7, 9, 11, 0], [1, 5, 7, 8, 18, 10]]),
                     attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
                     position_ids=torch.tensor([[0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 4, 5]]),
                     prompt_last=torch.tensor([2, 4]), subject_last=torch.tensor([2, 4]),
                     answer_start=torch.tensor([3, 5]), answer_len=torch.tensor([2, 1]))
LEFT = EncodedBatch(input_ids=torch.tensor([[0, 1, 4, 7, 9, 11], [1, 5, 7, 8, 18, 10]]),
                    attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]),
                    position_ids=torch.tensor([[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]]),
                    prompt_last=torch.tensor([3, 4]), subject_last=torch.tensor([3, 4]),
                    answer_start=torch.tensor([4, 5]), answer_len=torch.tensor([2, 1]))


def _positions(mask) -> list[list[int]]:
    return [torch.nonzero(row).flatten().tolist() for row in mask]


@pytest.mark.parametrize(("padding", "batch"), [("right", RIGHT), ("left", LEFT)])
def test_the_hand_made_batches_are_what_encode_produces(padding, batch):
    from tests.tiny import make_tokenizer

    encoded = encode(make_tokenizer(), PROMPTS, ANSWERS, padding=padding)
    for field in EncodedBatch.__dataclass_fields__:
        assert torch.equal(getattr(encoded, field), getattr(batch, field)), field


def test_answer_span_patches_the_positions_predicting_the_answer():
    assert _positions(patch_mask(RIGHT, "answer")) == [[2, 3], [4]]
    assert _positions(patch_mask(LEFT, "answer")) == [[3, 4], [4]]
    assert patch_mask(RIGHT).tolist() == patch_mask(RIGHT, "answer").tolist()  # the default span
    # each patched position's next token is an answer token, and every answer token is predicted from one
    for batch in (RIGHT, LEFT):
        for row, positions in enumerate(_positions(patch_mask(batch, "answer"))):
            start, length = int(batch.answer_start[row]), int(batch.answer_len[row])
            assert [p + 1 for p in positions] == list(range(start, start + length))
    # the other spans, for contrast: the whole prompt (through prompt_last), every real position
    assert _positions(patch_mask(RIGHT, "prompt")) == [[0, 1, 2], [0, 1, 2, 3, 4]]
    assert _positions(patch_mask(LEFT, "prompt")) == [[1, 2, 3], [0, 1, 2, 3, 4]]
    assert _positions(patch_mask(LEFT, "all")) == [[1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]


# ------------------------------------------------------------------ the analyser on the tiny models


def test_uds_of_a_model_against_itself_is_one_and_of_pre_patched_into_pre_is_zero(tiny_setup):  # noqa: F811
    from palimpsest.models import ModelPair

    concept, pair, _ = tiny_setup
    n = len(concept.forget)
    config = CONFIG.model_copy(update={"options": {"depth": DepthConfig(score="uds")}})
    same = run(UnlearningDepth(), ModelPair(pair.pre, pair.floor, pair.floor), concept, config=config)
    unchanged = run(UnlearningDepth(), ModelPair(pair.pre, pair.pre, pair.floor), concept, config=config)
    assert same.status == "ok" and same.summary["span"] == "answer" and same.summary["score"] == "uds"
    assert same.summary["uds"] == pytest.approx(1.0) and same.summary["depth"] == same.summary["uds"]
    assert same.summary["uds_n_used"] + same.summary["uds_n_excluded"] == n and same.summary["uds_n_used"] > 0
    assert unchanged.status == "ok" and unchanged.summary["uds"] == pytest.approx(0.0, abs=1e-6)
    assert unchanged.residue == pytest.approx(1.0)
    assert same.metrics()["uds"] == same.summary["uds"]  # metrics.json: analyses.depth.uds
    rows = same.per_item
    assert len(rows) == n and all(r["uds"] is None or r["uds"] == pytest.approx(1.0) for r in rows)
    assert sum(r["uds"] is not None for r in rows) == same.summary["uds_n_used"]
    assert "depth_capped" in same.summary


def test_score_capped_makes_the_variant_the_residue(tiny_setup):  # noqa: F811
    from palimpsest.types import AuditConfig

    concept, pair, _ = tiny_setup
    config = AuditConfig(n_bootstrap=50, options={"depth": {"score": "capped"}})
    result = run(UnlearningDepth(), pair, concept, config=config)
    assert result.summary["score"] == "capped"
    assert result.summary["depth"] == result.summary["depth_capped"]
    if result.summary["depth_capped"] is not None:
        assert result.residue == pytest.approx(1.0 - result.summary["depth_capped"])
