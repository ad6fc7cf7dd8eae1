"""probes stage: linear probes, logit/tuned lens, CKA and concept vectors; importing it registers the analysers."""

from palimpsest.probes import cka, concept_vectors, lens_analyser, probe_analyser  # noqa: F401  (registration)
from palimpsest.probes.concept_vectors import find_concept_vectors, list_concept_vectors
from palimpsest.probes.lens import Readout, TunedLens
from palimpsest.probes.similarity import linear_cka

__all__ = ["Readout", "TunedLens", "find_concept_vectors", "linear_cka", "list_concept_vectors"]
