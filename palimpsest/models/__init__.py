from palimpsest.models.loading import LoadedModel, ModelLoadError, load_model
from palimpsest.models.pair import ModelPair, PairMismatchError, check_compatible, load_pair
from palimpsest.models.smollm2 import smollm2, smollm2_gguf_path

__all__ = ["LoadedModel", "ModelLoadError", "ModelPair", "PairMismatchError", "check_compatible", "load_model",
           "load_pair", "smollm2", "smollm2_gguf_path"]
