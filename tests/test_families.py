"""Site resolution on every common HF causal-LM family, with each family's own semantics: tiny random models built
from each config class (no download), their norms and biases randomised so that no norm is the identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from palimpsest.capture import SiteError, capture, encode, intervene, run_and_capture, valid_sites
from palimpsest.capture.backends import forward_kwargs
from palimpsest.capture.sites import get_module, resolve
from palimpsest.concepts import Item, concept_from_dict
from palimpsest.probes.lens import Readout
from tests.tiny import make_tokenizer

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
CITIES = ["paris", "rome", "oslo", "lima"]
JOBS = ["baker", "pilot", "nurse", "judge"]
WORDS = [*PEOPLE, *CITIES, *JOBS, "lives", "in", "works", "as", "a", "the", "city", "of", "is", "q", ":", "where",
         "does", "?", "answer", ".", *(f"w{i}" for i in range(90))]  # 128 tokens with the four specials
ITEMS = [Item(prompt="alice lives in the city of", answer="paris", subject="alice"),
         Item(prompt="q : where does bob live ?", answer="rome", subject="bob"),
         Item(prompt="carol works as a", answer="baker", subject="carol")]

_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
_GEMMA = dict(_DECODER, head_dim=8, query_pre_attn_scalar=8, sliding_window=4)
_NEOX = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)
# family -> (config class, model class, config kwargs, the module whose input is the mid stream: the test's own
# reading of each family's HF forward, checked against what palimpsest resolves from TransformerLens's adapters)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _DECODER, "post_attention_layernorm"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_DECODER, sliding_window=4), "post_attention_layernorm"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DECODER, "post_attention_layernorm"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_DECODER, head_dim=8), "post_attention_layernorm"),
    # a small cap, so that the soft-capping bends these tiny logits
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_GEMMA, final_logit_softcapping=0.25,
                                                         attn_logit_softcapping=5.0), "pre_feedforward_layernorm"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", _GEMMA, "pre_feedforward_layernorm"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _DECODER, "post_attention_layernorm"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", _DECODER, "mlp"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64), "ln_2"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", _NEOX, None),  # use_parallel_residual=True: no resid_mid
    "gpt_neox_sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_NEOX, use_parallel_residual=False),
                            "post_attention_layernorm"),
}
NAMES = list(FAMILIES)


def build(family: str, seed: int = 0) -> torch.nn.Module:
    import transformers

    config_cls, model_cls, kwargs, _ = FAMILIES[family]
    tokenizer = make_tokenizer(WORDS)
    config = getattr(transformers, config_cls)(vocab_size=len(tokenizer.get_vocab()), pad_token_id=0, bos_token_id=1,
                                               eos_token_id=2, **kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # random gains and biases: HF initialises norms to the identity and biases to zero
        for param in model.parameters():
            spread = float(param.std()) if param.numel() > 1 else 0.0
            param.add_(0.3 * (spread or 1.0) * torch.randn_like(param))
    return model


def save(family: str, out_dir: Path, seed: int) -> Path:
    from transformers import AutoTokenizer

    build(family, seed).save_pretrained(out_dir)
    make_tokenizer(WORDS).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(out_dir)
    return out_dir


def load(path: Path):
    """load_model(path), with the word-level tokenizer put back where AutoTokenizer rebuilt it as the family's own
    class (transformers 5 forces Qwen2Tokenizer on model_type qwen2, which drops a word-level vocabulary)."""
    from transformers import AutoTokenizer

    from palimpsest.models import load_model

    loaded = load_model(path)
    words = make_tokenizer(WORDS)
    if loaded.tokenizer(ITEMS[0].prompt).input_ids != words(ITEMS[0].prompt).input_ids:
        alone = path.parent / "tokenizer"  # no config.json beside it: TransformerBridge reloads it from its path
        words.save_pretrained(alone)
        loaded.tokenizer = AutoTokenizer.from_pretrained(alone)
    return loaded


@pytest.fixture(scope="module", params=NAMES)
def fam(request, tmp_path_factory):
    """(family name, a loaded tiny model of it, its pre dir, a second seed's dir)."""
    root = tmp_path_factory.mktemp(request.param)
    pre, post = save(request.param, root / "pre", 0), save(request.param, root / "post", 1)
    return request.param, load(pre), pre, post


def _sites(model, kinds) -> list[str]:
    return [s for s in valid_sites(model) if s.split(".", 2)[-1] in kinds]


def _all(model, tokenizer, sites, backend="torch"):
    return capture(model, tokenizer, ITEMS, sites, position="all", backend=backend)


def test_backends_agree_on_every_site(fam):
    name, _, pre, _ = fam
    loaded = load(pre)  # a copy of its own: the bridge wraps its modules in place
    sites = valid_sites(loaded.model)
    ref = _all(loaded.model, loaded.tokenizer, sites)
    for backend in ("nnsight", "transformer_lens", "torch"):  # torch again: through the bridge's wrappers
        other = _all(loaded.model, loaded.tokenizer, sites, backend)
        for site in sites:
            torch.testing.assert_close(other[site], ref[site], atol=2e-5, rtol=1e-4, msg=f"{name} {backend} {site}")


@pytest.mark.parametrize("padding", ["right", "left"])
def test_alone_equals_padded_batch(fam, padding):
    name, loaded, _, _ = fam
    sites = _sites(loaded.model, ("hook_resid_post",))
    batched = capture(loaded.model, loaded.tokenizer, ITEMS, sites, position="last", padding=padding)
    for i, item in enumerate(ITEMS):
        alone = capture(loaded.model, loaded.tokenizer, [item], sites, position="last")
        for site in sites:
            torch.testing.assert_close(batched[site][i], alone[site][0], atol=1e-5, rtol=1e-4, msg=f"{name} {site}")


def test_logit_lens_at_the_last_layer_is_the_model(fam):
    name, loaded, _, _ = fam
    model = loaded.model
    last = f"blocks.{model.config.num_hidden_layers - 1}.hook_resid_post"
    batch = encode(loaded.tokenizer, [it.prompt for it in ITEMS])
    logits, acts = run_and_capture(model, loaded.tokenizer, batch, [last])
    real = batch.attention_mask.bool()
    readout = Readout.of(model)
    torch.testing.assert_close(readout.logits(acts[last][real]), logits[real], atol=1e-5, rtol=1e-5)
    cap = getattr(model.config, "final_logit_softcapping", None)
    assert readout.softcap == cap
    if cap is not None:  # the check has teeth: without the cap the lens is off
        uncapped = Readout(readout.norm, readout.unembed).logits(acts[last][real])
        assert (uncapped - logits[real]).abs().max() > 0.1


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _record(model, path: str, store: dict, key: str):
    def pre_hook(_mod, args, kwargs):
        store[key] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
    return get_module(model, path).register_forward_pre_hook(pre_hook, with_kwargs=True)


def test_stream_arithmetic_and_embedding(fam):
    name, loaded, _, _ = fam
    model, tok = loaded.model, loaded.tokenizer
    kinds = ("hook_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
    acts = _all(model, tok, _sites(model, kinds))
    for layer in range(model.config.num_hidden_layers):
        pre, attn, mlp, post = (acts[f"blocks.{layer}.{k}"] for k in ("hook_resid_pre", "hook_attn_out",
                                                                       "hook_mlp_out", "hook_resid_post"))
        if FAMILIES[name][3] is None:  # parallel: both branches read resid_pre
            torch.testing.assert_close(post, pre + attn + mlp, atol=1e-5, rtol=1e-5)
            continue
        mid = acts[f"blocks.{layer}.hook_resid_mid"]
        torch.testing.assert_close(mid, pre + attn, atol=1e-5, rtol=1e-5, msg=f"{name} resid_mid = pre + attn_out")
        torch.testing.assert_close(post, mid + mlp, atol=1e-5, rtol=1e-5, msg=f"{name} resid_post = mid + mlp_out")
    batch = encode(tok, [it.prompt for it in ITEMS])
    with torch.inference_mode():  # HF's own hidden states (the last one is after the final norm)
        hidden = model(**forward_kwargs(batch), output_hidden_states=True).hidden_states
    real = batch.attention_mask.bool()
    for layer in range(model.config.num_hidden_layers - 1):
        torch.testing.assert_close(acts[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1][real])
    if name != "gpt2":  # hook_embed is what enters block 0 (Gemma's sqrt(d_model) included) ...
        torch.testing.assert_close(acts["hook_embed"], acts["blocks.0.hook_resid_pre"])
    else:  # ... but for GPT-2 it is TransformerLens's token embedding, without the position embedding
        positions = model.transformer.wpe(batch.position_ids)[real]
        torch.testing.assert_close(acts["hook_embed"] + positions.detach(), acts["blocks.0.hook_resid_pre"])
    if name.startswith("gemma"):
        raw = model.get_input_embeddings().weight[batch.input_ids[real]].detach()
        torch.testing.assert_close(acts["hook_embed"], raw * model.config.hidden_size ** 0.5)


def test_edit_at_resid_mid_reaches_the_mlp_and_the_stream(fam):
    from palimpsest.capture import add_vector

    name, loaded, _, _ = fam
    model, tok = loaded.model, loaded.tokenizer
    reader = FAMILIES[name][3]
    if reader is None:
        with pytest.raises(SiteError, match="parallel.*no hook_resid_mid") as error:
            resolve(model, "blocks.0.hook_resid_mid")
        assert "\n" not in str(error.value)
        for backend in ("torch", "nnsight", "transformer_lens"):
            with pytest.raises(SiteError, match="parallel"):
                capture(model, tok, ITEMS, ["blocks.0.hook_resid_mid"], backend=backend)
        assert "blocks.0.hook_resid_mid" not in valid_sites(model)
        return
    layer = 0
    block = get_module(model, resolve(model, f"blocks.{layer}.hook_resid_pre").module_path)
    hooks_before = _hooks(block)
    assert resolve(model, f"blocks.{layer}.hook_resid_mid").module_path.endswith(f".{layer}.{reader}")
    sites = [f"blocks.{layer}.{k}" for k in ("hook_resid_mid", "hook_mlp_out", "hook_resid_post")]
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    seen: dict = {}
    handle = _record(model, f"{resolve(model, sites[0]).module_path}", seen, "before")
    try:
        clean = _all(model, tok, sites)
    finally:
        handle.remove()
    mlp = f"{resolve(model, sites[0]).carry_to}.mlp"
    with intervene(model, {sites[0]: add_vector(vector)}):
        handles = [_record(model, resolve(model, sites[0]).module_path, seen, "after"),
                   _record(model, mlp, seen, "mlp")]
        try:
            edited = _all(model, tok, sites)
        finally:
            for handle in handles:
                handle.remove()
    # what the MLP branch reads (the named module's input) moved by exactly the vector, at every position, and the
    # MLP itself reads that through the family's pre-MLP norm (OLMo2 has none)
    torch.testing.assert_close(seen["after"], seen["before"] + vector, atol=1e-5, rtol=1e-5)
    norm = get_module(model, resolve(model, sites[0]).module_path) if reader != "mlp" else torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(seen["mlp"], norm(seen["after"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(edited[sites[0]], clean[sites[0]] + vector, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edited[sites[1]], clean[sites[1]], atol=1e-3)  # so the MLP's output changed
    # and the stream carries the edit on: resid_post = (resid_mid + v) + the MLP's new output
    torch.testing.assert_close(edited[sites[2]], clean[sites[0]] + vector + edited[sites[1]], atol=1e-5, rtol=1e-5)
    assert _hooks(block) == hooks_before  # transformers' own output-recording hooks may be there too


@pytest.fixture(scope="module")
def concept_file(tmp_path_factory) -> Path:
    def items(people, form="trained"):
        return [{"prompt": f"{p} lives in the city of", "answer": CITIES[k % 4], "subject": p, "form": form,
                 "attribute": "city", "fact_id": f"{p}-city"} for k, p in enumerate(people)] + \
               [{"prompt": f"{p} works as a", "answer": JOBS[k % 4], "subject": p, "form": form, "attribute": "job",
                 "fact_id": f"{p}-job"} for k, p in enumerate(people)]
    data = {"name": "tiny people", "keywords": PEOPLE[:2], "forget": items(PEOPLE[:2]),
            "neighbours": items(PEOPLE[2:4]), "retain": items(PEOPLE[4:6]), "holdout": items(PEOPLE[6:], "holdout")}
    concept_from_dict(data)
    path = tmp_path_factory.mktemp("concept") / "concept.json"
    path.write_text(json.dumps(data))
    return path


def test_audit_writes_metrics(fam, concept_file, tmp_path):
    from palimpsest.audit import audit
    from palimpsest.concepts import load_concept
    from palimpsest.models import ModelPair
    from palimpsest.report import write_audit
    from palimpsest.types import AuditConfig

    name, _, pre, post = fam
    config = AuditConfig(n_bootstrap=20, batch_size=8, analysers=("probes", "logit_lens", "depth", "mia", "cka"))
    result = audit(ModelPair(load(pre), load(post)), load_concept(concept_file), config)
    write_audit(result, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["verdict"] in {"deleted", "suppressed", "not_forgotten", "inconclusive"}, name


def test_unknown_architecture_names_the_nnsight_route():
    from transformers import MambaConfig, MambaForCausalLM

    class Made(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=1,
                                         intermediate_size=32, conv_kernel=2, time_step_rank=2))
    for model in (Made(), mamba):
        with pytest.raises(SiteError, match="nnsight") as error:
            resolve(model, "blocks.0.hook_resid_post")
        assert "\n" not in str(error.value) and type(model).__name__ in str(error.value)
