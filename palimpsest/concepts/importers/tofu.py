"""TOFU (locuslab/TOFU; Maini et al. 2024): question-answer pairs about 200 fictitious authors, 20 per author.

Files: `forget01/05/10`, `retain90/95/99`, `holdout01/05/10` {question, answer}; `*_perturbed` (forget, retain)
{question, answer, paraphrased_question, paraphrased_answer, perturbed_answer: [...]}; `real_authors_perturbed` and
`world_facts_perturbed` {question, answer, perturbed_answer} (`real_authors`/`world_facts` without perturbations).

Mapping: forget = the forget split (its `_perturbed` file when given: the same rows with the extra fields), each
row's paraphrased_question a paraphrase item of the same fact; retain = `retain_perturbed` (the 400-row evaluation
retain set open-unlearning scores) or, without it, `retain{100 - N}` of forget N; holdout = `holdout{N}`; neighbours
= real authors and world facts. Every item is scored "rouge" (TOFU scores generated answers by ROUGE-L recall).

TOFU has no author field. The data set lists each author's 20 questions together, so a split of 20·k rows is cut
into blocks of 20 and the author of a block is the capitalised name (two words or more, outside quoted titles)
that most of its questions and answers mention; a block where no name stands out is left without a subject.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

from palimpsest.concepts.importers.common import Collected, Selection, require_forget
from palimpsest.concepts.importers.files import DataFile, Row, read_rows
from palimpsest.concepts.spec import Item

PER_AUTHOR = 20  # TOFU's questions per author, listed together
ORIGIN = {"prompt": "question", "answer": "answer", "paraphrased_answer": "paraphrased_answer",
          "perturbed_answers": "perturbed_answer"}


def build(collected: Collected, selection: Selection) -> None:
    files = collected.files
    forget = collected.pick("forget", selection.forget, ["forget10"], prefer=_perturbed_first)
    require_forget(forget, files, selection.forget, ["forget10"])
    sizes = [m.group(1) for name, _ in forget if (m := re.fullmatch(r"forget(\d\d)(?:_perturbed)?", name))]
    size = sizes[0] if sizes else None
    present = {label for f in files for label in f.labels}
    retain_default = ["retain_perturbed"] if "retain_perturbed" in present else (
        [f"retain{100 - int(size):02d}"] if size else [])
    neighbour_default = ["real_authors", "world_facts"]  # their _perturbed files first (prefer)
    authors: set[str] = set()
    for name, found in forget:
        rows, perturbed = _rows(found)
        subjects = _subjects(collected, name, rows)
        authors.update(s for s in subjects if s)
        for i, (row, subject) in enumerate(zip(rows, subjects)):
            fact = f"tofu:{name}:{i}"
            collected.add("forget", [_item(collected, row, perturbed, fact_id=fact, subject=subject, form="trained")])
            if row.has("paraphrased_question"):
                question = collected.prompts.question(row.text("paraphrased_question"))
                collected.add("paraphrases", [row.item(
                    {"prompt": "paraphrased_question"}, prompt=question, answer=row.text("answer"), fact_id=fact,
                    subject=subject, form="paraphrased_question", scoring="rouge")])
    for role, default in (("retain", retain_default), ("holdout", [f"holdout{size}"] if size else []),
                          ("neighbours", neighbour_default)):
        for name, found in collected.pick(role, selection.option(role), default, prefer=_perturbed_first):
            rows, perturbed = _rows(found)
            subjects = [None] * len(rows) if role == "neighbours" else _subjects(collected, name, rows)
            form = name.removesuffix("_perturbed") if role == "neighbours" else "trained"
            collected.add(role, [_item(collected, row, perturbed, fact_id=f"tofu:{name}:{i}", subject=subject,
                                       form=form) for i, (row, subject) in enumerate(zip(rows, subjects))])
    collected.keywords.extend(sorted(authors))
    collected.note("TOFU items are scored 'rouge': correct when at least half the answer tokens are the top "
                   "prediction under teacher forcing; behaviour also reports the greedy answer's ROUGE-L recall")


def _perturbed_first(name: str) -> list[str]:
    """forget10 -> forget10_perturbed when given (the same questions with paraphrases and perturbed answers)."""
    return [name] if name.endswith("_perturbed") else [f"{name}_perturbed", name]


def _rows(found: Sequence[DataFile]) -> tuple[list[Row], frozenset]:
    """The rows of a split's files, and the files that must carry perturbed answers (the *_perturbed ones)."""
    rows = [row for file in found for row in read_rows(file)]
    return rows, frozenset(f.path for f in found if f.name.endswith("_perturbed"))


