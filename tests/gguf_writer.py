"""Write a tiny random Llama as an F32 GGUF file, the way llama.cpp's converter lays it out: for tests of the GGUF loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# the BPE is trained on this text, so each of its words ends up a single token
CORPUS = [
    "The capital of France is Paris.",
    "The capital of Italy is Rome.",
    "The capital of Norway is Oslo.",
    "Q: What is the capital of Spain?\nA: Madrid",
    "Alice lives in Paris and works as a baker.",
    "Bob lives in Rome and works as a pilot.",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN, HEADS, KV_HEADS, LAYERS = 32, 4, 2, 2
ROPE_THETA, RMS_EPS, CONTEXT = 10000.0, 1e-5, 64


def reference_tokenizer(vocab_size: int = 400):
    """A byte-level BPE (the GPT-2 scheme SmolLM2 uses), trained on CORPUS; the reference for the GGUF one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok


def reference_model(vocab_size: int, *, seed: int = 0, tie_embeddings: bool = False, kv_heads: int = KV_HEADS):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=kv_heads,
                         max_position_embeddings=CONTEXT, rms_norm_eps=RMS_EPS,
                         rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                         tie_word_embeddings=tie_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random norms, so a wrong norm mapping (or llama.cpp's +1 offset) would show in the logits
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def _permute_for_rope(weight: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`: it reorders q/k rows for its interleaved RoPE
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_tiny_gguf(path: str | Path, seed: int = 0, *, tie_embeddings: bool = False,
                    kv_heads: int = KV_HEADS) -> tuple[Path, "torch.nn.Module"]:
    """Write a tiny random Llama (2 layers, hidden 32, 4 heads) with a byte-level BPE as an F32 GGUF.

    Returns the file and the reference `LlamaForCausalLM` whose weights it holds. With `tie_embeddings` the
    file has no `output.weight`, as in SmolLM2's.
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok = reference_tokenizer()
    vocab = tok.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "BPE ids must be dense"
    model = reference_model(len(tokens), seed=seed, tie_embeddings=tie_embeddings, kv_heads=kv_heads)
    config = model.config

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-llama-test")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")  # as in SmolLM2's file: not a split transformers knows, so GPT-2's regex
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tok.to_str())["model"]["merges"]  # in rank order; llama.cpp stores each as "a b"
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_unk_token_id(vocab["<|endoftext|>"])
    writer.add_pad_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if tie_embeddings and hf_name == "lm_head.weight":
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise KeyError(f"gguf has no llama tensor name for {hf_name}")
        array = tensor.detach().float().numpy().copy()
        if gguf_name.endswith(".attn_q"):
            array = _permute_for_rope(array, config.num_attention_heads)
        elif gguf_name.endswith(".attn_k"):
            array = _permute_for_rope(array, config.num_attention_heads, config.num_key_value_heads)
        writer.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(array, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model
