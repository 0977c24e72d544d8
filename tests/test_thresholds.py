"""The threshold owner (``detector.store.thresholds``) with an explicit image threshold: ``--image-threshold`` and the
API's ``image_threshold=`` replace the evaluation's image threshold, or add one to a number / none; the pixel
threshold and resolution stay; a value that is not a finite number is one line."""
import json

import pytest

from detector.errors import DetectorError
from detector.store.thresholds import image_threshold_in_force, resolve_threshold


def _evaluation(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "threshold.json").write_text(json.dumps(
        {"fused": {"pixel_threshold": 0.3, "image_threshold": 0.6, "resolution": 64}}))
    return folder


def test_an_explicit_image_threshold_with_a_number_or_none(tmp_path):
    t = resolve_threshold("0.25", tmp_path, image=0.7)
    assert (t.pixel, t.image, t.resolution, t.source) == (0.25, 0.7, None, "value; image threshold 0.7 given")
    t = resolve_threshold("none", tmp_path, image="0.7")
    assert (t.pixel, t.image, t.resolution) == (None, 0.7, None)  # scores and decisions, no masks
    assert resolve_threshold("0.25", tmp_path).image is None  # a number alone decides no image


def test_an_explicit_image_threshold_replaces_the_evaluations(tmp_path):
    ev = _evaluation(tmp_path / "eval")
    t = resolve_threshold(ev, tmp_path, image=0.9)
    assert (t.pixel, t.image, t.resolution) == (0.3, 0.9, 64)
    assert t.source == f"file ({ev / 'threshold.json'}); image threshold 0.9 given"
    ckpt = _evaluation(tmp_path / "ckpt")  # auto: the threshold.json inside the checkpoint folder
    t = resolve_threshold("auto", ckpt, image=-1.5)
    assert (t.pixel, t.image, t.resolution) == (0.3, -1.5, 64)
    assert resolve_threshold("auto", ckpt).image == 0.6  # without one, the evaluation's


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "nan", "-inf", "high", True])
def test_a_non_finite_image_threshold_is_one_line(tmp_path, bad):
    with pytest.raises(DetectorError) as info:
        resolve_threshold("0.25", tmp_path, image=bad)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--image-threshold {str(bad)!r} is not a finite number")
    with pytest.raises(DetectorError, match=r"^image_threshold 'nan' is not a finite number"):
        image_threshold_in_force(float("nan"), 0.6, "image_threshold")


def test_the_image_threshold_in_force():
    assert image_threshold_in_force(None, 0.6) == 0.6 and image_threshold_in_force(None) is None
    assert image_threshold_in_force(0.4, 0.6) == 0.4 and image_threshold_in_force(" 0.4 ", None) == 0.4
