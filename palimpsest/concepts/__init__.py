from palimpsest.concepts.spec import (
    ITEM_SETS,
    ConceptError,
    ConceptSpec,
    Item,
    ItemSet,
    concept_from_dict,
    load_concept,
)

__all__ = ["ITEM_SETS", "ConceptError", "ConceptSpec", "Item", "ItemSet", "concept_from_dict", "load_concept"]
