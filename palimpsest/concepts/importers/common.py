"""What every importer shares: the splits picked per item set, the items collected, the notes for the user."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from palimpsest.concepts.importers.files import DataFile, available, find, split_names
from palimpsest.concepts.importers.prompts import PromptFormat
from palimpsest.concepts.spec import ITEM_SETS, ConceptError, Item


@dataclass(frozen=True)
class Selection:
    """The --forget/--retain/--holdout/--neighbours values: comma-separated split names, None for the format's
    defaults, "none" for no split."""

    forget: str | None = None
    retain: str | None = None
    holdout: str | None = None
    neighbours: str | None = None

    def option(self, role: str) -> str | None:
        return getattr(self, role)


@dataclass
class Collected:
    """Items per set, what the import decided (notes), the subjects of the forget set (keywords), the splits read."""

    files: list[DataFile]
    prompts: PromptFormat
    sets: dict[str, list[Item]] = field(default_factory=lambda: {name: [] for name in ITEM_SETS})
    notes: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    used: dict[str, list[str]] = field(default_factory=dict)

    def pick(self, role: str, option: str | None, default: Sequence[str], *,
             prefer: Callable[[str], Sequence[str]] | None = None) -> list[tuple[str, list[DataFile]]]:
        """(split name, its files) for each name of `option` (or `default`); a default split with no file is left
        out with a note, a named one is an error. `prefer(name)`: the names to look for in its place, first found
        wins (TOFU: forget10_perturbed before forget10)."""
        wanted, explicit = split_names(option, default)
        out = []
        for name in wanted:
            found = next((hit for alias in (prefer(name) if prefer else [name]) if (hit := find(self.files, alias))),
                         [])
            if not found:
                if explicit:
                    raise ConceptError(f"--{role} {name}: no file holds the split '{name}' (splits found: "
                                       f"{available(self.files)})")
                continue
            out.append((name, found))
        if not explicit and not out and role != "forget" and default:
            self.notes.append(f"{role}: none of the default splits ({', '.join(default)}) was given, so the "
                              f"{role} set is empty")
        self.used.setdefault(role, []).extend(name for name, _ in out)
        return out

    def add(self, item_set: str, items: Sequence[Item]) -> None:
        self.sets[item_set].extend(items)

    def note(self, text: str) -> None:
        self.notes.append(text)


def require_forget(picked: list, files: Sequence[DataFile], option: str | None, default: Sequence[str]) -> None:
    if not picked:
        wanted = option if option is not None else ", ".join(default)
        raise ConceptError(f"no forget split found ({wanted}); splits found: {available(files)} "
                           "(name one with --forget)")


def dedupe(items: list[Item]) -> tuple[list[Item], int]:
    """The items without exact repeats (the same data set given twice, RWKU's All/ beside Target/)."""
    seen, out = set(), []
    for item in items:
        key = (item.prompt, item.answer, item.form, item.subject, item.choices)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out, len(items) - len(out)
