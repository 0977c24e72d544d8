"""Shot selection: deterministic by file name whatever the listing order; PromptAD/WinCLIP shots files."""
import os
import random
from pathlib import Path

import pytest
from fixtures_layouts import make_mvtec

from fsad_data import DataError, Sample, read_dataset, select_shots, shots_record, shots_selection
from fsad_data.shots import _rank_key, parse_shots_file


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    return read_dataset(make_mvtec(tmp_path / "d", classes=("widget", "gadget"), n_train=10))


def test_only_normal_train_images_of_the_class(samples: list[Sample]) -> None:
    shots = select_shots(samples, "widget", 10, seed=0)
    assert [s.file_name for s in shots] == [f"train/good/{i:03d}.png" for i in range(10)]
    assert all(s.class_name == "widget" and s.label == 0 and s.split == "train" for s in shots)


def test_matches_hand_computed_hash_ranking(samples: list[Sample]) -> None:
    names = [f"train/good/{i:03d}.png" for i in range(10)]
    expected = sorted(sorted(names, key=lambda n: _rank_key("widget", 3, n))[:4])
    assert shots_record(select_shots(samples, "widget", 4, seed=3)) == expected


def test_same_shots_whatever_the_listing_order(samples: list[Sample], tmp_path: Path, monkeypatch) -> None:
    reference = shots_record(select_shots(samples, "widget", 4, seed=1))
    shuffled = list(samples)
    random.Random(5).shuffle(shuffled)
    assert shots_record(select_shots(shuffled, "widget", 4, seed=1)) == reference
    assert shots_record(select_shots(reversed(samples), "widget", 4, seed=1)) == reference
    # a file system that lists folders in reverse order gives the same samples and shots
    real_iterdir = Path.iterdir
    real_listdir = os.listdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(real_iterdir(self), reverse=True)))
    monkeypatch.setattr(os, "listdir", lambda p=".": sorted(real_listdir(p), reverse=True))
    again = read_dataset(tmp_path / "d")
    assert [s.id for s in again] == [s.id for s in samples]
    assert shots_record(select_shots(again, "widget", 4, seed=1)) == reference


def test_seeds_differ_and_fewer_shots_are_a_subset(samples: list[Sample]) -> None:
    picks = {seed: shots_record(select_shots(samples, "widget", 2, seed)) for seed in range(6)}
    assert len({tuple(v) for v in picks.values()}) > 1
    for seed in range(6):
        one = set(shots_record(select_shots(samples, "widget", 1, seed)))
        two = set(shots_record(select_shots(samples, "widget", 2, seed)))
        four = shots_record(select_shots(samples, "widget", 4, seed))
        assert one <= two <= set(four) and four == sorted(four)


def test_bad_k_and_class(samples: list[Sample]) -> None:
    with pytest.raises(DataError, match="fewer than k=11"):
        select_shots(samples, "widget", 11, 0)
    with pytest.raises(DataError, match="at least 1"):
        select_shots(samples, "widget", 0, 0)
    with pytest.raises(DataError, match="'nut' has no normal training images"):
        select_shots(samples, "nut", 1, 0)


def test_shots_file_promptad_format(samples: list[Sample], tmp_path: Path) -> None:
    f = tmp_path / "seeds.txt"
    f.write_text("#1: 003\n#2: 007 1\n#4: 009 000 004 005\n")
    assert shots_record(select_shots(samples, "widget", 1, 0, f)) == ["train/good/003.png"]
    assert shots_record(select_shots(samples, "widget", 2, 7, f)) == ["train/good/001.png", "train/good/007.png"]
    assert [s.stem for s in select_shots(samples, "widget", 4, 0, f)] == ["000", "004", "005", "009"]
    with pytest.raises(DataError, match="no line with 3 stems"):
        select_shots(samples, "widget", 3, 0, f)
    assert shots_selection(2, 0, f) == "file:seeds.txt" and shots_selection(2, 5) == "k=2 seed=5"


def test_shots_file_sections_and_seed_lines(samples: list[Sample], tmp_path: Path) -> None:
    f = tmp_path / "all.txt"
    f.write_text("widget\n#1: 001\n#1: 002.png\n# a comment here\n\n[gadget]\n#1: 008\n")
    assert parse_shots_file(f) == {"widget": [["001"], ["002.png"]], "gadget": [["008"]]}
    assert [s.stem for s in select_shots(samples, "widget", 1, 0, f)] == ["001"]
    assert [s.stem for s in select_shots(samples, "widget", 1, 1, f)] == ["002"]
    assert [s.stem for s in select_shots(samples, "gadget", 1, 9, f)] == ["008"]
    with pytest.raises(DataError, match="seed 2 picks none"):
        select_shots(samples, "widget", 1, 2, f)
    other = tmp_path / "other.txt"
    other.write_text("bottle\n#1: 000\n")
    with pytest.raises(DataError, match="not for class 'widget'"):
        select_shots(samples, "widget", 1, 0, other)


def test_shots_file_errors(samples: list[Sample], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="shots file not found"):
        select_shots(samples, "widget", 1, 0, tmp_path / "none.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("#1: 000\nwhat is this line\n")
    with pytest.raises(DataError, match="bad.txt line 2"):
        select_shots(samples, "widget", 1, 0, bad)
    twice = tmp_path / "twice.txt"
    twice.write_text("#2: 001 1\n")
    with pytest.raises(DataError, match="same image twice"):
        select_shots(samples, "widget", 2, 0, twice)


def test_demo_shots_stable(demo_root: Path) -> None:
    samples = read_dataset(demo_root)
    # fixed expectation: changing the rule changes every recorded output, so it must be deliberate
    assert shots_record(select_shots(samples, "pill_box", 2, 0)) == ["train/good/002.png", "train/good/007.png"]


def test_promptad_seed_folder(samples: list[Sample], tmp_path: Path) -> None:
    # the exact format of PromptAD's datasets/seeds_mvtec/<class>/selected_samples_per_run.txt
    seeds = tmp_path / "seeds_mvtec"
    (seeds / "widget").mkdir(parents=True)
    (seeds / "widget" / "selected_samples_per_run.txt").write_text("#1: 008\n#2: 009 04\n#4: 001 002 003 000\n")
    assert [s.stem for s in select_shots(samples, "widget", 1, 0, seeds)] == ["008"]
    assert [s.stem for s in select_shots(samples, "widget", 2, 0, seeds)] == ["004", "009"]
    assert [s.stem for s in select_shots(samples, "widget", 4, 0, seeds)] == ["000", "001", "002", "003"]
    with pytest.raises(DataError, match="no gadget/selected_samples_per_run.txt"):
        select_shots(samples, "gadget", 1, 0, seeds)
