"""`mfsc import-official`: a file in the shape of the public PromptAD/fine_grained_prompts.py becomes a `classes`
caption dataset that `detector train` uses; the file is parsed, never run; bad fields are one line naming the class.

The file here is written by the test (two made-up classes of the synthetic set), never a copy of the public one.
"""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector.store.captions import load_class_record
from mfsc_builder.cli import app as mfsc_app

runner = CliRunner()
TINY_BACKBONE = Path(__file__).parent / "assets" / "fgad-tiny-test.json"

# The public module's shape: Python literals with trailing commas and comments, other records, code at the
# top level and under __main__ (both would leave a file behind if the module were executed).
SOURCE = '''\
import os
open(os.path.join({sentinel!r}, "top-level-ran"), "w").close()

class_mapping = {{
    "pill_box": "pill box",
}}

state_anomaly = ["damaged {{}}", "{{}} with flaw"]

class_state_abnormal_refined = {{
    'pill_box': ['{{}} with crack', '{{}} with missing lid', ],
    'hex_nut': ['{{}} with scratch', '{{}} squeezed with compression'],
}}

fine_grained_normal_prompts_v3 = [
    {{
    "Level_1": [
        {{
            "foreground": "pill box",
            "background": "white",
        }},
    ],
    "Level_2": [
        {{
            "entity": ["lid", "box body"],
            "number": ["1", "1"],
            "location": ["top", "center"],
            "relation": "The lid sits on the box body.",
        }},
    ],
    "Level_3": [
        {{
            "direction": ["None", "None"],
            "color": ["blue", "grey"],
            "texture": ["smooth", "smooth"],
            "shape": ["rectangular", "rectangular"],
            "entity_caption": ["A blue lid at the top of the box.", "A grey box body at the center, seen centrally."],
        }},
    ],
    "caption": "A grey pill box with a blue lid on a white background.",
    }},
    {{
    "Level_1": [{{"foreground": "hex nut", "background": "black"}}],
    "Level_2": [{{"entity": ["thread", "thread"], "number": ["multiple", "1"], "location": ["left", "right"],
                 "relation": "Two threads face each other."}}],
    "Level_3": [{{"direction": ["None"], "color": ["silver"], "texture": ["rough"], "shape": ["hexagonal"],
                 "entity_caption": ["A thread on the left.", "A thread on the right."]}}],
    "caption": "A silver hex nut on a black background.",
    }},
]

total_classes2id = {{
    'pill_box': 0,
    'hex_nut': 1,  # comment
}}

fine_grained_color_list = ['blue', 'grey', 'red', 'silver']
fine_grained_texture_list = ['smooth', 'rough', 'woven']
fine_grained_shape_list = ['rectangular', 'hexagonal', 'round']
fine_grained_location_list = ['top', 'center', 'left', 'right', 'bottom']

if __name__ == '__main__':
    open(os.path.join({sentinel!r}, "main-ran"), "w").close()
'''


def write_source(folder: Path, text: str | None = None) -> Path:
    sentinel = folder / "sentinel"
    sentinel.mkdir(parents=True, exist_ok=True)
    path = folder / "fine_grained_prompts.py"
    path.write_text(text if text is not None else SOURCE.format(sentinel=str(sentinel)), encoding="utf-8")
    return path


def texts_by_group(record: dict) -> dict[str, dict]:
    return {t["group"]: t for t in record["texts"]}


