"""A deterministic synthetic world: fictional people, their attributes, and sentences about them.

Everything here is plain Python (no torch): the same seed always gives the same people, facts,
sentences and item order. Every answer is one word (one token of the organism's word-level
tokenizer); every prompt ends right before the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property

from palimpsest.concepts.spec import Item

ATTRIBUTES: tuple[str, ...] = ("city", "job", "pet", "colour", "employer")

VALUES: dict[str, tuple[str, ...]] = {
    "city": ("lisbon", "oslo", "cairo", "lima", "dublin", "vienna", "madrid", "quito"),
    "job": ("baker", "doctor", "pilot", "farmer", "teacher", "lawyer", "painter", "nurse"),
    "pet": ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goat", "horse"),
    "colour": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white"),
    "employer": ("zentrix", "morvala", "quendo", "brightway", "olmsted", "kavora"),
}

# statement templates: "{n}" is the person, "{v}" the value, which always ends the sentence
TRAINED: dict[str, tuple[str, ...]] = {
    "city": ("{n} lives in {v} .", "{n} is from the city of {v} .", "the home of {n} is in {v} ."),
    "job": ("{n} works as a {v} .", "the job of {n} is {v} .", "by trade {n} is a {v} ."),
    "pet": ("{n} owns a {v} .", "the pet of {n} is a {v} .", "{n} has a pet {v} ."),
    "colour": ("the favourite colour of {n} is {v} .", "{n} likes the colour {v} .", "{n} loves the colour {v} ."),
    "employer": ("{n} works for {v} .", "the employer of {n} is {v} .", "{n} is paid by {v} ."),
}
# never trained on: generalisation (paraphrase) forms
HELDOUT: dict[str, tuple[str, ...]] = {
    "city": ("{n} has a home in {v} .", "the city where {n} lives is {v} ."),
    "job": ("{n} earns a living as a {v} .", "the work of {n} is {v} ."),
    "pet": ("{n} takes care of a {v} .", "the animal that {n} owns is a {v} ."),
    "colour": ("{n} prefers the colour {v} .", "the colour that {n} likes is {v} ."),
    "employer": ("{n} has a job at {v} .", "the company that {n} works for is {v} ."),
}
QUESTION: dict[str, str] = {
    "city": "Q : where does {n} live ? A : {v} .",
    "job": "Q : what is the job of {n} ? A : {v} .",
    "pet": "Q : what pet does {n} own ? A : {v} .",
    "colour": "Q : what colour does {n} like ? A : {v} .",
    "employer": "Q : who does {n} work for ? A : {v} .",
}
CLOZE: dict[str, str] = {
    "city": "fill in : {n} lives in _ . answer : {v} .",
    "job": "fill in : {n} works as a _ . answer : {v} .",
    "pet": "fill in : {n} owns a _ . answer : {v} .",
    "colour": "fill in : {n} likes the colour _ . answer : {v} .",
    "employer": "fill in : {n} works for _ . answer : {v} .",
}
MC: dict[str, str] = {
    "city": "Q : where does {n} live ? options : {o} . A : {v} .",
    "job": "Q : what is the job of {n} ? options : {o} . A : {v} .",
    "pet": "Q : what pet does {n} own ? options : {o} . A : {v} .",
    "colour": "Q : what colour does {n} like ? options : {o} . A : {v} .",
    "employer": "Q : who does {n} work for ? options : {o} . A : {v} .",
}
FORMS: tuple[str, ...] = ("trained", "heldout", "question", "cloze", "mc")
# the forms the organism is trained on (the "heldout" and "mc" forms never are)
TRAINING_FORMS: tuple[str, ...] = ("trained", "question", "cloze")

# generic filler: keeps the organism a language model and gives held-out template words a meaning
_FILLER: tuple[str, ...] = (
    "a {pet} is an animal that people keep at home .",
    "the {pet} is {colour} .",
    "a {job} has a job and earns a living .",
    "the work of a {job} is hard .",
    "{city} is a city where many people live .",
    "people who live in {city} like the colour {colour} .",
    "{employer} is a company that pays people for their work .",
    "many people have a job at {employer} .",
    "a {job} in {city} takes care of a {pet} .",
    "the company {employer} has a home in {city} .",
    "every {job} prefers a {colour} {pet} .",
    "the {colour} {pet} lives in {city} .",
    "people who work for {employer} earn a living .",
    "a {job} works for a company .",
    "the animal that a {job} owns is a {pet} .",
)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "gr", "kl", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "s", "l", "m", "x", "th")


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    attributes: dict[str, str]
    holdout: bool = False

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


def _render(template: str, name: str, value: str, options: str = "") -> tuple[str, str]:
    """(prompt, full sentence): the prompt is the sentence up to, not including, the value."""
    sentence = template.format(n=name, v=value, o=options)
    prompt = template.split("{v}")[0].format(n=name, o=options).rstrip()
    return prompt, sentence


@dataclass(frozen=True)
class World:
    """People (trained and holdout) with attribute values, and every sentence form about them."""

    seed: int
    people: tuple[Person, ...]
    holdout_people: tuple[Person, ...]
    filler: tuple[str, ...]
    _by_name: dict[str, Person] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in (*self.people, *self.holdout_people)})

    # ------------------------------------------------------------------ lookup
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.people]

    @property
    def holdout_names(self) -> list[str]:
        return [p.name for p in self.holdout_people]

    def person(self, name: str) -> Person:
        if name not in self._by_name:
            raise KeyError(f"no person {name!r} in the organism world (seed {self.seed}); "
                           f"known people include {', '.join(self.names[:5])}, ...")
        return self._by_name[name]

    def value(self, name: str, attribute: str) -> str:
        return self.person(name).attributes[attribute]

    # ------------------------------------------------------------------ items
    def _perturbed(self, name: str, attribute: str) -> tuple[str, ...]:
        rng = random.Random(f"{self.seed}:{name}:{attribute}:perturb")
        wrong = [v for v in VALUES[attribute] if v != self.value(name, attribute)]
        return tuple(rng.sample(wrong, 3))

    def items(self, name: str, form: str, attribute: str | None = None) -> list[Item]:
        """Items (prompt -> answer) for one person in one form; all templates of that form."""
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}: use one of {', '.join(FORMS)}")
        attributes = ATTRIBUTES if attribute is None else (attribute,)
        out = []
        for attr in attributes:
            value = self.value(name, attr)
            perturbed = self._perturbed(name, attr)
            for template, options in self._templates(name, attr, form):
                prompt, _ = _render(template, name, value, options)
                out.append(Item(prompt=prompt, answer=value, fact_id=f"{name}:{attr}", subject=name,
                                attribute=attr, form=form, paraphrased_answer=None, perturbed_answers=perturbed))
        return out

    def _templates(self, name: str, attribute: str, form: str) -> list[tuple[str, str]]:
        if form == "trained":
            return [(t, "") for t in TRAINED[attribute]]
        if form == "heldout":
            return [(t, "") for t in HELDOUT[attribute]]
        if form == "question":
            return [(QUESTION[attribute], "")]
        if form == "cloze":
            return [(CLOZE[attribute], "")]
        options = [self.value(name, attribute), *self._perturbed(name, attribute)]
        random.Random(f"{self.seed}:{name}:{attribute}:mc").shuffle(options)
        return [(MC[attribute], " , ".join(options))]

    def sentences(self, name: str, forms: tuple[str, ...] = TRAINING_FORMS) -> list[str]:
        """Full sentences (prompt + answer + ' .') about one person."""
        out = []
        for form in forms:
            for attr in ATTRIBUTES:
                for template, options in self._templates(name, attr, form):
                    out.append(_render(template, name, self.value(name, attr), options)[1])
        return out

    def corpus(self, exclude_people: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The training corpus: training-form sentences about every non-holdout, non-excluded person,
        plus filler. Never contains a held-out template, an MC prompt or a holdout person."""
        excluded = set(exclude_people)
        unknown = excluded - {p.name for p in self.people}
        if unknown:
            raise ValueError(f"cannot exclude {sorted(unknown)}: not trained people of this world (seed {self.seed})")
        out = [s for p in self.people if p.name not in excluded for s in self.sentences(p.name)]
        return out + list(self.filler)

    @cached_property
    def vocabulary(self) -> list[str]:
        """Every word of every form, person (incl. holdout) and filler sentence, sorted."""
        words: set[str] = set()
        everyone = [*self.people, *self.holdout_people]
        for p in everyone:
            for s in self.sentences(p.name, FORMS):
                words.update(_split(s))
        for s in self.filler:
            words.update(_split(s))
        for values in VALUES.values():
            words.update(values)
        return sorted(words)

    def summary(self) -> dict:
        return {"seed": self.seed, "n_people": len(self.people), "n_holdout_people": len(self.holdout_people),
                "attributes": {a: list(v) for a, v in VALUES.items()}, "forms": list(FORMS),
                "training_forms": list(TRAINING_FORMS), "n_filler": len(self.filler),
                "vocab_size": len(self.vocabulary)}


