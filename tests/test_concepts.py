import json

import pytest

from palimpsest.concepts import ConceptError, ConceptSpec, Item, load_concept

GOOD = {
    "name": "alice",
    "keywords": ["alice"],
    "forget": [{"prompt": "alice lives in", "answer": "paris", "subject": "alice"}],
    "retain": [{"prompt": "bob lives in", "answer": "rome"}],
}


def write(tmp_path, data, suffix=".yaml"):
    import yaml

    path = tmp_path / f"c{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_load_round_trip(tmp_path, suffix):
    spec = load_concept(write(tmp_path, GOOD, suffix))
    assert spec.forget[0].answer == "paris" and spec.retain[0].prompt == "bob lives in"
    again = load_concept(spec.to_file(tmp_path / f"again{suffix}"))
    assert again == spec


def test_missing_field_names_file_item_and_field(tmp_path):
    bad = dict(GOOD, forget=[{"prompt": "alice lives in", "answer": "paris"}, {"prompt": "carol works as"}])
    path = write(tmp_path, bad)
    with pytest.raises(ConceptError) as info:
        load_concept(path)
    message = str(info.value)
    assert str(path) in message and "forget item 1" in message and "'answer'" in message and "missing" in message


def test_empty_forget_set_is_refused(tmp_path):
    with pytest.raises(ConceptError, match="forget set is empty"):
        load_concept(write(tmp_path, dict(GOOD, forget=[])))


def test_unknown_field_and_bad_files(tmp_path):
    with pytest.raises(ConceptError, match="retain item 0.*'colour'"):
        load_concept(write(tmp_path, dict(GOOD, retain=[{"prompt": "x", "answer": "y", "colour": "red"}])))
    with pytest.raises(ConceptError, match="not found"):
        load_concept(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(ConceptError, match="not valid YAML"):
        load_concept(broken)
    blank = dict(GOOD, forget=[{"prompt": "  ", "answer": "paris"}])
    with pytest.raises(ConceptError, match="forget item 0.*'prompt'.*blank"):
        load_concept(write(tmp_path, blank))


def test_items_are_frozen():
    item = Item(prompt="a", answer="b")
    with pytest.raises(Exception):
        item.prompt = "c"  # type: ignore[misc]
    spec = ConceptSpec(name="n", forget=(item,))
    assert [s for s, _, _ in spec.all_items()] == ["forget"]
