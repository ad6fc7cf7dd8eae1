"""MUSE (muse-bench/MUSE-News, MUSE-Books; Shi et al. 2024): news articles / Harry Potter books to forget.

Files, one folder per config: `knowmem/{forget_qa,retain_qa}` {question, answer} (few-shot examples in
`*_qa_icl`), `verbmem/forget` {prompt, gt}, `privleak/{forget,retain,holdout}` {text} (MUSE's own JSON: a list of
strings). A file outside a config folder is placed by its fields.

Mapping: forget = knowmem forget_qa + verbmem forget + privleak forget; retain = knowmem retain_qa + privleak
retain (retain2 in older releases); holdout = privleak holdout (MUSE's non-members); no neighbours. knowmem prompts
are MUSE's few-shot QA prompt (the `_icl` examples, then "Question: {q}\\nAnswer:"); verbmem prompts are the data
set's prefixes, answer its continuation `gt`. A privleak text is cut at the single space nearest its middle:
prompt = the first half, answer = the rest (prompt + " " + answer is the text again, so the membership attacks,
which score the full text, see MUSE's text). Every item is scored "rouge" (MUSE scores knowmem and verbmem by
ROUGE-L of the generated answer).
"""

from __future__ import annotations

from palimpsest.concepts.importers.common import Collected, Selection, require_forget
from palimpsest.concepts.importers.files import DataFile, Row, available, read_rows, split_names
from palimpsest.concepts.spec import ConceptError, Item

CONFIGS = ("knowmem", "verbmem", "privleak")
OTHER_CONFIGS = ("raw", "scal", "sust", "train")  # training corpora and their variants: not item sets
# per item set: the config's default split(s), first found wins
DEFAULT_SPLITS = {
    "forget": {"knowmem": ("forget_qa",), "verbmem": ("forget",), "privleak": ("forget",)},
    "retain": {"knowmem": ("retain_qa",), "privleak": ("retain", "retain2")},
    "holdout": {"privleak": ("holdout",)},
    "neighbours": {},
}


def config_of(file: DataFile) -> str | None:
    """The MUSE config of a file: its folder, or (outside a config folder) its fields."""
    if file.group in CONFIGS:
        return file.group
    if file.group in OTHER_CONFIGS:
        return None
    rows = read_rows(file)
    first = rows[0].value if rows else None
    if isinstance(first, str) or (isinstance(first, dict) and "text" in first):
        return "privleak"
    if isinstance(first, dict) and "gt" in first:
        return "verbmem"
    if isinstance(first, dict) and "question" in first:
        return "knowmem"
    return None


def build(collected: Collected, selection: Selection) -> None:
    placed: dict[tuple[str, str], list[DataFile]] = {}
    for file in collected.files:
        config = config_of(file)
        if config is not None:
            placed.setdefault((config, file.name if file.name != config else file.split), []).append(file)
    for role in ("forget", "retain", "holdout", "neighbours"):
        picked = _pick(collected, placed, role, selection.option(role))
        if role == "forget":
            require_forget(picked, collected.files, selection.forget, list(DEFAULT_SPLITS["forget"]))
        for config, split, files in picked:
            rows = [row for file in files for row in read_rows(file)]
            shots = _shots(placed, config, split)
            collected.add(role, [_item(collected, config, split, row, i, shots) for i, row in enumerate(rows)])
            collected.used.setdefault(role, []).append(f"{config}/{split}")
    forms = {it.form for it in collected.sets["forget"]}
    if collected.sets["holdout"] and forms - {"privleak"}:
        collected.note(f"MUSE: the forget set mixes {', '.join(sorted(forms))} items while the holdout set is "
                       "privleak only; the mia analyser compares every forget item with the holdout: use "
                       "--forget privleak for MUSE's PrivLeak")
    collected.note("MUSE items are scored 'rouge': correct when at least half the answer tokens are the top "
                   "prediction under teacher forcing; behaviour also reports the greedy answer's ROUGE-L recall")


def _pick(collected: Collected, placed: dict, role: str, option: str | None) -> list[tuple[str, str, list]]:
    defaults = DEFAULT_SPLITS[role]
    names, explicit = split_names(option, list(defaults))
    out = []
    for name in names:
        config, _, split = name.partition("/")
        if config not in CONFIGS:
            raise ConceptError(f"--{role} {name}: MUSE splits are knowmem, verbmem or privleak, or config/split "
                               "such as privleak/retain2")
        candidates = (split,) if split else (DEFAULT_SPLITS[role].get(config) or ())
        found = next(((config, s, placed[(config, s)]) for s in candidates if (config, s) in placed), None)
        if found is None:
            if explicit:
                have = ", ".join(f"{c}/{s}" for c, s in sorted(placed)) or available(collected.files)
                raise ConceptError(f"--{role} {name}: no MUSE file for it (found: {have})")
            continue
        out.append(found)
    if not explicit and not out and role not in ("forget", "neighbours"):
        collected.note(f"{role}: no MUSE {role} split was given, so the {role} set is empty")
    return out


def _shots(placed: dict, config: str, split: str) -> list[tuple[str, str]]:
    """MUSE's in-context examples for knowmem (forget_qa_icl beside forget_qa)."""
    if config != "knowmem" or (config, f"{split}_icl") not in placed:
        return []
    rows = [row for file in placed[(config, f"{split}_icl")] for row in read_rows(file)]
    return [(row.text("question"), row.text("answer")) for row in rows]


def _item(collected: Collected, config: str, split: str, row: Row, index: int,
          shots: list[tuple[str, str]]) -> Item:
    fact = f"muse:{config}/{split}:{index}"
    if config == "knowmem":
        return row.item({"prompt": "question"}, prompt=collected.prompts.question(row.text("question"), shots),
                        answer=row.text("answer"), fact_id=fact, form="knowmem", scoring="rouge")
    if config == "verbmem":
        return row.item({"prompt": "prompt", "answer": "gt"}, prompt=row.text("prompt"), answer=row.text("gt"),
                        fact_id=fact, form="verbmem", scoring="rouge")
    text = row.value if isinstance(row.value, str) else row.text("text")
    if not text.strip():
        raise row.error("text", "must not be blank")
    prompt, answer = split_text(text)
    if not prompt.strip() or not answer.strip():
        raise row.error("text", "needs two words or more to split into a prompt and an answer")
    return row.item({"prompt": "text", "answer": "text"}, prompt=prompt, answer=answer, fact_id=fact,
                    form="privleak", scoring="rouge")


def split_text(text: str) -> tuple[str, str]:
    """(prompt, answer) cut at the single space (no whitespace either side) nearest the middle of `text`, so that
    prompt + " " + answer == text; ("", text) when there is none."""
    middle = len(text) // 2
    spaces = [i for i, c in enumerate(text) if c == " " and 0 < i < len(text) - 1
              and not text[i - 1].isspace() and not text[i + 1].isspace()]
    if not spaces:
        return "", text
    cut = min(spaces, key=lambda i: abs(i - middle))
    return text[:cut], text[cut + 1:]