def _item(collected: Collected, row: Row, perturbed: frozenset, *, fact_id: str, subject: str | None,
          form: str) -> Item:
    wrong = row.texts("perturbed_answer") if row.source in perturbed or row.has("perturbed_answer") else []
    return row.item(ORIGIN, prompt=collected.prompts.question(row.text("question")), answer=row.text("answer"),
                    fact_id=fact_id, subject=subject, form=form,
                    paraphrased_answer=row.optional_text("paraphrased_answer"),
                    perturbed_answers=tuple(wrong), scoring="rouge")


def _subjects(collected: Collected, name: str, rows: Sequence[Row]) -> list[str | None]:
    if not rows:
        return []
    if len(rows) % PER_AUTHOR:
        collected.note(f"{name}: {len(rows)} rows are not blocks of {PER_AUTHOR} questions per author (TOFU's "
                       "order), so no subject (author) was set")
        return [None] * len(rows)
    out: list[str | None] = []
    for start in range(0, len(rows), PER_AUTHOR):
        block = rows[start:start + PER_AUTHOR]
        out.extend([author_of([f"{r.text('question')} {r.text('answer')}" for r in block])] * len(block))
    winners = Counter(a for a in out[::PER_AUTHOR] if a)
    repeated = {a for a, n in winners.items() if n > 1}  # one name winning two blocks: not one author per block
    out = [None if a in repeated else a for a in out]
    missing = sum(a is None for a in out[::PER_AUTHOR])
    blocks = len(rows) // PER_AUTHOR
    if missing:
        collected.note(f"{name}: no author name stood out in {missing} of {blocks} blocks of {PER_AUTHOR} "
                       "questions; their items have no subject")
    return out


# capitalised words that open a sentence or a question rather than a name
_STOP = frozenset("""A An The In On At By For From With Of And Or But As To Into Over After Before During Since
Under Upon About Through What Which Who Whom Whose Where When Why How Is Are Was Were Be Been Being Do Does Did Can
Could Would Should Will Shall May Might Must Has Have Had Yes No Not This That These Those His Her Hers Their Its It
He She They We You I My Our Your One Two Some Many Most Several Both Each Every Any All Also Apart Aside Besides
Although While Though Despite Born Author Authors Writer Writers Novelist Poet Renowned Famous Celebrated Acclaimed
Notable Known Please Describe Name Tell Explain Give List Absolutely Certainly Indeed However Moreover Furthermore
Additionally Such""".split())
_PARTICLES = frozenset({"de", "da", "del", "della", "di", "van", "von", "der", "den", "bin", "binti", "ibn", "al",
                        "el", "le", "la", "du", "dos", "das", "y", "e", "ben", "bint", "ter", "ten", "zu"})
_WORD = re.compile(r"[^\W\d_][\w'’.\-]*")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”|'[A-Z][^']*'")


def author_of(texts: Sequence[str]) -> str | None:
    """The name most of `texts` mention: the capitalised run of two words or more found in the most texts, when it
    is in at least a quarter of them (and 3) and no other run (not part of it) is as frequent."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(name_runs(text)))
    if not counts:
        return None
    best, n = counts.most_common(1)[0]
    longer = [c for c, k in counts.items() if c != best and f" {best} " in f" {c} " and 2 * k >= n]
    if longer:
        best = max(longer, key=lambda c: (counts[c], len(c)))
        n = counts[best]
    if n < max(3, math.ceil(len(texts) / 4)):
        return None
    rivals = [k for c, k in counts.items() if f" {c} " not in f" {best} " and f" {best} " not in f" {c} "]
    if rivals and max(rivals) >= n:
        return None
    return best


def name_runs(text: str) -> list[str]:
    """Maximal runs of capitalised words (name particles inside) separated by spaces only, quoted titles removed,
    opening function words and possessives stripped: the runs of two words or more."""
    text = _QUOTED.sub(" | ", text)
    runs: list[list[str]] = []
    current: list[str] = []
    last_end = 0
    for match in _WORD.finditer(text):
        word, gap = match.group(), text[last_end:match.start()]
        last_end = match.end()
        if current and not gap.isspace():
            runs.append(current)
            current = []
        if word[0].isupper() or (current and word in _PARTICLES):
            current.append(word)
            if word.endswith(("'s", "’s")) or (word.endswith(".") and len(word.rstrip(".")) > 1):
                runs.append(current)  # "Al-Kuwaiti's books", "born in Kuwait."
                current = []
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    out = []
    for run in runs:
        words = [w.removesuffix("'s").removesuffix("’s") for w in run]
        words = [w.rstrip(".") if len(w.rstrip(".")) > 1 else w for w in words]
        while words and (words[0] in _STOP or words[0] in _PARTICLES):
            words = words[1:]
        while words and words[-1] in _PARTICLES:
            words = words[:-1]
        if len(words) >= 2:
            out.append(" ".join(words))
    return out
