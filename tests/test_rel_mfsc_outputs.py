"""mfsc writes only what it owns (issue 11, sections 1, 2 and 4 for the builder): a folder it did not write is
refused before any work and left as it was; an output never is, holds or lies inside an input; a damaged
summary or dataset of a build is one line naming it."""
import json
import shutil
from pathlib import Path

import pytest

from mfsc_builder.build import BuildConfig, merge_builds, run_build
from mfsc_builder.errors import BuildError
from mfsc_builder.ownership import BUILD_INFO_NAME, DRY_RUN_MARKER
from mfsc_builder.publish import card_info, dry_run
from mfsc_builder.show import show_build

MINI = ("train/good/000.png", "train/good/001.png", "test/good/003.png", "test/color_spot/000.png",
        "ground_truth/color_spot/000_mask.png")


def _mini(demo_root: Path, dest: Path) -> Path:
    for rel in MINI:
        (dest / "pill_box" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_root / "pill_box" / rel, dest / "pill_box" / rel)
    return dest


def _cfg(src: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(source=str(src), out=str(out), classes=["pill_box"], **kw)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def src(demo_root, tmp_path_factory) -> Path:
    return _mini(demo_root, tmp_path_factory.mktemp("src") / "data")


@pytest.fixture(scope="module")
def built(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "build"
    run_build(_cfg(src, out))
    return out


def test_build_refuses_a_foreign_folder_before_any_work(src, tmp_path):
    out = tmp_path / "mine"
    for sub in ("images", "classes"):
        (out / sub).mkdir(parents=True)
        (out / sub / "holiday.jpg").write_bytes(b"my photo")
    before = _tree(out)
    with pytest.raises(BuildError, match="not an earlier mfsc build"):
        run_build(_cfg(src, out))
    assert _tree(out) == before and not (out / "work").exists()


def test_force_removes_only_what_a_build_wrote(src, built, tmp_path):
    out = tmp_path / "build"
    shutil.copytree(built, out)
    (out / "work" / "notes.txt").write_text("mine")
    (out / "thesis.tex").write_text("mine too")
    run_build(_cfg(src, out), force=True)
    assert (out / "work" / "notes.txt").read_text() == "mine" and (out / "thesis.tex").read_text() == "mine too"
    assert (out / BUILD_INFO_NAME).is_file()


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_build_output_never_is_inside_or_holds_the_source(src, tmp_path, where):
    data = tmp_path / "data"
    shutil.copytree(src, data)
    out = {"same": data, "inside": data / "captions", "holds": tmp_path}[where]
    before = _tree(data)
    with pytest.raises(BuildError, match="--out|inside"):
        run_build(_cfg(data, out))
    assert _tree(data) == before


def test_merge_into_one_of_its_parts_is_refused(built, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(built, a)
    before = _tree(a)
    with pytest.raises(BuildError, match="same folder as the input"):
        merge_builds([a], a)
    assert _tree(a) == before


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"num_shards": 1}), b"\xff\xfe"])
def test_merge_names_a_damaged_part_summary(built, tmp_path, content):
    part = tmp_path / "part"
    shutil.copytree(built, part)
    path = part / BUILD_INFO_NAME
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BuildError) as err:
        merge_builds([part], tmp_path / "merged")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "merged").exists()


def test_dry_run_never_replaces_a_folder_it_did_not_write(built, tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "README.md").write_text("# my thesis")
    (thesis / "chapter1.tex").write_text("years of work")
    before = _tree(thesis)
    with pytest.raises(BuildError, match="not an earlier dry run"):
        dry_run(built, thesis)
    assert _tree(thesis) == before
    out = dry_run(built, tmp_path / "upload")
    assert (out / DRY_RUN_MARKER).is_file()
    dry_run(built, out)  # its own earlier dry run is replaced
    assert (out / "README.md").is_file()


def test_publish_and_show_name_a_damaged_build(built, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(built, bad)
    (bad / BUILD_INFO_NAME).write_text("{oops")
    with pytest.raises(BuildError, match="build_info.json is unreadable"):
        card_info(bad, "org/name")
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    for arrow in (broken / "classes").rglob("*.arrow"):
        arrow.write_bytes(b"this is not an arrow file")
    with pytest.raises(BuildError, match="does not hold a readable MFSC build"):
        show_build(broken)


def test_a_fractional_shard_count_is_refused(src, tmp_path):
    with pytest.raises(BuildError, match="num_shards"):
        BuildConfig.from_mapping({"source": str(src), "out": str(tmp_path / "o"), "num_shards": 1.5}, "build.yaml")
