"""The detector's view of a data set: one class's samples, its k shots, and the test split in batches.

Thin helpers over ``fsad_data`` (the one reader of every layout and the one RGB decoder), so training,
evaluation and prediction read images, masks and shots the same way:

- ``class_samples(data, class_name)``: every Sample of one class, any layout ``fsad_data`` reads;
- ``select_class_shots(samples, class_name, k, seed, shots_file)``: the shots (normal train images, chosen
  by sorted file name, or listed in a PromptAD/WinCLIP seed file) and ``load_images`` for their pixels;
- ``iter_test_batches(samples, batch_size)``: ``TestBatch(samples, images, masks)`` over the test split in id
  order; images are RGB uint8 (H, W, 3), masks bool (H, W) at the image's size (all False for normal images).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from detector.errors import DetectorError


class TestBatch(NamedTuple):
    """One evaluation batch; unpacks as ``samples, images, masks``."""

    samples: list[Any]  # fsad_data.Sample
    images: list[np.ndarray]  # RGB uint8 (H, W, 3)
    masks: list[np.ndarray]  # bool (H, W), same size as its image

    __test__ = False  # not a pytest test class despite the name


def class_samples(data: str | Path, class_name: str, layout: str = "auto", on_error: str = "raise") -> list[Any]:
    """All samples (train and test) of ``class_name`` under ``data``, sorted by id."""
    import fsad_data

    samples = fsad_data.read_dataset(data, layout=layout, classes=[class_name], on_error=on_error)
    mine = [s for s in samples if s.class_name == class_name]
    if not mine:
        present = sorted({s.class_name for s in fsad_data.read_dataset(data, layout=layout, on_error="skip")})
        raise DetectorError(
            f"class '{class_name}' has no images under {data} (classes found: {', '.join(present) or 'none'}); "
            "check --class and --data"
        )
    return sorted(mine, key=lambda s: s.id)


def select_class_shots(
    samples: Sequence[Any], class_name: str, k: int, seed: int, shots_file: str | Path | None = None
) -> list[Any]:
    """The k shot samples of the class (``fsad_data.select_shots``: by sorted file name, or from a seed file)."""
    import fsad_data

    if k < 1:
        raise DetectorError(f"--shots {k}: the number of shots must be at least 1")
    return list(fsad_data.select_shots(list(samples), class_name, int(k), int(seed), shots_file=shots_file))


def load_images(samples: Sequence[Any]) -> list[np.ndarray]:
    """RGB uint8 (H, W, 3) pixels of the samples, in order."""
    from fsad_data import load_rgb

    return [load_rgb(s.image_path) for s in samples]


def load_sample_mask(sample: Any, image_shape: tuple[int, int]) -> np.ndarray:
    """The sample's ground truth (H, W) bool at its image's size; all False for a normal image.

    An anomalous image without a mask is an error (pixel metrics would count it as all normal).
    """
    from fsad_data import load_mask

    h, w = int(image_shape[0]), int(image_shape[1])
    if sample.mask_path is None:
        if int(sample.label) == 1:
            raise DetectorError(
                f"{sample.image_path}: anomalous test image without a mask; add the mask or evaluate image-level only"
            )
        return np.zeros((h, w), dtype=bool)
    return load_mask(sample.mask_path, (w, h), image_path=sample.image_path)


def test_split(samples: Sequence[Any], class_name: str | None = None) -> list[Any]:
    """The test samples (optionally of one class), sorted by id."""
    out = [s for s in samples if s.split == "test" and (class_name is None or s.class_name == class_name)]
    if not out:
        which = f" of class '{class_name}'" if class_name else ""
        raise DetectorError(f"no test images{which} in the data set; check --data and --class")
    return sorted(out, key=lambda s: s.id)


test_split.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


def iter_test_batches(
    samples: Sequence[Any], batch_size: int = 8, class_name: str | None = None
) -> Iterator[TestBatch]:
    """Batches of the test split in id order, decoded lazily (one batch in memory at a time)."""
    if batch_size < 1:
        raise DetectorError(f"batch size {batch_size} must be at least 1")
    tests = test_split(samples, class_name)
    for i in range(0, len(tests), batch_size):
        chunk = tests[i : i + batch_size]
        images = load_images(chunk)
        masks = [load_sample_mask(s, img.shape[:2]) for s, img in zip(chunk, images)]
        yield TestBatch(chunk, images, masks)
