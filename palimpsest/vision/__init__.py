"""Class unlearning in image classifiers (scikit-learn digits), audited by the shared analysers through nnsight."""

from palimpsest.vision.audit import audit_vision, vision_config, vision_context
from palimpsest.vision.capture import (
    ImageActivations,
    canonical_sites,
    capture_modules,
    logits_with_edits,
    site_map,
)
from palimpsest.vision.concept import digits_concept, item_rows
from palimpsest.vision.data import FORGET_CLASS, load_digits_data
from palimpsest.vision.organism import VisionModel, VisionPair, build_digits_model, build_organism_models
from palimpsest.vision.unlearn import METHODS, make_post_model

__all__ = ["FORGET_CLASS", "METHODS", "ImageActivations", "VisionModel", "VisionPair", "audit_vision",
           "build_digits_model", "build_organism_models", "canonical_sites", "capture_modules", "digits_concept",
           "item_rows", "load_digits_data", "logits_with_edits", "make_post_model", "site_map", "vision_config",
           "vision_context"]
