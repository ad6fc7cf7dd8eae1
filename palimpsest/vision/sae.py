"""SAEs on a vision layer's activations (sae-lens TopK, trained from an iterator of batches) and class experts."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


@dataclass
class LayerSAE:
    """A trained sae-lens SAE for one module path; activations are flattened to [n, d_in] before encoding."""

    path: str
    sae: nn.Module
    shape: tuple[int, ...]  # the module output's shape without the batch axis

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def encode(self, acts: Float[Tensor, "n ..."]) -> Float[Tensor, "n d_sae"]:
        with torch.no_grad():
            return self.sae.encode(acts.reshape(len(acts), -1).float())

    def decoder_rows(self, features: Int[Tensor, " k"]) -> Float[Tensor, "k d_in"]:
        return self.sae.W_dec[features].detach()

    def move_features(self, acts: Float[Tensor, "n ..."], features: Int[Tensor, " k"],
                      delta: Float[Tensor, "n k"]) -> Float[Tensor, "n ..."]:
        """acts + delta @ W_dec[features]: change the chosen feature codes by `delta`, keep the SAE's error term."""
        flat = acts.reshape(len(acts), -1)
        return (flat + delta.to(flat.dtype) @ self.decoder_rows(features).to(flat.device)).reshape(acts.shape)


def _batches(acts: Tensor, batch_size: int, total: int, seed: int) -> Iterator[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    served = 0
    while served < total + batch_size:  # never run dry before the trainer's last step
        order = torch.randperm(len(acts), generator=gen)
        for i in range(0, len(acts) - batch_size + 1, batch_size):  # full batches only (sparsity statistics)
            served += batch_size
            yield acts[order[i:i + batch_size]]


def train_layer_sae(path: str, acts: Float[Tensor, "n ..."], *, expansion: int = 4, k: int = 8, epochs: int = 40,
                    batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> LayerSAE:
    """A TopK SAE (sae-lens SAETrainer) on a module's activations, flattened per image."""
    from sae_lens import SAETrainer, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import TrainingSAE

    flat = acts.reshape(len(acts), -1).float()
    d_in = flat.shape[1]
    if len(flat) < batch_size:
        raise ValueError(f"only {len(flat)} activation rows for the SAE at {path}: need at least {batch_size}")
    total = epochs * (len(flat) // batch_size) * batch_size
    torch.manual_seed(seed)
    sae = TrainingSAE.from_dict(TopKTrainingSAEConfig(d_in=d_in, d_sae=expansion * d_in, k=k).to_dict())
    cfg = SAETrainerConfig(total_training_samples=total, train_batch_size_samples=batch_size, lr=lr, lr_end=lr / 10,
                           lr_scheduler_name="cosineannealing", device="cpu", n_checkpoints=0,
                           save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False),
                           dead_feature_window=200, feature_sampling_window=400, n_batches_for_norm_estimate=10)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=_batches(flat, batch_size, total, seed))
    with contextlib.redirect_stderr(io.StringIO()):  # sae-lens draws a tqdm bar per SAE; keep the audit's output clean
        trained = trainer.fit().eval()
    for p in trained.parameters():
        p.requires_grad_(False)
    return LayerSAE(path, trained, tuple(acts.shape[1:]))


def expert_features(codes: Float[Tensor, "n d_sae"], labels: Int[Tensor, " n"], target: int,
                    n_experts: int) -> tuple[Int[Tensor, " k"], Float[Tensor, " d_sae"]]:
    """The features most specific to class `target`: largest (mean on the class - mean on the rest) / pooled std.

    Hand-written because it is a two-line selectivity score; features that never fire on the class are excluded.
    """
    is_target = labels == target
    on, off = codes[is_target], codes[~is_target]
    score = (on.mean(0) - off.mean(0)) / (codes.std(0) + 1e-6)
    score = torch.where(on.mean(0) > off.mean(0), score, torch.full_like(score, -torch.inf))
    k = min(n_experts, int(torch.isfinite(score).sum()))
    return torch.topk(score, k).indices, score


class FeatureClamp(nn.Module):
    """SAUCE-style clamp: where a chosen SAE feature fires, its code becomes -scale x its value (error term kept)."""

    def __init__(self, layer_sae: LayerSAE, features: Tensor, scale: float) -> None:
        super().__init__()
        self.layer_sae = layer_sae  # a plain attribute: not a submodule, so state_dict keys stay those of the model
        self.register_buffer("features", features.clone())
        self.scale = float(scale)

    def forward(self, acts: Tensor) -> Tensor:
        codes = self.layer_sae.encode(acts)[:, self.features]
        return self.layer_sae.move_features(acts, self.features, -(1.0 + self.scale) * codes)


def build_pre_saes(ctx, sites) -> dict[str, object]:
    """{site: (LayerSAE, expert features, selectivity scores)} for an image audit (the runner's `build_saes` calls
    this): a TopK SAE per site trained on the pre model's activations of the training images with
    `ctx.config.sae` (expansion, k, epochs, n_experts, seed), and the forget class's expert features. Memoised in
    `ctx.shared`, so the audits of one organism's post-models train each once. A site that fails records its error
    (the analysers reading it report it)."""
    sae_cfg = ctx.config.sae
    acts, pre = ctx.acts, ctx.pair.pre.model
    opts = (("expansion", sae_cfg.expansion), ("k", sae_cfg.k), ("epochs", sae_cfg.epochs),
            ("n_experts", sae_cfg.n_experts))
    built: dict[str, object] = {}
    for site in sites:
        key = ("sae", id(pre), site, opts, sae_cfg.seed)
        if key not in ctx.shared:
            try:
                train = acts.get("pre", site, "train")
                layer_sae = train_layer_sae(site, train, expansion=sae_cfg.expansion, k=sae_cfg.k,
                                            epochs=sae_cfg.epochs, seed=sae_cfg.seed)
                experts, score = expert_features(layer_sae.encode(train), acts.labels("train"), ctx.pair.forget_class,
                                                 sae_cfg.n_experts)
                ctx.shared[key] = (layer_sae, experts, score)
            except Exception as error:  # noqa: BLE001 — recorded; the analysers reading this site report it
                built[site] = error
                continue
        built[site] = ctx.shared[key]
    return built
