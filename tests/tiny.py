"""A tiny random Llama with a word-level tokenizer, saved locally: for tests that need no trained model."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["alice", "bob", "carol", "lives", "in", "paris", "rome", "oslo", "works", "as", "a", "baker", "pilot",
         "the", "city", "of", "is", "q", ":", "where", "does", "?", "answer", "."]


def make_tokenizer(words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def make_tiny_model(out_dir: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, words=WORDS,
                    tokenizer=None) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or make_tokenizer(words)
    config = LlamaConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(out_dir)  # TransformerLens needs a tokenizer that round-trips from disk
    return out_dir
