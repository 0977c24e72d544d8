"""Layout readers on fixtures written here: exact samples, auto detection, the name table, samples_frame."""
from pathlib import Path

import numpy as np
import pytest
from fixtures_layouts import make_folder, make_mvtec, make_realiad, make_visa, make_visa_raw

from fsad_data import (
    DataError,
    Sample,
    detect_layout,
    load_mask,
    read_dataset,
    readable_name,
    samples_frame,
    to_visa_raw,
)
from fsad_data.synthetic import CLASSES, DEFECTS, N_PER_DEFECT, N_TEST_GOOD, N_TRAIN_GOOD


def _ids(samples: list[Sample]) -> list[str]:
    return [s.id for s in samples]


def test_mvtec_reader_exact(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv", classes=("b", "a"))
    samples = read_dataset(root, layout="mvtec")
    assert samples.layout == "mvtec" and samples.skipped == []
    assert _ids(samples) == sorted(_ids(samples))
    a = [s for s in samples if s.class_name == "a"]
    assert _ids(a) == [
        "a/test/good/000", "a/test/good/001", "a/test/scratch/000", "a/test/scratch/001",
        "a/train/good/000", "a/train/good/001", "a/train/good/002",
    ]
    bad = next(s for s in a if s.id == "a/test/scratch/001")
    assert bad.label == 1 and bad.defect_type == "scratch" and bad.split == "test"
    assert bad.mask_path == root / "a" / "ground_truth" / "scratch" / "001_mask.png"
    assert bad.file_name == "test/scratch/001.png"
    good = next(s for s in a if s.id == "a/train/good/002")
    assert good.label == 0 and good.mask_path is None and good.image_path == root / "a/train/good/002.png"


def test_mvtec_single_class_root_and_class_filter(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv", classes=("bottle", "cable"))
    one = read_dataset(root / "bottle")
    assert {s.class_name for s in one} == {"bottle"} and len(one) == 7
    assert {s.class_name for s in read_dataset(root, classes=["cable"])} == {"cable"}
    assert {s.class_name for s in read_dataset(root, classes="cable")} == {"cable"}
    with pytest.raises(DataError, match="nut.*bottle, cable"):
        read_dataset(root, classes=["nut"])


def test_demo_set_reads_as_mvtec(demo_root: Path) -> None:
    samples = read_dataset(demo_root)
    assert samples.layout == "mvtec"
    assert len(samples) == len(CLASSES) * (N_TRAIN_GOOD + N_TEST_GOOD + 2 * N_PER_DEFECT)
    types = {s.defect_type for s in samples if s.class_name == "hex_nut"}
    assert types == {"good", *DEFECTS["hex_nut"]}


def test_visa_converted_reader(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    for r in (root, root / "1cls"):
        samples = read_dataset(r)
        assert samples.layout == "visa"
        bad = [s for s in samples if s.label == 1]
        assert [s.id for s in bad] == ["pcb1/test/bad/000", "pcb1/test/bad/001"]
        assert bad[0].mask_path == root / "1cls" / "pcb1" / "ground_truth" / "bad" / "000.png"
        assert bad[0].file_name == "test/bad/000.JPG"


def test_visa_raw_reader_binarises_masks(tmp_path: Path) -> None:
    root = make_visa_raw(tmp_path / "raw", classes=("candle", "pcb2"), mask_value=1)
    samples = read_dataset(root)
    assert samples.layout == "visa_raw"
    candle = [s for s in samples if s.class_name == "candle"]
    assert sum(s.split == "train" for s in candle) == 3
    assert [s.id for s in candle if s.label == 1] == ["candle/test/bad/000", "candle/test/bad/001"]
    assert "candle/test/good/0003" in _ids(candle)
    bad = next(s for s in candle if s.label == 1)
    assert bad.file_name == "Data/Images/Anomaly/000.JPG"
    mask = load_mask(bad.mask_path, (8, 8))
    assert mask.sum() == 4 and mask[:2, :2].all()


def test_visa_raw_defect_types_from_image_anno(tmp_path: Path) -> None:
    from fsad_data.layouts.visa_raw import defect_slug

    root = make_visa_raw(tmp_path / "raw")
    (root / "candle" / "image_anno.csv").write_text(
        "image,label,mask\n"
        "candle/Data/Images/Normal/0000.JPG,normal,\n"
        "candle/Data/Images/Anomaly/000.JPG,\"chunk of wax missing, Weird  wick\",candle/Data/Masks/Anomaly/000.png\n"
    )
    bad = [s for s in read_dataset(root) if s.label == 1]
    assert [s.defect_type for s in bad] == ["bad", "chunk_of_wax_missing_and_weird_wick"]
    assert defect_slug("") == "bad" and defect_slug("melt, scratch") == "melt_and_scratch"


def test_visa_raw_from_demo_matches_mvtec(demo_root: Path, tmp_path: Path) -> None:
    raw = read_dataset(to_visa_raw(demo_root, tmp_path / "visa"))
    mv = read_dataset(demo_root)
    assert raw.layout == "visa_raw" and len(raw) == len(mv)
    assert sum(s.label for s in raw) == sum(s.label for s in mv)
    assert {(s.class_name, s.defect_type) for s in raw} == {(s.class_name, s.defect_type) for s in mv}
    for s in [s for s in raw if s.label == 1][:4]:
        assert load_mask(s.mask_path).any()


def test_realiad_reader(tmp_path: Path) -> None:
    root = make_realiad(tmp_path / "Real-IAD")
    samples = read_dataset(root)
    assert samples.layout == "realiad"
    assert [s.split for s in samples].count("train") == 2
    bad = sorted((s for s in samples if s.label == 1), key=lambda s: s.id)
    assert [s.defect_type for s in bad] == ["pit", "scratch"]
    assert bad[0].id == "audiojack/test/pit/audiojack_0100_NG_C2_20231021131000"
    assert bad[0].file_name == "NG/AK/S0100/audiojack_0100_NG_C2_20231021131000.jpg"
    assert bad[0].mask_path.name.endswith("_mask.png") and bad[0].mask_path.is_file()
    assert all(s.mask_path is None for s in samples if s.label == 0)


def test_realiad_paths_with_class_prefix(tmp_path: Path) -> None:
    import json

    root = make_realiad(tmp_path)
    jfile = root / "realiad_jsons" / "realiad_jsons" / "audiojack.json"
    data = json.loads(jfile.read_text())
    for entry in data["train"] + data["test"]:
        entry["image_path"] = "audiojack/" + entry["image_path"]
        if entry["mask_path"]:
            entry["mask_path"] = "audiojack/" + entry["mask_path"]
    jfile.write_text(json.dumps(data))
    again = read_dataset(root)
    assert [s.file_name for s in again] == [s.file_name for s in read_dataset(make_realiad(tmp_path / "b"))]
    assert all(s.mask_path.is_file() for s in again if s.label == 1)


def test_folder_reader_alternating_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "my_part2", n_normal=5)
    samples = read_dataset(root)
    assert samples.layout == "folder"
    normals = {s.file_name: s.split for s in samples if s.label == 0}
    assert normals == {"normal/n0.png": "train", "normal/n1.png": "test", "normal/n2.png": "train",
                       "normal/n3.png": "test", "normal/n4.png": "train"}
    bad = {s.file_name: s for s in samples if s.label == 1}
    assert bad["anomaly/a0.png"].defect_type == "anomaly"
    assert bad["anomaly/a0.png"].mask_path == root / "masks" / "a0_mask.png"
    assert bad["anomaly/dent/a1.png"].defect_type == "dent"
    assert bad["anomaly/dent/a1.png"].mask_path == root / "masks" / "a1.png"
    assert {s.class_name for s in samples} == {"my_part2"}


def test_folder_reader_explicit_split_and_no_masks(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data" / "gear", explicit_split=True, masks=False)
    samples = read_dataset(tmp_path / "data")
    assert [(s.split, s.label) for s in samples].count(("train", 0)) == 3
    assert [(s.split, s.label) for s in samples].count(("test", 0)) == 2
    assert all(s.mask_path is None for s in samples)  # no masks/ folder: image-level only
    assert root.name == "gear"


@pytest.mark.parametrize(
    "maker, expected",
    [
        (lambda p: make_mvtec(p), "mvtec"),
        (lambda p: make_visa(p), "visa"),
        (lambda p: make_mvtec(p, mask_suffix=""), "visa"),
        (lambda p: make_visa_raw(p), "visa_raw"),
        (lambda p: make_realiad(p), "realiad"),
        (lambda p: make_folder(p / "cls"), "folder"),
        (lambda p: make_folder(p / "cls", explicit_split=True), "folder"),
    ],
)
def test_auto_detection(tmp_path: Path, maker, expected: str) -> None:
    maker(tmp_path)
    assert detect_layout(tmp_path) == expected
    assert read_dataset(tmp_path).layout == expected


def test_unknown_layout_lists_accepted(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "x.txt").write_text("x")
    with pytest.raises(DataError) as info:
        read_dataset(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and all(n in msg for n in ("mvtec", "visa_raw", "realiad", "folder"))
    with pytest.raises(DataError, match="unknown layout 'kitti'.*mvtec"):
        read_dataset(tmp_path, layout="kitti")


def test_explicit_layout_that_does_not_fit(tmp_path: Path) -> None:
    make_folder(tmp_path / "cls")
    with pytest.raises(DataError, match="no images found .* mvtec"):
        read_dataset(tmp_path, layout="mvtec")


@pytest.mark.parametrize(
    "name, readable",
    [
        ("metal_nut", "metal nut"), ("pcb1", "printed circuit board"), ("pcb4", "printed circuit board"),
        ("macaroni1", "macaroni"), ("macaroni2", "macaroni"), ("pipe_fryum", "pipe fryum"),
        ("chewinggum", "chewing gum"), ("capsules", "capsules"), ("candle", "candle"), ("cashew", "cashew"),
        ("fryum", "fryum"), ("bottle", "bottle"), ("toothbrush", "toothbrush"), ("transistor1", "transistor"),
        ("terminalblock", "terminal block"), ("audiojack", "audio jack"), ("pill_box", "pill box"),
        ("hex_nut", "hex nut"), ("fabric", "fabric"), ("my_widget", "my widget"), ("rusty-gear2", "rusty gear"),
    ],
)
def test_readable_names(name: str, readable: str) -> None:
    assert readable_name(name) == readable


def test_name_table_covers_benchmarks() -> None:
    from fsad_data.names import MVTEC_AD, REAL_IAD, VISA

    assert len(MVTEC_AD) == 15 and len(VISA) == 12 and len(REAL_IAD) == 30


def test_samples_frame(tmp_path: Path) -> None:
    samples = read_dataset(make_mvtec(tmp_path / "mv"))
    frame = samples_frame(samples)
    assert list(frame.columns) == [
        "id", "class_name", "split", "label", "defect_type", "image_path", "mask_path", "file_name",
    ]
    assert len(frame) == len(samples) and frame["label"].sum() == 2
    assert frame.loc[frame.label == 0, "mask_path"].isna().all()
    assert isinstance(frame.loc[0, "image_path"], str)
    assert np.array_equal(frame["id"].to_numpy(), np.array(_ids(samples)))


def test_relative_root_dot_names_the_class(tmp_path: Path, monkeypatch) -> None:
    make_folder(tmp_path / "gear")
    monkeypatch.chdir(tmp_path / "gear")
    samples = read_dataset(".")
    assert {s.class_name for s in samples} == {"gear"} and samples[0].image_path.is_absolute()
