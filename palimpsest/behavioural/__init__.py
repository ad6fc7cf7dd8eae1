"""Behavioural and whole-model analysers: unlearning depth (activation patching), membership inference,
open-unlearning's memorization metrics, and where the unlearning acted (PCA shift, weight change).
Importing this package registers them (palimpsest.audit.registry lists it)."""

from palimpsest.behavioural import depth, memorization, mia, pca_shift

__all__ = ["depth", "memorization", "mia", "pca_shift"]
