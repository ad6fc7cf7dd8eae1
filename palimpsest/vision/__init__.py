"""Class unlearning in image classifiers (scikit-learn digits), audited through nnsight with the shared verdict."""

from palimpsest.vision.audit import audit_vision, vision_config
from palimpsest.vision.capture import capture_modules, logits_with_edits
from palimpsest.vision.data import FORGET_CLASS, load_digits_data
from palimpsest.vision.organism import VisionModel, VisionPair, build_digits_model, build_organism_models
from palimpsest.vision.registry import VISION_REGISTRY, load_vision_analysers
from palimpsest.vision.unlearn import METHODS, make_post_model

__all__ = ["FORGET_CLASS", "METHODS", "VISION_REGISTRY", "VisionModel", "VisionPair", "audit_vision",
           "build_digits_model", "build_organism_models", "capture_modules", "load_digits_data",
           "load_vision_analysers", "logits_with_edits", "make_post_model", "vision_config"]
