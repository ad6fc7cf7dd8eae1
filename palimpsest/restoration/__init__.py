"""Restoration: can the forgotten answers be brought back? Steering with shift vectors, SAE-feature restoration,
relearning, quantization and direction ablation. Importing this package registers the five analysers."""

from palimpsest.restoration import (  # noqa: F401  (importing registers the analysers)
    direction_ablation,
    quantization,
    relearning,
    sae_restoration,
    shift_vectors,
)
from palimpsest.restoration.direction_ablation import unlearning_directions
from palimpsest.restoration.quantization import quantized
from palimpsest.restoration.relearning import relearn
from palimpsest.restoration.shift_vectors import mean_shift
from palimpsest.restoration.steering import sweep, sweep_one_by_one

__all__ = ["mean_shift", "quantized", "relearn", "sweep", "sweep_one_by_one", "unlearning_directions"]
