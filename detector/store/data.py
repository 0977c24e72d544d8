"""The detector's one reader of a data set: a class's samples, its k shots, the test split in batches.

Thin helpers over ``fsad_data`` (the one reader of every layout and the one RGB decoder), so training,
evaluation, the benchmark and prediction read images, masks and shots the same way:

- ``class_samples(data, class_name)``: every Sample of one class, any layout ``fsad_data`` reads;
- ``select_class_shots(samples, class_name, k, seed, shots_file)``: the shots (normal train images, chosen
  by sorted file name, or listed in a PromptAD/WinCLIP seed file) and ``load_images`` for their pixels
  (``detector.run.train``);
- ``class_test_samples`` / ``test_split``: the test split in id order (``detector eval``, ``benchmark``);
- ``iter_batches(samples, batch_size)``: ``TestBatch(samples, images, masks)`` in the order given; images are
  RGB uint8 (H, W, 3), masks bool (H, W) at the image's size (all False for normal images);
- ``load_images``: RGB uint8 pixels of samples or image files (``detector predict`` names its own files);
- ``readable(samples, on_error)``: ``--on-error skip`` of train and eval: the samples whose image and mask
  decode, and the skipped ones with their reasons (``raise``: all samples, a bad file fails where it is read).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

import fsad_data
from detector.errors import DetectorError
from fsad_data import Sample


class TestBatch(NamedTuple):
    """One evaluation batch; unpacks as ``samples, images, masks``."""

    samples: list[Sample]
    images: list[np.ndarray]  # RGB uint8 (H, W, 3)
    masks: list[np.ndarray]  # bool (H, W), same size as its image

    __test__ = False  # not a pytest test class despite the name


def class_samples(data: str | Path, class_name: str, layout: str = "auto", on_error: str = "raise") -> list[Sample]:
    """All samples (train and test) of ``class_name`` under ``data``, sorted by id."""
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
    samples: Sequence[Sample], class_name: str, k: int, seed: int, shots_file: str | Path | None = None
) -> list[Sample]:
    """The k shot samples of the class (``fsad_data.select_shots``, which owns the rule and checks k: by sorted file name, or
    from a seed file)."""
    return list(fsad_data.select_shots(list(samples), class_name, int(k), int(seed), shots_file=shots_file))


def load_images(items: Sequence[Sample | str | Path]) -> list[np.ndarray]:
    """RGB uint8 (H, W, 3) pixels of samples or image files, in order (``fsad_data.load_rgb``)."""
    return [fsad_data.load_rgb(s.image_path if isinstance(s, Sample) else s) for s in items]


def readable(samples: Sequence[Sample], on_error: str = "raise") -> tuple[list[Sample], list[dict[str, str]]]:
    """``on_error="skip"``: the samples whose image (at least ``fsad_data.images.MIN_SIDE`` px) and mask decode,
    plus ``{"path", "error"}`` for each one left out. ``"raise"``: the samples as given (a bad file stops the
    command where it is read, naming it)."""
    if on_error not in ("raise", "skip"):
        raise DetectorError(f"--on-error {on_error!r}: use raise or skip")
    if on_error == "raise":
        return list(samples), []
    good = fsad_data.validate_samples(list(samples), on_error="skip", decode=True)
    return list(good), [{"path": str(k.path), "error": k.message} for k in good.skipped]


def image_level_only(samples: Sequence[Sample]) -> bool:
    """Whether the test split is evaluated at image level only: it has anomalous images and none has a mask (a
    ``folder`` data set without ``masks/``, Real-IAD entries with null masks). Some with and some without is an
    error naming the first without: its pixels would be counted as normal."""
    anomalous = [s for s in samples if int(s.label) == 1]
    missing = [s for s in anomalous if s.mask_path is None]
    if missing and len(missing) < len(anomalous):
        raise DetectorError(f"{missing[0].image_path}: anomalous test image without a mask while "
                            f"{len(anomalous) - len(missing)} others have one; add its mask (or remove every mask "
                            "for an image-level evaluation)")
    return bool(anomalous) and len(missing) == len(anomalous)


def load_sample_mask(sample: Sample, image_shape: tuple[int, int] | None, image_level: bool = False) -> np.ndarray:
    """The sample's ground truth (H, W) bool at its image's size; all False for a normal image.

    ``image_shape`` None: the mask file's own size. An anomalous image without a mask is an error (pixel
    metrics would count it as all normal), unless the whole split is ``image_level`` (``image_level_only``):
    then its mask is all False too and no pixel metric is computed.
    """
    if sample.mask_path is None:
        if int(sample.label) == 1 and not image_level:
            raise DetectorError(f"{sample.image_path}: anomalous test image without a mask; add the mask (or remove "
                                "every mask of the class for an image-level evaluation)")
        if image_shape is None:
            raise DetectorError(f"{sample.image_path}: an image without a mask needs its image size")
        return np.zeros((int(image_shape[0]), int(image_shape[1])), dtype=bool)
    size = None if image_shape is None else (int(image_shape[1]), int(image_shape[0]))
    return fsad_data.load_mask(sample.mask_path, size, image_path=sample.image_path)


def test_split(samples: Sequence[Sample], class_name: str | None = None) -> list[Sample]:
    """The test samples (optionally of one class), sorted by id."""
    out = [s for s in samples if s.split == "test" and (class_name is None or s.class_name == class_name)]
    if not out:
        which = f" of class '{class_name}'" if class_name else ""
        raise DetectorError(f"no test images{which} in the data set; check --data and --class, and that the "
                            "class folder has a test split")
    return sorted(out, key=lambda s: s.id)


test_split.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


def class_test_samples(data: str | Path, class_name: str, layout: str = "auto") -> list[Sample]:
    """The class's test split, sorted by id."""
    return test_split(class_samples(data, class_name, layout), class_name)


def iter_batches(samples: Sequence[Sample], batch_size: int = 8, image_level: bool = False) -> Iterator[TestBatch]:
    """Batches of the samples in the order given, decoded lazily (one batch in memory at a time); ``image_level``:
    see ``load_sample_mask``."""
    if batch_size < 1:
        raise DetectorError(f"batch size {batch_size} must be at least 1")
    for i in range(0, len(samples), batch_size):
        chunk = list(samples[i : i + batch_size])
        images = load_images(chunk)
        masks = [load_sample_mask(s, img.shape[:2], image_level) for s, img in zip(chunk, images)]
        yield TestBatch(chunk, images, masks)
