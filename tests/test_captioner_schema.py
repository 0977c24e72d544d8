"""The answer schema is generated from the record types and agrees with the hand validator: a correct answer
passes both, and each kind of broken answer is refused by both (jsonschema as the reference validator)."""
import copy
import dataclasses

import jsonschema
import pytest
from fake_openai_server import GOOD_ANSWER, GOOD_DEFECT, strict_schema_problems

from mfsc_builder.captioners.schema import answer_schema, response_format, validate_answer
from mfsc_builder.records import ComponentView, DefectView, ForegroundView, ImageView

BROKEN = {
    "bad texture": lambda a: a["components"][0].update(texture="shiny"),
    "bad location": lambda a: a["components"][0].update(location="upper middle"),
    "missing colour": lambda a: a["components"][0].pop("colour"),
    "extra key": lambda a: a["components"][0].update(weight="1 kg"),
    "count as text": lambda a: a["foreground_view"].update(count="two"),
    "no caption": lambda a: a.pop("caption"),
    "components not a list": lambda a: a.update(components={"name": "x"}),
}


@pytest.mark.parametrize("kind", ["normal", "anomalous"])
def test_schema_is_strict_and_follows_the_record_types(kind):
    s = answer_schema(kind)
    assert not strict_schema_problems(s)
    comp = s["properties"]["components"]["items"]["properties"]
    asked = {f.name for f in dataclasses.fields(ComponentView)} - {"area"}   # area is measured, not asked
    assert set(comp) == asked
    assert set(s["properties"]["image_view"]["properties"]) == {f.name for f in dataclasses.fields(ImageView)}
    assert set(s["properties"]["foreground_view"]["properties"]) == {
        f.name for f in dataclasses.fields(ForegroundView)}
    if kind == "anomalous":
        assert set(s["properties"]["defect"]["properties"]) == {f.name for f in dataclasses.fields(DefectView)}
    else:
        assert s["properties"]["defect"] == {"type": "null"}
    rf = response_format("json_schema", kind)
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True and rf["json_schema"]["schema"] == s
    assert response_format("json_object", kind) == {"type": "json_object"}
    assert response_format("prompt", kind) is None


@pytest.mark.parametrize("kind", ["normal", "anomalous"])
def test_schema_and_validator_agree(kind):
    good = copy.deepcopy(dict(GOOD_ANSWER, defect=GOOD_DEFECT if kind == "anomalous" else None))
    good["components"][1]["location"] = "top left and top right"   # a repeated component's locations
    for schema in (answer_schema(kind), answer_schema(kind, max_string=64)):
        jsonschema.validate(good, schema)
    assert validate_answer(good, anomalous=kind == "anomalous")[1] == []
    for name, breaks in BROKEN.items():
        bad = copy.deepcopy(good)
        breaks(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, answer_schema(kind))
        fields_, errors = validate_answer(bad, anomalous=kind == "anomalous")
        if name != "extra key":  # the validator ignores extra keys; the strict schema forbids them
            assert fields_ is None and errors, name


def test_bounded_schema_for_local_decoding():
    s = answer_schema("normal", max_string=40)
    assert s["properties"]["components"]["maxItems"] == 12
    jsonschema.validate(dict(GOOD_ANSWER, caption="x" * 40), s)
    for caption in ("x" * 41, "", " leading space", 'a "quote"', "two\nlines"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(dict(GOOD_ANSWER, caption=caption), s)
    comp = dict(GOOD_ANSWER["components"][0], count=100)  # numbers are bounded too
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(GOOD_ANSWER, components=[comp]), s)
    d = answer_schema("defects")
    jsonschema.validate({"defects": ["scratch"]}, d)
    assert not strict_schema_problems(d)


def test_prompt_files_builtin_and_users_own(tmp_path):
    """The one place prompts come from: a built-in name or a user's file; its version and SHA-256 are kept;
    a bad file is one line naming it."""
    import hashlib

    from mfsc_builder.captioners.schema import PROMPT_DIR, load_prompt
    from mfsc_builder.errors import BuildError

    builtin = load_prompt("mfsc_v1")
    assert builtin.version == "mfsc_v1" and builtin.path == str(PROMPT_DIR / "mfsc_v1.txt")
    assert builtin.sha256 == hashlib.sha256((PROMPT_DIR / "mfsc_v1.txt").read_bytes()).hexdigest()
    mine = tmp_path / "my_prompt.md"
    mine.write_text("# version: acme-3\n### caption\nDescribe the $object_name as JSON.\n", encoding="utf-8")
    p = load_prompt(str(mine))
    assert p.version == "acme-3" and p.render("caption", object_name="pill") == "Describe the pill as JSON."
    with pytest.raises(BuildError, match="no '### defects' section"):
        p.render("defects")
    bad = {"noversion.txt": b"### caption\nx\n", "nocaption.txt": b"# version: a\n### defects\nx\n",
           "latin1.txt": "# version: a\n### caption\nd\xe9crire\n".encode("latin-1"),
           "huge.txt": b"# version: a\n### caption\n" + b"x" * 300_000}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BuildError) as err:
            load_prompt(str(tmp_path / name))
        assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BuildError, match="not found"):
        load_prompt(str(tmp_path / "missing.txt"))
