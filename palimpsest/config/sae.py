"""SAEConfig: every knob of SAE training, concept-feature selection and SAUCE clamping, as named values."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# the sae-lens architectures that both train and run (batchtopk variants save as another architecture)
ARCHITECTURES: tuple[str, ...] = ("topk", "standard", "gated", "jumprelu", "abstopk", "batchtopk",
                                  "matryoshka_batchtopk", "matching_pursuit")
# fields that change the trained SAE (the cache key); the rest only change how it is read
TRAINING_FIELDS: tuple[str, ...] = ("architecture", "expansion", "d_sae", "k", "arch_kwargs", "total_tokens",
                                    "batch_size", "lr", "lr_end", "lr_scheduler", "lr_warm_up_steps", "seed",
                                    "shuffle_buffer", "normalize_activations")
FILTER_FIELDS: tuple[str, ...] = ("skip_first_positions", "max_norm_ratio")


class SAEConfig(BaseModel):
    """SAE training (sae-lens) and SAUCE concept-feature selection; every threshold is named and reported."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- training (sae-lens)
    architecture: str = "topk"
    expansion: int = 4  # d_sae = expansion * d_model, unless d_sae is set
    d_sae: int | None = None
    k: int = 8  # active features per token (topk / batchtopk / abstopk)
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra fields of the sae-lens training config
    total_tokens: int = 20_000  # training samples (the corpus is cycled through in shuffled epochs)
    batch_size: int = 256
    lr: float = 3e-3
    lr_end: float = 3e-4
    lr_scheduler: str = "cosineannealing"
    lr_warm_up_steps: int = 10
    seed: int = 0
    shuffle_buffer: int = 16_384  # rows held by sae-lens's mixing buffer when streaming from shards
    normalize_activations: Literal["none", "expected_average_only_in"] = "none"
    corpus: tuple[str, ...] = ()  # texts added to the concept's own prompts to train on (audits only)
    # texts sampled from the pre model and added to the corpus (palimpsest.sae.corpus; cached per model); the last
    # `held_out_share` of them are kept out of training to measure the SAE's held-out explained variance
    self_corpus_texts: int = Field(0, ge=0)
    self_corpus_tokens: int = Field(96, ge=1)  # new tokens per sampled text
    held_out_share: float = Field(0.1, ge=0.0, lt=1.0)
    # tokens left out of the SAE's training and quality measurement: the first positions of every text (the
    # attention sink) and tokens whose activation norm exceeds max_norm_ratio x the median ("massive activations",
    # Sun et al. 2024: a handful of rows with ~100x the norm would otherwise be most of the variance)
    skip_first_positions: int = Field(0, ge=0)
    max_norm_ratio: float | None = Field(None, gt=1.0)
    # vision SAEs (palimpsest.vision.sae) train for this many epochs over the pre model's training images
    epochs: int = 15
    n_experts: int = 8  # vision: the expert features of the forget class kept per site
    # -- concept features (SAUCE)
    # selectivity: (mean on forget - mean on neighbours+retain) / (std on neighbours+retain + selectivity_eps)
    selectivity_eps: float = 0.1
    min_selectivity: float = 1.0  # a feature is a concept feature only above this selectivity
    n_features: int = 16  # keep at most this many concept features
    min_forget_firing: float = 0.1  # ... and only features firing on at least this share of forget prompts
    n_top_tokens: int = 5
    # -- SAUCE clamp: a concept feature that fires is set to clamp_value x its activation (0 = ablate)
    # measured on the organism (forget accuracy 0.92 pre; oracle 0.22): one clamp at the middle layer, any value,
    # leaves >= 0.83 (the person's name has already been read into every later position); blocks.0 alone, -10: 0.52;
    # blocks.0 + blocks.1 at -3 / -10 / -20 / -50: 0.48 / 0.37 / 0.33 / 0.32 (retain 0.96 -> 0.88 at -20)
    clamp_value: float = -20.0
    # sauce_unlearn clamps at every one of these sites, early, where the concept's names are read (one SAE each);
    # a site a model does not have is skipped
    sauce_sites: tuple[str, ...] = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
    # sauce_unlearn's stopping rule: clamps and feature counts tried weakest first, until forget accuracy on the
    # concept's forget items is at most sauce_forget_target with retain accuracy within sauce_retain_tolerance
    # (measured on the seed-0 organism: at min_selectivity 1.0 no clamp gets below 0.55 forget accuracy; at 0.5,
    # -10 x 16 features reaches 0.28 with retain 0.96 -> 0.47: its names are not separable from everyone else's)
    sauce_selectivities: tuple[float, ...] = (1.0, 0.5, 0.25)
    sauce_clamps: tuple[float, ...] = (-10.0, -20.0, -50.0)
    sauce_feature_counts: tuple[int, ...] = (8, 16, 32)
    sauce_forget_target: float = 0.3
    sauce_retain_tolerance: float = 0.15

    def resolved_d_sae(self, d_in: int) -> int:
        return int(self.d_sae or self.expansion * d_in)

    def training_key(self) -> str:
        data = {k: getattr(self, k) for k in TRAINING_FIELDS}
        # the token filters join the key only when set, so SAEs trained without them keep their cache keys
        data.update({k: getattr(self, k) for k in FILTER_FIELDS if getattr(self, k) != type(self).model_fields[k].default})
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "SAEConfig":
        """The SAEConfig fields found in an analyser's options (other keys are ignored)."""
        return cls(**{k: v for k, v in options.items() if k in cls.model_fields})
