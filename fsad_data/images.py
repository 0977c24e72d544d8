"""Image and mask decoding: every image leaves here as RGB uint8, every mask as a bool array.

Conversions (Pillow decodes; one rule per case so results are the same on every machine):
- grayscale and 1-bit: the gray value is copied to R, G and B;
- palette: looked up in its palette (transparency is ignored);
- alpha (RGBA, LA, PA): the alpha channel is DROPPED, colours are kept as stored (no compositing), the same
  as ``cv2.imread(..., IMREAD_COLOR)`` and ``PIL.Image.convert("RGB")`` do; anomaly data sets do not use alpha
  as a matte, and keeping the stored colour keeps defects visible in transparent areas;
- 16 bit (grayscale or RGB, PNG or TIFF): the high byte is kept (``v >> 8``, so 257*k -> k and 65535 -> 255),
  which is what Pillow does for 48-bit RGB; 32-bit integer images are clipped to 0..65535 first;
- float images: values in [0, 1] are scaled by 255, anything else is clipped to 0..255;
- CMYK / YCbCr / LAB: Pillow's conversion to RGB.
EXIF orientation is NOT applied: masks are stored in the pixel order of their images, and rotating one
without the other would misalign them.

Large images: ``load_rgb(path, max_pixels=N)`` decodes an image of more than N pixels reduced by the smallest
whole factor k that brings it to N or fewer (``ceil(W/k) x ceil(H/k)``), for a caller that works at a fixed small
size (``detector predict``): a JPEG is scaled while it is decoded (Pillow's ``draft``, DCT scaling by 1/2, 1/4
or 1/8), then every format is box-averaged over k x k blocks (Pillow's ``reduce``) band by band after the rules
above, so the memory is Pillow's decoded copy (at most 4 bytes a pixel under its bomb limit) plus the result,
never the full-size RGB array and its temporaries.

Masks: any value > 0 is defect (VisA masks hold small label values, MVTec-AD masks 0/255); a palette mask is
read as its indices (a label map), colour masks count a pixel when any colour channel is > 0.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from fsad_data.errors import SKIP_HINT, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_SIDE = 8  # px: a smaller picture (a 1x1 placeholder, a thumbnail stub) is no data set image; cropping needs 8


def is_image_file(path: Path) -> bool:
    """True for files whose suffix is one of the supported image formats (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} not found: {path}. Check the data set path, or re-download the file.")
    if not path.is_file():
        raise DataError(f"{what} is not a file: {path}. Point to an image file, not a folder.")
    if path.stat().st_size == 0:
        raise DataError(
            f"{what} is empty (0 bytes): {path}. Re-download or re-export it, or remove it from the data set "
            f"(or skip it with {SKIP_HINT})."
        )


