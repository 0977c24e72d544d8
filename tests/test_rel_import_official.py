"""`mfsc import-official` under a hostile user (issue 22): bounded input, one line for every bad file, never a
traceback; a user's folder is never written into; one run at a time per --out.

Every hostile file is generated here, in tmp_path; the well-formed one is the made-up two-class file of
``test_import_official``.
"""
import json
import time
from pathlib import Path

import pytest
from test_import_official import write_source
from typer.testing import CliRunner

from fsad_data.folder_lock import lock_beside
from mfsc_builder import official
from mfsc_builder.cli import app as mfsc_app

runner = CliRunner()


def run_import(src: Path, out: Path, *extra: str):
    res = runner.invoke(mfsc_app, ["import-official", str(src), "--out", str(out), *extra])
    return res, " ".join(res.output.split())


def one_line_error(res, src: Path, *words: str) -> None:
    """Exit 1, one line on the terminal naming the file and saying what is wrong; no traceback."""
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert str(src) in lines[0], lines[0]
    assert all(w in lines[0] for w in words), lines[0]


def replace_once(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ------------------------------------------------------------------------------------------ 1. size bound
def test_a_file_over_the_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    src = tmp_path / "fine_grained_prompts.py"
    with open(src, "wb") as fh:  # the hostile 45 MB of the report, as a sparse file (instant, no disk)
        fh.truncate(45 * 10**6)
    reads = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: reads.append(self) or real_open(self, *a, **k))
    res, _ = run_import(src, tmp_path / "out")
    one_line_error(res, src, "45000000 bytes", "512 KiB", "public file is about 100 KB",
                   "fine_grained_normal_prompts_old")  # how to proceed: drop the records the importer never reads
    assert src not in reads  # refused on its size alone
    assert not (tmp_path / "out").exists()


def test_the_bound_keeps_the_public_size_with_room(tmp_path):
    """A file just under the bound (a well-formed file padded with a comment) is read as usual."""
    src = write_source(tmp_path)
    text = src.read_text()
    pad = official.MAX_BYTES - len(text.encode()) - 1
    src.write_text(text + "#" * (pad - 1) + "\n")
    assert src.stat().st_size == official.MAX_BYTES - 1
    res, _ = run_import(src, tmp_path / "out")
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------- 2. bounded parse, one line
@pytest.mark.parametrize("expr, words", [
    ("-" * 300_000 + "1", ["nested too deeply"]),       # MemoryError (the parser's stack) before the fix
    ("not " * 100_000 + "1", ["nested too deeply"]),    # MemoryError
    ("not " * 200_000 + "1", ["512 KiB"]),              # the report's 200k `not`: over the size bound now
    ("1+" * 100_000 + "1", ["nested too deeply"]),      # RecursionError in ast before the fix
    ("1+" * 300_000 + "1", ["512 KiB"]),                # the report's 300k `1+1+…`
    ("[" * 300 + "]" * 300, ["not valid Python"]),      # the parser's own nesting limit: a SyntaxError
], ids=["unary-minus", "not-100k", "not-200k", "plus-100k", "plus-300k", "brackets"])
def test_deep_expressions_are_one_line(tmp_path, expr, words):
    src = tmp_path / "fine_grained_prompts.py"
    src.write_text(f"x = 1\ntotal_classes2id = {expr}\n")
    res, _ = run_import(src, tmp_path / "out")
    one_line_error(res, src, *words)


@pytest.mark.parametrize("old, new, words", [
    ("'hex_nut': 1,", "'hex_nut': '1',", ["total_classes2id", "'hex_nut'", "'1'", "index"]),   # TypeError before
    ("'hex_nut': 1,", "1: 1,", ["total_classes2id", "key 1", "class name"]),                   # KeyError before
    ("'hex_nut': 1,", "'hex_nut': True,", ["total_classes2id", "True"]),                         # read as index 1
    ('"pill_box": "pill box",', '"pill_box": ["pill box"],', ["class_mapping", "'pill_box'", "string"]),
    ("'hex_nut': ['{} with scratch',", "7: ['{} with scratch',", ["class_state_abnormal_refined", "key 7"]),
    ('"number": ["1", "1"],', '"number": ["\u00b2", "1"],', ["'pill_box'", "Level_2.number", "'\u00b2'"]),  # ValueError
    ('"number": ["1", "1"],', '"number": ["' + "9" * 5000 + '", "1"],', ["'pill_box'", "Level_2.number"]),
    ('"pill_box": "pill box",', '"pill_box": "pill \\ud800box",', ["class_mapping", "surrogate"]),  # Arrow error
])
def test_values_of_the_wrong_shape_are_one_line(tmp_path, old, new, words):
    src = write_source(tmp_path)
    src.write_text(replace_once(src.read_text(), old, new))
    out = tmp_path / "out"
    res, _ = run_import(src, out)
    one_line_error(res, src, *words)
    assert not out.exists()


