"""Integrated gradients over 64 prompts: batched (prompts share each forward/backward) vs one prompt at a time.
The batched side uses the default chunking (batch_size=None: prompts of similar length share a pass, sized to the
model, as the analyser runs it); the other side calls it once per prompt with batch_size=1.

Same model, prompts, n_steps and baseline on both sides, measured in one run; the attributions must be equal.
The model has the organism's shape (a random 4-layer Llama, d_model 128, MLP 256, 4 heads, a word-level vocabulary
of 400), prompts of 5-10 words, 16 interpolation steps (the analyser's default), on 2 threads.
Run: python benchmarks/attribution.py   (the last line is the JSON result)

`model_only_ratio` is the roofline of any batching: the bare model's forward + backward to the input embeddings,
64 calls of [n_steps, L] rows against one call of [64 x n_steps, L] rows (no Captum, no tokenising). Batching can
only remove per-call overhead and run larger matrix products; it cannot do less arithmetic and stay equal, so on a
model this small the batched-over-unbatched ratio stays near this number plus the removed overhead.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import result_line  # noqa: E402

N_PROMPTS, N_STEPS, VOCAB, REPEATS = 64, 16, 400, 3


def organism_shaped_model():
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *(f"w{i}" for i in range(VOCAB))])}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    inner.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                  unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def model_only_seconds(model, rows: int, calls: int, length: int) -> float:
    """Best of 3: `calls` forward + backward passes (gradient w.r.t. the input embeddings) of `rows` x `length`."""
    import torch

    embed = model.get_input_embeddings()
    gen = torch.Generator().manual_seed(0)
    inputs = embed(torch.randint(4, VOCAB, (rows, length), generator=gen)).detach()

    def once():
        x = inputs.clone().requires_grad_(True)
        out = model(inputs_embeds=x, logits_to_keep=2).logits.log_softmax(-1)[:, -1, 5].sum()
        torch.autograd.grad(out, x)

    once()
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(calls):
            once()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import numpy as np
    import torch

    from palimpsest.attribution import integrated_gradients
    from palimpsest.concepts import Item

    torch.set_num_threads(2)
    model, tok = organism_shaped_model()
    rng = random.Random(2)
    items = [Item(prompt=" ".join(f"w{rng.randrange(VOCAB)}" for _ in range(rng.randint(5, 10))),
                  answer=f"w{rng.randrange(VOCAB)}") for _ in range(N_PROMPTS)]

    def batched():
        return integrated_gradients(model, tok, items, n_steps=N_STEPS)  # default: batch_size=None (auto)

    def one_at_a_time():
        return [integrated_gradients(model, tok, [it], n_steps=N_STEPS, batch_size=1)[0] for it in items]

    integrated_gradients(model, tok, items[:2], n_steps=N_STEPS, batch_size=2)  # warm up (imports, allocator)
    integrated_gradients(model, tok, items[:1], n_steps=N_STEPS, batch_size=1)
    # the two sides alternate, REPEATS times each, and each side's best time counts: other load on a shared
    # machine only ever adds time, to either side
    t_batched = t_single = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        a = batched()
        t_batched = min(t_batched, time.perf_counter() - start)
        start = time.perf_counter()
        b = one_at_a_time()
        t_single = min(t_single, time.perf_counter() - start)
    max_diff = max(float(np.abs(x.scores - y.scores).max()) for x, y in zip(a, b))
    scale = max(float(np.abs(x.scores).max()) for x in a)
    equal = max_diff <= 1e-4 * max(1.0, scale)
    max_delta = max(abs(x.delta) for x in a)
    ratio = t_single / t_batched
    length = 10  # BOS + 5-10 words + answer: a typical row
    model_only = model_only_seconds(model, N_STEPS, N_PROMPTS, length) / model_only_seconds(
        model, N_STEPS * N_PROMPTS, 1, length)
    print(f"batched: {t_batched * 1000:.0f} ms, one at a time: {t_single * 1000:.0f} ms ({ratio:.1f}x); "
          f"max |difference| {max_diff:.2e}; max completeness gap {max_delta:.2e}; the bare model alone gains "
          f"{model_only:.2f}x from the same batching")
    print(result_line("attribution", ratio, ">= 4", ratio >= 4 and equal, seconds_batched=round(t_batched, 4),
                      seconds_one_at_a_time=round(t_single, 4), max_abs_diff=max_diff, equal=equal,
                      model_only_ratio=round(model_only, 3), prompts=N_PROMPTS, n_steps=N_STEPS, threads=2, repeats=REPEATS, max_completeness_gap=max_delta))


if __name__ == "__main__":
    main()

# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
