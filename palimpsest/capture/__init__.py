from palimpsest.capture.activations import (
    POSITIONS,
    Activations,
    CaptureError,
    NonFiniteError,
    ShardedActivations,
    capture,
    capture_to_disk,
    gather_positions,
    is_out_of_memory,
)
from palimpsest.capture.backends import BACKENDS, bridge_for, run_and_capture
from palimpsest.capture.interventions import (
    ablate_direction,
    ablate_subspace,
    add_per_row,
    add_vector,
    intervene,
    replace_with,
)
from palimpsest.capture.scoring import AnswerScores, score_answers
from palimpsest.capture.sites import SiteError, layer_of, n_layers, resid_post_sites, resolve, valid_sites
from palimpsest.capture.tokens import AnswerTokenError, EncodedBatch, answer_ids, encode

__all__ = [
    "BACKENDS", "POSITIONS", "Activations", "AnswerScores", "AnswerTokenError", "CaptureError", "EncodedBatch",
    "NonFiniteError", "ShardedActivations", "SiteError", "ablate_direction", "ablate_subspace", "add_per_row", "add_vector",
    "answer_ids", "bridge_for", "capture", "capture_to_disk", "encode", "gather_positions", "intervene",
    "is_out_of_memory", "layer_of", "n_layers", "replace_with", "resid_post_sites", "resolve", "run_and_capture",
    "score_answers", "valid_sites",
]
