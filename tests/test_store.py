"""The stage store: atomic parts, damaged parts never read back, manifest refusal, the work folder made whole."""
import json
import os

import pytest

from mfsc_builder.errors import BuildError
from mfsc_builder.store import StageStore, WorkStore, fingerprint


def test_append_and_load_round_trip(tmp_path):
    st = StageStore(tmp_path / "crop")
    assert st.load() == {}
    p0 = st.append([("a/train/good/000", {"x": 1, "f": 0.1}), ("a/train/good/001", {"x": 2})])
    p1 = st.append([("b/test/crack/000", {"s": "é"})])
    assert (p0.name, p1.name) == ("part-00000.jsonl", "part-00001.jsonl")
    assert st.load() == {"a/train/good/000": {"x": 1, "f": 0.1}, "a/train/good/001": {"x": 2},
                         "b/test/crack/000": {"s": "é"}}
    assert st.last_report.parts == 2 and st.last_report.corrupt == ()
    assert st.append([]) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_footer", "empty"])
def test_damaged_part_is_set_aside_and_never_read(tmp_path, damage):
    st = StageStore(tmp_path / "caption")
    st.append([("a", {"v": 1})])
    last = st.append([("b", {"v": 2}), ("c", {"v": 3})])
    raw = last.read_bytes()
    if damage == "truncate":
        last.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":  # same length, one changed byte in the body: checksum catches it
        i = raw.index(b'"v":2')
        last.write_bytes(raw[: i + 4] + b"7" + raw[i + 5:])
    elif damage == "drop_footer":
        last.write_bytes(b"".join(raw.splitlines(keepends=True)[:-1]))
    else:
        last.write_bytes(b"")
    assert st.load() == {"a": {"v": 1}}
    assert [p.name for p in st.last_report.corrupt] == ["part-00001.jsonl.corrupt"]
    assert (st.dir / "part-00001.jsonl.corrupt").exists()  # kept for inspection, not deleted
    # a new part never reuses the set-aside name
    assert st.append([("b", {"v": 2})]).name == "part-00002.jsonl"
    assert st.load() == {"a": {"v": 1}, "b": {"v": 2}}


def test_atomic_write_failure_leaves_no_file_and_says_what_to_do(tmp_path, monkeypatch):
    st = StageStore(tmp_path / "d")
    target = st.dir / "part-00000.jsonl"

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(BuildError, match="part-00000.jsonl.*No space left.*rerun"):
        st.append([("a", {"v": 1})])
    assert list(target.parent.iterdir()) == []  # no temp, no half file


def test_stale_temporaries_are_removed(tmp_path):
    d = tmp_path / "work"
    (d / "fill").mkdir(parents=True)
    (d / "fill" / ".part-00000.jsonl.abc.tmp").write_text("half")
    st = WorkStore(d).stage("fill")
    assert st.load() == {} and not list(st.dir.iterdir())


def test_manifest_refuses_a_changed_configuration(tmp_path):
    ws = WorkStore(tmp_path / "work")
    cfg = {"captioner": "attributes", "shots": 1}
    man = {"config": cfg, "fingerprint": fingerprint(cfg)}
    assert ws.open(man) is False
    assert ws.open(man) is True  # same config: resume
    cfg2 = {"captioner": "attributes", "shots": 2}
    with pytest.raises(BuildError, match=r"changed: shots.*new --out.*--force"):
        ws.open({"config": cfg2, "fingerprint": fingerprint(cfg2)})
    assert json.loads(ws.manifest_path.read_text())["config"] == cfg  # untouched


def test_fingerprint_is_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_the_work_folder_is_made_whole_and_only_a_build_s_is_taken_for_one(tmp_path):
    """`WorkStore.open` makes the work folder with its manifest in one rename, so an empty `work/` (a user's) is
    never taken for a build's: a build into such a folder is refused. A build killed inside that rename leaves
    only the temporary, which is recognised (and cleaned by the next build); so is the lock file that earlier
    versions kept in `work/`."""
    from fsad_data.atomic import temp_folder_beside
    from mfsc_builder.ownership import check_build_output, is_build_output

    users = tmp_path / "users"
    (users / "work").mkdir(parents=True)
    (users / "images").mkdir()
    assert not is_build_output(users)
    with pytest.raises(BuildError, match="not an earlier mfsc build"):
        check_build_output(users)

    killed = tmp_path / "killed"
    temp_folder_beside(killed / "work")  # what a kill between its creation and the rename leaves
    assert is_build_output(killed)
    legacy = tmp_path / "legacy"
    (legacy / "work").mkdir(parents=True)
    (legacy / "work" / ".lock").write_text("")
    assert is_build_output(legacy)

    ws = WorkStore(tmp_path / "fresh" / "work")
    assert ws.open({"fingerprint": "a"}) is False and json.loads(ws.manifest_path.read_text()) == {"fingerprint": "a"}
    assert sorted(p.name for p in ws.dir.parent.iterdir()) == ["work"]  # no temporary left beside it

    orphan = WorkStore(tmp_path / "orphan" / "work")
    (orphan.dir / "crop").mkdir(parents=True)  # results whose manifest is gone: never mixed with new ones
    (orphan.dir / "crop" / "part-00000.jsonl").write_text("{}\n")
    with pytest.raises(BuildError, match="holds results but no manifest.json.*--force"):
        orphan.open({"fingerprint": "a"})
