from palimpsest.capture.activations import (
    POSITIONS,
    Activations,
    CaptureError,
    ShardedActivations,
    capture,
    capture_to_disk,
    gather_positions,
)
from palimpsest.capture.backends import BACKENDS, bridge_for, run_and_capture
from palimpsest.capture.interventions import add_per_row, add_vector, ablate_direction, intervene, replace_with
from palimpsest.capture.scoring import AnswerScores, score_answers
from palimpsest.capture.sites import SiteError, layer_of, n_layers, resid_post_sites, resolve, valid_sites
from palimpsest.capture.tokens import AnswerTokenError, EncodedBatch, answer_ids, encode

__all__ = [
    "BACKENDS", "POSITIONS", "Activations", "AnswerScores", "AnswerTokenError", "CaptureError", "EncodedBatch",
    "ShardedActivations", "SiteError", "ablate_direction", "add_per_row", "add_vector", "answer_ids", "bridge_for",
    "capture", "capture_to_disk", "encode", "gather_positions", "intervene", "layer_of", "n_layers",
    "replace_with", "resid_post_sites", "resolve", "run_and_capture", "score_answers", "valid_sites",
]
