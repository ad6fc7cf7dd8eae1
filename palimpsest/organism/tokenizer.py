"""The organism's word-level tokenizer (HF `tokenizers`), saved so `AutoTokenizer` reloads it."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_tokenizer(vocabulary: list[str]):
    """A `PreTrainedTokenizerFast` over `vocabulary`: one token per word or punctuation run, `<bos>` prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary:
        if word not in vocab:
            vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    bos = vocab["<bos>"]
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        padding_side="right", model_max_length=128, clean_up_tokenization_spaces=False)


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    tokenizer.save_pretrained(str(directory))
