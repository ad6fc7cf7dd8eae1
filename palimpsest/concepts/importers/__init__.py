"""`palimpsest concept import`: a ConceptSpec from the files a benchmark publishes (TOFU, MUSE, WMDP, RWKU).

Each format module says how its splits map onto the item sets and what it decided (subjects, prompts, scoring);
`import_concept` reads the files, builds every item (errors name the file, the row and the field) and returns the
spec with notes for the user. Nothing is written here: the caller writes the spec (ConceptSpec.to_file, atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from palimpsest.concepts.importers import muse, rwku, tofu, wmdp
from palimpsest.concepts.importers.common import Collected, Selection, dedupe
from palimpsest.concepts.importers.files import discover, one_format
from palimpsest.concepts.importers.prompts import PromptFormat
from palimpsest.concepts.spec import ITEM_SETS, ConceptError, ConceptSpec

FORMATS = ("tofu", "muse", "wmdp", "rwku")
TITLES = {"tofu": "TOFU", "muse": "MUSE", "wmdp": "WMDP", "rwku": "RWKU"}


def import_concept(fmt: str, paths: Sequence[Path | str], *, selection: Selection | None = None,
                   name: str | None = None, prompts: PromptFormat | None = None,
                   mc_format: str = "letters") -> tuple[ConceptSpec, list[str]]:
    """(spec, notes): the concept `fmt`'s files under `paths` describe, and what the import decided."""
    if fmt not in FORMATS:
        raise ConceptError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt != "wmdp" and mc_format != "letters":
        raise ConceptError("--mc-format applies to --format wmdp")
    selection = selection or Selection()
    prompts = prompts or PromptFormat()
    files, notes = one_format(discover([Path(p) for p in paths]))
    collected = Collected(files=files, prompts=prompts, notes=notes)
    if fmt == "tofu":
        tofu.build(collected, selection)
    elif fmt == "muse":
        muse.build(collected, selection)
    elif fmt == "wmdp":
        wmdp.build(collected, selection, mc_format=mc_format)
    else:
        rwku.build(collected, selection)
    for item_set in ITEM_SETS:
        collected.sets[item_set], dropped = dedupe(collected.sets[item_set])
        if dropped:
            collected.note(f"{item_set}: {dropped} repeated items (the same prompt and answer twice) left out")
    if not collected.sets["forget"]:
        raise ConceptError(f"the forget splits ({', '.join(collected.used.get('forget', []))}) hold no rows")
    forget_names = "+".join(collected.used.get("forget", [])) or "forget"
    spec = ConceptSpec(
        name=name or f"{fmt}-{forget_names}".replace("/", "-"),
        description=_description(fmt, collected),
        keywords=tuple(collected.keywords),
        **{item_set: tuple(collected.sets[item_set]) for item_set in ITEM_SETS},
    )
    return spec, collected.notes


def _description(fmt: str, collected: Collected) -> str:
    used = "; ".join(f"{role}: {', '.join(names)}" for role, names in collected.used.items() if names)
    return (f"Imported from {TITLES[fmt]} ({used}) by palimpsest concept import, with "
            f"{collected.prompts.describe()}.")


__all__ = ["FORMATS", "PromptFormat", "Selection", "import_concept"]
