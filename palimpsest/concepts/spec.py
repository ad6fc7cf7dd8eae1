"""ConceptSpec: what was supposed to be forgotten, and what must stay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ItemSet = Literal["forget", "paraphrases", "neighbours", "retain", "holdout"]
ITEM_SETS: tuple[ItemSet, ...] = ("forget", "paraphrases", "neighbours", "retain", "holdout")
# how an item's answer counts as correct (palimpsest.capture.score_answers): "exact" every answer token is the top
# prediction under teacher forcing; "choice" the answer has the highest summed log-probability among the item's
# choices (multiple choice, lm-eval-harness `acc`); "rouge" long answers: at least half the answer tokens are the top
# prediction (the teacher-forced stand-in for ROUGE-L recall >= 0.5)
Scoring = Literal["exact", "choice", "rouge"]
SCORINGS: tuple[Scoring, ...] = ("exact", "choice", "rouge")
# Item fields that to_file leaves out of every item while they hold their defaults (files stay as they were)
_NEW_FIELDS = {"choices": [], "answer_index": None, "scoring": "exact"}


class ConceptError(ValueError):
    """A concept file or spec is invalid; the message names the file, item and field."""


class Item(BaseModel):
    """One prompt whose correct continuation is `answer` (a leading space is added when missing)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    # the fact this prompt asks about; paraphrases share the id of the forget item they rephrase
    fact_id: str | None = None
    # the entity the fact is about (a person, a country); probe splits are by subject
    subject: str | None = None
    # the kind of attribute asked (city, job, capital...); probes decode the answer per attribute
    attribute: str | None = None
    form: str = "trained"
    # a correct answer in other words and wrong answers, for the truth ratio
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    # multiple choice: the options scored after the prompt; `answer` is choices[answer_index]
    choices: tuple[str, ...] = ()
    answer_index: int | None = None
    scoring: Scoring = "exact"

    @field_validator("prompt", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="before")
    @classmethod
    def _fill_choice(cls, data: object) -> object:
        """With `choices`: scoring defaults to "choice", and `answer` / `answer_index` each follow from the other."""
        if not isinstance(data, dict) or not data.get("choices") or not isinstance(data["choices"], (list, tuple)):
            return data
        choices = data["choices"]
        data = dict(data)
        data.setdefault("scoring", "choice")
        index = data.get("answer_index")
        if "answer" not in data and isinstance(index, int) and not isinstance(index, bool) \
                and 0 <= index < len(choices):
            data["answer"] = choices[index]
        if index is None and data.get("answer") in list(choices):
            data["answer_index"] = list(choices).index(data["answer"])
        return data

    @model_validator(mode="after")
    def _choices_agree(self) -> "Item":
        if self.scoring == "choice":
            if len(self.choices) < 2:
                raise ValueError("scoring 'choice' needs at least two choices")
            if any(not c.strip() for c in self.choices):
                raise ValueError("choices must not be blank")
            if self.answer_index is None or not 0 <= self.answer_index < len(self.choices):
                raise ValueError(f"answer_index must index the {len(self.choices)} choices "
                                 f"(0..{len(self.choices) - 1}), got {self.answer_index}")
            if self.choices[self.answer_index] != self.answer:
                raise ValueError(f"answer {self.answer!r} is not choices[{self.answer_index}] "
                                 f"({self.choices[self.answer_index]!r})")
        elif self.choices or self.answer_index is not None:
            raise ValueError(f"choices / answer_index are for scoring 'choice', not {self.scoring!r}")
        return self


class ConceptSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    keywords: tuple[str, ...] = ()
    forget: tuple[Item, ...]
    paraphrases: tuple[Item, ...] = ()
    neighbours: tuple[Item, ...] = ()
    retain: tuple[Item, ...] = ()
    # never-trained items of the same kind: the non-members for membership inference
    holdout: tuple[Item, ...] = ()

    @field_validator("forget")
    @classmethod
    def _forget_not_empty(cls, items: tuple[Item, ...]) -> tuple[Item, ...]:
        if not items:
            raise ValueError("the forget set is empty: list at least one item to audit")
        return items

    def items(self, item_set: ItemSet) -> tuple[Item, ...]:
        return getattr(self, item_set)

    def all_items(self) -> list[tuple[ItemSet, int, Item]]:
        return [(name, i, item) for name in ITEM_SETS for i, item in enumerate(self.items(name))]

    def stable_dump(self) -> dict:
        """`model_dump(mode="json")` without the item fields added for benchmark imports while they hold their
        defaults: what cache keys hash, so a concept that does not use them keeps the keys it had before."""
        data = self.model_dump(mode="json")
        for name in ITEM_SETS:
            data[name] = [{k: v for k, v in item.items() if k not in _NEW_FIELDS or v != _NEW_FIELDS[k]}
                          for item in data[name]]
        return data

    def to_file(self, path: str | Path) -> Path:
        from palimpsest.io import atomic_write_text

        path = Path(path)
        data = self.model_dump(mode="json", exclude_defaults=True)
        data["forget"] = self.stable_dump()["forget"]
        text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return atomic_write_text(path, text)


def _describe(error: ValidationError, data: dict) -> str:
    first = error.errors()[0]
    loc = list(first["loc"])
    where = []
    if len(loc) >= 2 and loc[0] in ITEM_SETS and isinstance(loc[1], int):
        where.append(f"{loc[0]} item {loc[1]}")
        items = data.get(loc[0]) or []
        if isinstance(items, list) and loc[1] < len(items) and isinstance(items[loc[1]], dict):
            prompt = str(items[loc[1]].get("prompt", ""))[:40]
            if prompt:
                where[-1] += f" ({prompt!r})"
        loc = loc[2:]
    field = ".".join(str(p) for p in loc) or ("(item)" if where else "(top level)")
    message = first["msg"]
    if first["type"] == "missing":
        message = "required field is missing"
    return f"{', '.join(where) + ', ' if where else ''}field '{field}': {message}"


def concept_from_dict(data: object, *, source: str = "<dict>") -> ConceptSpec:
    if not isinstance(data, dict):
        raise ConceptError(f"{source}: a concept file must hold a mapping with 'name' and 'forget', got {type(data).__name__}")
    try:
        return ConceptSpec.model_validate(data)
    except ValidationError as error:
        raise ConceptError(f"{source}: {_describe(error, data)}") from None


def load_concept(path: str | Path) -> ConceptSpec:
    """Read a ConceptSpec from YAML or JSON; errors name the file, the item and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConceptError(f"{path}: concept file not found (give a .yaml or .json ConceptSpec)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConceptError(f"{path}: cannot read the concept file ({error})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConceptError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first_line})") from None
    return concept_from_dict(data, source=str(path))
