"""``read_dataset``: any accepted layout -> a sorted list of Samples; ``validate_samples``: cheap file checks.

Bad input is handled by the ``on_error`` policy (see ``fsad_data.layouts.common``): "raise" stops at the
first problem with a DataError naming the path and the fix; "skip" leaves the sample out and lists it in the
returned list's ``.skipped`` (a list of ``Skip(path, message)``). read_dataset checks eagerly what costs only a
``stat``: existence, empty files, missing masks, duplicate ids, classes without images. Decoding and mask
sizes are checked by ``validate_samples`` (image headers only, or a full decode with ``decode=True``), or
lazily by ``load_rgb``/``load_mask``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fsad_data.errors import SKIP_HINT, DataError
from fsad_data.images import MIN_SIDE, image_size, load_mask, load_rgb
from fsad_data.layouts import DESCRIPTIONS, LAYOUTS, READERS, accepted, detect_layout
from fsad_data.layouts.common import Issues, SampleList, Skip
from fsad_data.samples import Sample

__all__ = ["SampleList", "Skip", "read_dataset", "validate_samples"]


def read_dataset(
    root: str | Path,
    layout: str = "auto",
    classes: Iterable[str] | str | None = None,
    on_error: str = "raise",
) -> SampleList:
    """Read a data set tree into Samples sorted by id (a ``SampleList``: a list with ``.skipped``/``.layout``)."""
    root = Path(os.path.abspath(Path(root).expanduser()))  # "." gets its real folder name as class name
    issues = Issues(on_error)
    if not root.exists():
        raise DataError(f"data set root not found: {root}. Check the path (or make the demo set: mfsc demo-data).")
    if not root.is_dir():
        raise DataError(f"data set root is not a folder: {root}. Pass the folder that holds the classes.")
    if layout not in LAYOUTS:
        raise DataError(
            f"unknown layout {layout!r} for {root}. Choose one of {', '.join(LAYOUTS)} ({accepted()})."
        )
    name = detect_layout(root) if layout == "auto" else layout
    try:
        samples = READERS[name].read(root, classes, issues)
    except OSError as exc:
        raise DataError(
            f"cannot read {exc.filename or root}: {exc.strerror or exc}. Check that the data set folder is "
            "readable (permissions, unmounted drive, broken links)."
        ) from exc
    if not samples and not samples.skipped:
        raise DataError(
            f"no images found in {root} as a {name} data set (expected {DESCRIPTIONS[name]}). Check the root "
            "folder and the layout."
        )
    return samples


def validate_samples(samples: Iterable[Sample], on_error: str = "raise", decode: bool = False) -> SampleList:
    """Check that every image (and mask) can be read and that each mask has its image's size.

    By default only headers are read (fast: no pixel decoding); ``decode=True`` decodes every file, which
    also catches truncated files. Returns the good samples (with ``.skipped`` under on_error="skip").
    """
    issues = Issues(on_error)
    good: list[Sample] = []
    layout = getattr(samples, "layout", "")
    prior = list(getattr(samples, "skipped", []))
    for s in samples:
        try:
            size = _checked_image_size(s.image_path, decode)
        except DataError as exc:
            issues.problem(s.image_path, str(exc))
            continue
        if s.mask_path is not None:
            try:
                _check_mask(s.mask_path, size, s.image_path, decode)
            except DataError as exc:
                issues.problem(s.mask_path, str(exc))
                continue
        good.append(s)
    return SampleList(good, prior + issues.skipped, layout)


def _checked_image_size(path: Path, decode: bool) -> tuple[int, int]:
    if decode:
        h, w = load_rgb(path).shape[:2]
        return w, h
    return image_size(path, min_side=MIN_SIDE)


def _check_mask(mask: Path, size: tuple[int, int], image: Path, decode: bool) -> None:
    if decode:
        load_mask(mask, size, image_path=image)
        return
    msize = image_size(mask)
    if msize != size:
        raise DataError(
            f"mask {mask} is {msize[0]}x{msize[1]} (WxH) but its image {image} is {size[0]}x{size[1]}. "
            f"Re-export the mask at the image size (nearest neighbour), fix the pairing, or skip it with {SKIP_HINT}."
        )
