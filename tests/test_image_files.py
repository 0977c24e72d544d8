"""What the images dataset keeps of each file (mfsc_builder.image_files): the file itself exactly when a reader
decoding it as `datasets.Image` does gets fsad_data.load_rgb's RGB pixels, an RGB PNG of those otherwise."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsad_data import load_mask, load_rgb
from mfsc_builder.image_files import keeps_own_bytes, relative_name, stored_image, stored_mask

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (12, 16), dtype=np.uint8)


def _save(path: Path, image: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: datasets.Image applies it, load_rgb does not
    return exif


def _files(root: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, kept unchanged?) for the kinds of files data sets ship."""
    import cv2

    d = root / "cls"
    sixteen = d / "rgb16.png"
    sixteen.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(sixteen), RGB.astype(np.uint16) * 257)
    cmyk = Image.fromarray(RGB).convert("CMYK")
    return {
        "rgb png": (_save(d / "rgb.png", Image.fromarray(RGB)), True),
        "gray png": (_save(d / "gray.png", Image.fromarray(GRAY)), False),  # the contract: RGB rows
        "rgb jpeg": (_save(d / "rgb.jpg", Image.fromarray(RGB), quality=90), True),
        "gray jpeg": (_save(d / "gray.jpeg", Image.fromarray(GRAY)), False),
        "16-bit rgb png": (sixteen, False),
        "16-bit gray png": (_save(d / "gray16.png", Image.fromarray(GRAY.astype(np.uint16) * 257)), False),
        "palette png": (_save(d / "pal.png", Image.fromarray(RGB).quantize(8)), False),
        "rgba png": (_save(d / "rgba.png", Image.fromarray(np.dstack([RGB, GRAY]))), False),
        "1-bit png": (_save(d / "bw.png", Image.fromarray(GRAY > 128)), False),
        "cmyk jpeg": (_save(d / "cmyk.jpg", cmyk), False),
        "rotated jpeg": (_save(d / "rot.jpg", Image.fromarray(RGB), exif=_rotated_exif()), False),
        "rotated png": (_save(d / "rot.png", Image.fromarray(RGB), exif=_rotated_exif()), False),
        "bmp": (_save(d / "x.bmp", Image.fromarray(RGB)), False),
        "tiff": (_save(d / "x.tif", Image.fromarray(RGB)), False),
    }


def _decoded_like_datasets(data: bytes) -> np.ndarray:
    import datasets

    return np.asarray(datasets.Image().decode_example({"bytes": data, "path": None}).convert("RGB"))


def test_every_kind_of_file_reads_back_as_load_rgb_and_only_safe_ones_are_kept(tmp_path):
    for name, (path, kept) in _files(tmp_path).items():
        stored = stored_image(path, tmp_path, "embed")
        assert stored.kept is kept, name
        assert keeps_own_bytes(path.read_bytes()) is kept, name
        if kept:
            assert stored.data == path.read_bytes(), name
        else:
            assert stored.data.startswith(b"\x89PNG"), name
        assert np.array_equal(_decoded_like_datasets(stored.data), load_rgb(path)), name
        assert Image.open(io.BytesIO(stored.data)).mode == "RGB", name
        assert stored.file == f"cls/{path.name}" and stored.size == path.stat().st_size
        assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_rotation_would_have_been_applied_to_a_kept_file(tmp_path):
    """Why rotated files are re-encoded: a reader would turn them and their masks would not match."""
    path = _files(tmp_path)["rotated jpeg"][0]
    assert _decoded_like_datasets(path.read_bytes()).shape[:2] == (16, 12)
    assert load_rgb(path).shape[:2] == (12, 16)


def test_masks_are_0_255_pngs_of_load_mask_whatever_the_file_holds(tmp_path):
    image = _save(tmp_path / "cls" / "img.png", Image.fromarray(RGB))
    labels = np.zeros((12, 16), np.uint8)
    labels[2:5, 3:9], labels[7:10, 1:4] = 1, 2  # a VisA-style label map
    for name, mask in {"visa labels": Image.fromarray(labels), "mvtec 0/255": Image.fromarray((labels > 0) * np.uint8(255)),
                       "palette": Image.fromarray(labels, mode="L").convert("P")}.items():
        path = _save(tmp_path / "gt" / f"{name}.png", mask)
        stored = stored_mask(path, image, (16, 12), tmp_path, "embed")
        back = np.asarray(Image.open(io.BytesIO(stored.data)))
        assert back.dtype == np.uint8 and set(np.unique(back)) <= {0, 255}, name
        assert np.array_equal(back > 0, load_mask(path, size=(16, 12), image_path=image)), name
        assert stored.file == f"gt/{name}.png"


def test_reference_mode_keeps_no_pixels_only_the_name_size_and_checksum(tmp_path):
    path = _save(tmp_path / "a b" / "x.png", Image.fromarray(RGB))
    stored = stored_image(path, tmp_path, "reference")
    assert stored.data is None and stored.file == "a b/x.png"
    assert (stored.size, stored.sha256) == (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    mask = stored_mask(path, path, (16, 12), tmp_path, "reference")
    assert mask.data is None and mask.file == "a b/x.png"


def test_relative_names_use_forward_slashes_and_resolve_links(tmp_path):
    real = _save(tmp_path / "data" / "c" / "x.png", Image.fromarray(RGB))
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert relative_name(tmp_path / "link" / "c" / "x.png", tmp_path / "data") == "c/x.png"
    assert relative_name(real, tmp_path / "link") == "c/x.png"


def test_a_file_that_vanished_since_the_crop_is_one_line_naming_it(tmp_path):
    from fsad_data import DataError

    with pytest.raises(DataError, match=r"cannot read image .*gone\.png.*restore it and rerun"):
        stored_image(tmp_path / "gone.png", tmp_path, "embed")
