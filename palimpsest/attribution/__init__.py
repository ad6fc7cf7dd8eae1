"""attribution stage: unPact prompt attribution (occlusion, integrated gradients) pre vs post, contribution
tracking, and keyword-emphasis recovery. Importing this package registers the `attribution` analyser."""

from palimpsest.attribution.analyser import PromptAttribution
from palimpsest.attribution.keytokens import KeyTokens, select_key_tokens
from palimpsest.attribution.methods import (
           METHODS,
           TokenAttribution,
           attribute,
           integrated_gradients,
           occlusion,
)
from palimpsest.attribution.rewrites import REWRITE_KINDS, emphasis_rewrites, pick_marker
from palimpsest.attribution.tracking import keyword_share, keyword_table, profile_shift

__all__ = ["METHODS", "REWRITE_KINDS", "KeyTokens", "PromptAttribution", "TokenAttribution", "attribute",
           "emphasis_rewrites", "integrated_gradients", "keyword_share", "keyword_table", "occlusion", "pick_marker",
           "profile_shift", "select_key_tokens"]