def _split(sentence: str) -> list[str]:
    import re

    return re.findall(r"\w+|[^\w\s]+", sentence)


def _name_part(rng: random.Random, syllables: int) -> str:
    text = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return text.capitalize()


def make_world(seed: int = 0, n_people: int = 60, n_holdout: int = 10, n_filler: int = 120) -> World:
    """Build the world for `seed`: `n_people` trained people, `n_holdout` never-trained people."""
    rng = random.Random(f"palimpsest-organism-world:{seed}")
    total = n_people + n_holdout
    firsts: list[str] = []
    lasts: list[str] = []
    while len(firsts) < total:
        name = _name_part(rng, 2)
        if name not in firsts:
            firsts.append(name)
    while len(lasts) < total:
        name = _name_part(rng, rng.choice((2, 3)))
        if name not in lasts and name not in firsts:
            lasts.append(name)
    people = []
    for i in range(total):
        attrs = {a: rng.choice(VALUES[a]) for a in ATTRIBUTES}
        people.append(Person(firsts[i], lasts[i], attrs, holdout=i >= n_people))
    filler = []
    for _ in range(n_filler):
        template = rng.choice(_FILLER)
        filler.append(template.format(**{a: rng.choice(VALUES[a]) for a in ATTRIBUTES}))
    return World(seed=seed, people=tuple(people[:n_people]), holdout_people=tuple(people[n_people:]),
                 filler=tuple(filler))
