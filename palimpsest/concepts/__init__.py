from palimpsest.concepts.spec import (
    ITEM_SETS,
    SCORINGS,
    ConceptError,
    ConceptSpec,
    Item,
    ItemSet,
    Scoring,
    concept_from_dict,
    load_concept,
)

__all__ = ["ITEM_SETS", "SCORINGS", "ConceptError", "ConceptSpec", "Item", "ItemSet", "Scoring", "concept_from_dict",
           "load_concept"]
