"""How good an SAE is: explained variance, L0, dead features, and next-token loss with the SAE spliced in."""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from palimpsest.capture import encode, intervene, replace_with
from palimpsest.capture.backends import forward_kwargs
from palimpsest.devices import input_device


@torch.no_grad()
def reconstruction_stats(sae, acts: Float[Tensor, "n d"], *, max_rows: int = 20_000, seed: int = 0) -> dict:
    """Explained variance (1 - SSE / total variance, over all rows), mean L0, share of features never firing."""
    if acts.shape[0] > max_rows:
        acts = acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]]
    acts = acts.to(sae.W_dec.device, sae.W_dec.dtype)
    feats = sae.encode(acts)
    recon = sae.decode(feats)
    sse = (acts - recon).pow(2).sum()
    total = (acts - acts.mean(0)).pow(2).sum().clamp(min=1e-12)
    fired = (feats > 0).sum(0)
    return {"explained_variance": float(1 - sse / total), "l0": float((feats > 0).sum(-1).float().mean()),
            "dead_fraction": float((fired == 0).float().mean()), "n_eval_tokens": int(acts.shape[0]),
            "d_sae": int(feats.shape[-1])}


@torch.no_grad()
def next_token_loss(model, tokenizer, texts: Sequence[str], *, edit=None, site: str | None = None,
                    batch_size: int = 32) -> float:
    """Mean next-token cross-entropy over `texts`, optionally with `edit` applied at `site`."""
    total, count = 0.0, 0
    device = input_device(model)
    for start in range(0, len(texts), batch_size):
        batch = encode(tokenizer, list(texts[start:start + batch_size])).to(device)
        with intervene(model, {site: edit} if edit is not None else {}):
            logits = model(**forward_kwargs(batch)).logits.float()
        targets = batch.input_ids[:, 1:]
        mask = batch.attention_mask[:, 1:].bool()
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
        total += float(losses[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def splice(sae, h: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
    """The SAE's reconstruction of `h`: encoded and decoded on the SAE's device, returned on the device and in the
    dtype of `h` (the hooked activation: with a device_map, the device of that site)."""
    return sae.decode(sae.encode(h.to(sae.W_dec.device, sae.W_dec.dtype))).to(h.device, h.dtype)


def sae_quality(sae, acts: Float[Tensor, "n d"], model, site: str, texts: Sequence[str], *, trainer=None,
                max_texts: int = 128) -> dict:
    """Quality of an (inference) SAE at `site` of `model` (a LoadedModel), reported next to the SAE.

    ce_loss_spliced: next-token loss with the site replaced by the SAE's reconstruction; ce_loss_mean_ablated:
    with the site replaced by its mean activation; loss_recovered = how much of the gap between the two the SAE
    closes (1 = as good as the clean model).
    """
    out = reconstruction_stats(sae, acts)
    texts = list(texts)[:max_texts]
    clean = next_token_loss(model.model, model.tokenizer, texts)
    spliced = next_token_loss(model.model, model.tokenizer, texts, site=site,
                              edit=lambda h: splice(sae, h))
    ablated = next_token_loss(model.model, model.tokenizer, texts, site=site, edit=replace_with(acts.mean(0)))
    gap = ablated - clean
    out.update({"ce_loss_clean": clean, "ce_loss_spliced": spliced, "ce_loss_mean_ablated": ablated,
                "ce_loss_delta": spliced - clean, "loss_recovered": (ablated - spliced) / gap if gap > 1e-9 else None,
                "n_loss_texts": len(texts)})
    if trainer is not None and trainer.n_frac_active_samples:
        out["train_l0"] = float(trainer.feature_sparsity.sum())
        out["train_dead_fraction"] = float(trainer.dead_neurons.float().mean())
    return out


def gate_explained_variance(quality: dict) -> float:
    """The explained variance an analyser's SAE gate reads: held-out when the SAE has held-out texts
    (palimpsest.sae.corpus), else in-sample."""
    held = quality.get("explained_variance_held_out")
    return float(held if held is not None else quality["explained_variance"])
