"""Vision analysers: same Result contract as the language-model ones, registered in VISION_REGISTRY."""

from palimpsest.vision.analysers import (  # noqa: F401
                                         behaviour,
                                         cka,
                                         probes,
                                         relearning,
                                         restoration,
                                         sae_features,
                                         shift_vectors,
)
