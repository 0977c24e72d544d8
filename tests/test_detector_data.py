"""detector.store.data on the synthetic data set: class samples, shots, test batches (RGB images, masks)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from detector.errors import DetectorError
from detector.store.data import (
    class_samples,
    image_level_only,
    iter_batches,
    load_images,
    load_sample_mask,
    select_class_shots,
    test_split,
)
from fsad_data.errors import DataError


@pytest.fixture(scope="module")
def hex_nut(demo_root):
    return class_samples(demo_root, "hex_nut")


def test_class_samples_one_class_sorted(hex_nut) -> None:
    assert hex_nut and {s.class_name for s in hex_nut} == {"hex_nut"}
    assert [s.id for s in hex_nut] == sorted(s.id for s in hex_nut)
    assert {s.split for s in hex_nut} == {"train", "test"}


def test_unknown_class_lists_classes(demo_root) -> None:
    from fsad_data import DataError

    with pytest.raises((DataError, DetectorError), match=r"bottle.*fabric, hex_nut, pill_box"):
        class_samples(demo_root, "bottle")


def test_shots_are_normal_train_images_and_stable(hex_nut) -> None:
    a = select_class_shots(hex_nut, "hex_nut", 2, seed=0)
    b = select_class_shots(list(reversed(hex_nut)), "hex_nut", 2, seed=0)  # input order must not matter
    assert len(a) == 2 and [s.id for s in a] == [s.id for s in b]
    assert all(s.split == "train" and s.label == 0 for s in a)
    with pytest.raises(DataError, match="at least 1"):  # fsad_data's shot rule checks k, for every reader
        select_class_shots(hex_nut, "hex_nut", 0, seed=0)


def test_images_are_rgb_as_stored(hex_nut) -> None:
    s = test_split(hex_nut)[0]
    img = load_images([s])[0]
    ref = np.asarray(Image.open(s.image_path).convert("RGB"))  # PIL decodes in RGB order
    assert img.dtype == np.uint8 and img.shape == ref.shape and np.array_equal(img, ref)


def test_test_batches_cover_the_split_with_matching_masks(hex_nut) -> None:
    tests = test_split(hex_nut)
    seen = []
    for samples, images, masks in iter_batches(tests, 5, image_level_only(tests)):
        assert len(samples) == len(images) == len(masks) <= 5
        for s, img, m in zip(samples, images, masks):
            assert m.dtype == bool and m.shape == img.shape[:2]
            if s.label == 0:
                assert not m.any()
            else:
                ref = np.asarray(Image.open(s.mask_path)) > 0
                assert np.array_equal(m, ref.any(axis=2) if ref.ndim == 3 else ref) and m.any()
        seen += [s.id for s in samples]
    assert seen == [s.id for s in tests]
    assert all(s.split == "test" for s in tests)


def test_anomaly_without_mask_is_an_error(hex_nut) -> None:
    bad = replace(next(s for s in hex_nut if s.label == 1), mask_path=None)
    with pytest.raises(DetectorError, match="without a mask"):
        load_sample_mask(bad, (10, 10))
    with pytest.raises(DetectorError):
        list(iter_batches(test_split(hex_nut), 0, False))
    with pytest.raises(DetectorError, match="no test images"):
        test_split([s for s in hex_nut if s.split == "train"])
