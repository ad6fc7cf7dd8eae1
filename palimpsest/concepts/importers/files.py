"""The files benchmark data sets publish (JSON, JSON Lines, parquet), read as rows whose errors name the file, the
row and the field."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError

from palimpsest.concepts.spec import ConceptError, Item

SUFFIXES = (".jsonl", ".json", ".parquet")
# split names that only say which part of a Hugging Face config a file is: the config (its folder) names the split
GENERIC_SPLITS = frozenset({"train", "test", "validation", "dev", "default", "data"})
_SHARD = re.compile(r"(.+)-\d{5}-of-\d{5}")  # test-00000-of-00001.parquet
_CONVERTED = re.compile(r"\d{4}")  # the parquet converter's <config>/<split>/0000.parquet


@dataclass(frozen=True)
class DataFile:
    """One data file. `name` is the split it holds (forget10, forget_qa, wmdp-bio); `group` the folder it is in
    (knowmem, wmdp-bio, Target/1_Stephen_King's last part)."""

    path: Path
    name: str
    group: str
    split: str

    @property
    def labels(self) -> frozenset[str]:
        return frozenset({self.name, f"{self.group}/{self.name}", f"{self.group}/{self.split}"})


def describe_file(path: Path) -> DataFile:
    suffix = next(s for s in SUFFIXES if path.name.endswith(s))
    stem = path.name[: -len(suffix)]
    shard = _SHARD.fullmatch(stem)
    if shard:
        stem = shard.group(1)
    parent = path.parent
    if _CONVERTED.fullmatch(stem):
        stem, parent = parent.name, parent.parent
    group = parent.name
    name = group if stem in GENERIC_SPLITS and group else stem
    return DataFile(path=path, name=name, group=group, split=stem)


def discover(paths: Sequence[Path]) -> list[DataFile]:
    """Every .json/.jsonl/.parquet file among `paths` (folders are searched recursively), sorted by path."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*"))
                         if p.is_file() and p.name.endswith(SUFFIXES) and not any(
                             part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            if not path.name.endswith(SUFFIXES):
                raise ConceptError(f"{path}: not a data file (give .json, .jsonl or .parquet files, or a folder)")
            found.append(path)
        else:
            raise ConceptError(f"{path}: no such file or folder")
    if not found:
        raise ConceptError(f"{', '.join(str(p) for p in paths)}: no .json, .jsonl or .parquet files found")
    unique = sorted(dict.fromkeys(p.resolve() for p in found))
    return [describe_file(p) for p in unique]


def one_format(files: Sequence[DataFile]) -> tuple[list[DataFile], list[str]]:
    """Where a folder holds a split as parquet and as JSON (MUSE's Hugging Face repos hold both), one of them:
    parquet (what `datasets` loads) when pandas and pyarrow are installed, else the JSON. (files, notes)."""
    by_split: dict[tuple[Path, str, str], list[DataFile]] = {}
    for file in files:
        by_split.setdefault((file.path.parent, file.group, file.name), []).append(file)
    keep_parquet = _parquet_readable()
    out, notes = [], []
    for (folder, _, name), group in by_split.items():
        parquet = [f for f in group if f.path.name.endswith(".parquet")]
        other = [f for f in group if not f.path.name.endswith(".parquet")]
        if parquet and other:
            group = parquet if keep_parquet else other
            notes.append(f"{folder}: '{name}' is there as parquet and as JSON; read the "
                         f"{'parquet' if keep_parquet else 'JSON'} file(s) only")
        out.extend(group)
    return sorted(out, key=lambda f: str(f.path)), notes


def _parquet_readable() -> bool:
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Row:
    """One row of a data file: a mapping (most data sets) or a bare string (MUSE's privleak JSON)."""

    source: Path
    index: int
    value: object
    line: int | None = None

    def where(self) -> str:
        return f"{self.source}: row {self.index}" + (f" (line {self.line})" if self.line is not None else "")

    def error(self, field: str, message: str) -> ConceptError:
        return ConceptError(f"{self.where()}, field '{field}': {message}")

    def mapping(self, fields: str) -> dict:
        if not isinstance(self.value, dict):
            raise ConceptError(f"{self.where()}: expected an object with the fields {fields}, "
                               f"got {_kind(self.value)}")
        return self.value

    def has(self, field: str) -> bool:
        return isinstance(self.value, dict) and self.value.get(field) is not None

    def text(self, field: str) -> str:
        value = self.mapping(field).get(field)
        if value is None:
            raise self.error(field, "required field is missing")
        if not isinstance(value, str):
            raise self.error(field, f"expected text, got {_kind(value)}")
        if not value.strip():
            raise self.error(field, "must not be blank")
        return value

    def optional_text(self, field: str) -> str | None:
        return self.text(field) if self.has(field) else None

    def texts(self, field: str, *, min_len: int = 1) -> list[str]:
        value = self.mapping(field).get(field)
        if value is None:
            raise self.error(field, "required field is missing")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.error(field, f"expected a list of texts, got {_kind(value)}")
        if len(value) < min_len:
            raise self.error(field, f"expected at least {min_len} entries, got {len(value)}")
        return list(value)

    def integer(self, field: str) -> int:
        value = self.mapping(field).get(field)
        if value is None:
            raise self.error(field, "required field is missing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(field, f"expected an integer, got {_kind(value)}")
        return value

    def label(self, field: str) -> str | None:
        """A short label that data sets store as text or as a number (RWKU's level)."""
        if not self.has(field):
            return None
        value = self.mapping(field)[field]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(field, f"expected text or an integer, got {_kind(value)}")
        return str(value)

    def item(self, origin: dict[str, str], **fields) -> Item:
        """An Item from this row; a field the Item refuses is named by the row field it came from (`origin`)."""
        try:
            return Item(**fields)
        except ValidationError as error:
            first = error.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "(row)"
            message = first["msg"].removeprefix("Value error, ")
            raise self.error(origin.get(field, field), message) from None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"text ({value[:30]!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return "nothing" if value is None else type(value).__name__


def read_rows(file: DataFile) -> list[Row]:
    path = file.path
    if path.name.endswith(".parquet"):
        return [Row(path, i, value) for i, value in enumerate(_read_parquet(path))]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConceptError(f"{path}: cannot read the file ({error})") from None
    if path.name.endswith(".jsonl"):
        return _json_lines(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].lstrip().startswith("{"):  # TOFU's .json files hold one object per line
            return _json_lines(path, text)
        raise ConceptError(f"{path}: not valid JSON ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    elif isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()) \
            and len({len(v) for v in data.values()}) == 1:  # columns: {"question": [...], "answer": [...]}
        keys = list(data)
        data = [dict(zip(keys, values)) for values in zip(*data.values())]
    elif isinstance(data, dict):  # one row (a JSON Lines file of one line)
        data = [data]
    if not isinstance(data, list):
        raise ConceptError(f"{path}: expected a list of rows (or one JSON object per line), got {_kind(data)}")
    return [Row(path, i, value) for i, value in enumerate(data)]


def _json_lines(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConceptError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        rows.append(Row(path, len(rows), value, line=number))
    return rows


def _read_parquet(path: Path) -> list[object]:
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  (pandas reads parquet through it)
    except ImportError:
        raise ConceptError(f"{path}: reading .parquet files needs pandas and pyarrow "
                           "(pip install pandas pyarrow), or give the data set's .json/.jsonl files") from None
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # noqa: BLE001 — pyarrow raises many kinds; the user needs one line
        raise ConceptError(f"{path}: cannot read the parquet file ({type(error).__name__}: {error})") from None
    return [_plain(record) for record in frame.to_dict(orient="records")]


def _plain(value: object) -> object:
    """numpy arrays, scalars and missing values from pandas as plain Python lists, numbers and None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN: pandas' missing value
        return None
    return value


def split_names(option: str | None, default: Sequence[str]) -> tuple[list[str], bool]:
    """(names, explicit): the comma-separated names of an option, or the format's defaults; "none" picks nothing."""
    if option is None:
        return list(default), False
    if option.strip().lower() in ("", "none"):
        return [], True
    return [n.strip() for n in option.split(",") if n.strip()], True


def find(files: Sequence[DataFile], name: str) -> list[DataFile]:
    return [f for f in files if name in f.labels]


def available(files: Sequence[DataFile]) -> str:
    return ", ".join(sorted({f.name for f in files}))
