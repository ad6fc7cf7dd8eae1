"""The model organism: a small Llama trained on a synthetic world whose facts are known exactly.

    world = load_world(0)
    pre_dir = build_organism(0)                                   # cached HF checkpoint directory
    concept = organism_concept(world, ORGANISM_FORGET_DEFAULT)    # a ConceptSpec
    oracle_dir = build_oracle(0, concept.keywords)                # retrained without the forget people
"""

from __future__ import annotations

from palimpsest.organism.build import (
                                       CODE_VERSION,
                                       OrganismError,
                                       build_oracle,
                                       build_organism,
                                       cache_root,
                                       is_complete,
                                       load_organism_meta,
                                       world_of,
)
from palimpsest.organism.concept import (
                                       default_forget_people,
                                       load_world,
                                       organism_concept,
                                       retain_training_items,
)
from palimpsest.organism.evaluate import accuracy, answer_scores
from palimpsest.organism.train import TrainConfig, evaluate_world, train_organism
from palimpsest.organism.world import ATTRIBUTES, FORMS, TRAINING_FORMS, VALUES, Person, World, make_world

# the demo's forget people: four people of the seed-0 world
ORGANISM_FORGET_DEFAULT: tuple[str, ...] = tuple(default_forget_people(load_world(0), 4, 0))

__all__ = ["ATTRIBUTES", "CODE_VERSION", "FORMS", "ORGANISM_FORGET_DEFAULT", "TRAINING_FORMS", "VALUES",
           "OrganismError", "Person", "TrainConfig", "World", "accuracy", "answer_scores", "build_oracle",
           "build_organism", "cache_root", "default_forget_people", "evaluate_world", "is_complete",
           "load_organism_meta", "load_world", "make_world", "organism_concept", "retain_training_items",
           "train_organism", "world_of"]
