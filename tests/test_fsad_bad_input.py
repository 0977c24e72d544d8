"""Every bad input: one DataError naming the path and the fix, or under on_error="skip" a listed skip."""
from pathlib import Path

import pytest
from fixtures_layouts import make_mvtec, make_realiad, make_visa_raw, write_image, write_mask

from fsad_data import DataError, read_dataset, validate_samples
from fsad_data.shots import select_shots


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*nowhere.*Check the path"):
        read_dataset(tmp_path / "nowhere")


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        read_dataset(tmp_path / "f.txt")


def test_bad_on_error_value(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    with pytest.raises(DataError, match="on_error"):
        read_dataset(tmp_path, on_error="ignore")


def test_class_folder_without_images(tmp_path: Path) -> None:
    make_mvtec(tmp_path, classes=("ok",))
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"class folder .*empty has no images \(looked in train/good"):
        read_dataset(tmp_path)
    samples = read_dataset(tmp_path, on_error="skip")
    assert {s.class_name for s in samples} == {"ok"}
    assert [s.path.name for s in samples.skipped] == ["empty"]


def test_missing_mask(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DataError) as info:
        read_dataset(tmp_path)
    msg = str(info.value)
    assert "no mask" in msg and "test/scratch/001.png" in msg and "001_mask.png" in msg
    samples = read_dataset(tmp_path, on_error="skip")
    assert "widget/test/scratch/001" not in [s.id for s in samples] and len(samples) == 6
    assert samples.skipped[0].path == tmp_path / "widget" / "test" / "scratch" / "001.png"


def test_missing_mask_visa_raw(tmp_path: Path) -> None:
    root = make_visa_raw(tmp_path)
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(DataError, match=r"no mask for anomalous image .*000.JPG"):
        read_dataset(root)


def test_zero_byte_image(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    empty = tmp_path / "widget" / "train" / "good" / "001.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty \(0 bytes\): .*train/good/001.png"):
        read_dataset(tmp_path)
    samples = read_dataset(tmp_path, on_error="skip")
    assert [s.path for s in samples.skipped] == [empty] and len(samples) == 6


def test_unreadable_image_found_by_validate(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    junk = tmp_path / "widget" / "test" / "good" / "000.png"
    junk.write_text("this is not a png")
    samples = read_dataset(tmp_path)  # cheap read: decodability is not checked here
    with pytest.raises(DataError, match=r"test/good/000.png"):
        validate_samples(samples)
    good = validate_samples(samples, on_error="skip")
    assert len(good) == len(samples) - 1 and [s.path for s in good.skipped] == [junk]


def test_truncated_image_needs_decode(tmp_path: Path) -> None:
    make_mvtec(tmp_path, defects={})
    import numpy as np
    from PIL import Image

    path = tmp_path / "widget" / "train" / "good" / "000.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    samples = read_dataset(tmp_path)
    with pytest.raises(DataError, match="000.png"):
        validate_samples(samples, decode=True)


def test_mask_size_differs(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    mask = tmp_path / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    write_mask(mask, size=(16, 8))
    samples = read_dataset(tmp_path)
    for decode in (False, True):
        with pytest.raises(DataError) as info:
            validate_samples(samples, decode=decode)
        msg = str(info.value)
        assert "000_mask.png" in msg and "test/scratch/000.png" in msg and "16x8" in msg and "8x8" in msg
    good = validate_samples(samples, on_error="skip")
    assert [s.path for s in good.skipped] == [mask] and len(good) == len(samples) - 1


def test_duplicate_stems(tmp_path: Path) -> None:
    make_mvtec(tmp_path, defects={})
    write_image(tmp_path / "widget" / "train" / "good" / "000.jpg", 9)
    with pytest.raises(DataError, match="same sample id 'widget/train/good/000'"):
        read_dataset(tmp_path)


def test_realiad_entry_without_file(tmp_path: Path) -> None:
    root = make_realiad(tmp_path)
    (root / "realiad_256/audiojack/OK/S0001/audiojack_0001_OK_C1_20231021130425.jpg").unlink()
    with pytest.raises(DataError, match=r"audiojack.json \(train\[0\]\) names"):
        read_dataset(root)
    assert len(read_dataset(root, on_error="skip").skipped) == 1


def test_shots_file_with_missing_stem(tmp_path: Path) -> None:
    samples = read_dataset(make_mvtec(tmp_path / "d"))
    seeds = tmp_path / "widget_seeds.txt"
    seeds.write_text("#1: 002\n#2: 000 017\n")
    assert [s.stem for s in select_shots(samples, "widget", 1, 0, seeds)] == ["002"]
    with pytest.raises(DataError, match=r"widget_seeds.txt names '017'"):
        select_shots(samples, "widget", 2, 0, seeds)


def test_broken_link(tmp_path: Path) -> None:
    make_mvtec(tmp_path, defects={})
    (tmp_path / "widget" / "train" / "good" / "009.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match="cannot read image .*009.png"):
        read_dataset(tmp_path)
    assert len(read_dataset(tmp_path, on_error="skip").skipped) == 1
