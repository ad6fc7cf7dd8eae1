"""Shared helpers for benchmarks: a random model of a given size, timing, peak RSS in a subprocess."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def random_llama(out_dir: Path, *, hidden: int = 256, layers: int = 6, vocab: int = 2000, seed: int = 0) -> Path:
    """A randomly initialised Llama saved with a word-level tokenizer (timing does not depend on the weights)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (out_dir / "config.json").exists():
        return out_dir
    vocab_map = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)])}
    tok = Tokenizer(models.WordLevel(vocab_map, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


def random_texts(n: int, length: int, vocab: int = 2000, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(vocab - 4)}" for _ in range(length)) for _ in range(n)]


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module_file: str, *args: str) -> dict:
    """Run `python module_file args...` and parse its last stdout line as JSON (peak RSS of a fresh process)."""
    proc = subprocess.run([sys.executable, module_file, *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def result_line(benchmark: str, ratio: float, target: str, met: bool, **extra) -> str:
    return json.dumps({"benchmark": benchmark, "ratio": round(ratio, 4), "target": target, "met": bool(met), **extra})