def test_replacements_cannot_grow_without_bound(tmp_path):
    """The public relation rule replaces every entity in turn: 24 entities named "x" with a state "x x x x x x"
    would make a text of 7**24 characters. Texts are cut (CLIP reads 77 tokens), the run stays small."""
    n = 24
    src = write_source(tmp_path)
    text = src.read_text()
    for old, new in [
        ('"entity": ["lid", "box body"],', f'"entity": {["x"] * n},'),
        ('"number": ["1", "1"],', f'"number": {["1"] * n},'),
        ('"location": ["top", "center"],', f'"location": {["top"] * n},'),
        ('"relation": "The lid sits on the box body.",', '"relation": "x",'),
        ('"entity_caption": ["A blue lid at the top of the box.", "A grey box body at the center, seen centrally."],',
         f'"entity_caption": {["An x."] * n},'),
        ("'pill_box': ['{} with crack', '{} with missing lid', ],", "'pill_box': ['{} x x x x x x'],"),
    ]:
        text = replace_once(text, old, new)
    src.write_text(text)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    res, _ = run_import(src, out, "--classes", "pill_box")
    assert res.exit_code == 0, res.output
    assert time.perf_counter() - t0 < 20
    from detector.store.captions import load_class_record

    rec = load_class_record(out, "pill_box")
    relation = next(t for t in rec["texts"] if t["level"] == "relation")
    assert relation["abnormal"][0].startswith("x x x x x x x") and len(relation["abnormal"][0]) < 1000


def test_a_file_that_asks_for_too_much_output_is_refused(tmp_path):
    """Many classes sharing one record (each its own copy of every text): refused by the output bound, in a
    line that says the bound, instead of growing with every class."""
    src = write_source(tmp_path)
    text = src.read_text()
    n = 3000
    caption = "A silver hex nut on a black background. " + "Long words here. " * 100
    text = replace_once(text, '"caption": "A silver hex nut on a black background.",', f'"caption": "{caption}",')
    ids = ", ".join(f"'c{i}': 1" for i in range(n))
    states = ", ".join(f"'c{i}': ['{{}} with scratch']" for i in range(n))
    text += f"\ntotal_classes2id = {{{ids}}}\nclass_state_abnormal_refined = {{{states}}}\n"
    src.write_text(text)
    assert src.stat().st_size < official.MAX_BYTES
    out = tmp_path / "out"
    t0 = time.perf_counter()
    res, _ = run_import(src, out)
    one_line_error(res, src, "characters", "--classes")
    assert time.perf_counter() - t0 < 30 and not out.exists()


# ------------------------------------------------------------------------------------- 3. the user's folder
def test_a_folder_of_the_users_files_is_refused(tmp_path):
    src = write_source(tmp_path)
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("mine")
    res, _ = run_import(src, out)
    one_line_error(res, out, "not empty", "choose an empty or new folder")
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex"]


def test_the_input_inside_the_output_is_refused(tmp_path):
    out = tmp_path / "official"
    src = write_source(out)
    res, _ = run_import(src, out)
    assert res.exit_code == 1 and "lies inside --out" in " ".join(res.output.split()), res.output


def test_its_own_earlier_output_is_replaced_also_after_a_kill(tmp_path):
    src = write_source(tmp_path)
    out = tmp_path / "official"
    assert run_import(src, out)[0].exit_code == 0
    lock_beside(out).lock_file.write_text("")  # what a run killed while it held the lock leaves behind
    res, _ = run_import(src, out, "--classes", "hex_nut")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "import_info.json").read_text())["classes"] == ["hex_nut"]
    assert sorted(p.name for p in out.iterdir()) == ["classes", "import_info.json"]
    assert not lock_beside(out).lock_file.exists()  # no lock file stays


# --------------------------------------------------------------------------------------------- 4. the lock
def test_a_second_run_into_the_same_folder_is_refused_at_once(tmp_path):
    src = write_source(tmp_path)
    out = tmp_path / "official"
    assert run_import(src, out)[0].exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with lock_beside(out):  # the one lock of an mfsc output folder, held as a live run holds it
        t0 = time.perf_counter()
        res, _ = run_import(src, out, "--classes", "hex_nut")
        assert time.perf_counter() - t0 < 10
    one_line_error(res, out, "in use by another run", "wait for it to finish, or give `mfsc import-official` another")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert json.loads((out / "import_info.json").read_text())["classes"] == ["pill_box", "hex_nut"]

    fresh = tmp_path / "fresh"  # a first run into a new folder takes the same lock
    with lock_beside(fresh):
        res, _ = run_import(src, fresh)
    one_line_error(res, fresh, "in use by another run")
    assert not fresh.exists()