def test_import_writes_the_public_texts_and_never_runs_the_file(tmp_path):
    src = write_source(tmp_path)
    out = tmp_path / "official"
    res = runner.invoke(mfsc_app, ["import-official", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not any((tmp_path / "sentinel").iterdir())  # neither the top-level code nor __main__ ran

    rec = load_class_record(out, "pill_box")  # the detector's own reader accepts it (schema v1)
    assert rec["object_name"] == "pill box" and rec["source_layout"] == "folder"
    assert rec["provenance"]["backend"] == "official" and rec["provenance"]["revision"].startswith("sha256:")
    assert rec["defect_states"] == ["crack", "missing lid"]
    assert rec["defect_vocab"] == "file:fine_grained_prompts.py"
    assert [c["name"] for c in rec["components"]] == ["lid", "box body"]
    t = texts_by_group(rec)
    cap = "A grey pill box with a blue lid on a white background."
    assert t["image"]["normal"] == [cap]
    assert t["image"]["abnormal"] == [cap.replace("pill box", "pill box with crack"),
                                      cap.replace("pill box", "pill box with missing lid")]
    assert t["background"] == {"level": "background", "group": "background", "normal": ["white background"],
                               "abnormal": ["white background with crack", "white background with missing lid"]}
    # components: lower-cased, state after the entity, location swapped for the k-th other location
    assert t["lid"]["normal"] == ["A blue lid at the top of the box."]
    assert t["lid"]["abnormal"] == ["a blue lid with crack at the center of the box.",
                                    "a blue lid with missing lid at the left of the box."]
    assert t["box body"]["abnormal"][0] == "a grey box body with crack at the top, seen top."
    assert t["relation"]["abnormal"] == ["The lid with crack sits on the box body with crack.",
                                         "The lid with missing lid sits on the box body with missing lid."]
    assert t["colour"]["normal"] == ["blue.grey"] and t["colour"]["abnormal"] == ["red", "silver"]
    assert t["texture"]["normal"] == ["smooth.smooth"] and t["texture"]["abnormal"] == ["rough", "woven"]

    nut = load_class_record(out, "hex_nut")  # repeated entities get distinct groups; "multiple" counts 0
    assert [c["name"] for c in nut["components"]] == ["thread (left)", "thread (right)"]
    assert [c["count"] for c in nut["components"]] == [0, 1]
    assert nut["defect_states"] == ["scratch", "squeezed with compression"]
    assert nut["components"][0]["colour"] == "silver"
    info = json.loads((out / "import_info.json").read_text())
    assert info["classes"] == ["pill_box", "hex_nut"] and info["command"] == "mfsc import-official"

    # a second import replaces its own output; a classes folder it did not write is refused
    res = runner.invoke(mfsc_app, ["import-official", str(src), "--out", str(out), "--classes", "hex_nut"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "import_info.json").read_text())["classes"] == ["hex_nut"]
    foreign = tmp_path / "build"
    (foreign / "classes").mkdir(parents=True)
    res = runner.invoke(mfsc_app, ["import-official", str(src), "--out", str(foreign)])
    assert res.exit_code == 1 and "not written by `mfsc import-official`" in res.output
    assert list((foreign / "classes").iterdir()) == []


def test_detector_trains_on_the_imported_captions(demo_root, tmp_path):
    from detector.cli import app as detector_app

    src = write_source(tmp_path)
    caps = tmp_path / "official"
    assert runner.invoke(mfsc_app, ["import-official", str(src), "--out", str(caps), "--classes", "pill_box"]
                         ).exit_code == 0
    ckpt = tmp_path / "ckpt"
    res = runner.invoke(detector_app, ["train", "--captions", str(caps), "--data", str(demo_root), "--class",
                                       "pill_box", "--shots", "1", "--seed", "0", "--out", str(ckpt), "--backbone",
                                       str(TINY_BACKBONE), "--pretrained", "none", "--epochs", "1",
                                       "--image-epochs", "1"])
    assert res.exit_code == 0, res.output
    meta = json.loads((ckpt / "config.json").read_text())
    meta = meta.get("meta", meta)
    assert meta["record"]["provenance"]["backend"] == "official"
    assert meta["record"]["texts"] == load_class_record(caps, "pill_box")["texts"]


def _edit(old: str, new: str):
    def apply(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return apply


@pytest.mark.parametrize("edit, words", [
    (_edit('"entity_caption": ["A blue lid', '"caption_of_entity": ["A blue lid'),
     ["'pill_box'", "lacks Level_3.entity_caption"]),
    (_edit('"relation": "The lid', '"summary": "x", "relation": "The lid'),
     ["'pill_box'", "unknown field(s) Level_2.summary"]),
    (_edit("'hex_nut': ['{} with scratch', '{} squeezed with compression'],", ""),
     ["'hex_nut'", "no defect states"]),
    (_edit("'hex_nut': 1,", "'hex_nut': 7,"), ["'hex_nut'", "index 7", "holds 2 records"]),
    (_edit('"number": ["1", "1"],', '"number": ["1"],'), ["'pill_box'", "2 entities but 1 in Level_2.number"]),
    (_edit("'pill_box': ['{} with crack', '{} with missing lid', ],", "'pill_box': ['cracked'],"),
     ["'pill_box'", "one '{}' each"]),
    (_edit('"foreground": "pill box",', '"foreground": "pill jar",'), ["'pill_box'", "does not contain the foreground"]),
    (_edit("fine_grained_shape_list = ['rectangular', 'hexagonal', 'round']", "fine_grained_shape_list = sorted([])"),
     ["fine_grained_shape_list is not a literal"]),
    (_edit("fine_grained_shape_list = ", "fine_grained_shapes = "), ["no module-level fine_grained_shape_list"]),
    (_edit("'hex_nut': 1,  # comment", "'hex_nut': 1,,"), ["line", "not valid Python"]),
])
def test_bad_fields_are_one_line_naming_the_class(tmp_path, edit, words):
    src = write_source(tmp_path)
    src.write_text(edit(src.read_text()))
    out = tmp_path / "out"
    res = runner.invoke(mfsc_app, ["import-official", str(src), "--out", str(out)], env={"COLUMNS": "300"})
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in text, res.output
    assert all(w in text for w in words), text
    assert not (out / "classes").exists()


def test_an_unknown_class_is_named_with_the_ones_there(tmp_path):
    src = write_source(tmp_path)
    res = runner.invoke(mfsc_app, ["import-official", str(src), "--out", str(tmp_path / "o"), "--classes", "bolt"],
                        env={"COLUMNS": "300"})
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "'bolt' is not in total_classes2id" in text and "hex_nut, pill_box" in text
