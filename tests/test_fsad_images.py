"""load_rgb / load_mask: every supported encoding decodes to the expected RGB pixels; bad files are DataErrors."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fsad_data import DataError, load_mask, load_rgb

RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)


def test_rgb_png_round_trip_is_rgb_not_bgr(tmp_path: Path) -> None:
    Image.fromarray(RGB).save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png", min_side=1)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("suffix", [".bmp", ".tif", ".tiff"])
def test_lossless_formats(tmp_path: Path, suffix: str) -> None:
    Image.fromarray(RGB).save(tmp_path / f"a{suffix}")
    np.testing.assert_array_equal(load_rgb(tmp_path / f"a{suffix}", min_side=1), RGB)


def test_jpeg_is_rgb(tmp_path: Path) -> None:
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 250
    Image.fromarray(red).save(tmp_path / "r.jpg", quality=95)
    out = load_rgb(tmp_path / "r.jpg", min_side=1)
    assert out[..., 0].mean() > 240 and out[..., 2].mean() < 15


def test_grayscale_copied_to_three_channels(tmp_path: Path) -> None:
    gray = np.array([[0, 100], [200, 255]], np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png", min_side=1)
    np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=2))


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([RGB, np.array([[[0], [128]], [[255], [0]]], np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.png", min_side=1), RGB)


def test_sixteen_bit_gray_keeps_high_byte(tmp_path: Path) -> None:
    g16 = np.array([[0, 257], [65535, 1000]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    out = load_rgb(tmp_path / "g16.png", min_side=1)
    expected = np.array([[0, 1], [255, 3]], np.uint8)  # v >> 8
    np.testing.assert_array_equal(out, np.stack([expected] * 3, axis=2))


def test_sixteen_bit_rgb(tmp_path: Path) -> None:
    rgb16 = np.array([[[65535, 0, 257 * 100]]], np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    np.testing.assert_array_equal(load_rgb(tmp_path / "c16.png", min_side=1), np.array([[[255, 0, 100]]], np.uint8))


def test_palette_looked_up(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 200, 10, 50] + [0] * 762)
    im.putdata([1, 0])
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "p.png", min_side=1), np.array([[[200, 10, 50], [0, 0, 0]]], np.uint8))


def test_one_bit(tmp_path: Path) -> None:
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "b.png", min_side=1)[..., 1], [[255, 0]])


def test_an_image_smaller_than_8_px_names_its_file_size_and_the_skip_flag(tmp_path: Path) -> None:
    """A 1x1 placeholder decodes, but it is no data set image: one line with its file, its size, --on-error skip
    (the conversion tests above use tiny images through ``min_side=1``); the header check says the same."""
    from fsad_data.images import image_size

    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    Image.new("RGB", (8, 100)).save(tmp_path / "thin.png")
    for read in (load_rgb, lambda p: image_size(p, min_side=8)):
        with pytest.raises(DataError) as info:
            read(tmp_path / "one.png")
        msg = str(info.value)
        assert str(tmp_path / "one.png") in msg and "1x1 px" in msg and "--on-error skip" in msg and "\n" not in msg
    assert load_rgb(tmp_path / "thin.png").shape == (100, 8, 3) and image_size(tmp_path / "one.png") == (1, 1)


def test_zero_byte_image_names_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.*empty\.png|empty\.png.*empty"):
        load_rgb(p)


def test_truncated_png_names_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.png"):
        load_rgb(tmp_path / "t.png")


def test_truncated_jpeg_is_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.jpg"):
        load_rgb(tmp_path / "t.jpg")


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_text("hello, not a png")
    with pytest.raises(DataError, match="x.png"):
        load_rgb(tmp_path / "x.png")


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.png"):
        load_rgb(tmp_path / "nope.png")


def test_mask_binarised_from_small_labels(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1], [38, 255]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), [[False, True], [True, True]])


def test_mask_palette_uses_indices(tmp_path: Path) -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 drawn white: still background
    im.putdata([0, 1, 2])
    im.save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), [[False, True, True]])


def test_mask_rgb_any_channel(tmp_path: Path) -> None:
    arr = np.zeros((1, 3, 3), np.uint8)
    arr[0, 1, 2] = 5
    Image.fromarray(arr).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), [[False, True, False]])


def test_mask_size_mismatch_names_both(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError) as info:
        load_mask(tmp_path / "m.png", (8, 4), image_path=tmp_path / "img.png")
    msg = str(info.value)
    assert "m.png" in msg and "img.png" in msg and "5x4" in msg and "8x4" in msg
    assert load_mask(tmp_path / "m.png", (5, 4)).shape == (4, 5)
