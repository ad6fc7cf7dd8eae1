"""Logit lens and a least-squares tuned lens: decode an intermediate residual stream into answer ranks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from palimpsest.capture.families import logit_softcap
from palimpsest.capture.sites import get_module, resolve
from palimpsest.devices import module_device


@dataclass
class Readout:
    """The final norm and the unembedding of a model: residual stream -> logits, as the model computes them
    (with Gemma2's final-logit soft-capping, cap * tanh(logits / cap), where the config has one)."""

    norm: torch.nn.Module
    unembed: torch.nn.Module
    softcap: float | None = None

    @classmethod
    def of(cls, model: torch.nn.Module) -> "Readout":
        norm = get_module(model, resolve(model, "ln_final.hook_normalized").module_path)
        return cls(norm=norm, unembed=model.get_output_embeddings(), softcap=logit_softcap(model))

    def logits(self, resid: Float[Tensor, "n d"]) -> Float[Tensor, "n vocab"]:
        param = next(self.unembed.parameters())  # its dtype (the device may be meta: offloaded, see `device`)
        with torch.inference_mode():
            logits = self.unembed(self.norm(resid.to(self.device(), param.dtype)))
            if self.softcap is not None:  # in HF's order and dtype, so the last layer reproduces its logits
                logits = torch.tanh(logits / self.softcap) * self.softcap
            return logits.float().cpu()

    def normalise(self, vectors: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        """The vectors through the final norm module as the model computes it (its gain, centring, bias and eps
        however the family defines them, never a hand-applied `weight`), in the model's dtype; float32 on the CPU."""
        param = next(self.norm.parameters(), None)
        param = next(self.unembed.parameters()) if param is None else param  # a norm without a gain (OLMo)
        with torch.no_grad():
            return self.norm(vectors.to(self.device(), param.dtype)).float().cpu()

    def device(self) -> torch.device:
        """Where the readout starts computing: the final norm's device (under a device_map its hook's execution device,
        also for weights offloaded to disk), or the unembedding's for a norm with no tensors of its own (OLMo)."""
        own = hasattr(self.norm, "_hf_hook") or any(True for _ in (*self.norm.parameters(), *self.norm.buffers()))
        return module_device(self.norm if own else self.unembed)


def answer_prob_rank(logits: Float[Tensor, "n vocab"], targets: Int[Tensor, " n"]
                     ) -> tuple[Float[np.ndarray, " n"], Float[np.ndarray, " n"]]:
    """Probability and rank (0 = top) of each row's target token."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target_lp = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    rank = (logprobs > target_lp[:, None]).sum(-1)
    return target_lp.exp().double().numpy(), rank.double().numpy()


@dataclass
class TunedLens:
    """Per layer an affine translator h_l -> h_final, fitted on the pre model's residual streams.

    Hand-written because the `tuned-lens` package pins an older transformers; fitted in closed form (ridge least
    squares to the final residual stream) instead of by SGD on the KL to the final logits, so it takes a fraction of
    a second per layer even with a 49k-token vocabulary.
    """

    weights: list[Float[Tensor, "d d"]]
    biases: list[Float[Tensor, " d"]]

    @classmethod
    def fit(cls, layers: list[Float[Tensor, "t d"]], *, ridge: float = 1e-2) -> "TunedLens":
        final = layers[-1].double()
        d = final.shape[1]
        weights, biases = [], []
        for h in layers[:-1]:
            h = h.double()
            mean_h, mean_f = h.mean(0), final.mean(0)
            hc, fc = h - mean_h, final - mean_f
            scale = hc.pow(2).sum(1).mean()  # ridge relative to the layer's own variance
            gram = hc.T @ hc + ridge * scale * torch.eye(h.shape[1], dtype=h.dtype)
            w = torch.linalg.solve(gram, hc.T @ fc)  # [d, d]: h @ w ~ final
            weights.append(w.float())
            biases.append((mean_f - mean_h @ w).float())
        weights.append(torch.eye(d))  # the last layer is the final residual stream already
        biases.append(torch.zeros(d))
        return cls(weights, biases)

    def translate(self, layer: int, resid: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        return resid.float() @ self.weights[layer] + self.biases[layer]
