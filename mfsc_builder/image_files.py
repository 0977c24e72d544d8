"""What the ``images`` dataset keeps of each source file: its own bytes, a PNG made from its pixels, or only a
reference (relative path, size, SHA-256).

Why: re-encoding every original as PNG took 41% of a build and made VisA's JPEGs several times larger. A file
is kept byte for byte when decoding it as ``datasets.Image`` does (Pillow, EXIF rotation applied) and
gives exactly ``fsad_data.load_rgb``'s pixels, RGB as the contract says: an 8-bit RGB PNG or JPEG without an
EXIF rotation. Anything else (gray, 16-bit, palette, alpha, 1-bit, CMYK, BMP/TIFF, animated, rotated) is stored
as an RGB PNG of ``load_rgb``'s pixels. Masks are always an 8-bit 0/255 PNG of ``load_mask`` (any value > 0 is defect),
as MVTec-AD stores them, so a VisA label map and an MVTec mask read the same. ``reference`` keeps no pixels at all, for data sets
whose licence forbids redistribution: users read the images from their own copy of the data set.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsad_data import DataError, load_mask, load_rgb

IMAGE_MODES = ("embed", "reference")
_KEPT_FORMATS = {"PNG": ("RGB",), "JPEG": ("RGB",)}
_KEPT_PNG_RAWMODES = ("RGB",)  # 8 bits per sample; a 16-bit file decodes to mode RGB too, with raw mode "RGB;16B"
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class StoredFile:
    """One source file as the dataset keeps it: ``data`` (None in reference mode), and always its path
    relative to the source root, its size in bytes and its SHA-256, so a referenced file can be checked."""

    data: bytes | None
    file: str
    size: int
    sha256: str
    kept: bool  # the file's own bytes (True) or a PNG made from its pixels (False)


def relative_name(path: str | Path, source_root: str | Path) -> str:
    """``path`` relative to the source root, with forward slashes (the same on every machine)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(source_root).resolve())).as_posix()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}; was it moved or deleted during the "
                        "build? restore it and rerun (finished stages are kept)") from exc


def keeps_own_bytes(data: bytes) -> bool:
    """True when these file bytes decode (as ``datasets.Image`` decodes them) to ``load_rgb``'s RGB pixels: an
    8-bit RGB PNG or JPEG, one frame, no EXIF rotation."""
    from PIL import Image  # Pillow's plugins load on first use; only writers of image bytes pay for them

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            if im.mode not in _KEPT_FORMATS.get(im.format or "", ()) or getattr(im, "n_frames", 1) != 1:
                return False
            if im.format == "PNG":
                rawmodes = [t[3] if isinstance(t[3], str) else t[3][0] for t in im.tile]
                if not rawmodes or any(r not in _KEPT_PNG_RAWMODES for r in rawmodes):
                    return False
                if b"eXIf" not in data:  # no EXIF chunk (its type must appear as these bytes): skip the decode
                    return True          # that Pillow's getexif does to find one after the pixel data
            return im.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, Image.DecompressionBombError):
        return False  # what Pillow cannot parse goes through load_rgb, whose error names the file


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of an RGB (H, W, 3) or gray (H, W) uint8 array; a bool mask becomes 8-bit 0/255 (deterministic)."""
    from PIL import Image  # Pillow's plugins load on first use; only writers of image bytes pay for them

    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8) * 255 if array.dtype == bool else array).save(buf, format="PNG")
    return buf.getvalue()


def stored_image(path: str | Path, source_root: str | Path, mode: str) -> StoredFile:
    """The image column's content of one source image (``mode``: embed or reference)."""
    path = Path(path)
    raw = _read(path, "image")
    name, digest = relative_name(path, source_root), hashlib.sha256(raw).hexdigest()
    if mode == "reference":
        return StoredFile(None, name, len(raw), digest, kept=False)
    if keeps_own_bytes(raw):
        return StoredFile(raw, name, len(raw), digest, kept=True)
    return StoredFile(png_bytes(load_rgb(path)), name, len(raw), digest, kept=False)


def stored_mask(path: str | Path, image_path: str | Path, size: tuple[int, int], source_root: str | Path,
                mode: str) -> StoredFile:
    """The mask column's content: a 0/255 PNG of ``load_mask`` at the image's ``size`` (W, H), or a reference."""
    path = Path(path)
    raw = _read(path, "mask")
    name, digest = relative_name(path, source_root), hashlib.sha256(raw).hexdigest()
    if mode == "reference":
        return StoredFile(None, name, len(raw), digest, kept=False)
    return StoredFile(png_bytes(load_mask(path, size=size, image_path=image_path)), name, len(raw), digest,
                      kept=False)
