"""TOFU's model utility: the harmonic mean of the retain-side scores (answer probability, ROUGE-L recall of the
greedy answer, truth ratio), as open-unlearning's `hm_aggregate` over its `model_utility` metrics computes it."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from rouge_score import rouge_scorer
from scipy.stats import hmean
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from palimpsest.capture import score_answers
from palimpsest.capture.memo import memoized

EPSILON = 1e-10  # open-unlearning's guard in the normalised probability and the truth ratio
_SEPARATOR = re.compile(r"[^a-z0-9]")  # rouge-score's tokenizer splits lowercased text at these characters


def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def recall_settled(scorer: rouge_scorer.RougeScorer, reference: str, generation: str) -> bool:
    """Whether the ROUGE-L recall of `generation` is already 1 and no continuation can change it: the words
    completed so far (up to the last separator; the last word may still grow) contain the whole reference as a
    subsequence. Recall is LCS / |reference|, and the LCS with a longer text is never shorter."""
    lowered = generation.lower()
    ends = [m.end() for m in _SEPARATOR.finditer(lowered)]
    if not ends:
        return False
    return scorer.score(reference, lowered[:ends[-1]])["rougeL"].recall >= 1.0


class RecallSettled(StoppingCriteria):
    """Stops each greedy generation once its ROUGE-L recall is settled at 1 (`recall_settled`): the score the
    model utility reads is then the one the full `max_new_tokens` answer would give, at a fraction of the steps."""

    def __init__(self, tokenizer, references: Sequence[str], prompt_length: int):
        self.tokenizer, self.references, self.prompt_length = tokenizer, list(references), prompt_length
        self.scorer, self.settled = _scorer(), [False] * len(self.references)

    def __call__(self, input_ids: Int[Tensor, "batch pos"], scores, **kwargs) -> Bool[Tensor, " batch"]:
        for row, reference in enumerate(self.references):
            if not self.settled[row]:
                text = self.tokenizer.decode(input_ids[row, self.prompt_length:], skip_special_tokens=True)
                self.settled[row] = recall_settled(self.scorer, reference, text)
        return torch.tensor(self.settled, dtype=torch.bool, device=input_ids.device)


def answer_probability(mean_logprob: Float[np.ndarray, " n"]) -> Float[np.ndarray, " n"]:
    """Per item: exp(−mean answer-token NLL), the length-normalised probability (open-unlearning `probability`)."""
    return np.exp(np.asarray(mean_logprob, dtype=np.float64))


def normalised_probability(correct_prob: Float[np.ndarray, " n"], wrong_probs: list[np.ndarray]) -> np.ndarray:
    """Per item: P(correct) / (P(correct) + Σ_k P(wrong_k) + 1e-10), open-unlearning `probability_w_options`."""
    wrong = np.array([float(np.sum(w)) for w in wrong_probs])
    return correct_prob / (correct_prob + wrong + EPSILON)


def greedy_answers(loaded, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                   references: Sequence[str] | None = None) -> list[str]:
    """The model's greedy continuation of each prompt (left-padded batches, stopping at EOS), decoded alone. With
    `references`, a continuation also stops once its ROUGE-L recall against its reference is settled at 1
    (`RecallSettled`): its recall is the same as the full-length answer's, but the text is cut there. Kept per
    model (palimpsest.capture.memo)."""
    key = ("greedy_answers", id(loaded.tokenizer), tuple(prompts), max_new_tokens, batch_size,
           None if references is None else tuple(references))
    return memoized(loaded.model, key, lambda: _greedy_answers(loaded, prompts, max_new_tokens, batch_size,
                                                               references))


@torch.no_grad()
def _greedy_answers(loaded, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                    references: Sequence[str] | None) -> list[str]:
    tok, lm = loaded.tokenizer, loaded.model
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        enc = tok(chunk, return_tensors="pt", padding=True, padding_side="left")
        ids, mask = enc["input_ids"].to(loaded.device), enc["attention_mask"].to(loaded.device)
        stop = None if references is None else StoppingCriteriaList(
            [RecallSettled(tok, references[start:start + batch_size], ids.shape[1])])
        generated = lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=pad_id, eos_token_id=tok.eos_token_id, stopping_criteria=stop)
        out.extend(tok.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True))
    return out


def rouge_l_recall(references: Sequence[str], generations: Sequence[str]) -> Float[np.ndarray, " n"]:
    """Per item: ROUGE-L recall of the generation against the reference answer (rouge-score, Porter stemmer), the
    `rougeL_recall` open-unlearning reports."""
    scorer = _scorer()
    return np.array([scorer.score(ref, gen)["rougeL"].recall for ref, gen in zip(references, generations)])


def truth_ratio_true_better(ratios: Float[np.ndarray, " n"]) -> float:
    """open-unlearning's `true_better` aggregation of retain-side truth ratios: mean of max(0, 1 − R)."""
    return float(np.mean(np.maximum(0.0, 1.0 - ratios)))


def model_utility(components: dict[str, float]) -> float | None:
    """The harmonic mean of the retain-side scores (scipy `hmean`, as open-unlearning's `hm_aggregate`); None when
    there are none. A zero component makes it 0, as in the reference."""
    values = [v for v in components.values() if v is not None and np.isfinite(v)]
    return float(hmean(values)) if values else None


def utility_components(loaded, item_set: str, items, truth_ratios: np.ndarray | None,
                       mean_logprob: np.ndarray | None = None, *, normalise: bool, max_new_tokens: int,
                       batch_size: int, generations: Sequence[str] | None = None) -> dict[str, float]:
    """One retain-side set's scores: probability (normalised against the perturbed answers where `normalise`, as
    TOFU's real-authors and world-facts sets), ROUGE-L recall of the greedy answer, and the truth ratio.
    `mean_logprob`: the items' mean answer log-probs when the caller has scored them already; `generations`: the
    items' greedy answers (`greedy_answers` with their references) when the caller has generated them already."""
    if mean_logprob is None:
        mean_logprob = score_answers(loaded.model, loaded.tokenizer, items, batch_size=batch_size).mean_logprob
    prob = answer_probability(mean_logprob)
    out: dict[str, float] = {}
    if normalise and all(it.perturbed_answers for it in items):
        flat = [it for it in items for _ in it.perturbed_answers]
        wrong_lp = score_answers(loaded.model, loaded.tokenizer, flat,
                                 answers=[a for it in items for a in it.perturbed_answers],
                                 batch_size=batch_size).mean_logprob
        owner = np.cumsum([0] + [len(it.perturbed_answers) for it in items])
        wrong = [answer_probability(wrong_lp[owner[j]:owner[j + 1]]) for j in range(len(items))]
        out[f"{item_set}_prob_normalised"] = float(normalised_probability(prob, wrong).mean())
    else:
        out[f"{item_set}_prob"] = float(prob.mean())
    # stopped once each recall is settled: the same recall as the full max_new_tokens answer (RecallSettled)
    if generations is None:
        generations = greedy_answers(loaded, [it.prompt for it in items], max_new_tokens, batch_size,
                                     references=[it.answer for it in items])
    out[f"{item_set}_rougeL_recall"] = float(rouge_l_recall([it.answer for it in items], generations).mean())
    if truth_ratios is not None and len(truth_ratios):
        out[f"{item_set}_truth_ratio"] = truth_ratio_true_better(truth_ratios)
    return out