def _open(path: Path, what: str, max_pixels: int | None = None):
    """Open and fully decode with Pillow, turning every decoder failure into a DataError naming the file.
    ``max_pixels``: a JPEG of more pixels is scaled while decoding (``draft``), to no fewer than the reduced size
    ``reduction`` gives; ``im.info["original_size"]`` keeps the file's (W, H)."""
    from PIL import Image  # on first use: `import fsad_data.images` (numpy only) stays light

    _check_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(path)
            original = im.size
            k = reduction(*original, max_pixels)
            if k > 1 and im.format == "JPEG":
                im.draft(None, (-(-original[0] // k), -(-original[1] // k)))
            im.load()  # forces the full decode: truncated files fail here, not later
        im.info["original_size"] = original
        return im
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # a valid but huge image is not "corrupt": say what to do
        raise DataError(
            f"{what} {path} is too large to decode safely ({exc}). Downscale it (e.g. to at most 8192 px per "
            f"side), or if you trust the file raise PIL.Image.MAX_IMAGE_PIXELS; or skip it with {SKIP_HINT}."
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
        raise DataError(
            f"cannot decode {what} {path}: {exc.__class__.__name__}: {exc}. The file is truncated, corrupt or "
            f"not an image (PNG/JPEG/BMP/TIFF); re-download or re-export it, or skip it with {SKIP_HINT}."
        ) from exc


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    return (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def _float_to_eight(arr: np.ndarray, unit: bool | None = None) -> np.ndarray:
    """``unit``: whether the whole image lies in [0, 1] (None: decided from ``arr``; a band passes the image's)."""
    arr = np.nan_to_num(arr.astype(np.float64))
    if unit is None:
        unit = bool(arr.size and arr.min() >= 0.0 and arr.max() <= 1.0)
    if unit:
        arr = arr * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def to_rgb_array(im, float_unit: bool | None = None) -> np.ndarray:
    """Convert a decoded Pillow image to an (H, W, 3) uint8 RGB array by the rules in the module docstring.
    ``float_unit``: for a band of a float image, whether the whole image lies in [0, 1] (None: this one)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        gray = _sixteen_to_eight(np.asarray(im))
    elif mode == "F":
        gray = _float_to_eight(np.asarray(im), float_unit)
    else:
        if mode != "RGB":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im = im.convert("RGB")
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _check_side(path: Path, width: int, height: int, min_side: int) -> None:
    if min(width, height) < min_side:
        raise DataError(
            f"image {path} is {width}x{height} px: too small to be an image of a data set (at least "
            f"{min_side}x{min_side} px); replace or remove it, or skip it with {SKIP_HINT}."
        )


def load_rgb(path: str | Path, min_side: int = MIN_SIDE, max_pixels: int | None = None) -> np.ndarray:
    """Load any PNG/JPEG/BMP/TIFF as (H, W, 3) uint8 RGB; a missing, empty, undecodable or smaller than
    ``min_side`` px file is a DataError naming it (``min_side=1``: any size, e.g. to test the conversions).
    ``max_pixels``: an image of more pixels comes back reduced by a whole factor to at most that many (module
    docstring, "Large images"); its own size is ``image_size(path)``."""
    path = Path(path)
    im = _open(path, "image", max_pixels)
    try:
        _check_side(path, *im.info["original_size"], min_side)
        k = reduction(im.width, im.height, max_pixels)
        return to_rgb_array(im) if k == 1 else _reduced_rgb(im, k)
    finally:
        im.close()


def reduction(width: int, height: int, max_pixels: int | None) -> int:
    """The smallest whole k with ``ceil(width / k) * ceil(height / k) <= max_pixels`` (1: within it, or None)."""
    if not max_pixels or width * height <= max_pixels:
        return 1
    k = max(2, math.isqrt(width * height // max(1, int(max_pixels))))  # no smaller k fits: W*H/k^2 <= N
    while -(-width // k) * -(-height // k) > max_pixels:
        k += 1
    return k


BAND_PIXELS = 1 << 22  # pixels of the decoded image converted at a time by _reduced_rgb (16 MiB in Pillow)


def _reduced_rgb(im, k: int) -> np.ndarray:
    """``to_rgb_array(im)`` box-reduced by ``k`` (Pillow's ``reduce``: the mean of each k x k block, partial
    blocks at the right and bottom edges included), converted band by band of whole k-row blocks, so no
    full-size copy is made beside ``im``: equal to reducing the full conversion."""
    from PIL import Image  # on first use: `import fsad_data.images` (numpy only) stays light

    width, height = im.size
    rows = k * max(1, BAND_PIXELS // (width * k))
    bands = [(0, y, width, min(height, y + rows)) for y in range(0, height, rows)]
    unit = None
    if im.mode == "F":  # the [0, 1] rule is the whole image's: decided before the first band is converted
        lo, hi = math.inf, -math.inf
        for box in bands:
            arr = np.nan_to_num(np.asarray(im.crop(box), dtype=np.float64))
            lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
        unit = lo >= 0.0 and hi <= 1.0
    parts = [np.asarray(Image.fromarray(to_rgb_array(im.crop(box), unit)).reduce(k)) for box in bands]
    return np.ascontiguousarray(np.concatenate(parts))


def mask_to_bool(im) -> np.ndarray:
    """(H, W) bool: True where the decoded mask is > 0 (palette: index > 0; colour: any channel > 0)."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBX", "RGBa", "La"):
        im = im.convert("RGB" if mode in ("RGBA", "RGBX", "RGBa") else ("L" if mode in ("LA", "La") else "P"))
    arr = np.asarray(im)
    if arr.ndim == 3:
        return np.ascontiguousarray((arr > 0).any(axis=2))
    return np.ascontiguousarray(arr > 0)


def load_mask(
    path: str | Path, size: tuple[int, int] | None = None, *, image_path: str | Path | None = None
) -> np.ndarray:
    """Load a defect mask as (H, W) bool (> 0 is defect). ``size`` is the image's (W, H); a mismatch is a
    DataError naming the mask (and ``image_path`` when given), both sizes and the fix."""
    path = Path(path)
    im = _open(path, "mask")
    try:
        if size is not None and (im.width, im.height) != (int(size[0]), int(size[1])):
            of = f" of image {image_path}" if image_path is not None else ""
            raise DataError(
                f"mask {path} is {im.width}x{im.height} (WxH) but the image{of} is {int(size[0])}x{int(size[1])}. "
                "The mask belongs to another image or was resized: re-export it at the image size (nearest "
                f"neighbour), fix the pairing, or skip it with {SKIP_HINT}."
            )
        return mask_to_bool(im)
    finally:
        im.close()


def image_size(path: str | Path, min_side: int = 1) -> tuple[int, int]:
    """(W, H) of an image from its header only (cheap; used by validate_samples). DataError if unreadable or,
    with ``min_side``, smaller than that (masks have no minimum: ``load_mask`` checks them against their image)."""
    from PIL import Image  # on first use: `import fsad_data.images` (numpy only) stays light

    path = Path(path)
    _check_file(path, "image")
    try:
        with Image.open(path) as im:
            size = int(im.width), int(im.height)
    except Exception as exc:
        raise DataError(
            f"cannot read the header of {path}: {exc}. The file is corrupt or not an image; re-download or "
            f"re-export it, or skip it with {SKIP_HINT}."
        ) from exc
    _check_side(path, *size, min_side)
    return size
