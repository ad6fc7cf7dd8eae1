"""The organism's concepts: forget some people, keep their neighbours and everyone else."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

from palimpsest.concepts.spec import ConceptSpec, Item
from palimpsest.organism.world import ATTRIBUTES, TRAINED, World, make_world


@lru_cache(maxsize=8)
def load_world(seed: int = 0) -> World:
    """The organism's synthetic world for `seed` (deterministic, pure Python, milliseconds)."""
    return make_world(int(seed))


def default_forget_people(world: World, n_forget: int = 4, seed: int = 0) -> list[str]:
    rng = random.Random(f"forget:{world.seed}:{seed}")
    return sorted(rng.sample(world.names, n_forget), key=world.names.index)


def _one_template(world: World, name: str, attribute: str, k: int) -> Item:
    """The trained-form item of one fact, rotating through the templates with `k`."""
    items = world.items(name, "trained", attribute)
    return items[k % len(TRAINED[attribute])]


def organism_concept(world: World, forget_people: Sequence[str] | None = None, n_forget: int = 4,
                     seed: int = 0, *, n_retain_people: int = 5, neighbours_per_person: int = 3) -> ConceptSpec:
    """A ConceptSpec forgetting `forget_people` (default: `n_forget` people drawn with `seed`).

    forget      every attribute of the forget people, every trained template
    paraphrases the same facts in the heldout, question, cloze and mc forms
    neighbours  facts of people sharing a city or employer with a forget person (one trained template each)
    retain      facts of `n_retain_people` other people (one trained template each)
    holdout     facts of the never-trained holdout people, every trained template (non-members)
    """
    if forget_people is None:
        forget_people = default_forget_people(world, n_forget, seed)
    forget_people = list(dict.fromkeys(forget_people))
    if not forget_people:
        raise ValueError("organism_concept: forget_people is empty; name at least one person of the world")
    for name in forget_people:
        if name not in world.names:
            raise ValueError(f"organism_concept: {name!r} is not a trained person of the world (seed {world.seed}); "
                             f"pick from world.names, e.g. {world.names[0]!r}")
    rng = random.Random(f"concept:{world.seed}:{seed}:{','.join(forget_people)}")
    forget = [it for n in forget_people for it in world.items(n, "trained")]
    paraphrases = [it for form in ("heldout", "question", "cloze", "mc") for n in forget_people
                   for it in world.items(n, form)]
    others = [n for n in world.names if n not in forget_people]
    neighbour_people: list[str] = []
    for name in forget_people:
        for attr in ("city", "employer"):
            sharing = [o for o in others if world.value(o, attr) == world.value(name, attr)
                       and o not in neighbour_people]
            take = neighbours_per_person - 1 if attr == "city" else 1
            neighbour_people.extend(rng.sample(sharing, min(take, len(sharing))))
    neighbours = [_one_template(world, n, a, k) for k, (n, a) in
                  enumerate((n, a) for n in neighbour_people for a in ATTRIBUTES)]
    rest = [n for n in others if n not in neighbour_people]
    retain_people = rng.sample(rest, min(n_retain_people, len(rest)))
    retain = [_one_template(world, n, a, k) for k, (n, a) in
              enumerate((n, a) for n in retain_people for a in ATTRIBUTES)]
    holdout = [it for n in world.holdout_names for it in world.items(n, "trained")]
    return ConceptSpec(
        name=f"organism-s{world.seed}-forget-{len(forget_people)}",
        description=(f"Organism world seed {world.seed}: forget everything about {', '.join(forget_people)}; "
                     "keep the people who share their city or employer, and everyone else."),
        keywords=tuple(forget_people),
        forget=tuple(forget), paraphrases=tuple(paraphrases), neighbours=tuple(neighbours),
        retain=tuple(retain), holdout=tuple(holdout))


def retain_training_items(world: World, concept: ConceptSpec, max_items: int | None = None, seed: int = 0) -> list[Item]:
    """Trained-form facts of people in none of the concept's sets: the retain data unlearning methods train on,
    kept apart from the concept's retain/neighbour items so those measure generalisation."""
    used = {it.subject for it in (*concept.forget, *concept.neighbours, *concept.retain)}
    items = [it for n in world.names if n not in used for it in world.items(n, "trained")]
    if max_items is not None and len(items) > max_items:
        items = random.Random(f"retain-train:{seed}").sample(items, max_items)
    return items
