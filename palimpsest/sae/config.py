"""SAEConfig lives in palimpsest.config.sae (a leaf module AuditConfig can import); re-exported here."""

from palimpsest.config.sae import ARCHITECTURES, TRAINING_FIELDS, SAEConfig

__all__ = ["ARCHITECTURES", "TRAINING_FIELDS", "SAEConfig"]
