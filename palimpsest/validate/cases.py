"""The population of ground-truth cases: organism worlds x forget sets x post-models whose truth is known."""

from __future__ import annotations

from dataclasses import dataclass

# truth by construction of each post-model kind ("unknown": reported, never scored)
CONSTRUCTION: dict[str, str] = {
    "oracle": "deleted",  # retrained from scratch without the forget people (its own seed, never the floor's)
    "suppress": "suppressed",  # only the output layer trained
    "tail_graddiff": "suppressed",  # GradDiff on the last block + final norm: every earlier tensor bit-identical
    "logit_bias": "suppressed",  # a hook lowers the forget answers' logits: no weight changes
    "sauce": "suppressed",  # SAE concept features clamped by hooks: no weight changes
    "pre": "not_forgotten",  # the pre model itself
    "weak_ga": "not_forgotten",  # gradient ascent far too weak to forget
    "ga": "unknown", "graddiff": "unknown", "npo": "unknown", "rmu": "unknown",
}
CONTROLS: tuple[str, ...] = tuple(CONSTRUCTION)
N_FORGET_PEOPLE = 4


@dataclass(frozen=True)
class Case:
    world: int  # the organism world's seed (its people, facts and initial weights)
    forget_set: int  # which draw of forget people from that world
    control: str

    @property
    def case_id(self) -> str:
        return f"w{self.world}-f{self.forget_set}-{self.control}"

    @property
    def construction(self) -> str:
        return CONSTRUCTION[self.control]


def gated_truth(construction: str, behaviour_forgotten: bool | None) -> tuple[str, bool]:
    """(truth, weak control?) after the verdict's first gate: a deletion or suppression control is only what it
    claims when its behaviour is forgotten; one that is not has truth not_forgotten and is a weak control. A
    not-forgotten control that forgets anyway has no known truth."""
    if behaviour_forgotten is None or construction == "unknown":
        return "unknown", False
    if construction in ("deleted", "suppressed"):
        return (construction, False) if behaviour_forgotten else ("not_forgotten", True)
    return ("not_forgotten", False) if not behaviour_forgotten else ("unknown", False)


def forget_people(world: int, forget_set: int) -> tuple[str, ...]:
    from palimpsest.organism import default_forget_people, load_world

    return tuple(default_forget_people(load_world(world), N_FORGET_PEOPLE, forget_set))


def population(worlds: int | list[int], forget_sets: int = 2, controls: tuple[str, ...] = CONTROLS) -> list[Case]:
    """Every case: worlds (a count, from seed 0, or a list of seeds) x forget sets x controls."""
    unknown = sorted(set(controls) - set(CONSTRUCTION))
    if unknown:
        raise ValueError(f"unknown controls {unknown}; choose from {', '.join(CONSTRUCTION)}")
    seeds = list(range(worlds)) if isinstance(worlds, int) else list(worlds)
    if not seeds or forget_sets < 1:
        raise ValueError("validate needs at least one world and one forget set")
    return [Case(w, f, c) for w in seeds for f in range(forget_sets) for c in controls]
